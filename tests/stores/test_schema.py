"""Migrations vs. the models: upgrade from empty, stamping of create_all databases, no drift.

Runs on SQLite always and on PostgreSQL when STREAMREC_TEST_DATABASE_URL is set, inside a
dedicated schema (test_migrations) so tables on ``public`` used by other tests are untouched.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text

from streamrec.core.db import create_db_engine
from streamrec.core.ids import IdKind, IdRegistry
from streamrec.schemas.api import VersionStatus
from streamrec.schemas.events import ImpressionEvent, PolicyLog, SourcedEvent
from streamrec.stores.catalog import Archive
from streamrec.stores.model_registry import ModelRegistry
from streamrec.stores.schema import (
    ADVISORY_LOCK_KEY,
    INITIAL_REVISION,
    INITIAL_TABLES,
    VERSION_TABLE,
    alembic_config,
    create_schema,
    drop_schema,
    metadata,
)
from tests.conftest import PG_TEST_URL, postgres_schema_engine

PG_SCHEMA = "test_migrations"


@pytest.fixture(params=["sqlite", "postgresql"] if PG_TEST_URL else ["sqlite"])
def empty_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    eng = (
        create_db_engine(f"sqlite:///{tmp_path}/schema.db")
        if request.param == "sqlite"
        else postgres_schema_engine(PG_SCHEMA)
    )
    yield eng
    eng.dispose()


def _head() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def _revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def _columns(engine: Engine) -> dict[str, set[str]]:
    insp = inspect(engine)
    return {t: {c["name"] for c in insp.get_columns(t)} for t in insp.get_table_names()}


def _diff(engine: Engine) -> list:
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), metadata)


def test_upgrade_from_empty_creates_every_table(empty_engine: Engine) -> None:
    create_schema(empty_engine)
    columns = _columns(empty_engine)
    assert columns.pop(VERSION_TABLE) == {"version_num"}
    assert columns == {name: set(t.columns.keys()) for name, t in metadata.tables.items()}
    assert _revision(empty_engine) == _head()


def test_migrated_database_matches_models(empty_engine: Engine) -> None:
    """``alembic check``: autogenerate against a migrated database finds nothing to do."""
    create_schema(empty_engine)
    assert _diff(empty_engine) == []


def _upgrade_to(engine: Engine, revision: str) -> None:
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), revision)


def test_create_all_database_is_stamped_then_upgraded(empty_engine: Engine) -> None:
    # How databases were built before migrations: create_all of the tables of that time (the
    # initial revision's), with no alembic_version.
    _upgrade_to(empty_engine, INITIAL_REVISION)
    with empty_engine.begin() as conn:
        conn.execute(text(f"DROP TABLE {VERSION_TABLE}"))
    IdRegistry(empty_engine).assign(IdKind.ITEM, ["kept"])
    create_schema(empty_engine)
    assert _revision(empty_engine) == _head()
    assert _diff(empty_engine) == []
    registry = IdRegistry(empty_engine)  # fresh cache: reads the table
    assert registry.lookup(IdKind.ITEM, ["kept"]) == {"kept": 0}
    assert registry.assign(IdKind.ITEM, ["new"]) == {"new": 1}


def test_database_at_0001_upgrades_to_0002_keeping_its_rows(empty_engine: Engine) -> None:
    _upgrade_to(empty_engine, "0001")
    assert "model_version" not in _columns(empty_engine)["interactions"]
    old_id = uuid.uuid4()
    # The table as revision 0001 has it (the model now has more columns).
    interactions_0001 = sa.table(
        "interactions",
        *(
            sa.column(name, type_)
            for name, type_ in [
                ("event_id", sa.Uuid()),
                ("type", sa.String()),
                ("user_id", sa.String()),
                ("ts", sa.DateTime(timezone=True)),
                ("request_id", sa.String()),
                ("model", sa.String()),
                ("variant", sa.String()),
                ("item_ids", sa.JSON()),
                ("topic", sa.String()),
                ("partition", sa.Integer()),
                ("offset", sa.BigInteger()),
            ]
        ),
    )
    with empty_engine.begin() as conn:
        conn.execute(
            interactions_0001.insert().values(
                event_id=old_id,
                type="impression",
                user_id="u1",
                ts=datetime(2026, 11, 1, tzinfo=UTC),
                request_id="r1",
                model="mf",
                variant="default",
                item_ids=["a", "b"],
                topic="streamrec.impressions",
                partition=2,
                offset=7,
            )
        )

    create_schema(empty_engine)

    assert _revision(empty_engine) == _head()
    assert {"model_version", "policy", "policy_version", "policy_log"} <= _columns(empty_engine)[
        "interactions"
    ]
    archive = Archive(empty_engine)
    kept = archive.impressions()
    assert [(e.event_id, e.user_id, e.request_id, e.item_ids, e.model) for e in kept] == [
        (old_id, "u1", "r1", ["a", "b"], "mf")
    ]
    assert (kept[0].model_version, kept[0].policy) == (None, None)
    # ... and the upgraded table takes the new fields.
    served = ImpressionEvent(
        user_id="u2",
        request_id="r2",
        item_ids=["c"],
        model="mf+dqn",
        model_version=3,
        policy=PolicyLog(policy_version=1, content_version=2, state=[0.5], propensities=[1.0]),
    )
    assert archive.write_batch([SourcedEvent(served, "streamrec.impressions", 0, 0)]) == 1
    assert archive.impressions(policy="dqn") == [served]
    assert archive.count_interactions("impression") == 2


def test_model_versions_at_0004_get_a_status_from_their_active_flag(
    empty_engine: Engine, tmp_path: Path
) -> None:
    _upgrade_to(empty_engine, "0004")
    versions_0004 = sa.table(
        "model_versions",
        *(
            sa.column(name, type_)
            for name, type_ in [
                ("name", sa.String()),
                ("version", sa.Integer()),
                ("created_at", sa.DateTime(timezone=True)),
                ("artifact_class", sa.String()),
                ("metrics", sa.JSON()),
                ("config", sa.JSON()),
                ("n_users", sa.Integer()),
                ("n_items", sa.Integer()),
                ("data_window", sa.JSON()),
                ("path", sa.String()),
                ("active", sa.Boolean()),
            ]
        ),
    )
    created = datetime(2026, 11, 1, tzinfo=UTC)
    with empty_engine.begin() as conn:
        conn.execute(
            versions_0004.insert(),
            [
                {
                    "name": "mf",
                    "version": version,
                    "created_at": created,
                    "artifact_class": "streamrec.trainer.models.mf:MF",
                    "metrics": {},
                    "config": {},
                    "n_users": 1,
                    "n_items": 1,
                    "data_window": {"events": version},
                    "path": f"mf/v{version}",
                    "active": version == 2,
                }
                for version in (1, 2, 3)
            ],
        )

    create_schema(empty_engine)

    assert _revision(empty_engine) == _head()
    kept = ModelRegistry(empty_engine, tmp_path / "models").list("mf")
    assert [(v.version, v.status, v.active) for v in kept] == [
        (1, VersionStatus.RETIRED, False),
        (2, VersionStatus.LIVE, True),
        (3, VersionStatus.RETIRED, False),
    ]
    assert [(v.data_window, v.activated_at, v.promotion) for v in kept] == [
        ({"events": n}, None, None) for n in (1, 2, 3)
    ]


def test_partial_create_all_database_is_refused(empty_engine: Engine) -> None:
    metadata.tables["items"].create(empty_engine)
    with pytest.raises(RuntimeError, match="cannot tell which revision"):
        create_schema(empty_engine)
    assert VERSION_TABLE not in inspect(empty_engine).get_table_names()


def test_create_schema_twice_is_a_no_op(empty_engine: Engine) -> None:
    create_schema(empty_engine)
    IdRegistry(empty_engine).assign(IdKind.USER, ["u1"])
    create_schema(empty_engine)
    assert _revision(empty_engine) == _head()
    assert IdRegistry(empty_engine).lookup(IdKind.USER, ["u1"]) == {"u1": 0}


@pytest.mark.skipif(not PG_TEST_URL, reason="the startup lock is PostgreSQL's only")
def test_startup_waits_for_another_process_migrating() -> None:
    engine = postgres_schema_engine(PG_SCHEMA)
    other = create_db_engine(PG_TEST_URL)  # stands in for a second process holding the lock
    try:
        with other.connect() as holder, ThreadPoolExecutor(max_workers=1) as pool:
            holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
            waiting = pool.submit(create_schema, engine)
            time.sleep(0.5)
            assert not waiting.done()
            holder.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_LOCK_KEY})
            waiting.result(timeout=30)
        assert _revision(engine) == _head()
    finally:
        other.dispose()
        engine.dispose()


def test_concurrent_startups_all_succeed(empty_engine: Engine) -> None:
    with ThreadPoolExecutor(max_workers=3) as pool:
        list(pool.map(lambda _: create_schema(empty_engine), range(3)))
    assert _revision(empty_engine) == _head()
    assert _diff(empty_engine) == []


def test_downgrade_to_base_and_back(empty_engine: Engine) -> None:
    create_schema(empty_engine)
    with empty_engine.begin() as conn:
        command.downgrade(alembic_config(conn), "base")
    assert set(inspect(empty_engine).get_table_names()) <= {VERSION_TABLE}
    create_schema(empty_engine)
    assert _diff(empty_engine) == []


def test_drop_schema_starts_from_scratch(empty_engine: Engine) -> None:
    create_schema(empty_engine)
    drop_schema(empty_engine)
    assert inspect(empty_engine).get_table_names() == []
    create_schema(empty_engine)
    assert set(inspect(empty_engine).get_table_names()) == INITIAL_TABLES | {
        VERSION_TABLE,
        "dlq_replays",  # revision 0004
        "training_jobs",  # revision 0006
    }


def test_initial_revision_is_the_root() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    assert script.get_bases() == [INITIAL_REVISION]
