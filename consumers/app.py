"""Build the FastStream broker that runs the chosen consumer groups."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from faststream.kafka import KafkaBroker

from consumers import archive, features
from consumers.dlq import DeadLetterSink
from core.metrics import Metrics
from core.services import Services
from schemas.topics import ConsumerGroup
from stores.catalog import Archive
from stores.features import FeatureStore

# FastStream logs partition assignments at INFO; core.logs quiets this logger to WARNING.
broker_log = logging.getLogger("streamrec.consumers.broker")

DEFAULT_GROUPS = (ConsumerGroup.FEATURES, ConsumerGroup.ARCHIVE)


def feature_store(services: Services) -> FeatureStore:
    settings = services.settings
    return FeatureStore(
        services.redis,
        recent_cap=settings.recent_items_cap,
        half_life_days=settings.popularity_half_life_days,
        dedup_window_hours=settings.dedup_window_hours,
    )


def build_consumer_broker(
    services: Services,
    metrics: Metrics,
    groups: Sequence[ConsumerGroup] = DEFAULT_GROUPS,
) -> KafkaBroker:
    """A broker with one batch subscriber per consumer group; start it to consume."""
    broker = KafkaBroker(
        services.kafka_bootstrap,
        client_id="streamrec-consumers",
        logger=broker_log,
        log_level=logging.DEBUG,  # per-message "Received/Processed" lines only at DEBUG
    )
    dead_letters = DeadLetterSink(broker, metrics)
    settings = services.settings
    unknown = set(groups) - set(DEFAULT_GROUPS)
    if unknown:
        names = ", ".join(sorted(g.value for g in unknown))
        raise ValueError(f"consumer groups not available yet: {names}")
    if ConsumerGroup.FEATURES in groups:
        features.register(broker, feature_store(services), dead_letters, metrics, settings)
    if ConsumerGroup.ARCHIVE in groups:
        archive.register(
            broker, Archive(services.engine), services.ids, dead_letters, metrics, settings
        )
    return broker
