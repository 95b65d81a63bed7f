"""Recommendation serving on `streamrec up` (processes: services, consumers, N API workers),
against its peers in the same run.

    python benchmarks/serving.py [--seconds 10] [--clients 32] [--api-workers 2]
        [--consumer-processes 1] [--consumers-nice 10] [--ingest-rate 1000] [--clicks 40]
        [--epochs 2]

Setup (not measured): `streamrec up` as a subprocess on the embedded defaults (every consumer
group but the retrain loop, whose rounds would train throughout the load: its own benchmark is
`streaming_retrain.py`), ml-100k (../shared/data/ml-100k) published through Kafka and consumed;
SASRec, MF and Doc2Vec trained on the archive in this process (`--epochs` each: the quality is
not what is measured) and made live through the activate API (every user's vector and
precomputed candidates written before the swap), and a fresh Dueling DQN registered as the
live re-ranker (its weights do not change its cost).

Then, each with a background ingest of `--ingest-rate` events/s (ratings and clicks of ml-100k
users, published by a process of its own) running throughout:

1. load: `--clients` keep-alive HTTP/1.1 clients (a process of their own) call
   `GET /v1/users/{u}/recommendations?k=10&model=sasrec`, `model=mf` and
   `model=mf&rerank=dqn` for `--seconds` each (every response must be 200);
2. `raw_redis`: the Redis round trip of that request path (one pipeline: user counters,
   candidates, seen set; the live pointer is remembered, as the API does), issued by
   `--clients` concurrent callers in a process of their own: the path without HTTP, FastAPI
   and the response;
3. freshness, `--clicks` times: the first item of a user's `model=mf` list is clicked and the
   next answers polled (any worker) until it is gone from them (event → changed
   recommendation, the target's figure); and at the same time `model=sasrec` answers polled
   until one comes from a user vector computed after the click (`state_age_ms`: how fresh
   the sequence model's vectors are, reported beside it).

During each load, where the time goes: the CPU seconds (user + system) of each of `up`'s
processes by role (API workers summed, consumers, services, the supervisor, the redis-server,
training or index children as `other`) and of the whole machine, per answered request.

And without ingest, the peer `http_empty`: uvicorn + FastAPI with the same number of worker
processes answering the same route with a constant 10-item list.

Prints a table, then one JSON line: {"figures": ..., "targets": ..., "met": ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from running_up import RunningUp, free_port  # noqa: E402

ML100K = ROOT.parent / "shared" / "data" / "ml-100k"
ADMIN_KEY = "bench-admin-key-000000000000"
INGEST_KEY = "bench-ingest-key-00000000000"
PATHS = {
    "sasrec": "model=sasrec",
    "mf": "model=mf",
    "mf_dqn": "model=mf&rerank=dqn",
}
TARGETS = {
    "rps": 1500.0,
    "p99_ms": 20.0,
    "p99_ms_dqn": 25.0,
    "share_of_http_empty": 0.30,
    "freshness_p99_ms": 250.0,
    "errors": 0,
}


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p99": float("nan")}
    # Inverted CDF: a value that was really observed (inf for a click never seen fresh within
    # the cut-off), where interpolating between a finite value and inf gives nan.
    arr = np.asarray(values)
    return {
        "p50": float(np.percentile(arr, 50, method="inverted_cdf")),
        "p99": float(np.percentile(arr, 99, method="inverted_cdf")),
    }


def clock_figures(values: list[float]) -> dict[str, Any]:
    """p50/p99 of a freshness clock, how many clicks it timed, and how many never in time."""
    return {
        **percentiles(values),
        "n": len(values),
        "beyond_10s": sum(v == float("inf") for v in values),
    }


# -- the load generator (a process of its own: --load) ------------------------------------------


async def _load(url: str, query: str, users: list[str], seconds: float, clients: int) -> dict:
    """``clients`` keep-alive HTTP/1.1 connections, one request in flight on each.

    A minimal client on asyncio streams: httpx costs more CPU per request than the server does
    (a FastAPI endpoint returning a constant answered 132 req/s to 32 httpx clients and 1,543
    req/s to this client, measured on this machine), so with httpx the benchmark measured httpx.
    """
    address = urlsplit(url)
    host, port = address.hostname or "127.0.0.1", address.port or 80
    latencies: list[float] = []
    errors = 0
    workers_seen: set[bytes] = set()
    deadline = time.perf_counter() + seconds

    async def worker(seed: int) -> None:
        nonlocal errors
        rng = random.Random(seed)
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < deadline:
                user = rng.choice(users)
                started = time.perf_counter()
                writer.write(
                    f"GET /v1/users/{user}/recommendations?{query}&k=10 HTTP/1.1\r\n"
                    f"Host: {host}\r\n\r\n".encode()
                )
                head = await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(_header(head, b"content-length", int))
                latencies.append((time.perf_counter() - started) * 1000)
                errors += head[9:12] != b"200"
                workers_seen.add(_header(head, b"x-streamrec-worker", bytes, b""))
        finally:
            writer.close()
            await writer.wait_closed()

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(clients)))
    elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "errors": errors,
        "rps": len(latencies) / elapsed,
        "workers": len(workers_seen - {b""}),
        **{f"{k}_ms": v for k, v in percentiles(latencies).items()},
    }


def _header(head: bytes, name: bytes, cast: Any, default: Any = None) -> Any:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return cast(value.strip())
    if default is not None:
        return default
    raise RuntimeError(f"response without {name.decode()}: {head[:200]!r}")


def _run_self(*args: str) -> dict:
    """This script in another mode (``--load``, ``--raw-redis``) as a process of its own."""
    out = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"{args[0]} failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def run_load(url: str, query: str, users: list[str], seconds: float, clients: int) -> dict:
    options = {"--query": query, "--seconds": str(seconds), "--clients": str(clients)}
    return _run_self("--load", url, *_flat(options), "--users", ",".join(users))


def _flat(options: dict[str, str]) -> list[str]:
    return [part for pair in options.items() for part in pair]


# -- the raw Redis peer (a process of its own: --raw-redis) -------------------------------------


async def _raw_redis(url: str, model: str, users: list[str], seconds: float, clients: int) -> dict:
    """The Redis commands the request path issues for ``model`` (as api/routers/users.py and
    stores/candidates.py do), without HTTP, FastAPI or building the response."""
    import redis.asyncio as aioredis

    from streamrec.stores.candidates import candidates_key, live_key
    from streamrec.stores.features import user_key, user_seen_key

    client = aioredis.from_url(url, decode_responses=True, max_connections=clients)
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    version = int(await client.get(live_key(model)))  # the API remembers it for a second

    async def worker(seed: int) -> None:
        rng = random.Random(seed)
        while time.perf_counter() < deadline:
            user = rng.choice(users)
            started = time.perf_counter()
            async with client.pipeline(transaction=False) as pipe:
                pipe.hgetall(user_key(user))
                pipe.hget(candidates_key(model, version), user)
                pipe.smembers(user_seen_key(user))
                await pipe.execute()
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(clients)))
    elapsed = time.perf_counter() - started
    await client.aclose()
    return {
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        **{f"{k}_ms": v for k, v in percentiles(latencies).items()},
    }


# -- the background ingest (a process of its own: --ingest) -------------------------------------


async def _ingest(bootstrap: str, rate: float, users: list[str], items: list[str]) -> None:
    """Ratings and clicks at ``rate`` events/s until SIGTERM; prints how many it sent."""
    import signal

    from streamrec.producers.publisher import EventPublisher
    from streamrec.schemas.events import ClickEvent, Event, RatingEvent

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    rng = random.Random(11)
    sent, tick = 0, 0.05
    started = time.perf_counter()
    async with EventPublisher([bootstrap], client_id="bench-ingest") as publisher:
        while not stop.is_set():
            due = int((time.perf_counter() - started) * rate) - sent
            batch: list[Event] = []
            for _ in range(max(due, 0)):
                user, item = rng.choice(users), rng.choice(items)
                if rng.random() < 0.5:
                    batch.append(RatingEvent(user_id=user, item_id=item, rating=rng.randint(1, 5)))
                else:
                    batch.append(ClickEvent(user_id=user, item_id=item))
            if batch:
                await publisher.publish_many(batch)
                sent += len(batch)
            await asyncio.sleep(tick)
    print(json.dumps({"sent": sent, "rate": sent / (time.perf_counter() - started)}))


class Ingest:
    """The background ingest process, for the length of a ``with`` block."""

    def __init__(self, bootstrap: str, rate: float, users: list[str], items: list[str]) -> None:
        options = {"--rate": str(rate), "--users": ",".join(users), "--items": ",".join(items)}
        self._args = [sys.executable, __file__, "--ingest", bootstrap, *_flat(options)]
        self.result: dict[str, Any] = {}

    def __enter__(self) -> Ingest:
        self._process = subprocess.Popen(self._args, stdout=subprocess.PIPE, text=True)
        time.sleep(2.0)  # its producer connected and sending before the measurement starts
        return self

    def __exit__(self, *exc: object) -> None:
        self._process.terminate()
        out, _ = self._process.communicate(timeout=60)
        lines = out.strip().splitlines()
        self.result = json.loads(lines[-1]) if lines else {}


# -- the system under test ------------------------------------------------------------------------


class Up(RunningUp):
    """``streamrec up`` with ``api_workers`` API workers and ``groups`` over
    ``consumer_processes`` processes at niceness ``consumers_nice``, quiet (WARNING)."""

    def __init__(
        self,
        var: Path,
        api_workers: int,
        groups: str,
        consumer_processes: int,
        consumers_nice: int = 10,
        settings: Sequence[str] = (),
    ) -> None:
        self.groups = {f"streamrec-{g}" for g in groups.split(",")}
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
        env.update(
            STREAMREC_VAR_DIR=str(var),
            STREAMREC_ADMIN_API_KEY=ADMIN_KEY,
            STREAMREC_INGEST_API_KEY=INGEST_KEY,
            STREAMREC_LOG_LEVEL="WARNING",
            STREAMREC_CONSUMERS_NICE=str(consumers_nice),
        )
        env.update(setting.split("=", 1) for setting in settings)
        options = ["--metrics-port", "0", "--api-workers", str(api_workers), "--groups", groups]
        options += ["--consumer-processes", str(consumer_processes)]
        super().__init__(var, env, options, var / "up.log")


async def publish_all(bootstrap: str, events: list[Any], chunk: int = 2000) -> None:
    from streamrec.producers.publisher import EventPublisher

    async with EventPublisher([bootstrap], client_id="bench-setup") as publisher:
        for start in range(0, len(events), chunk):
            await publisher.publish_many(events[start : start + chunk])


def train(settings: Any, name: str, epochs: int) -> int:
    """A version of ``name`` trained on the archive (not live yet); its number."""
    import torch

    from streamrec.stores.factory import open_sql_stores
    from streamrec.trainer.service import ARCHIVE, load_data, train_model

    torch.set_num_threads(2)  # setup, not measured: the whole machine
    with open_sql_stores(settings) as sql:
        data = load_data(ARCHIVE, sql.engine, seed=0, until=sql.archive.watermark(["rating"]))
        opts = {"seed": 0, "epochs": epochs}
        version = train_model(name, data, sql.ids, sql.models, "loo-full", opts, activate=False)
    return version.version


def register_dqn(settings: Any) -> int:
    """A fresh Dueling DQN over the live Doc2Vec vectors, live (the re-ranker's cost does not
    depend on its weights)."""
    from streamrec.stores.factory import open_sql_stores
    from streamrec.trainer.models.dueling_dqn import DuelingDQN, DuelingDQNConfig
    from streamrec.trainer.rl import state_dim

    with open_sql_stores(settings) as sql:
        size = sql.models.load("doc2vec").config.vector_size
        net = DuelingDQN(DuelingDQNConfig(state_dim=state_dim(size), item_dim=size))
        return sql.models.register("dqn", net, {}, activate=True).version


async def activate(up: Up, name: str, version: int) -> float:
    """Make ``version`` live through the API (publish: vectors, candidates, alias); seconds."""
    import httpx

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=up.url, timeout=1800) as http:
        answer = await http.post(
            f"/v1/models/{name}/versions/{version}/activate", headers={"X-API-Key": ADMIN_KEY}
        )
    if answer.status_code != 200:
        raise SystemExit(f"activating {name} v{version}: {answer.status_code} {answer.text}")
    return time.perf_counter() - started


async def setup(up: Up, args: argparse.Namespace) -> tuple[list[str], list[str], dict]:
    from streamrec.core.datasets import load_movielens
    from streamrec.core.settings import Settings
    from streamrec.producers.replay import replay_events
    from streamrec.schemas.events import RatingEvent

    data = load_movielens(ML100K)
    events = list(replay_events(data))
    bootstrap = up.addresses().kafka_bootstrap
    started = time.perf_counter()
    await publish_all(bootstrap, events)
    settings = Settings(_env_file=None, var_dir=up.var)
    ratings = sum(isinstance(e, RatingEvent) for e in events)
    await up.wait_consumed(settings.database_url, ratings, up.groups, timeout=900)
    timings: dict[str, float] = {"ingest_s": time.perf_counter() - started}
    for name in ("doc2vec", "mf", "sasrec"):
        t0 = time.perf_counter()
        version = await asyncio.to_thread(train, settings, name, args.epochs)
        timings[f"{name}_train_s"] = time.perf_counter() - t0
        timings[f"{name}_publish_s"] = await activate(up, name, version)
        print(f"  {name} v{version} live ({timings[f'{name}_train_s']:.0f} s)", flush=True)
    await asyncio.to_thread(register_dqn, settings)
    await asyncio.sleep(3.0)  # the workers re-read the active dqn every 2 s (model_reload)
    users = sorted({r.user_id for r in data.ratings})
    return users, sorted(data.items), {k: round(v, 1) for k, v in timings.items()}


# -- the peers and the freshness ------------------------------------------------------------------

EMPTY_APP = """
from fastapi import FastAPI

app = FastAPI()
ITEM = {"score": 1.0, "title": "", "genres": []}
ANSWER = {"items": [{"item_id": str(i), **ITEM} for i in range(10)]}


@app.get("/v1/users/{user_id}/recommendations")
async def constant(user_id: str, model: str = "popular", k: int = 10) -> dict:
    return ANSWER
"""


def http_empty(var: Path, workers: int, users: list[str], seconds: float, clients: int) -> dict:
    """The HTTP stack alone (peer): uvicorn + FastAPI, ``workers`` processes, a constant list."""
    (var / "empty_app.py").write_text(EMPTY_APP)
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "empty_app:app", "--app-dir", str(var)]
    argv += ["--port", str(port), "--workers", str(workers), "--log-level", "warning"]
    server = subprocess.Popen([*argv, "--no-access-log"])
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("the http_empty peer did not start") from None
                time.sleep(0.2)
        time.sleep(1.0)  # every worker up
        return run_load(f"http://127.0.0.1:{port}", "model=popular", users, seconds, clients)
    finally:
        server.terminate()
        server.wait(timeout=30)


FRESH_CUTOFF_S = 10.0  # a click not seen within this long counts as never (inf)


async def freshness(up: Up, users: list[str], clicks: int) -> tuple[list[float], list[float]]:
    """Per click, two clocks from its publication (a new connection per request, so any worker
    answers):

    * changed recommendation: the user's first ``model=mf`` item is clicked, and the next
      answers polled until that item is gone from them (the user state applied and the list
      changed by it, whichever way the edge builds it);
    * the SASRec user vector: ``model=sasrec`` answers polled until one comes from a user
      vector computed after the click was published (``state_age_ms``; another event of the
      same user from the background ingest may be what made it, so this clock is a lower
      bound of the click's own).
    """
    import httpx

    from streamrec.producers.publisher import EventPublisher
    from streamrec.schemas.events import ClickEvent

    rng = random.Random(7)
    changed: list[float] = []
    vector: list[float] = []
    limits = httpx.Limits(max_keepalive_connections=0)  # a new connection: any worker answers
    async with (
        EventPublisher([up.addresses().kafka_bootstrap], client_id="bench-fresh") as publisher,
        httpx.AsyncClient(base_url=up.url, limits=limits, timeout=10) as http,
    ):

        async def recommended(user: str, model: str) -> dict[str, Any]:
            return (await http.get(f"/v1/users/{user}/recommendations?model={model}")).json()

        async def until(check: Any, published: float, every_s: float) -> float:
            while True:
                now = time.time()
                if await check(now):
                    return (now - published) * 1000
                if now - published > FRESH_CUTOFF_S:
                    return float("inf")
                await asyncio.sleep(every_s)

        for _ in range(clicks):
            user = rng.choice(users)
            clicked = (await recommended(user, "mf"))["items"][0]["item_id"]

            async def gone(_: float, user: str = user, clicked: str = clicked) -> bool:
                body = await recommended(user, "mf")
                return clicked not in {i["item_id"] for i in body["items"]}

            published = time.time()

            async def recomputed(
                now: float, user: str = user, published: float = published
            ) -> bool:
                body = await recommended(user, "sasrec")
                age = body.get("state_age_ms")
                return not body["fallback"] and age is not None and now - age / 1000 >= published

            await publisher.publish(ClickEvent(user_id=user, item_id=clicked))
            # The vector's clock in seconds needs no 5 ms polls (each a connection and a request).
            found = await asyncio.gather(
                until(gone, published, 0.005), until(recomputed, published, 0.05)
            )
            changed.append(found[0])
            vector.append(found[1])
            await asyncio.sleep(0.1)
    return changed, vector


# -- where the time goes ------------------------------------------------------------------------


async def backlog(up: Up) -> dict[str, Any]:
    """Right after a phase: each group's lag (events not yet consumed when the load stopped:
    did the consumers keep up?), then the seconds until every group caught up, so that the next
    phase starts from no backlog."""
    _, lags = await up.group_lag(up.groups)
    return {"lag_after": lags, "drain_s": round(await up.drain(up.groups, timeout=600), 1)}


def cpu_seconds(up: Up) -> dict[str, float]:
    """CPU seconds (user + system) so far of each role of ``up``: its children by role
    (``api`` summed over the workers), the supervisor, the training and index children below
    them (``other``), the embedded redis-server, and the whole machine (``machine``, every
    core: the load generator and the ingest are the rest)."""
    root = psutil.Process(up.process.pid)
    found: dict[str, float] = defaultdict(float)
    redis_socket = up.addresses().redis_url.removeprefix("unix://")
    processes = [root, *root.children(recursive=True)]
    # ``info`` holds None for a process that ended or turned zombie meanwhile (no exception).
    processes += [
        p for p in psutil.process_iter(["cmdline"]) if redis_socket in str(p.info["cmdline"])
    ]
    for proc in {p.pid: p for p in processes}.values():
        try:
            times, cmdline = proc.cpu_times(), proc.cmdline()
        except psutil.Error:  # ended meanwhile
            continue
        found[_role(proc, root, cmdline, redis_socket)] += times.user + times.system
    machine = psutil.cpu_times()
    # Linux counts niced processes' user time apart (``nice``), not in ``user``: without it the
    # machine would leave out the consumers (niceness 10), as it did until the sixth session.
    found["machine"] = machine.user + machine.nice + machine.system
    return dict(found)


def _role(proc: psutil.Process, root: psutil.Process, cmdline: list[str], redis: str) -> str:
    if proc.pid == root.pid:
        return "supervisor"
    if any(redis in part for part in cmdline):
        return "redis"
    if "streamrec.apps.up_children" in cmdline:
        role = cmdline[cmdline.index("streamrec.apps.up_children") + 1]
        if role == "consumers" and "--groups" in cmdline:  # one role per consumers process
            return f"consumers({cmdline[cmdline.index('--groups') + 1]})"
        return role
    return "other"


def cpu_ms_per_request(
    before: dict[str, float], after: dict[str, float], requests: float
) -> dict[str, float]:
    """CPU milliseconds per answered request, by role, between two ``cpu_seconds``."""
    roles = sorted(set(before) | set(after))
    spent = {r: after.get(r, 0.0) - before.get(r, 0.0) for r in roles}
    return {r: round(1000 * spent[r] / max(requests, 1.0), 3) for r in roles}


def cores_used(
    before: dict[str, float], after: dict[str, float], seconds: float
) -> dict[str, float]:
    """Cores each role kept busy on average between two ``cpu_seconds`` ``seconds`` apart."""
    roles = sorted(set(before) | set(after))
    return {r: round((after.get(r, 0.0) - before.get(r, 0.0)) / seconds, 3) for r in roles}


# -- the run ----------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> dict[str, Any]:
    from streamrec.apps.up import default_consumer_processes

    args.consumer_processes = args.consumer_processes or default_consumer_processes()
    var = Path(tempfile.mkdtemp(prefix="streamrec-serving-", dir=args.tmp_dir))
    up = Up(
        var,
        args.api_workers,
        args.groups,
        args.consumer_processes,
        args.consumers_nice,
        args.setting,
    )
    figures: dict[str, Any] = {"api_workers": args.api_workers, "clients": args.clients}
    figures["consumer_processes"] = args.consumer_processes
    figures["consumers_nice"] = args.consumers_nice
    figures["settings"] = args.setting
    try:
        await up.ready()
        print(
            f"setup: streamrec up with {args.api_workers} API workers and "
            f"{args.consumer_processes} consumer processes at niceness {args.consumers_nice} "
            f"({var})",
            flush=True,
        )
        users, items, figures["setup"] = await setup(up, args)
        redis_url = up.addresses().redis_url
        bootstrap = up.addresses().kafka_bootstrap
        for name, query in PATHS.items():
            before = cpu_seconds(up)
            with Ingest(bootstrap, args.ingest_rate, users, items) as ingest:
                load = run_load(up.url, query, users, args.seconds, args.clients)
            cpu = cpu_ms_per_request(before, cpu_seconds(up), load["requests"])
            figures[f"http_{name}"] = {
                **load,
                "ingest_rate": round(ingest.result["rate"]),
                "cpu_ms_per_request": cpu,
                **await backlog(up),
            }
            print(f"  {name}: {load['rps']:.0f} req/s, p99 {load['p99_ms']:.1f} ms", flush=True)
        with Ingest(bootstrap, args.ingest_rate, users, items) as ingest:
            options = {"--query": "mf", "--seconds": str(args.seconds)}
            options |= {"--clients": str(args.clients), "--users": ",".join(users)}
            raw = _run_self("--raw-redis", redis_url, *_flat(options))
        figures["raw_redis_mf"] = {**raw, "ingest_rate": round(ingest.result["rate"])}
        figures["raw_redis_mf"].update(await backlog(up))
        before, started = cpu_seconds(up), time.perf_counter()
        with Ingest(bootstrap, args.ingest_rate, users, items) as ingest:
            fresh, vector = await freshness(up, users, args.clicks)
        cores = cores_used(before, cpu_seconds(up), time.perf_counter() - started)
        figures["freshness_ms"] = {**clock_figures(fresh), "cores_used": cores}
        figures["freshness_ms"]["ingest_rate"] = round(ingest.result["rate"])
        figures["freshness_ms"].update(await backlog(up))
        figures["sasrec_vector_freshness_ms"] = clock_figures(vector)
        figures["http_empty"] = http_empty(var, args.api_workers, users, args.seconds, args.clients)
    finally:
        up.stop()
        if not args.keep:
            shutil.rmtree(var, ignore_errors=True)
    return figures


def report(figures: dict[str, Any]) -> None:
    print(f"{'path':<16}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}{'ingest/s':>10}")
    for key in ("http_sasrec", "http_mf", "http_mf_dqn", "raw_redis_mf", "http_empty"):
        row = figures[key]
        print(
            f"{key:<16}{row['rps']:>10.0f}{row['p50_ms']:>10.2f}{row['p99_ms']:>10.2f}"
            f"{row.get('errors', 0):>8}{row.get('ingest_rate', ''):>10}"
        )
    fresh = figures["freshness_ms"]
    print(
        f"event → changed recommendation (mf, the clicked item gone): p50 {fresh['p50']:.0f} ms, "
        f"p99 {fresh['p99']:.0f} ms, {fresh.get('beyond_10s', 0)} of {fresh['n']} clicks not "
        "seen within 10 s"
    )
    vector = figures["sasrec_vector_freshness_ms"]
    print(
        f"event → SASRec user vector recomputed: p50 {vector['p50']:.0f} ms, p99 "
        f"{vector['p99']:.0f} ms, {vector['beyond_10s']} of {vector['n']} beyond 10 s"
    )
    cores = ", ".join(f"{r} {n:.2f}" for r, n in fresh.get("cores_used", {}).items())
    print(f"cores busy during it, by process: {cores}")
    print("where the time goes: CPU ms per request, by process (ingest included)")
    roles = sorted({r for k in PATHS for r in figures[f"http_{k}"].get("cpu_ms_per_request", {})})
    print(f"{'path':<16}" + "".join(f"{r:>12}" for r in roles))
    for key in PATHS:
        cpu = figures[f"http_{key}"].get("cpu_ms_per_request", {})
        print(f"http_{key:<11}" + "".join(f"{cpu.get(r, 0.0):>12.3f}" for r in roles))
    print("did the consumers keep up? lag per group when the phase ended, seconds to catch up")
    for key in (*(f"http_{k}" for k in PATHS), "raw_redis_mf", "freshness_ms"):
        lags = figures[key].get("lag_after", {})
        behind = ", ".join(f"{g.removeprefix('streamrec-')} {n}" for g, n in sorted(lags.items()))
        print(f"{key:<16}{behind}; caught up in {figures[key].get('drain_s', 0.0):.1f} s")
    empty = figures["http_empty"]["rps"]
    for key in ("http_sasrec", "http_mf", "http_mf_dqn"):
        figures[key]["share_of_http_empty"] = round(figures[key]["rps"] / empty, 3)
    met = {
        "sasrec": _fast(figures["http_sasrec"], TARGETS["p99_ms"]),
        "mf": _fast(figures["http_mf"], TARGETS["p99_ms"]),
        "mf_dqn_p99": figures["http_mf_dqn"]["p99_ms"] <= TARGETS["p99_ms_dqn"],
        "share_of_http_empty": all(
            figures[k]["share_of_http_empty"] >= TARGETS["share_of_http_empty"]
            for k in ("http_sasrec", "http_mf")
        ),
        "freshness_p99_ms": fresh["p99"] <= TARGETS["freshness_p99_ms"],
        "errors": all(figures[k]["errors"] == 0 for k in ("http_sasrec", "http_mf", "http_mf_dqn")),
    }
    print(json.dumps({"figures": figures, "targets": TARGETS, "met": met}))


def _fast(row: dict[str, Any], p99_ms: float) -> bool:
    return bool(row["rps"] >= TARGETS["rps"] and row["p99_ms"] <= p99_ms)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--api-workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument(
        "--consumer-processes",
        type=int,
        default=None,
        help="`up --consumer-processes`: the consumer groups over this many processes "
        "(default: up's, 2 given two cores or more)",
    )
    parser.add_argument(
        "--consumers-nice",
        type=int,
        default=10,
        help="STREAMREC_CONSUMERS_NICE: the consumers processes' niceness (API workers: 0)",
    )
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="STREAMREC_NAME=VALUE",
        help="A setting for `up` (repeat for more): what the run's own settings leave alone",
    )
    parser.add_argument("--ingest-rate", type=float, default=1000.0)
    parser.add_argument("--clicks", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--groups",
        default="features,archive,vectors,online-rl",
        help="The consumer groups `up` runs (default: all but the retrain loop)",
    )
    parser.add_argument("--keep", action="store_true", help="Keep the run's var dir")
    parser.add_argument(
        "--tmp-dir", type=Path, help="Where the run's own var dir is created (default: $TMPDIR)"
    )
    parser.add_argument("--load", help=argparse.SUPPRESS)  # internal modes
    parser.add_argument("--raw-redis", help=argparse.SUPPRESS)
    parser.add_argument("--ingest", help=argparse.SUPPRESS)
    parser.add_argument("--query", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--users", help=argparse.SUPPRESS)
    parser.add_argument("--items", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        users = args.users.split(",")
        print(
            json.dumps(asyncio.run(_load(args.load, args.query, users, args.seconds, args.clients)))
        )
        return
    if args.raw_redis:
        users = args.users.split(",")
        result = asyncio.run(
            _raw_redis(args.raw_redis, args.query, users, args.seconds, args.clients)
        )
        print(json.dumps(result))
        return
    if args.ingest:
        asyncio.run(_ingest(args.ingest, args.rate, args.users.split(","), args.items.split(",")))
        return
    if not (ML100K / "u.data").is_file() and not (ML100K / "ratings.csv").is_file():
        sys.exit(f"MovieLens 100K not found at {ML100K}")
    report(asyncio.run(main(args)))


if __name__ == "__main__":
    cli()
