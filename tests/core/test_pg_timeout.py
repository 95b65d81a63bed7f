"""Within ``core.db.sql_timeout`` a PostgreSQL round trip that gets no answer fails and drops its
connection, instead of hanging its thread (issue 11, item 5): a slow statement on the real
server, and a server that stops answering behind a proxy the test pauses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from streamrec.core.db import create_db_engine, normalise_database_url, sql_timeout
from streamrec.core.pg_timeout import SqlTimeout
from streamrec.core.unavailable import service_unavailable
from tests.conftest import PG_TEST_URL
from tests.outages import TcpProxy

pytestmark = pytest.mark.skipif(
    not PG_TEST_URL.startswith("postgres"),
    reason="needs STREAMREC_TEST_DATABASE_URL (PostgreSQL): the bound is psycopg's",
)


@pytest.fixture
def pg() -> Iterator[Engine]:
    engine = create_db_engine(PG_TEST_URL, connect_timeout_seconds=2)
    yield engine
    engine.dispose()


def _scalar(engine: Engine, sql: str) -> object:
    with engine.connect() as conn:
        return conn.execute(text(sql)).scalar()


def test_a_statement_without_an_answer_in_time_fails_and_drops_its_connection(
    pg: Engine,
) -> None:
    assert _scalar(pg, "SELECT 1") == 1  # a pooled connection, pinged at the next checkout
    with sql_timeout(0.3), pytest.raises(OperationalError) as raised:
        _scalar(pg, "SELECT pg_sleep(5)")
    assert isinstance(raised.value.orig, SqlTimeout)
    assert raised.value.connection_invalidated
    assert str(service_unavailable(raised.value)) == (
        "SQL database is unavailable: no answer from PostgreSQL within 0.3s "
        "(STREAMREC_SQL_TIMEOUT_SECONDS)"
    )
    assert _scalar(pg, "SELECT 2") == 2  # a new connection; no bound outside the block


def test_only_the_block_is_bounded(pg: Engine) -> None:
    assert _scalar(pg, "SELECT 1 FROM pg_sleep(0.5)") == 1  # no bound: it completes
    with sql_timeout(5.0):
        assert _scalar(pg, "SELECT 1 FROM pg_sleep(0.3)") == 1  # within the bound
    with sql_timeout(0.1), sql_timeout(None):
        assert _scalar(pg, "SELECT 1 FROM pg_sleep(0.3)") == 1  # lifted again inside


async def test_the_bound_follows_the_work_into_its_thread(pg: Engine) -> None:
    with sql_timeout(0.3), pytest.raises(OperationalError) as raised:
        await asyncio.to_thread(_scalar, pg, "SELECT pg_sleep(5)")
    assert isinstance(raised.value.orig, SqlTimeout)


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    url = make_url(normalise_database_url(PG_TEST_URL))
    server = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    await server.start()
    yield server
    await server.close()


async def test_a_hung_server_fails_the_pool_ping_without_waiting_to_reconnect(
    proxy: TcpProxy,
) -> None:
    url = make_url(normalise_database_url(PG_TEST_URL)).set(host="127.0.0.1", port=proxy.port)
    engine = create_db_engine(url.render_as_string(hide_password=False), connect_timeout_seconds=2)
    opened: list[int] = []
    event.listen(engine, "connect", lambda *_: opened.append(1))  # each new DBAPI connection
    try:
        assert await asyncio.to_thread(_scalar, engine, "SELECT 1") == 1
        proxy.pause()  # the server accepted us and now answers nothing
        try:
            with sql_timeout(0.3), pytest.raises(OperationalError) as raised:
                await asyncio.to_thread(_scalar, engine, "SELECT 1")
        finally:
            proxy.resume()
        # The pool's ping ran out of time, and no new connection was tried (that would wait
        # the connect timeout and say so).
        assert isinstance(raised.value.orig, SqlTimeout), raised.value
        assert opened == [1]
        # The silent connection was discarded: the next call opens a new one and works.
        assert await asyncio.to_thread(_scalar, engine, "SELECT 3") == 3
        assert opened == [1, 1]
    finally:
        engine.dispose()
