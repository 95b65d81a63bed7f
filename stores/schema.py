"""Bring the SQL schema to the latest Alembic revision (stores/migrations).

Every table module registers on ``core.db.Base.metadata``; the migrations are the source of
truth for the database, and tests/stores/test_schema.py checks the two agree.
"""

from __future__ import annotations

import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, inspect, text

from streamrec.core import ids
from streamrec.core.db import Base
from streamrec.stores import catalog, dlq_replays, model_registry, training_jobs

_TABLE_MODULES = (ids, catalog, dlq_replays, model_registry, training_jobs)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "alembic_version"
# Revision 0001 is exactly what create_all built before migrations existed.
INITIAL_REVISION = "0001"
INITIAL_TABLES = frozenset({"id_registry", "items", "users", "interactions", "model_versions"})
# Database-wide key (other keys: core.ids uses 7_410_001/2) serialising concurrent startups.
ADVISORY_LOCK_KEY = 7_410_100
# alembic.context/op are module-level proxies: two threads running commands at once clash.
_THREAD_LOCK = threading.Lock()

metadata = Base.metadata


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config for the packaged migrations, optionally bound to ``connection``."""
    config = Config()
    # Config values go through configparser interpolation: a literal % must be doubled.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def create_schema(engine: Engine) -> None:
    """Upgrade the database to the latest revision (idempotent; safe from several processes).

    A database built by the old ``create_all`` (our tables, no alembic_version) is stamped at
    the initial revision rather than re-created, then upgraded like any other.
    """
    # One transaction: on PostgreSQL DDL is transactional and the xact lock lasts until commit,
    # so a second process waits, then finds the database at head and does nothing.
    with _THREAD_LOCK, engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
        config = alembic_config(conn)
        if _is_legacy(conn):
            command.stamp(config, INITIAL_REVISION)
        command.upgrade(config, "head")


def _is_legacy(conn: Connection) -> bool:
    tables = set(inspect(conn).get_table_names())
    if VERSION_TABLE in tables or not tables & INITIAL_TABLES:
        return False
    missing = INITIAL_TABLES - tables
    if missing:
        # Stamping would claim tables that are not there; a person has to look at this one.
        raise RuntimeError(
            f"database has some streamrec tables but no {VERSION_TABLE} and lacks "
            f"{sorted(missing)}: cannot tell which revision it is at"
        )
    return True


def drop_schema(engine: Engine) -> None:
    """Drop every table and the Alembic version table (tests: start again from empty)."""
    with engine.begin() as conn:
        metadata.drop_all(conn)
        conn.execute(text(f"DROP TABLE IF EXISTS {VERSION_TABLE}"))
