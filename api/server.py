"""Serving the app with uvicorn so that a start-up that fails is one line, not a traceback.

uvicorn runs an app's lifespan in a task of its own: an error there comes out as the traceback
Starlette formats into ASGI's ``lifespan.startup.failed`` message, then uvicorn's own
"Application startup failed" line and exit status 3; the error never reaches the command. Here
the command's process enters the app's lifespan itself, hands the started app to uvicorn
(``lifespan="off"``), and leaves the lifespan once uvicorn has drained its connections (the
order uvicorn keeps). A start-up error is then an exception at the program's edge (``api.cli``,
``apps.up``): ``StartupFailed``, one line naming the service, its address and what to do.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn
from aiokafka.errors import KafkaConnectionError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from streamrec.core.errors import StreamrecError
from streamrec.core.settings import Settings
from streamrec.core.unavailable import REDIS_ERRORS, SQL_ERRORS
from streamrec.stores.factory import open_stores

if TYPE_CHECKING:
    from fastapi import FastAPI
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StartupFailed(Exception):
    """The app did not start; the message is one line saying why and what to do."""


WORKER_HEADER = "x-streamrec-worker"


class WorkerPidHeader:
    """Adds ``X-Streamrec-Worker: <pid>`` to every HTTP response: which worker process of
    several on one port answered (``up --api-workers``, ``serve --workers``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._pid = str(os.getpid()).encode()  # a worker is a process of its own: read once

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_pid(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", ()),
                    (WORKER_HEADER.encode(), self._pid),
                ]
            await send(message)

        await self.app(scope, receive, send_with_pid)


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` with ``SO_REUSEPORT``: several processes each bind one
    and the kernel spreads incoming connections over them (Linux hashes each connection to one
    socket, and a closed one's share goes to the others)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def run(
    app: FastAPI,
    settings: Settings,
    *,
    host: str,
    port: int,
    sockets: list[socket.socket] | None = None,
) -> None:
    """Start ``app`` (its lifespan), then serve it on ``host:port`` (or on ``sockets``, bound
    already) until SIGINT/SIGTERM. Every response names the process that answered
    (``WorkerPidHeader``).

    Raises ``StartupFailed`` when a service did not answer or a setting cannot work while it
    starts (with nothing served and whatever it had opened closed again); any other error
    propagates as it is, with its traceback.
    """
    config = uvicorn.Config(
        WorkerPidHeader(app),
        host=host,
        port=port,
        lifespan="off",  # entered here, around the server
        log_config=None,  # uvicorn's records go through core.logs like every other
        log_level="warning",
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_seconds),
    )
    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        runner.run(_start_and_serve(app, settings, config, sockets))


async def _start_and_serve(
    app: FastAPI,
    settings: Settings,
    config: uvicorn.Config,
    sockets: list[socket.socket] | None = None,
) -> None:
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    starting = True

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        # While the app starts, SIGINT/SIGTERM stop the start-up (what it opened is closed).
        # uvicorn's own handlers replace this one while it serves, and it raises the signal
        # that stopped it again when it returns: the app's shutdown runs then, and goes on.
        if starting and task is not None:
            task.cancel()
            loop.call_soon_threadsafe(lambda: None)  # wake the loop, as asyncio.Runner does

    previous = {signum: signal.signal(signum, on_signal) for signum in _STOP_SIGNALS}
    try:
        async with AsyncExitStack() as stack:
            async with _reported(settings):
                await stack.enter_async_context(app.router.lifespan_context(app))
            starting = False
            await uvicorn.Server(config).serve(sockets=sockets)
    except asyncio.CancelledError:
        if not starting or task is None or task.cancelling() == 0:
            raise
        task.uncancel()  # stopped by a signal before it served: a normal end
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def check_services(settings: Settings) -> None:
    """Open every connection and store once and close them again, as the app's start-up
    does: ``StartupFailed`` if one does not answer (before starting worker processes, which
    would each report it)."""

    async def open_and_close() -> None:
        async with _reported(settings), open_stores(settings):
            pass

    asyncio.run(open_and_close())


@asynccontextmanager
async def _reported(settings: Settings) -> AsyncIterator[None]:
    """A start-up error that ``describe_startup_error`` can put in one line as
    ``StartupFailed``; any other (a bug: its traceback is what helps) as it is."""
    try:
        yield
    except Exception as exc:
        line = describe_startup_error(exc, settings)
        if line is None:
            raise
        raise StartupFailed(line) from exc


def describe_startup_error(exc: BaseException, settings: Settings) -> str | None:
    """One line for an error raised while starting: the service that did not answer, its
    address, and the setting that points at it; a domain error's own message otherwise;
    ``None`` for anything else."""
    for cause in _causes(exc):
        if isinstance(cause, REDIS_ERRORS):
            where = _address(settings.redis_url, settings.embedded_redis)
            return _unreachable("Redis", where, "STREAMREC_REDIS_URL", cause)
        if isinstance(cause, SQL_ERRORS):
            reason = cause.orig if isinstance(cause, DBAPIError) and cause.orig else cause
            where = _address(settings.database_url, embedded=False)
            return _unreachable("The SQL database", where, "STREAMREC_DATABASE_URL", reason)
        if isinstance(cause, KafkaConnectionError):
            where = _address(settings.kafka_bootstrap, settings.embedded_kafka)
            return _unreachable("Kafka", where, "STREAMREC_KAFKA_BOOTSTRAP", cause)
    return " ".join(str(exc).split()) if isinstance(exc, StreamrecError) else None


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: BaseException | None = exc
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


def _unreachable(service: str, where: str, setting: str, reason: BaseException) -> str:
    text = " ".join(str(reason).split()) or type(reason).__name__  # one line, whatever it says
    return (
        f"{service} at {where} did not answer ({text}): start it there, "
        f"or set {setting} to one that runs"
    )


def _address(url: str, embedded: bool) -> str:
    if embedded:
        return "the embedded (in-process) server"
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url  # not a URL (host:port lists of Kafka): nothing secret in it
