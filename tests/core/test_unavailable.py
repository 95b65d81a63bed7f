"""Redis and SQL connection/timeout errors become ServiceUnavailable naming the service; the
clients are built with the configured timeouts (issue 11, item 5)."""

from __future__ import annotations

from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from streamrec.core.db import create_db_engine
from streamrec.core.errors import ServiceUnavailable
from streamrec.core.pg_timeout import BoundedConnection
from streamrec.core.services import redis_client
from streamrec.core.settings import Settings
from streamrec.core.unavailable import service_unavailable


def test_redis_connection_and_timeout_errors_name_redis() -> None:
    for exc in (RedisConnectionError("Error 111 connecting"), RedisTimeoutError("Timeout")):
        found = service_unavailable(exc)
        assert isinstance(found, ServiceUnavailable)
        assert str(found).startswith("Redis is unavailable: ")


def test_sql_errors_name_sql_without_the_statement() -> None:
    refused = OperationalError(
        "SELECT secret FROM t WHERE x = %(x)s", {"x": "private"}, Exception("Connection refused")
    )
    found = service_unavailable(refused)
    assert str(found) == "SQL database is unavailable: Connection refused"
    pool = service_unavailable(PoolTimeoutError("QueuePool limit reached, timed out"))
    assert str(pool).startswith("SQL database is unavailable: QueuePool")


def test_other_errors_are_not_outages() -> None:
    duplicate = IntegrityError("INSERT", {}, Exception("duplicate key"))
    for exc in (ResponseError("WRONGTYPE"), duplicate, ValueError("x")):
        assert service_unavailable(exc) is None


def test_the_redis_client_uses_the_configured_timeouts_and_no_retries() -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        redis_connect_timeout_seconds=0.3,
        redis_timeout_seconds=0.4,
    )
    client = redis_client("redis://127.0.0.1:1/0", settings)
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["socket_connect_timeout"] == 0.3
    assert kwargs["socket_timeout"] == 0.4
    assert kwargs["retry"].get_retries() == 0


async def test_a_closed_redis_port_fails_at_once_as_unavailable() -> None:
    client = redis_client("redis://127.0.0.1:1/0", Settings(_env_file=None))  # type: ignore[call-arg]
    with pytest.raises(RedisConnectionError) as raised:
        await client.ping()
    assert "Redis" in str(service_unavailable(raised.value))
    await client.aclose()


def test_the_sql_engine_uses_the_configured_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = create_db_engine(
        "postgresql://postgres@127.0.0.1:1/nothing",
        connect_timeout_seconds=0.5,
        pool_timeout_seconds=0.7,
    )
    assert engine.pool.timeout() == 0.7
    captured: dict[str, object] = {}
    connect = BoundedConnection.connect

    def capture(*args: Any, **kwargs: Any) -> BoundedConnection:
        captured.update(kwargs)
        return connect(*args, **kwargs)

    # A PostgreSQL engine opens its connections through core.pg_timeout (its do_connect hook).
    monkeypatch.setattr(BoundedConnection, "connect", capture)
    with pytest.raises(OperationalError) as raised:  # nothing listens on port 1
        engine.connect()
    # libpq's floor is 2 s: asking for less gets 2, never 0 (which would mean no timeout).
    assert captured["connect_timeout"] == 2
    assert str(service_unavailable(raised.value)).startswith("SQL database is unavailable: ")
    engine.dispose()
