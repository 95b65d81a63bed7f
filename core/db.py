"""SQLAlchemy 2 engine creation and the declarative base shared by every table.

PostgreSQL (psycopg 3) in production, a SQLite file when embedded. Work is synchronous;
async callers hand it to a thread (``asyncio.to_thread``) so the event loop never blocks.

``sql_timeout(seconds)`` bounds every PostgreSQL round trip made in its context (the API sets it
around each request): a server that accepted the connection but never answers fails the call
instead of hanging its thread forever (``core.pg_timeout``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine, MetaData, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def normalise_database_url(url: str) -> str:
    """Use psycopg 3 for plain ``postgresql://`` URLs (SQLAlchemy would pick psycopg2)."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.removeprefix("postgres://")
    return url


# Read by each PostgreSQL connection at every wait on its socket; a ContextVar, so it follows a
# request into the threads ``asyncio.to_thread`` starts for it and no other work.
_SQL_TIMEOUT: ContextVar[float | None] = ContextVar("streamrec_sql_timeout", default=None)


@contextmanager
def sql_timeout(seconds: float | None) -> Iterator[None]:
    """Within the block (and threads started from it with ``asyncio.to_thread``), each
    PostgreSQL round trip (query, commit, rollback, pool ping) that gets no answer within
    ``seconds`` fails with ``core.pg_timeout.SqlTimeout``, an ``OperationalError`` (so a 503 in
    the API), and its connection is dropped. ``None`` lifts the bound. Opening a connection is
    bounded by the engine's connect timeout instead (libpq's floor: 2 s). SQLite is local and
    has no such bound."""
    token = _SQL_TIMEOUT.set(seconds)
    try:
        yield
    finally:
        _SQL_TIMEOUT.reset(token)


def current_sql_timeout() -> float | None:
    """The bound ``sql_timeout`` set for this context, if any."""
    return _SQL_TIMEOUT.get()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the API read while consumers write; NORMAL sync is durable enough for a cache of
    # the log (the log is the source of truth and can be replayed).
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def _json_text(value: Any) -> str:
    # Integer keys become strings, as json.dumps makes them (offsets keyed by partition).
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def create_db_engine(
    url: str,
    *,
    connect_timeout_seconds: float | None = None,
    pool_timeout_seconds: float | None = None,
) -> Engine:
    """An engine for ``url``. The timeouts (``Settings.sql_*``; None: the drivers' defaults)
    bound how long a call waits for a new connection and for a free pooled one, so a server
    that is down fails the call (``OperationalError``, pool ``TimeoutError``) instead of
    hanging it."""
    url = normalise_database_url(url)
    # JSON columns are written for every archived event (an impression's items, a policy log
    # of ~200 floats): orjson encodes a policy log in 4 µs where json.dumps takes 50 (measured).
    engine_options: dict[str, Any] = {"json_serializer": _json_text}
    if pool_timeout_seconds is not None:
        engine_options["pool_timeout"] = pool_timeout_seconds
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False}, **engine_options)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args: dict[str, Any] = {}
    if connect_timeout_seconds is not None and url.startswith("postgresql"):
        # libpq takes whole seconds and raises anything below 2 to 2.
        connect_args["connect_timeout"] = max(2, math.ceil(connect_timeout_seconds))
    engine = create_engine(
        url,
        pool_pre_ping=True,
        pool_size=5,
        max_overflow=10,
        connect_args=connect_args,
        **engine_options,
    )
    if make_url(url).get_driver_name() == "psycopg":
        # Deferred: psycopg costs 0.15-0.25 s of start-up, which a process on SQLite (the
        # embedded default: `up`, a restarted consumer) need not pay.
        from streamrec.core.pg_timeout import install

        install(engine)
    return engine
