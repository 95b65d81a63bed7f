"""``/readyz``: each dependency checked for real, each check bounded, the round cached.

A load balancer may poll readiness many times a second; one round of checks (Redis PING, SQL
``SELECT 1``, a Kafka metadata request, Qdrant's collection list) is reused for
``Settings.readiness_cache_seconds``. The clock is injected so tests move time instead of
sleeping.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from streamrec.api.runtime import Runtime
from streamrec.core.errors import ServiceUnavailable, StreamrecError

Check = Callable[[], Awaitable[None]]
OK = "ok"
# What a failing check may raise; anything else is a bug and propagates (500, logged).
_DOWN_ERRORS = (StreamrecError, RedisError, SQLAlchemyError, OSError, TimeoutError)


class Readiness:
    """Runs named checks concurrently, each within ``timeout``; ``"ok"`` or ``"down: why"``."""

    def __init__(
        self,
        checks: dict[str, Check],
        *,
        timeout: float,
        cache_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._checks = checks
        self._timeout = timeout
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._last: dict[str, str] | None = None
        self._checked_at = 0.0
        self._lock = asyncio.Lock()

    async def report(self) -> dict[str, str]:
        """Per dependency ``"ok"`` or ``"down: <reason>"``, at most ``cache_seconds`` old."""
        if self._fresh():
            return dict(self._last or {})
        async with self._lock:  # concurrent probes share one round instead of piling up
            if not self._fresh():
                names = list(self._checks)
                results = await asyncio.gather(*(self._run(self._checks[n]) for n in names))
                self._last = dict(zip(names, results, strict=True))
                self._checked_at = self._clock()
            return dict(self._last or {})

    def _fresh(self) -> bool:
        return self._last is not None and self._clock() - self._checked_at < self._cache_seconds

    async def _run(self, check: Check) -> str:
        try:
            async with asyncio.timeout(self._timeout):
                await check()
        except TimeoutError:
            return f"down: no answer within {self._timeout:g}s"
        except _DOWN_ERRORS as exc:
            return f"down: {exc or type(exc).__name__}"
        return OK


class _ThreadCheck:
    """A blocking check run in a worker thread. A timed-out thread cannot be stopped, so while
    it still runs no new one starts: a hung server costs one thread, not one per probe."""

    def __init__(self, name: str, blocking: Callable[[], object]) -> None:
        self._name = name
        self._blocking = blocking
        self._running: asyncio.Future[object] | None = None

    async def __call__(self) -> None:
        if self._running is not None and not self._running.done():
            raise ServiceUnavailable(f"the previous {self._name} check has not returned yet")
        # In the request's context, like asyncio.to_thread: its SQL timeout bounds the check,
        # so the thread returns even from a hung server (core.db.sql_timeout).
        context = contextvars.copy_context()
        self._running = asyncio.get_running_loop().run_in_executor(
            None, context.run, self._blocking
        )
        # shield: a timeout abandons the wait, while the thread's future stays observable.
        await asyncio.shield(self._running)


def readiness_for(runtime: Runtime, clock: Callable[[], float] = time.monotonic) -> Readiness:
    """The checks of a running API: Redis, SQL, Kafka, Qdrant."""
    settings = runtime.settings
    engine = runtime.services.engine

    async def redis() -> None:
        await runtime.services.redis.ping()

    def sql() -> None:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    async def kafka() -> None:
        await runtime.publisher.check(settings.readiness_timeout_seconds)

    return Readiness(
        {
            "redis": redis,
            "sql": _ThreadCheck("sql", sql),
            "kafka": kafka,
            "qdrant": _ThreadCheck("qdrant", runtime.vectors.list_collections),
        },
        timeout=settings.readiness_timeout_seconds,
        cache_seconds=settings.readiness_cache_seconds,
        clock=clock,
    )
