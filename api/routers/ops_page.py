"""``/ops``: a live page for operators, and the JSON it reads beside the other endpoints.

The page is ``api/static/ops.html`` and its script ``api/static/ops.js`` (no library, nothing
fetched but this server's own endpoints, so it works offline; a Content-Security-Policy says
so to the browser). It polls every ``POLL_MS``: ``/v1/ops/lag`` (status, lag, and throughput
derived from consecutive readings), ``/v1/ops/stats`` (freshness over the recent window),
``/v1/ops/dead-letters`` (counts; the newest letters with the admin key), ``/v1/models`` and
``/v1/experiments``.

``/v1/ops/stats`` reports the whole system, whichever API worker answers: every process with
a ``Metrics`` (API workers, ``streamrec consume``, ``streamrec up``'s consumers process) writes
its counters to Redis every ``SAMPLE_SECONDS`` (``stores/ops_stats.py``; this router's
lifespan does it for the API process), and the answer sums those of every live process, this
one's read live. Its ``recent_*`` figures are, per process, the difference between its
counters and a snapshot of them at most ``RECENT_SECONDS`` (plus one sampling step) old, taken
by a sampler every ``SAMPLE_SECONDS``: freshness of the last minute, not since start. Each
process has its own window (``SystemWindow``), so a restarted process, whose counters start
from zero, is a new series and never makes a difference negative.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import redis.asyncio as aioredis
from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, Response

from streamrec.api.deps import AdminKey
from streamrec.api.responses import error_responses
from streamrec.core.dead_letters import DeadLetterTail
from streamrec.core.unavailable import REDIS_ERRORS
from streamrec.schemas.api import DeadLetterCounts, GroupThroughput, OpsStats, RecentDeadLetters
from streamrec.stores.ops_stats import (
    SAMPLE_SECONDS,
    Buckets,
    OpsStatsWriter,
    ProcessCounters,
    publishing_ops_stats,
    read_process_counters,
)

log = logging.getLogger(__name__)

POLL_MS = 2000
RECENT_SECONDS = 60.0
DEAD_LETTERS_KEPT = 50
STATIC = Path(__file__).resolve().parents[1] / "static"
# Only this server's own script and endpoints: the browser refuses anything else.
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def histogram_quantile(q: float, buckets: Buckets) -> float | None:
    """The q-quantile of a cumulative histogram, interpolated linearly inside its bucket (as
    Prometheus' ``histogram_quantile``); None when it is empty."""
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if math.isinf(upper):
                return lower  # beyond the last finite bound: report that bound
            return lower + (upper - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = upper, count
    return lower


def _minus(now: Buckets, then: Buckets | None) -> Buckets:
    """What a cumulative histogram gained since ``then`` (None: it did not exist then)."""
    before = dict(then or [])
    return [(upper, count - before.get(upper, 0.0)) for upper, count in now]


def _add(into: dict[float, float], buckets: Buckets) -> None:
    for upper, count in buckets:
        into[upper] = into.get(upper, 0.0) + count


@dataclass
class RecentWindow:
    """One process's snapshots over the last ``seconds``, plus the newest older one: it anchors
    the window, so that once the process has run that long the recent figures span at least
    ``seconds``."""

    seconds: float = RECENT_SECONDS
    snapshots: deque[ProcessCounters] = field(default_factory=deque)

    def add(self, snapshot: ProcessCounters) -> None:
        self.snapshots.append(snapshot)
        horizon = snapshot.at - self.seconds
        while len(self.snapshots) > 1 and self.snapshots[1].at <= horizon:
            self.snapshots.popleft()

    def start(self) -> ProcessCounters | None:
        """The snapshot the recent figures start from (None before any)."""
        return self.snapshots[0] if self.snapshots else None

    def last(self) -> ProcessCounters | None:
        return self.snapshots[-1] if self.snapshots else None


@dataclass
class SystemWindow:
    """A ``RecentWindow`` per process (by its name), each on that process's own clock."""

    seconds: float = RECENT_SECONDS
    windows: dict[str, RecentWindow] = field(default_factory=dict)

    def add(self, processes: Iterable[ProcessCounters]) -> None:
        """One sample of every live process; the windows of processes gone are dropped."""
        live: dict[str, RecentWindow] = {}
        for counters in processes:
            window = self.windows.get(counters.process)
            last = window.last() if window is not None else None
            if window is None or last is None or counters.went_back_from(last):
                # New, or started again under the same name: a new series.
                window = RecentWindow(self.seconds)
                if (anchor := self._first_start(counters)) is not None:
                    window.add(anchor)
            window.add(counters)
            live[counters.process] = window
        self.windows = live

    def start_of(self, counters: ProcessCounters) -> ProcessCounters | None:
        """What ``counters``' recent figures start from (None: nothing yet)."""
        window = self.windows.get(counters.process)
        start = window.start() if window is not None else None
        if start is None or counters.went_back_from(start):
            return self._first_start(counters)
        return start

    def _first_start(self, counters: ProcessCounters) -> ProcessCounters | None:
        """A process not sampled before: its counters were zero when it started, so that
        anchors its window if it started within it; otherwise nothing does until sampled."""
        if counters.at - counters.started_at <= self.seconds:
            return counters.at_start()
        return None

    def stats(self, processes: Sequence[ProcessCounters]) -> OpsStats:
        return ops_stats_of([(counters, self.start_of(counters)) for counters in processes])


def ops_stats_of(pairs: Sequence[tuple[ProcessCounters, ProcessCounters | None]]) -> OpsStats:
    """The sums over processes, each given as (``now``, ``then``): since start (``now``), and
    over the recent window (``now`` - ``then``; nothing recent where ``then`` is None)."""
    events: dict[str, int] = defaultdict(int)
    recent_events: dict[str, int] = defaultdict(int)
    totals: dict[str, dict[float, float]] = defaultdict(dict)
    recents: dict[str, dict[float, float]] = defaultdict(dict)
    published: dict[str, int] = defaultdict(int)
    window = 0.0
    for now, then in pairs:
        for topic, count in now.published.items():
            published[topic] += count
        for group, count in now.consumed.items():
            events[group] += count
            if then is not None:
                recent_events[group] += count - then.consumed.get(group, 0)
        for group, buckets in now.freshness.items():
            _add(totals[group], buckets)
            if then is not None:
                _add(recents[group], _minus(buckets, then.freshness.get(group)))
        if then is not None:
            window = max(window, now.at - then.at)
    groups = []
    for group in sorted(events.keys() | totals.keys()):
        total = sorted(totals.get(group, {}).items())
        recent = sorted(recents.get(group, {}).items())
        groups.append(
            GroupThroughput(
                group=group,
                events=events.get(group, 0),
                freshness_samples=int(total[-1][1]) if total else 0,
                freshness_p50_seconds=histogram_quantile(0.5, total),
                freshness_p99_seconds=histogram_quantile(0.99, total),
                recent_events=recent_events.get(group, 0),
                recent_freshness_samples=int(recent[-1][1]) if recent else 0,
                recent_freshness_p50_seconds=histogram_quantile(0.5, recent),
                recent_freshness_p99_seconds=histogram_quantile(0.99, recent),
            )
        )
    return OpsStats(
        measured_at=time.time(),
        published=dict(sorted(published.items())),
        groups=groups,
        window_seconds=window,
        processes=len(pairs),
    )


class LiveProcesses:
    """Reads every live process's counters: from Redis, and this process's own live (fresher
    than its last write). When Redis does not answer, this process's alone (``processes``: 1),
    logged once per outage: the page keeps working on what this process knows."""

    def __init__(self, redis: aioredis.Redis, own: OpsStatsWriter) -> None:
        self._redis = redis
        self._own = own
        self._failing = False

    async def read(self) -> list[ProcessCounters]:
        mine = self._own.counters()
        try:
            found = await read_process_counters(self._redis)
        except REDIS_ERRORS as exc:
            if not self._failing:
                log.warning(
                    "ops stats: Redis did not answer; this process's counters only: %s", exc
                )
            self._failing = True
            return [mine]
        self._failing = False
        return [mine, *(counters for counters in found if counters.process != mine.process)]


async def _sample(system: SystemWindow, processes: LiveProcesses, stop: asyncio.Event) -> None:
    """Every ``SAMPLE_SECONDS`` until ``stop``: stopped by the event, not cancelled, as a
    cancellation inside a Redis call can be swallowed (``stores.ops_stats.OpsStatsWriter.run``)."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SAMPLE_SECONDS)
        if not stop.is_set():
            system.add(await processes.read())


@asynccontextmanager
async def ops_state(app: FastAPI) -> AsyncIterator[None]:
    """This process's counters written to Redis, the recent windows' sampler and the DLQ
    reader, as long as the app lives (nested in its lifespan, after the runtime)."""
    runtime = app.state.runtime
    redis = runtime.services.redis
    async with publishing_ops_stats(redis, runtime.metrics) as writer:
        processes = app.state.ops_processes = LiveProcesses(redis, writer)
        system = app.state.ops_window = SystemWindow()
        system.add(await processes.read())
        stop = asyncio.Event()
        sampler = asyncio.create_task(
            _sample(system, processes, stop), name="streamrec-ops-sampler"
        )
        tail = app.state.dead_letters = DeadLetterTail(
            runtime.services.kafka_bootstrap,
            keep=DEAD_LETTERS_KEPT,
            refresh_seconds=runtime.settings.lag_refresh_seconds,
        )
        try:
            yield
        finally:
            stop.set()
            await sampler
            await tail.close()


router = APIRouter(tags=["ops"], lifespan=ops_state)


@router.get("/v1/ops/stats")
async def ops_stats(request: Request) -> OpsStats:
    """Events published and applied by every live process (API workers and consumer
    processes; ``processes`` says how many), and event-to-state freshness (p50, p99) per
    consumer group wherever it runs: since each process started, and ``recent_*`` over the last
    minute (``window_seconds`` says how long exactly; less after start). Other processes'
    counters are at most ``SAMPLE_SECONDS`` old; this process's are live."""
    processes: LiveProcesses = request.app.state.ops_processes
    system: SystemWindow = request.app.state.ops_window
    return system.stats(await processes.read())


@router.get(
    "/v1/ops/dead-letters",
    responses=error_responses(described={503: "Kafka is unavailable"}),
)
async def dead_letter_counts(request: Request) -> DeadLetterCounts:
    """Dead letters in the DLQ topic (``total``, exact), and per consumer group and source
    topic over the letters this process has read from it. At most
    STREAMREC_LAG_REFRESH_SECONDS old (``measured_at``)."""
    tail: DeadLetterTail = request.app.state.dead_letters
    report = await tail.report()
    return DeadLetterCounts.model_validate(report.model_dump(exclude={"letters"}))


Limit = Annotated[int, Query(ge=1, le=DEAD_LETTERS_KEPT, description="How many letters")]


@router.get(
    "/v1/ops/dead-letters/recent",
    dependencies=[AdminKey],
    responses=error_responses(
        422,
        described={401: "Missing or wrong admin X-API-Key", 503: "Kafka is unavailable"},
    ),
)
async def recent_dead_letters(request: Request, limit: Limit = 20) -> RecentDeadLetters:
    """The counts, and the newest dead letters (newest first): where each came from, the
    group that rejected it and why, and the start of its key and value as text. Admin key:
    payloads are user data."""
    tail: DeadLetterTail = request.app.state.dead_letters
    report = await tail.report()
    return report.model_copy(update={"letters": report.letters[:limit]})


PAGE = (STATIC / "ops.html").read_text(encoding="utf-8")
SCRIPT = (STATIC / "ops.js").read_text(encoding="utf-8").replace("__POLL_MS__", str(POLL_MS))


@router.get("/ops", response_class=HTMLResponse, include_in_schema=False)
async def ops_page() -> HTMLResponse:
    """The live operations page."""
    return HTMLResponse(PAGE, headers={"Content-Security-Policy": PAGE_POLICY})


@router.get("/ops/ops.js", include_in_schema=False)
async def ops_script() -> Response:
    return Response(SCRIPT, media_type="text/javascript; charset=utf-8")
