"""The one place a process opens its connections and stores.

``open_stores(settings)`` opens, once per process and from ``Settings`` alone, every connection
(``core.services.open_services``: Kafka, Redis, SQL, the id registry) and every store built on
them (features, archive, model registry, vector store chosen by its URL's scheme: Qdrant Edge,
a Qdrant server, or, with ``STREAMREC_VECTOR_HOST_URL`` set, ``RemoteVectorStore`` on the
vector host of the process owning the Edge shards), and closes them in reverse order.
``open_sql_stores(settings)`` is the same for the commands that need SQL
and files only (``train``, ``eval``, ``vectors publish``). Nothing else constructs a store:
callers receive them from here (the API through its runtime, the consumer groups through
``build_consumer_broker``, programs in ``apps/`` through the factory itself).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from streamrec.core.db import create_db_engine
from streamrec.core.ids import IdRegistry
from streamrec.core.services import Services, open_services
from streamrec.core.settings import Settings
from streamrec.stores.candidates import CandidateStore
from streamrec.stores.candidates import sync_client as candidates_sync_client
from streamrec.stores.catalog import Archive
from streamrec.stores.dlq_replays import DlqReplayLog
from streamrec.stores.features import FeatureStore
from streamrec.stores.model_registry import ModelRegistry
from streamrec.stores.schema import create_schema
from streamrec.stores.training_jobs import TrainingJobStore
from streamrec.stores.vectors import VectorStore, open_vector_store

OFFLINE_DB = "streamrec.db"  # an offline run's own SQLite database


def models_dir(settings: Settings) -> Path:
    """Where the live model registry keeps its artifacts: ``<var_dir>/models``."""
    return settings.var_dir / "models"


def model_registry(engine: Engine, settings: Settings) -> ModelRegistry:
    """The live model registry: artifacts under ``<var_dir>/models``, indexed in ``engine``."""
    return ModelRegistry(engine, models_dir(settings))


@dataclass(frozen=True)
class Stores:
    """Everything a process reads and writes, opened by ``open_stores``."""

    services: Services  # the connections: Kafka addresses, Redis, SQL engine, id registry
    features: FeatureStore
    archive: Archive  # writes carry the Kafka log's id (offsets mean something in one log)
    models: ModelRegistry
    vectors: VectorStore
    training_jobs: TrainingJobStore
    dlq_replays: DlqReplayLog
    candidates: CandidateStore  # precomputed recommendations and neighbours, per version

    @property
    def settings(self) -> Settings:
        return self.services.settings

    @property
    def engine(self) -> Engine:
        return self.services.engine

    @property
    def ids(self) -> IdRegistry:
        return self.services.ids


@asynccontextmanager
async def open_stores(
    settings: Settings, *, attach: bool = False, create_topics: bool = True
) -> AsyncIterator[Stores]:
    """Open every connection and store for the lifetime of the block (reverse order on exit).

    ``attach``: reach the embedded services of a running ``streamrec up`` instead of starting
    them (``core.services.open_services``). The SQL schema is created (idempotent). The vector
    store is cheap to open: Qdrant Edge opens a shard on first use, a server or a vector host
    (``vector_host_url``) on first call.
    """
    async with AsyncExitStack() as stack:
        services = await stack.enter_async_context(
            open_services(settings, attach=attach, create_topics=create_topics)
        )
        await asyncio.to_thread(create_schema, services.engine)
        vectors = await asyncio.to_thread(open_vector_store, settings)
        stack.callback(vectors.close)
        sync_redis = candidates_sync_client(services.redis_url, settings)  # blocking writers
        stack.callback(sync_redis.close)
        yield Stores(
            services=services,
            features=FeatureStore.for_settings(services.redis, settings),
            archive=Archive(services.engine, log_id=services.kafka_log_id),
            models=model_registry(services.engine, settings),
            vectors=vectors,
            training_jobs=TrainingJobStore(services.engine),
            dlq_replays=DlqReplayLog(services.engine),
            candidates=CandidateStore.for_settings(services.redis, sync_redis, settings),
        )


@dataclass(frozen=True)
class SqlStores:
    """What the offline commands use: SQL, the id registry, the archive and the registry."""

    settings: Settings
    engine: Engine
    ids: IdRegistry
    archive: Archive
    models: ModelRegistry
    training_jobs: TrainingJobStore
    dlq_replays: DlqReplayLog


@contextmanager
def open_sql_stores(settings: Settings) -> Iterator[SqlStores]:
    """The SQL-backed stores of ``settings`` (schema created), disposed of on exit."""
    with ExitStack() as stack:
        engine = create_db_engine(
            settings.database_url,
            connect_timeout_seconds=settings.sql_connect_timeout_seconds,
            pool_timeout_seconds=settings.sql_pool_timeout_seconds,
        )
        stack.callback(engine.dispose)
        create_schema(engine)
        yield SqlStores(
            settings=settings,
            engine=engine,
            ids=IdRegistry(engine),
            archive=Archive(engine),
            models=model_registry(engine, settings),
            training_jobs=TrainingJobStore(engine),
            dlq_replays=DlqReplayLog(engine),
        )


@contextmanager
def open_offline_stores(settings: Settings, run_dir: Path) -> Iterator[SqlStores]:
    """The SQL-backed stores of an offline run (training on anything but the live archive):
    a SQLite database of its own under ``run_dir``, with its own id registry and its own model
    registry (``run_dir/models``), so an experiment never touches the live ones."""
    run_dir.mkdir(parents=True, exist_ok=True)
    offline = settings.model_copy(
        update={
            "database_url": f"sqlite:///{(run_dir / OFFLINE_DB).as_posix()}",
            "var_dir": run_dir,
        }
    )
    with open_sql_stores(offline) as stores:
        yield stores


@contextmanager
def open_vectors(settings: Settings) -> Iterator[VectorStore]:
    """The vector store of ``settings`` alone (``vectors publish``), closed on exit."""
    with open_vector_store(settings) as store:
        yield store
