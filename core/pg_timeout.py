"""PostgreSQL round trips bounded by the context's SQL timeout (``core.db.sql_timeout``).

A PostgreSQL that accepts connections but never answers (a paused or hung server, a socket
black-holed after connect) makes psycopg wait on its socket forever: TCP keepalives and
``tcp_user_timeout`` do not fire while the peer's kernel still acknowledges, and a server-side
``statement_timeout`` needs a server that runs. So the bound is the client's own: every wait on
the socket (psycopg's ``Connection.wait``, the one place a sync connection waits for the server)
gets the context's timeout, and a round trip that outlives it closes the connection, which the
protocol leaves mid-message, and raises ``SqlTimeout``. The thread returns instead of hanging;
the pool drops that connection only.

Installed by ``core.db.create_db_engine`` on psycopg engines; it costs one ``ContextVar.get``
per round trip and does nothing outside a ``sql_timeout`` block (consumers, migrations, training
reads are not bounded: they may legitimately wait on locks or long scans).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.abc import RV, PQGen
from psycopg.pq import TransactionStatus
from sqlalchemy import Engine, event
from sqlalchemy.engine import Dialect, ExceptionContext
from sqlalchemy.pool import ConnectionPoolEntry

from streamrec.core.db import current_sql_timeout

# psycopg's own interval between checks of a waiting socket (connection._WAIT_INTERVAL).
_WAIT_INTERVAL = 0.1


class SqlTimeout(psycopg.OperationalError):
    """PostgreSQL did not answer a round trip within the context's SQL timeout."""


class BoundedConnection(psycopg.Connection[Any]):
    """A psycopg connection whose waits on the server end at the context's SQL timeout."""

    def wait(
        self, gen: PQGen[RV], interval: float = _WAIT_INTERVAL, timeout: float | None = None
    ) -> RV:
        bound = current_sql_timeout()
        if bound is None or (timeout is not None and timeout <= bound):
            return super().wait(gen, interval, timeout)
        try:
            return super().wait(gen, interval, bound)
        except psycopg.OperationalError as exc:
            if self.pgconn.transaction_status != TransactionStatus.ACTIVE:
                raise  # the server answered (with an error) or the connection broke: not ours
            # Still waiting for the answer, so the protocol is mid-message: the connection can
            # never be used again (psycopg does the same when a cancelled query does not end).
            self.pgconn.finish()
            raise SqlTimeout(
                f"no answer from PostgreSQL within {bound:g}s (STREAMREC_SQL_TIMEOUT_SECONDS)"
            ) from exc


def _connect(
    _dialect: Dialect, _record: ConnectionPoolEntry, cargs: Any, cparams: Any
) -> BoundedConnection:
    return BoundedConnection.connect(*cargs, **cparams)


def _on_error(context: ExceptionContext) -> None:
    if not isinstance(context.original_exception, SqlTimeout):
        return
    # One silent round trip says nothing of the other pooled connections: each is pinged (and
    # bounded) at its next checkout instead of all being dropped and reopened.
    context.invalidate_pool_on_disconnect = False
    if context.is_pre_ping:
        # The pool would open a new connection to replace this one at once, waiting up to the
        # connect timeout (2 s or more) on a server that just did not answer: fail now instead
        # (the pool still discards this connection).
        context.is_disconnect = False


def install(engine: Engine) -> None:
    """Make ``engine`` open ``BoundedConnection``s and fail fast on their timeouts."""
    event.listen(engine, "do_connect", _connect)
    event.listen(engine, "handle_error", _on_error)
