"""The /ops page and the JSON it reads: /v1/ops/stats (freshness since start and over the
recent window, summed over every process that writes its counters to Redis: consumers in
another process, a restarted one), /v1/ops/dead-letters (counts; the newest letters with the
admin key), and the page itself in a real headless Chromium, driven over the DevTools protocol
against a real uvicorn server: it renders, updates, and shows a lag the test creates. The
browser test skips where no Chromium is installed (Debian: ``apt-get install chromium``;
``.ci/run`` installs it).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from streamrec.api.app import create_app
from streamrec.api.routers.ops_page import (
    PAGE_POLICY,
    POLL_MS,
    SCRIPT,
    RecentWindow,
    SystemWindow,
    histogram_quantile,
    ops_stats_of,
)
from streamrec.apps.up import embedded_app
from streamrec.consumers.app import build_consumer_broker
from streamrec.core.dead_letters import dead_letter_headers
from streamrec.core.lag import ALL_GROUPS, LagReader
from streamrec.core.metrics import Metrics
from streamrec.core.settings import Settings
from streamrec.schemas.events import DeadLetter
from streamrec.schemas.topics import ConsumerGroup, Topic
from streamrec.stores.model_registry import ModelRegistry
from streamrec.stores.ops_stats import OpsStatsWriter, ProcessCounters, publishing_ops_stats
from streamrec.trainer.models.dueling_dqn import DuelingDQN, DuelingDQNConfig
from tests.conftest import ADMIN_KEY, INGEST_KEY, FakeClock, wait_until

pytestmark = pytest.mark.kafka

FEATURES = ConsumerGroup.FEATURES.value
ARCHIVE = ConsumerGroup.ARCHIVE.value
RATINGS = [
    {"type": "rating", "user_id": f"u{i % 3}", "item_id": f"i{i}", "rating": 4.0} for i in range(12)
]
IMPRESSION = {
    "type": "impression",
    "user_id": "u0",
    "request_id": "r1",
    "item_ids": ["i1"],
    "model": "mf",
    "variant": "exp:a",
}
CLICK = {
    "type": "click",
    "user_id": "u0",
    "item_id": "i1",
    "request_id": "r1",
    "model": "mf",
    "variant": "exp:a",
}
App = tuple[FastAPI, httpx.AsyncClient]
POLLED = re.compile(r'"(/v1/[a-z/-]+)')


async def _fed(client: httpx.AsyncClient) -> None:
    """Events in; wait until the features group (running in the app's process) applied them."""
    events = [*RATINGS, IMPRESSION, CLICK]
    response = await client.post("/v1/events", json=events, headers={"X-API-Key": INGEST_KEY})
    assert response.status_code == 202, response.text

    async def applied() -> bool:
        groups = (await client.get("/v1/ops/stats")).json()["groups"]
        return any(g["group"] == FEATURES and g["events"] >= len(events) for g in groups)

    await wait_until(applied)


def _register_dqn(app: FastAPI) -> None:
    runtime = app.state.runtime
    registry = ModelRegistry(runtime.services.engine, runtime.settings.var_dir / "models")
    config = DuelingDQNConfig(state_dim=3, item_dim=2, hidden=(4,), adv_hidden=(2,))
    window = {"source": "synthetic", "events": 10, "users": 2, "items": 3, "start_ts": 0}
    registry.register("dqn", DuelingDQN(config).eval(), data_window=window, activate=True)


async def _to_dlq(app: FastAPI, letter: DeadLetter) -> None:
    """A dead letter on the DLQ topic, as a consumer writes it."""
    producer = AIOKafkaProducer(bootstrap_servers=app.state.runtime.services.kafka_bootstrap)
    await producer.start()
    try:
        headers = [(k, v.encode()) for k, v in dead_letter_headers(letter).items()]
        await producer.send_and_wait(
            Topic.DLQ.value, letter.payload, key=letter.source_key, headers=headers
        )
    finally:
        await producer.stop()


async def _raw_rating(app: FastAPI, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=app.state.runtime.services.kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(Topic.RATINGS.value, value, key=b"u9")
    finally:
        await producer.stop()


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[App]:
    """The API alone (no consumer groups), with its app."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://streamrec") as client:
            yield app, client


# -- the JSON --------------------------------------------------------------------------------


async def test_stats_show_freshness_since_start_and_over_the_recent_window(
    app_client: App,
) -> None:
    _, client = app_client
    await _fed(client)
    stats = (await client.get("/v1/ops/stats")).json()
    assert stats["published"]["streamrec.ratings"] == 12
    features = next(g for g in stats["groups"] if g["group"] == FEATURES)
    assert features["freshness_samples"] >= 14
    assert 0 < features["freshness_p50_seconds"] <= features["freshness_p99_seconds"] < 30
    # The window starts at the app's start until a minute has passed: the same events.
    assert 0 < stats["window_seconds"] < 60
    assert features["recent_events"] == features["events"]
    assert features["recent_freshness_samples"] == features["freshness_samples"]
    assert features["recent_freshness_p99_seconds"] == features["freshness_p99_seconds"]
    assert stats["processes"] == 1  # the API and the consumer groups: one process


def _other_process(app: FastAPI, clock: FakeClock, process: str, events: int) -> OpsStatsWriter:
    """Another process's counters (a Metrics of its own), as its writer keeps them in Redis."""
    metrics = Metrics()
    metrics.events_consumed.labels(ARCHIVE, Topic.RATINGS.value).inc(events)
    for _ in range(events):
        metrics.event_to_state_seconds.labels(ARCHIVE).observe(2.0)
    metrics.events_published.labels(Topic.DLQ.value).inc(1)
    redis = app.state.runtime.services.redis
    return OpsStatsWriter(redis, metrics, process=process, clock=clock)


async def test_stats_sum_the_counters_other_processes_keep_in_redis(
    api: App, clock: FakeClock
) -> None:
    app, client = api
    consumers = _other_process(app, clock, "host-b:42:x", 30)
    clock.advance(4)
    await consumers.write()
    stats = (await client.get("/v1/ops/stats")).json()
    assert stats["processes"] == 2
    assert stats["published"] == {Topic.DLQ.value: 1}
    (archive,) = stats["groups"]
    assert archive["group"] == ARCHIVE and archive["events"] == 30
    assert 1 < archive["freshness_p50_seconds"] <= archive["freshness_p99_seconds"] <= 2.5
    # It started 4 s ago with zero counters: all 30 are recent, over those 4 s.
    assert (archive["recent_events"], archive["recent_freshness_samples"]) == (30, 30)
    assert stats["window_seconds"] >= 4  # the longest window: this API's, or the 4 s

    # Sampled (what the sampler does every 5 s) when it has run longer than the window: its
    # counters then anchor its window, so nothing of it is recent yet.
    window: SystemWindow = app.state.ops_window
    clock.advance(100)
    await consumers.write()
    window.add(await app.state.ops_processes.read())
    (archive,) = (await client.get("/v1/ops/stats")).json()["groups"]
    assert (archive["events"], archive["recent_events"]) == (30, 0)

    # It restarts under the same name with 5 events: since start 5, recently 5, never 5 - 30.
    clock.advance(5)
    restarted = _other_process(app, clock, "host-b:42:x", 5)
    clock.advance(1)
    await restarted.write()
    (archive,) = (await client.get("/v1/ops/stats")).json()["groups"]
    assert (archive["events"], archive["recent_events"]) == (5, 5)
    assert archive["recent_freshness_samples"] == 5

    # Restarted under a new name (the usual case: a new pid and token) while the old key lives
    # on until its TTL: both count, the new one from zero; once the old one is gone, the new.
    renamed = _other_process(app, clock, "host-b:43:y", 2)
    await renamed.write()
    stats = (await client.get("/v1/ops/stats")).json()
    (archive,) = stats["groups"]
    assert stats["processes"] == 3 and (archive["events"], archive["recent_events"]) == (7, 7)
    await restarted.remove()
    window.add(await app.state.ops_processes.read())
    assert len(window.windows) == 2  # this API and host-b:43:y
    (archive,) = (await client.get("/v1/ops/stats")).json()["groups"]
    assert (archive["events"], archive["recent_events"]) == (2, 2)


async def test_consumers_in_another_process_appear_in_the_api_stats(api: App) -> None:
    """The process layout: the API runs no group; the features group runs beside it with a
    Metrics of its own (another process's), which it writes to Redis."""
    app, client = api
    runtime = app.state.runtime
    metrics = Metrics()
    broker = build_consumer_broker(runtime.stores, metrics, [ConsumerGroup.FEATURES])
    async with publishing_ops_stats(runtime.services.redis, metrics, interval=0.05):
        await broker.start()
        try:
            await _fed(client)  # waits until /v1/ops/stats shows the group's events
        finally:
            await broker.stop()
    stats = (await client.get("/v1/ops/stats")).json()
    assert stats["processes"] == 1  # the consumers stopped: their counters left Redis
    assert stats["published"]["streamrec.ratings"] == 12  # the API's own


def _snapshot(
    at: float, consumed: int, fast: float, slow: float, process: str = "h:1:a", started: float = 0
) -> ProcessCounters:
    """Cumulative counters: ``fast`` events under 0.1 s, ``slow`` ones under 10 s."""
    buckets = [(0.1, fast), (10.0, fast + slow), (float("inf"), fast + slow)]
    return ProcessCounters(at, {FEATURES: consumed}, {FEATURES: buckets}, {}, process, started)


def test_recent_figures_cover_the_last_minute_not_since_start() -> None:
    window = RecentWindow(seconds=60)
    window.add(_snapshot(0, 0, 0, 0))
    window.add(_snapshot(30, 100, 0, 100))  # a slow start-up replay
    window.add(_snapshot(95, 150, 50, 100))  # then only fast events
    now = _snapshot(100, 200, 100, 100)
    # The newest snapshot at least a minute old anchors the window: the one at 30 s.
    then = window.start()
    assert then is not None and then.at == 30 and len(window.snapshots) == 2
    stats = ops_stats_of([(now, then)])
    (features,) = stats.groups
    assert (features.events, features.recent_events) == (200, 100)
    assert (features.freshness_samples, features.recent_freshness_samples) == (200, 100)
    assert features.freshness_p99_seconds == pytest.approx(9.802)  # since start: the replay
    assert features.recent_freshness_p99_seconds == pytest.approx(0.099)  # the last minute
    assert stats.window_seconds == 70
    assert ops_stats_of([(now, None)]).groups[0].recent_freshness_p99_seconds is None


def test_each_process_has_its_window_and_a_restart_is_a_new_series() -> None:
    system = SystemWindow(seconds=60)
    # The consumers ran an hour before this API saw them: nothing recent until sampled twice.
    system.add([_snapshot(3600, 1000, 1000, 0, "h:2:b")])
    system.add([_snapshot(3605, 1010, 1010, 0, "h:2:b"), _snapshot(5, 3, 3, 0, "h:3:c")])
    stats = system.stats([_snapshot(3610, 1030, 1030, 0, "h:2:b"), _snapshot(9, 4, 4, 0, "h:3:c")])
    (features,) = stats.groups
    assert (features.events, stats.processes) == (1034, 2)
    # h:2:b since its first sample; h:3:c since its start (its counters were zero then).
    assert features.recent_events == 30 + 4 and features.recent_freshness_samples == 34
    assert stats.window_seconds == 10

    # h:2:b starts again under the same name: 7 events since; nothing negative, and the
    # process gone from Redis (h:3:c) is forgotten.
    restarted = _snapshot(4000, 7, 0, 7, "h:2:b", started=3990)
    stats = system.stats([restarted])
    (features,) = stats.groups
    assert (features.events, features.recent_events, features.recent_freshness_samples) == (7, 7, 7)
    assert features.recent_freshness_p99_seconds == pytest.approx(9.901)  # all 7 slow
    system.add([restarted])
    assert list(system.windows) == ["h:2:b"]
    assert [s.at for s in system.windows["h:2:b"].snapshots] == [3990, 4000]
    later = system.stats([_snapshot(4005, 9, 0, 9, "h:2:b", started=3990)])
    assert later.groups[0].recent_events == 9 and later.window_seconds == 15


def test_histogram_quantile_interpolates_inside_the_bucket() -> None:
    buckets = [(0.01, 0.0), (0.1, 50.0), (1.0, 100.0), (float("inf"), 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.055)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.982)
    assert histogram_quantile(0.5, [(0.1, 0.0), (float("inf"), 0.0)]) is None
    assert histogram_quantile(0.99, [(0.1, 1.0), (float("inf"), 10.0)]) == pytest.approx(0.1)


async def test_dead_letters_counts_for_all_letters_for_the_admin(api: App) -> None:
    app, client = api
    letter = DeadLetter(
        source_topic=Topic.CLICKS.value,
        source_partition=2,
        source_offset=41,
        source_key=b"u7",
        consumer_group=FEATURES,
        error="1 validation error for Event: union_tag_invalid",
        payload=b'{"type": "clack", "user_id": "u7"}',
    )
    await _to_dlq(app, letter)
    counts = (await client.get("/v1/ops/dead-letters")).json()
    assert (counts["total"], counts["unread"]) == (1, 0)
    assert [(c["consumer_group"], c["source_topic"], c["count"]) for c in counts["counts"]] == [
        (FEATURES, Topic.CLICKS.value, 1)
    ]
    assert "letters" not in counts  # payloads are user data: admin only

    path = "/v1/ops/dead-letters/recent"
    assert (await client.get(path)).status_code == 401
    assert (await client.get(path, headers={"X-API-Key": INGEST_KEY})).status_code == 401
    admin = {"X-API-Key": ADMIN_KEY}
    assert (await client.get(path, params={"limit": 0}, headers=admin)).status_code == 422
    recent = (await client.get(path, headers=admin)).json()
    (shown,) = recent["letters"]
    assert shown["source_topic"] == Topic.CLICKS.value
    assert (shown["source_partition"], shown["source_offset"]) == (2, 41)
    assert shown["reason"] == letter.error and shown["key"] == "u7"
    assert shown["payload_excerpt"] == '{"type": "clack", "user_id": "u7"}'


async def test_page_loads_only_its_own_script_and_endpoints(api: App) -> None:
    _, client = api
    response = await client.get("/ops")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"] == PAGE_POLICY
    assert "default-src 'none'" in PAGE_POLICY and "connect-src 'self'" in PAGE_POLICY
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', response.text)
    assert refs == ["data:,", "/ops/ops.js"]  # no favicon request, the one script
    script = await client.get("/ops/ops.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert script.text == SCRIPT and f"const POLL_MS = {POLL_MS};" in SCRIPT
    polled = sorted(set(POLLED.findall(SCRIPT)))
    assert polled == [
        "/v1/experiments",
        "/v1/models",
        "/v1/ops/dead-letters",
        "/v1/ops/dead-letters/recent",
        "/v1/ops/lag",
        "/v1/ops/stats",
    ]
    for path in polled:
        answer = await client.get(path, headers={"X-API-Key": ADMIN_KEY})
        assert answer.status_code == 200, (path, answer.text)
        assert isinstance(answer.json(), dict)


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_page_script_parses(tmp_path: Path) -> None:
    script = tmp_path / "ops.js"
    script.write_text(SCRIPT)
    checked = subprocess.run(["node", "--check", str(script)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


# -- in a real browser ------------------------------------------------------------------------

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def browser_path() -> str | None:
    names = ("chromium", "chromium-browser", "google-chrome")
    return next((path for name in names if (path := shutil.which(name))), None)


class Page:
    """One tab of headless Chromium, driven with the DevTools protocol (JSON messages over a
    websocket): commands answer by id, everything else is an event, kept in ``events``."""

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self._ws:
                message = json.loads(raw)
                waiting = self._pending.pop(message.get("id", -1), None)
                if waiting is None:
                    self.events.append(message)
                elif not waiting.done():
                    waiting.set_result(message)
        except ConnectionClosed:
            return  # answered below
        finally:  # the browser went away: nobody waits for an answer forever
            for waiting in self._pending.values():
                if not waiting.done():
                    waiting.set_exception(ConnectionError("the browser closed DevTools"))

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        command = next(self._ids)
        answer = self._pending[command] = asyncio.get_running_loop().create_future()
        await self._ws.send(json.dumps({"id": command, "method": method, "params": params}))
        message = await answer
        assert "error" not in message, (method, message["error"])
        return message["result"]

    async def evaluate(self, expression: str) -> Any:
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        assert "exceptionDetails" not in result, (expression, result["exceptionDetails"])
        return result["result"].get("value")

    async def until(self, expression: str) -> Any:
        """Poll a JavaScript expression until it is truthy (within wait_until's deadline)."""
        found: Any = None

        async def holds() -> bool:
            nonlocal found
            found = await self.evaluate(expression)
            return bool(found)

        await wait_until(holds, interval=0.1)
        return found

    def problems(self) -> list[Any]:
        """Exceptions, console errors and browser errors (a CSP violation among them)."""
        return [
            e["params"]
            for e in self.events
            if e["method"] == "Runtime.exceptionThrown"
            or (e["method"] == "Runtime.consoleAPICalled" and e["params"]["type"] == "error")
            or (e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
        ]

    def requested(self) -> list[str]:
        return [
            e["params"]["request"]["url"]
            for e in self.events
            if e["method"] == "Network.requestWillBeSent"
        ]


@asynccontextmanager
async def chromium(path: str, profile: Path) -> AsyncIterator[Page]:
    """Headless Chromium with the DevTools protocol on a free port, one tab open."""
    log = profile.parent / "chromium.log"
    with log.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            path,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            "about:blank",
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        port_file = profile / "DevToolsActivePort"  # Chromium writes its port there

        async def listening() -> bool:
            assert process.returncode is None, log.read_text(errors="replace")[-2000:]
            return port_file.is_file() and len(port_file.read_text().splitlines()) == 2

        await wait_until(listening)
        port = int(port_file.read_text().splitlines()[0])
        async with httpx.AsyncClient(trust_env=False) as http:
            targets = (await http.get(f"http://127.0.0.1:{port}/json/list")).json()
        url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        async with connect(url, max_size=None) as ws:
            page = Page(ws)
            for domain in ("Page", "Runtime", "Network", "Log"):
                await page.send(f"{domain}.enable")
            try:
                yield page
            finally:
                page.reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await page.reader
    finally:
        if process.returncode is None:
            process.terminate()
            await process.wait()


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[str]:
    """The app under a real uvicorn server on a free port of 127.0.0.1; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))

    async def started() -> bool:
        if task.done():
            task.result()  # a failed start-up fails the test with its error
        return server.started

    try:
        await wait_until(started)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        sock.close()


def _card(group: str) -> str:
    return f"document.querySelector('#groups [data-group=\"{group}\"]')"


def _fact(group: str, key: str) -> str:
    return f"{_card(group)}?.querySelector('[data-fact=\"{key}\"] .v')?.textContent"


def _rows(table: str) -> str:
    return (
        f"[...document.querySelectorAll('#{table} tr')]"
        ".map(tr => [...tr.cells].map(td => td.textContent))"
    )


async def _drained(reader: LagReader, group: str) -> None:
    async def caught_up() -> bool:
        report = await reader.refresh()
        return next(g for g in report.groups if g.group == group).total_lag == 0

    await wait_until(caught_up)


async def test_the_page_in_a_browser_renders_updates_and_shows_a_lag_it_was_given(
    settings: Settings, tmp_path: Path
) -> None:
    path = browser_path()
    if path is None:
        pytest.skip("no browser: Chromium is not installed (Debian: apt-get install chromium)")
    # Only the features group runs in the app's process: the archive group's lag is the test's
    # to make. A short lag window: a group that does not move is STALL at the next reading.
    app = embedded_app(
        settings.model_copy(update={"lag_window_seconds": 0.5}), [ConsumerGroup.FEATURES]
    )
    async with (
        serving(app) as base,
        httpx.AsyncClient(base_url=base, trust_env=False) as client,
        chromium(path, tmp_path / "profile") as page,
    ):
        reader: LagReader = app.state.lag
        _register_dqn(app)
        await _fed(client)
        await _raw_rating(app, b"{not json")  # the features group sends it to the DLQ

        async def dead_lettered() -> bool:
            return (await app.state.dead_letters.refresh()).total == 1

        await wait_until(dead_lettered)
        await _drained(reader, FEATURES)

        await page.send("Page.navigate", url=f"{base}/ops")
        assert await page.until("document.querySelectorAll('#groups .group').length") == len(
            ALL_GROUPS
        )
        before = int((await page.until(_fact(ARCHIVE, "lag"))).replace(",", ""))
        assert before == len(RATINGS) + 3  # every event so far: nobody consumed them
        polls = int(await page.evaluate("document.getElementById('updated').dataset.polls"))

        # The lag the test creates: ratings the archive group (not running) never reads.
        added = [{**r, "item_id": f"new{i}"} for i, r in enumerate(RATINGS * 5)]
        response = await client.post("/v1/events", json=added, headers={"X-API-Key": INGEST_KEY})
        assert response.status_code == 202
        await _drained(reader, FEATURES)  # a new reading; the features group caught up again
        archive = await page.until(
            f"{_fact(ARCHIVE, 'lag')} === '{before + len(added)}' "
            f"&& {_card(ARCHIVE)}.dataset.status === 'STALL' && {_card(ARCHIVE)}"
            ".querySelector('svg[data-points]').dataset.points"
        )
        assert int(archive) >= 2  # the lag chart has the readings before and after
        assert await page.evaluate(f"{_card(ARCHIVE)}.querySelector('.badge').textContent") == (
            "STALL"
        )
        produced = await page.evaluate(
            f"+{_card(ARCHIVE)}.querySelectorAll('svg.chart')[1].dataset.max"
        )
        assert produced > 0  # throughput in: from two readings' end offsets
        assert int(await page.evaluate("document.getElementById('updated').dataset.polls")) > polls
        assert await page.evaluate(f"{_card(FEATURES)}.dataset.status") == "OK"
        freshness = await page.evaluate(_fact(FEATURES, "freshness"))
        assert re.fullmatch(r"[\d.]+ m?s / [\d.]+ m?s", freshness), freshness
        assert await page.evaluate("document.title") == "STALL \u00b7 streamrec ops"
        overview = await page.evaluate("document.querySelectorAll('#overview a').length")
        assert overview == len(ALL_GROUPS)

        # Partitions fold under their group, and stay unfolded across updates.
        partitions = await page.evaluate(
            f"{_card(ARCHIVE)}.querySelectorAll('details tbody tr').length"
        )
        report = (await client.get("/v1/ops/lag")).json()
        assert partitions == len(
            next(g for g in report["groups"] if g["group"] == ARCHIVE)["partitions"]
        )
        assert await page.evaluate(f"{_card(ARCHIVE)}.querySelector('details').open") is False
        await page.evaluate(f"{_card(ARCHIVE)}.querySelector('summary').click()")
        polls = int(await page.evaluate("document.getElementById('updated').dataset.polls"))
        await page.until(f"+document.getElementById('updated').dataset.polls > {polls}")
        assert await page.evaluate(f"{_card(ARCHIVE)}.querySelector('details').open") is True

        # Dead letters: counts for all; the newest letters once the admin key is entered.
        assert await page.until(
            "document.getElementById('dlq-total').textContent.startsWith('1 in streamrec.dlq')"
        )
        counts = await page.evaluate(_rows("dlq-counts"))
        assert [row[:3] for row in counts] == [[FEATURES, Topic.RATINGS.value, "1"]]
        assert await page.evaluate(_rows("letters")) == []
        await page.evaluate(
            f"document.getElementById('admin-key').value = '{ADMIN_KEY}';"
            "document.querySelector('#key-form button[type=submit]').click()"
        )
        (letter,) = await page.until(_rows("letters") + ".filter(r => r.length > 1)")
        assert letter[1] == FEATURES and letter[2].startswith(Topic.RATINGS.value + "[")
        assert "Invalid JSON" in letter[3] and letter[4] == "u9" and letter[5] == "{not json"

        models = await page.evaluate(_rows("models"))
        assert [row[:3] for row in models] == [["dqn", "v1", "1"]]
        assert models[0][3].startswith("synthetic: 10 events, 2 users \u00d7 3 items")
        variants = await page.evaluate(_rows("variants"))
        assert [row[:5] for row in variants] == [["exp", "exp:a", "1", "1", "100.0%"]]

        assert all(url.startswith(base) for url in page.requested()), page.requested()
        assert page.problems() == []
