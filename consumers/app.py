"""Build the FastStream broker that runs the chosen consumer groups."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from faststream.kafka import KafkaBroker

from consumers import archive, features, vectors
from consumers.dlq import DeadLetterSink
from core.metrics import Metrics
from core.services import Services
from schemas.topics import ConsumerGroup
from stores.catalog import Archive
from stores.features import FeatureStore
from stores.model_registry import ModelRegistry
from stores.vectors import VectorStore

# FastStream logs partition assignments at INFO; core.logs quiets this logger to WARNING.
broker_log = logging.getLogger("streamrec.consumers.broker")

# The vectors group only checks the items aliases until a model is published, so it is safe
# on a fresh system.
DEFAULT_GROUPS = (ConsumerGroup.FEATURES, ConsumerGroup.ARCHIVE, ConsumerGroup.VECTORS)


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
    vector_store: VectorStore | None = None,
) -> KafkaBroker:
    """A broker with one batch subscriber per consumer group; start it to consume.

    ``vector_store``: the process's store, needed by the vectors group (Edge opens a shard
    once per process, so the API passes its own); the caller opens and closes it.
    """
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
    if ConsumerGroup.VECTORS in groups:
        if vector_store is None:
            raise ValueError("the vectors consumer group needs the process's vector store")
        updater = vectors_updater(services, vector_store)
        vectors.register(broker, updater, dead_letters, metrics, settings)
    return broker


def vectors_updater(services: Services, store: VectorStore) -> vectors.VectorsUpdater:
    models = ModelRegistry(services.engine, services.settings.var_dir / "models")
    cache = vectors.ModelCache(models, store)
    return vectors.VectorsUpdater(feature_store(services), services.ids, cache, store)
