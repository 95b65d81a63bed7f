"""The FastAPI app factory. Connections and the publisher are created in the lifespan and
handed to routes through ``app.state.runtime`` (see ``api.deps``). A program that runs more in
the same process (``apps.up`` runs the consumer groups beside the API) passes ``in_process``
hooks: the API itself never imports a consumer."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractContextManager, AsyncExitStack, asynccontextmanager
from functools import partial

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from streamrec.api.docs import OPENAPI_TAGS, install_docs, operation_id
from streamrec.api.errors import install_error_handlers
from streamrec.api.limits import BodySizeLimit, SqlTimeLimit
from streamrec.api.readiness import readiness_for
from streamrec.api.routers import (
    events,
    experiments,
    items,
    models,
    ops,
    ops_page,
    rl,
    training,
    users,
)
from streamrec.api.runtime import Runtime
from streamrec.core.lag import LagReader
from streamrec.core.metrics import Metrics
from streamrec.core.settings import Settings
from streamrec.producers.publisher import EventPublisher
from streamrec.stores.factory import open_stores

log = logging.getLogger(__name__)

StartupHook = Callable[[Runtime], Awaitable[None]]


class Shutdown:
    """Where an in-process hook registers how to stop what it started: in reverse order of
    start, each step within what is left of one shared budget."""

    def __init__(self, stack: AsyncExitStack, budget: ShutdownBudget) -> None:
        self._stack = stack
        self._budget = budget

    def on_exit(self, what: str, stop: Callable[[], Awaitable[None]]) -> None:
        self._stack.push_async_callback(_bounded, self._budget, what, stop)

    def enter(self, context: AbstractContextManager[object]) -> None:
        self._stack.enter_context(context)


# Runs more in this process once the runtime exists (before the app serves requests).
InProcessHook = Callable[[Runtime, Shutdown], Awaitable[None]]


def create_app(
    settings: Settings | None = None,
    *,
    in_process: Sequence[InProcessHook] = (),
    on_started: StartupHook | None = None,
    attach: bool = False,
) -> FastAPI:
    """Build the API. ``in_process`` hooks start more in this process (``apps.up``: the
    consumer groups) once the runtime exists; ``on_started`` runs once everything is up.
    ``attach``: use the embedded services of a running ``streamrec up`` (its API workers)
    rather than starting them here."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.require_api_keys()
        budget = ShutdownBudget(settings.shutdown_timeout_seconds)
        async with AsyncExitStack() as stack:
            stores = await stack.enter_async_context(open_stores(settings, attach=attach))
            services = stores.services
            metrics = Metrics()
            publisher = EventPublisher(
                services.kafka_bootstrap,
                metrics=metrics,
                client_id="streamrec-api",
                timeout_seconds=settings.publish_timeout_seconds,
            )
            await publisher.start()
            stack.push_async_callback(_bounded, budget, "the Kafka publisher", publisher.stop)
            runtime = Runtime.build(stores, metrics, publisher)
            shutdown = Shutdown(stack, budget)
            for hook in in_process:
                await hook(runtime, shutdown)
            if services.embedded:
                stack.enter_context(services.embedded_addresses().announced(settings.var_dir))
            app.state.runtime = runtime
            app.state.readiness = readiness_for(runtime)
            # One cached lag reader per process, refreshed in the background (core/lag.py).
            lag = app.state.lag = LagReader.for_settings(services.kafka_bootstrap, settings)
            lag.start_background()
            metrics.export_lag(lambda: lag.latest)
            stack.push_async_callback(_bounded, budget, "the lag reader", lag.close)
            stack.push_async_callback(
                _bounded, budget, "background tasks", partial(_drain, runtime)
            )
            if on_started is not None:
                await on_started(runtime)
            # What start-up built (models, connections, caches) lives as long as the process:
            # moving it out of the collector's generations keeps full collections from
            # traversing it, which otherwise stalled requests for hundreds of milliseconds.
            gc.freeze()
            stack.callback(gc.unfreeze)  # a process that builds apps again (tests) frees them
            yield

    app = FastAPI(
        title="streamrec",
        version="0.1.0",
        summary="Real-time recommendations from a Kafka event log.",
        lifespan=lifespan,
        openapi_tags=OPENAPI_TAGS,
        generate_unique_id_function=operation_id,
        docs_url=None,  # install_docs serves /docs and /redoc from local files, not a CDN
        redoc_url=None,
    )
    install_docs(app)
    install_error_handlers(app)
    app.include_router(events.router)
    app.include_router(users.router)
    app.include_router(items.router)
    app.include_router(rl.router)
    app.include_router(ops.router)
    app.include_router(models.router)
    app.include_router(training.router)
    app.include_router(experiments.router)
    app.include_router(ops_page.router)

    # Added last, so it runs outermost of the two: an oversized body is refused before
    # anything else touches the request.
    app.add_middleware(SqlTimeLimit, seconds=settings.sql_timeout_seconds)
    app.add_middleware(RequestTimer)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    return app


class RequestTimer:
    """Request durations per route and status, as a plain ASGI middleware: Starlette's
    ``@app.middleware("http")`` wraps every request and response in extra objects and a task,
    which costs more than the measurement itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # if the app raises before it answers

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            runtime = getattr(scope["app"].state, "runtime", None)
            if runtime is not None:
                path = getattr(scope.get("route"), "path", "unmatched")  # set by the router
                runtime.metrics.request_seconds.labels(path, str(status)).observe(
                    time.perf_counter() - started
                )


async def _drain(runtime: Runtime) -> None:
    """Let background tasks (a replay `up` started) finish before the publisher stops."""
    if runtime.background:
        await asyncio.wait(runtime.background)


class ShutdownBudget:
    """One deadline shared by every shutdown step, set when the first step starts, so the
    whole shutdown stays within ``Settings.shutdown_timeout_seconds`` whatever is down."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._seconds = seconds
        self._clock = clock
        self._deadline: float | None = None

    def remaining(self) -> float:
        if self._deadline is None:
            self._deadline = self._clock() + self._seconds
        # Every step gets a moment: one that needs no service (a local flush) still completes.
        return max(self._deadline - self._clock(), 0.1)


async def _bounded(budget: ShutdownBudget, what: str, stop: Callable[[], Awaitable[None]]) -> None:
    """Run one shutdown step within what is left of the budget; abandon it (logged) beyond.
    Stopping a client whose service is down otherwise waits for its request timeouts (the
    consumers' leave-group and commit took 40 s with Kafka down)."""
    deadline = asyncio.timeout(budget.remaining())
    try:
        async with deadline:
            await stop()
    except TimeoutError:
        if not deadline.expired():
            raise
        log.warning("stopping %s did not finish within the shutdown budget; abandoned", what)
