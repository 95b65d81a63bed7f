"""Prometheus metrics, one registry per running service (so tests can build many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.events_published = Counter(
            "streamrec_events_published",
            "Events written to Kafka",
            ["topic"],
            registry=self.registry,
        )
        self.events_consumed = Counter(
            "streamrec_events_consumed",
            "Valid events applied by a consumer group",
            ["group", "topic"],
            registry=self.registry,
        )
        self.events_skipped = Counter(
            "streamrec_events_skipped",
            "Events not applied again: redelivered offsets or duplicate event_ids",
            ["group", "reason"],
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "streamrec_dead_letters",
            "Messages sent to the DLQ",
            ["group", "topic", "reason"],
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "streamrec_consumer_batch_seconds",
            "Time to apply one consumer batch",
            ["group"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.event_to_state_seconds = Histogram(
            "streamrec_event_to_state_seconds",
            "Kafka record time (publish) to the moment its effect is committed to state",
            ["group"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "streamrec_http_request_seconds",
            "HTTP request latency",
            ["route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
