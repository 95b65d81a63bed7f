"""Prometheus metrics, one registry per running service (so tests can build many apps)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from streamrec.schemas.api import LagReport, LagStatus

log = logging.getLogger(__name__)

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
        self.events_dropped = Counter(
            "streamrec_events_dropped",
            "Buffered events (impressions) never sent: the buffer was full, or Kafka did not "
            "acknowledge them",
            ["topic", "reason"],
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

    def export_lag(self, latest: Callable[[], LagReport | None]) -> None:
        """Serve consumer lag as gauges, from ``latest()`` (a ``core.lag.LagReader``'s last
        report) at each scrape: a scrape never reads Kafka."""
        self.registry.register(LagCollector(latest))


class LagCollector(Collector):
    """Consumer lag gauges built at scrape time from one immutable report, so a scrape (in
    ``prometheus_client``'s server thread or the API's loop) never sees half of a refresh.

    * ``streamrec_consumer_lag_messages{group,topic,partition}``: end offset - committed offset;
    * ``streamrec_consumer_lag_seconds{group,topic,partition}``: age of the oldest unconsumed
      record (absent where it could not be read);
    * ``streamrec_consumer_group_status{group,status}``: 1 for the group's current status
      (OK, UNKNOWN, WARN, STALL, STOP, ERR), 0 for the others;
    * ``streamrec_consumer_group_members{group}``: members (DescribeGroups; absent where the
      broker does not serve it, as on the embedded mock cluster);
    * ``streamrec_consumer_lag_read_timestamp_seconds``: when Kafka was last read (staleness).
    """

    def __init__(self, latest: Callable[[], LagReport | None]) -> None:
        self._latest = latest

    def collect(self) -> Iterator[Metric]:
        report = self._latest()
        partition_labels = ["group", "topic", "partition"]
        messages = GaugeMetricFamily(
            "streamrec_consumer_lag_messages",
            "Records in the log a consumer group has not committed yet",
            labels=partition_labels,
        )
        seconds = GaugeMetricFamily(
            "streamrec_consumer_lag_seconds",
            "Age of the oldest record a consumer group has not committed yet",
            labels=partition_labels,
        )
        status = GaugeMetricFamily(
            "streamrec_consumer_group_status",
            "Burrow-style status of a consumer group over the lag window (1: current)",
            labels=["group", "status"],
        )
        members = GaugeMetricFamily(
            "streamrec_consumer_group_members",
            "Members of a consumer group (where the broker serves DescribeGroups)",
            labels=["group"],
        )
        read_at = GaugeMetricFamily(
            "streamrec_consumer_lag_read_timestamp_seconds",
            "When the consumer lag was last read from Kafka (Unix time)",
        )
        for group in report.groups if report is not None else []:
            for p in group.partitions:
                labels = [group.group, p.topic, str(p.partition)]
                messages.add_metric(labels, p.lag)
                if p.lag_seconds is not None:
                    seconds.add_metric(labels, p.lag_seconds)
            for name in LagStatus:
                status.add_metric([group.group, name.value], float(group.status == name))
            if group.members is not None:
                members.add_metric([group.group], group.members)
        if report is not None:
            read_at.add_metric([], report.measured_at)
        yield from (messages, seconds, status, members, read_at)


@contextmanager
def serving_metrics(registry: CollectorRegistry, host: str, port: int) -> Iterator[int | None]:
    """Serve ``registry`` at ``http://host:port/metrics`` for the block, with prometheus_client's
    own HTTP server (a thread: it answers while the event loop is busy); yields the port, or
    None when nothing is served: ``port`` 0 means off, and a port already taken is logged as a
    warning and the block runs without metrics (a second ``streamrec consume`` on one host must
    not die of it; Prometheus' ``up == 0`` alert tells it)."""
    if port == 0:
        yield None
        return
    try:
        server, thread = start_http_server(port, host, registry=registry)
    except OSError as exc:
        log.warning("metrics not served on %s:%d: %s (set STREAMREC_METRICS_PORT)", host, port, exc)
        yield None
        return
    log.info("metrics at http://%s:%d/metrics", host, server.server_port)
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
