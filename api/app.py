"""The FastAPI app factory. Connections, publisher and (optionally) consumers are created in
the lifespan and handed to routes through ``app.state.runtime`` (see ``api.deps``)."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import install_error_handlers
from api.routers import events, experiments, items, models, ops, ops_page, rl, training, users
from api.runtime import Runtime
from consumers.app import DEFAULT_GROUPS, build_consumer_broker, feature_store
from core.embedded import EmbeddedAddresses
from core.metrics import Metrics
from core.services import open_services
from core.settings import Settings
from producers.publisher import EventPublisher
from stores.catalog import Archive
from stores.schema import create_schema
from stores.vectors import open_vector_store

log = logging.getLogger(__name__)

StartupHook = Callable[[Runtime], Awaitable[None]]


def create_app(
    settings: Settings | None = None,
    *,
    run_consumers: bool = False,
    on_started: StartupHook | None = None,
) -> FastAPI:
    """Build the API. ``run_consumers=True`` also runs the consumer groups in this process
    (the embedded deployment, ``streamrec up``); ``on_started`` runs once everything is up."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.require_api_keys()
        async with AsyncExitStack() as stack:
            services = await stack.enter_async_context(open_services(settings))
            await asyncio.to_thread(create_schema, services.engine)
            metrics = Metrics()
            publisher = EventPublisher(
                services.kafka_bootstrap, metrics=metrics, client_id="streamrec-api"
            )
            await publisher.start()
            stack.push_async_callback(publisher.stop)
            # Qdrant Edge (embedded) opens its shards lazily; a server is reached over HTTP.
            vectors = await asyncio.to_thread(open_vector_store, settings)
            stack.callback(vectors.close)
            runtime = Runtime(
                settings=settings,
                services=services,
                metrics=metrics,
                publisher=publisher,
                features=feature_store(services),
                archive=Archive(services.engine),
                vectors=vectors,
            )
            if run_consumers:
                runtime.consumers = build_consumer_broker(
                    services, metrics, DEFAULT_GROUPS, vectors
                )
                await runtime.consumers.start()
                stack.push_async_callback(runtime.consumers.stop)
            if services.embedded:
                EmbeddedAddresses(
                    kafka_bootstrap=services.kafka_bootstrap[0],
                    redis_url=services.redis_url,
                    pid=os.getpid(),
                ).write(settings.var_dir)
                stack.callback(EmbeddedAddresses.remove, settings.var_dir)
            app.state.runtime = runtime
            stack.push_async_callback(_drain, runtime)
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
    )
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

    app.add_middleware(RequestTimer)
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
    """Let in-flight background publishes (impressions) finish before the publisher stops."""
    if runtime.background:
        await asyncio.wait(runtime.background, timeout=5)
