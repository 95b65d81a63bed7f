"""Fixtures for the trainer tests: SQL engines, a tiny synthetic dataset, fast configs.

``engine`` runs on SQLite always and also on PostgreSQL when STREAMREC_TEST_DATABASE_URL is
set, inside a dedicated schema (test_trainer) so other suites on ``public`` are untouched.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
import torch
from sqlalchemy import Engine

from streamrec.core.datasets import InteractionData, synthetic
from streamrec.core.db import create_db_engine
from streamrec.core.ids import IdRegistry
from streamrec.schemas.events import ItemEvent, RatingEvent, SourcedEvent
from streamrec.stores.catalog import Archive
from streamrec.stores.schema import create_schema
from streamrec.trainer.data import Interactions, build
from tests.conftest import PG_TEST_URL, postgres_schema_engine

PG_SCHEMA = "test_trainer"
ML100K = Path(__file__).resolve().parents[3] / "shared" / "data" / "ml-100k"

torch.set_num_threads(1)  # the machine is shared; tiny models gain nothing from more threads


@pytest.fixture(params=["sqlite", "postgresql"] if PG_TEST_URL else ["sqlite"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    eng = (
        create_db_engine(f"sqlite:///{tmp_path}/t.db")
        if request.param == "sqlite"
        else postgres_schema_engine(PG_SCHEMA)
    )
    create_schema(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    eng = create_db_engine(f"sqlite:///{tmp_path}/t.db")
    create_schema(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def registry(sqlite_engine: Engine) -> IdRegistry:
    return IdRegistry(sqlite_engine)


def small_data() -> InteractionData:
    """20 users, 30 items, 200 ratings: the catalog of the publish and going-live tests."""
    return synthetic(n_users=20, n_items=30, n_events=200, n_genres=3, seed=2)


def fill_archive(
    engine: Engine, data: InteractionData, ratings: Iterable[RatingEvent]
) -> IdRegistry:
    """Register ``data``'s ids, write its catalog and ``ratings`` into the archive."""
    ids = IdRegistry(engine)
    build(data, ids)
    events = [
        SourcedEvent(
            ItemEvent(item_id=i.item_id, title=i.title, genres=list(i.genres), year=i.year),
            "streamrec.items",
            0,
            n,
        )
        for n, i in enumerate(data.items.values())
    ]
    events += [SourcedEvent(rating, "r", 0, n) for n, rating in enumerate(ratings)]
    Archive(engine).write_batch(events)
    return ids


def tiny_data(seed: int = 1) -> InteractionData:
    """Small enough to train in about a second, structured enough to learn (genre clusters)."""
    return synthetic(
        n_users=120, n_items=150, n_events=4000, n_genres=4, seed=seed, cluster_affinity=0.9
    )


@pytest.fixture
def tiny_raw() -> InteractionData:
    return tiny_data()


@pytest.fixture
def tiny(registry: IdRegistry) -> Interactions:
    return build(tiny_data(), registry)


@pytest.fixture
def ml100k_path() -> Path:
    if not (ML100K / "ratings.csv").is_file():
        pytest.skip(f"MovieLens 100K not found at {ML100K}")
    return ML100K
