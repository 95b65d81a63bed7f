"""Which client-library errors mean "a backing service is down", as the domain error.

Redis and SQLAlchemy raise their own connection and timeout errors from deep inside any store
call; ``service_unavailable`` turns one into ``ServiceUnavailable`` naming the service, so the
API can answer 503 (``api.errors``) and callers can retry, without every store wrapping every
call. Anything else (a bug, a wrong query) is not translated: it stays a 500 with its trace in
the log.
"""

from __future__ import annotations

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from streamrec.core.errors import ServiceUnavailable

REDIS_ERRORS: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError)
# OperationalError is what psycopg and sqlite3 raise when the server cannot be reached or
# stops answering; the pool's TimeoutError when no connection freed up in time.
SQL_ERRORS: tuple[type[Exception], ...] = (
    OperationalError,
    InterfaceError,
    DisconnectionError,
    PoolTimeoutError,
)
SERVICE_ERRORS: tuple[type[Exception], ...] = REDIS_ERRORS + SQL_ERRORS


def _sql_reason(exc: Exception) -> str:
    # str() of a DBAPIError carries the statement and its parameters: user data, not for a
    # client. The driver's own message says why (refused, timeout, server closed).
    source = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    text = str(source).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def service_unavailable(exc: BaseException) -> ServiceUnavailable | None:
    """The ``ServiceUnavailable`` for a Redis or SQL connection/timeout error, else ``None``."""
    if isinstance(exc, REDIS_ERRORS):
        return ServiceUnavailable(f"Redis is unavailable: {exc}")
    if isinstance(exc, SQL_ERRORS):
        return ServiceUnavailable(f"SQL database is unavailable: {_sql_reason(exc)}")
    return None
