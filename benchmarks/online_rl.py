"""Online RL: the DQN re-ranker against the static base ranker, popular and random in the
user simulator, the learner's throughput and the latency ``rerank=dqn`` adds.

    python benchmarks/online_rl.py [--slates 3000] [--seeds 0] [--data PATH] [--out DIR]

1. Simulator (apps/simulate.py) on MovieLens 100K (/work/shared/data/ml-100k): for each
   seed, the same users and dice for every policy; the DQN's online loop runs through the
   embedded Kafka, the features and online-RL consumer groups and the model registry.
   Figures: cumulative CTR after ``--slates`` slates per policy and the ratios of the DQN's to
   the others'; the curve goes to ``<out>/online_rl_seed<N>.png`` and the report to JSON.
2. Learner throughput: the online-RL group's work per transition without Kafka (joining
   logged slates with clicks, the replay ring, double-DQN steps at the default replay ratio of
   one batch of 64 per 8 new transitions), 64-d content vectors, slates of 10, one torch
   thread (the group shares its process with the others).
3. ``rerank=dqn`` latency: ``RLServer.rerank`` (the state from 50 recent items, Q-values of 100
   candidates, epsilon-greedy draw of 10 and the policy log) on the ml-100k catalog's Doc2Vec
   vectors, p50/p99 over 2,000 calls. The Redis read of the user's recent items that the
   endpoint adds is the one every recommendation already makes (benchmarks/serving.py).

Targets (issue 5): DQN CTR >= 1.10 x base and well above popular and random; learner
>= 2,000 transitions/s; rerank p99 <= 5 ms for 100 candidates. Prints a table, then one JSON
line: {"figures": ..., "targets": ..., "met": ...}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ML100K = ROOT.parent / "shared" / "data" / "ml-100k"
TARGETS = {
    "dqn_vs_base_min": 1.10,
    "learner_transitions_per_s_min": 2000.0,
    "rerank_p99_ms_max": 5.0,
}


def simulate(data_path: Path, slates: int, seed: int, out: Path) -> dict[str, Any]:
    from streamrec.apps.simulate import SimulationConfig, plot_curves, run_simulation
    from streamrec.core.datasets import load_movielens

    data = load_movielens(data_path)
    config = SimulationConfig(slates=slates, seed=seed)
    started = time.perf_counter()
    report = run_simulation(
        data, config, on_stage=lambda s: print(f"  seed {seed}: {s}", flush=True)
    )
    out.mkdir(parents=True, exist_ok=True)
    plot = plot_curves(report, out / f"online_rl_seed{seed}.png")
    (out / f"online_rl_seed{seed}.json").write_text(json.dumps(report.as_dict(), indent=2))
    ctr = {name: r.ctr for name, r in report.results.items()}
    dqn = report.results["dqn"]
    return {
        "ctr": ctr,
        "dqn_vs_base": ctr["dqn"] / ctr["base"],
        "dqn_vs_popular": ctr["dqn"] / ctr["popular"],
        "dqn_vs_random": ctr["dqn"] / ctr["random"],
        "dqn_curve": dqn.curve,
        "base_curve": report.results["base"].curve,
        "learner": dqn.extra,
        "seconds": round(time.perf_counter() - started, 1),
        "plot": str(plot),
    }


def learner_throughput(slates: int = 3000, k: int = 10, dim: int = 64) -> dict[str, float]:
    """Transitions/s through join + replay + training at the default replay ratio."""
    from streamrec.schemas.events import ClickEvent, ImpressionEvent, PolicyLog
    from streamrec.trainer.models.dueling_dqn import DuelingDQN, DuelingDQNConfig
    from streamrec.trainer.online import FeedbackJoiner
    from streamrec.trainer.rl import DQNLearner, ReplayBuffer, state_dim

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    n_items, size = 2000, state_dim(dim)
    table = rng.normal(size=(n_items, dim)).astype(np.float32)
    index = {f"i{i}": i for i in range(n_items)}
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    events: list[Any] = []
    for s in range(slates):
        shown = [f"i{i}" for i in rng.choice(n_items, k, replace=False)]
        at = t0 + timedelta(seconds=s)
        log = PolicyLog(
            content_version=1, state=rng.normal(size=size).round(4).tolist(), propensities=[1.0] * k
        )
        events.append(
            ImpressionEvent(
                user_id=f"u{s % 300}",
                request_id=f"r{s}",
                item_ids=shown,
                model="bpr+dqn",
                ts=at,
                policy=log,
            )
        )
        events.append(
            ClickEvent(
                user_id=f"u{s % 300}",
                item_id=shown[0],
                request_id=f"r{s}",
                ts=at + timedelta(seconds=0.5),
            )
        )
    joiner = FeedbackJoiner(lambda ids: {i: index[i] for i in ids}, 1, size, window_s=5.0)
    buffer = ReplayBuffer(50_000, size, 50)
    learner = DQNLearner(DuelingDQN(DuelingDQNConfig(state_dim=size, item_dim=dim)))
    train_every, batch = 8, learner.config.batch_size
    started, cpu_started = time.perf_counter(), time.process_time()
    transitions, owed = 0, 0.0
    for chunk in range(0, len(events), 200):  # consumer batches
        closed = joiner.observe(events[chunk : chunk + 200]) + (
            [] if chunk + 200 < len(events) else joiner.flush()
        )
        for t in closed:
            buffer.push(t)
        transitions += len(closed)
        owed += len(closed) / train_every
        while owed >= 1 and len(buffer) >= batch:
            owed -= 1
            learner.update(buffer.sample(batch).to_batch(table))
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    # Wall time counts whatever else the machine runs; CPU time is what the learner costs on
    # a core of its own (one torch thread, so the two agree on an idle machine).
    return {
        "transitions": transitions,
        "updates": learner.steps,
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu, 2),
        "transitions_per_s": transitions / seconds,
        "transitions_per_cpu_s": transitions / cpu,
        "updates_per_s": learner.steps / seconds,
    }


def rerank_latency(data_path: Path, calls: int = 2000) -> dict[str, float]:
    """p50/p99 ms of RLServer.rerank with 100 candidates, on a real registry and catalog."""
    from streamrec.core.datasets import load_movielens
    from streamrec.core.db import create_db_engine
    from streamrec.core.ids import IdRegistry
    from streamrec.stores.model_registry import ModelRegistry
    from streamrec.stores.schema import create_schema
    from streamrec.trainer.doc2vec import Doc2VecModel
    from streamrec.trainer.models.dueling_dqn import DuelingDQN, DuelingDQNConfig
    from streamrec.trainer.policy import ActiveModels, RLServer
    from streamrec.trainer.rl import Exploration, state_dim

    torch.set_num_threads(1)
    data = load_movielens(data_path)
    with tempfile.TemporaryDirectory(prefix="rerank-bench-") as tmp:
        engine = create_db_engine(f"sqlite:///{tmp}/bench.db")
        create_schema(engine)
        ids = IdRegistry(engine)
        registry = ModelRegistry(engine, Path(tmp) / "models")
        d2v = Doc2VecModel().fit(data.items, ids)
        dim = d2v.item_vectors().shape[1]
        registry.register("doc2vec", d2v, activate=True)
        registry.register(
            "dqn",
            DuelingDQN(DuelingDQNConfig(state_dim=state_dim(dim), item_dim=dim)).eval(),
            activate=True,
        )
        server = RLServer(
            ActiveModels(registry, check_every_s=2.0),
            ids,
            Exploration("epsilon_greedy", 0.05),
            seed=0,
        )
        items = list(data.items)
        rng = np.random.default_rng(0)
        stats = {"ratings": "20", "rating_sum": "70", "clicks": "5", "impressions": "40"}
        timings = []
        for _ in range(calls):
            candidates = [items[i] for i in rng.choice(len(items), 100, replace=False)]
            recent = [items[i] for i in rng.choice(len(items), 50, replace=False)]
            t0 = time.perf_counter()
            server.rerank(candidates, recent, stats, 10).policy_log()
            timings.append((time.perf_counter() - t0) * 1000)
        engine.dispose()
    ms = np.asarray(timings[100:])  # after warm-up (first loads, caches)
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "calls": len(ms),
    }


def table(figures: dict[str, Any]) -> str:
    lines = ["policy      " + "".join(f"seed {s:<9}" for s in figures["seeds"])]
    for policy in ("random", "popular", "base", "dqn"):
        row = "".join(f"{figures['seeds'][s]['ctr'][policy]:<14.4f}" for s in figures["seeds"])
        lines.append(f"{policy:<12}{row}")
    lines.append(
        "dqn / base  "
        + "".join(f"{figures['seeds'][s]['dqn_vs_base']:<14.3f}" for s in figures["seeds"])
    )
    lr, rr = figures["learner"], figures["rerank"]
    lines.append(
        f"learner: {lr['transitions_per_s']:,.0f} transitions/s wall, "
        f"{lr['transitions_per_cpu_s']:,.0f} per CPU second "
        f"({lr['updates_per_s']:,.0f} updates/s of 64)"
    )
    lines.append(
        f"rerank=dqn, 100 candidates: p50 {rr['p50_ms']:.2f} ms, p99 {rr['p99_ms']:.2f} ms"
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ML100K, help="a MovieLens folder")
    parser.add_argument("--slates", type=int, default=3000, help="slates per policy and seed")
    parser.add_argument("--seeds", default="0", help="comma-separated simulator seeds")
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "benchmarks")
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"no MovieLens data at {args.data}: pass --data", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    print("simulator (the DQN's loop runs through Kafka; minutes per seed)", flush=True)
    figures: dict[str, Any] = {
        "slates": args.slates,
        "seeds": {s: simulate(args.data, args.slates, s, args.out) for s in seeds},
    }
    print("learner throughput", flush=True)
    figures["learner"] = learner_throughput()
    print("rerank latency", flush=True)
    figures["rerank"] = rerank_latency(args.data)
    ratios = [f["dqn_vs_base"] for f in figures["seeds"].values()]
    above = all(
        f["dqn_vs_popular"] > 1.0 and f["dqn_vs_random"] > 1.0 for f in figures["seeds"].values()
    )
    met = (
        min(ratios) >= TARGETS["dqn_vs_base_min"]
        and above
        and figures["learner"]["transitions_per_s"] >= TARGETS["learner_transitions_per_s_min"]
        and figures["rerank"]["p99_ms"] <= TARGETS["rerank_p99_ms_max"]
    )
    print(table(figures))
    print(json.dumps({"figures": figures, "targets": TARGETS, "met": met}))
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
