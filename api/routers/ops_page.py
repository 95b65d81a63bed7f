"""``/ops``: a live page for operators, and the JSON it reads beside the other endpoints.

The page is ``api/static/ops.html`` and its script ``api/static/ops.js`` (no library, nothing
fetched but this server's own endpoints, so it works offline; a Content-Security-Policy says
so to the browser). It polls every ``POLL_MS``: ``/v1/ops/lag`` (status, lag, and throughput
derived from consecutive readings), ``/v1/ops/stats`` (freshness over the recent window),
``/v1/ops/dead-letters`` (counts; the newest letters with the admin key), ``/v1/models`` and
``/v1/experiments``.

``/v1/ops/stats`` reports the consumer groups running in this process (``streamrec up``); its
``recent_*`` figures are the difference between the live counters and a snapshot of them at
most ``RECENT_SECONDS`` (plus one sampling step) old, taken by a sampler every
``SAMPLE_SECONDS``: freshness of the last minute, not since start.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, Response
from prometheus_client import Counter, Histogram

from api.deps import AdminKey, RuntimeDep
from api.responses import error_responses
from core.dead_letters import DeadLetterTail
from core.metrics import Metrics
from schemas.api import DeadLetterCounts, GroupThroughput, OpsStats, RecentDeadLetters

POLL_MS = 2000
RECENT_SECONDS = 60.0
SAMPLE_SECONDS = 5.0
DEAD_LETTERS_KEPT = 50
STATIC = Path(__file__).resolve().parents[1] / "static"
# Only this server's own script and endpoints: the browser refuses anything else.
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

Buckets = list[tuple[float, float]]  # (upper bound, cumulative count), ascending


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


def _sum_by(counter: Counter, label: str) -> dict[str, int]:
    totals: dict[str, int] = defaultdict(int)
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                totals[sample.labels[label]] += int(sample.value)
    return dict(totals)


def _buckets_by_group(histogram: Histogram) -> dict[str, Buckets]:
    found: dict[str, Buckets] = defaultdict(list)
    for metric in histogram.collect():
        for sample in metric.samples:
            if sample.name.endswith("_bucket"):
                found[sample.labels["group"]].append((float(sample.labels["le"]), sample.value))
    return {group: sorted(buckets) for group, buckets in found.items()}


def _minus(now: Buckets, then: Buckets | None) -> Buckets:
    """What a cumulative histogram gained since ``then`` (None: it did not exist then)."""
    before = dict(then or [])
    return [(upper, count - before.get(upper, 0.0)) for upper, count in now]


@dataclass(frozen=True)
class Snapshot:
    """The in-process counters the page's figures come from, at one time (monotonic)."""

    at: float
    consumed: dict[str, int]  # events applied per group
    freshness: dict[str, Buckets]  # event-to-state histogram per group

    @classmethod
    def of(cls, metrics: Metrics, at: float) -> Snapshot:
        return cls(
            at,
            _sum_by(metrics.events_consumed, "group"),
            _buckets_by_group(metrics.event_to_state_seconds),
        )


@dataclass
class RecentWindow:
    """Snapshots over the last ``seconds``, plus the newest older one: it anchors the window,
    so that once the process has run that long the recent figures span at least ``seconds``."""

    seconds: float = RECENT_SECONDS
    snapshots: deque[Snapshot] = field(default_factory=deque)

    def add(self, snapshot: Snapshot) -> None:
        self.snapshots.append(snapshot)
        horizon = snapshot.at - self.seconds
        while len(self.snapshots) > 1 and self.snapshots[1].at <= horizon:
            self.snapshots.popleft()

    def start(self) -> Snapshot | None:
        """The snapshot the recent figures start from (None before any)."""
        return self.snapshots[0] if self.snapshots else None


def ops_stats_of(now: Snapshot, then: Snapshot | None, published: dict[str, int]) -> OpsStats:
    """Since start (``now``), and over the recent window (``now`` - ``then``)."""
    groups = []
    for group in sorted(now.consumed.keys() | now.freshness.keys()):
        total = now.freshness.get(group, [])
        recent = _minus(total, then.freshness.get(group)) if then else []
        events = now.consumed.get(group, 0)
        groups.append(
            GroupThroughput(
                group=group,
                events=events,
                freshness_samples=int(total[-1][1]) if total else 0,
                freshness_p50_seconds=histogram_quantile(0.5, total),
                freshness_p99_seconds=histogram_quantile(0.99, total),
                recent_events=events - then.consumed.get(group, 0) if then else 0,
                recent_freshness_samples=int(recent[-1][1]) if recent else 0,
                recent_freshness_p50_seconds=histogram_quantile(0.5, recent),
                recent_freshness_p99_seconds=histogram_quantile(0.99, recent),
            )
        )
    return OpsStats(
        measured_at=time.time(),
        published=published,
        groups=groups,
        window_seconds=now.at - then.at if then else 0.0,
    )


async def _sample(window: RecentWindow, metrics: Metrics) -> None:
    while True:
        await asyncio.sleep(SAMPLE_SECONDS)
        window.add(Snapshot.of(metrics, time.monotonic()))


@asynccontextmanager
async def ops_state(app: FastAPI) -> AsyncIterator[None]:
    """The recent window's sampler and the DLQ reader live as long as the app (nested in its
    lifespan, after the runtime)."""
    runtime = app.state.runtime
    window = app.state.ops_window = RecentWindow()
    window.add(Snapshot.of(runtime.metrics, time.monotonic()))
    sampler = asyncio.create_task(_sample(window, runtime.metrics), name="streamrec-ops-sampler")
    tail = app.state.dead_letters = DeadLetterTail(
        runtime.services.kafka_bootstrap,
        keep=DEAD_LETTERS_KEPT,
        refresh_seconds=runtime.settings.lag_refresh_seconds,
    )
    try:
        yield
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        await tail.close()


router = APIRouter(tags=["ops"], lifespan=ops_state)


@router.get("/v1/ops/stats")
async def ops_stats(request: Request, runtime: RuntimeDep) -> OpsStats:
    """Events published and applied by this process, and event-to-state freshness (p50, p99)
    of the consumer groups running in it (``streamrec up``): since start, and ``recent_*``
    over the last minute (``window_seconds`` says how long exactly; less after start)."""
    metrics = runtime.metrics
    now = Snapshot.of(metrics, time.monotonic())
    then = request.app.state.ops_window.start()
    return ops_stats_of(now, then, _sum_by(metrics.events_published, "topic"))


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
