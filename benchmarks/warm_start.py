"""A warm-started retrain against a from-scratch one: wall time to the same validation score.

    python benchmarks/warm_start.py                        # mf, bpr, ncf, wide_deep
    python benchmarks/warm_start.py --models sasrec --threads 2

On ``../shared/data/ml-100k`` (ratings by event time): round one trains each model from
scratch on the oldest ``--first`` share of the ratings, with only the catalog items and users
those mention (so round two brings new users and items, as a live system's registry grows);
round two trains on every rating twice, once from scratch and once warm-started from round
one (``trainer.warm_start``: known rows carried over, new ids appended), with the same
training settings, split (time-ordered leave-one-out, full ranking; AUC for Wide & Deep) and
early stopping. Round one never trains on round two's validation or test rows: they are each
user's last two ratings overall, which are either after the cut or were round one's own held
out rows.

Reported per model: the from-scratch run's best validation score and the wall time to the epoch
that reached it (and to its early stop); the warm run's score before any training, the wall
time until an epoch first reached the from-scratch best (construction and the start
validation included), its own best, and both test scores. As in ``trainer.service``, the warm
run validates before training (epoch 0) and keeps the carried-over weights if no epoch beats
them. Times include per-epoch validation.
The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from streamrec.core.datasets import InteractionData, load_movielens
from streamrec.core.db import create_db_engine
from streamrec.core.ids import IdRegistry
from streamrec.stores.schema import create_schema
from streamrec.trainer.data import Interactions, build
from streamrec.trainer.evaluate import evaluate, make_validator, protocol_split
from streamrec.trainer.loop import History, fit
from streamrec.trainer.models import build_model, train_config
from streamrec.trainer.models.base import Recommender
from streamrec.trainer.warm_start import warm_start_model

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k"


def first_part(raw: InteractionData, share: float) -> InteractionData:
    """The oldest ``share`` of the ratings and the catalog items and users they mention."""
    ratings = raw.ratings[: int(len(raw.ratings) * share)]
    items = {r.item_id for r in ratings}
    users = {r.user_id for r in ratings}
    return InteractionData(
        raw.name,
        ratings,
        {k: v for k, v in raw.items.items() if k in items},
        {k: v for k, v in raw.users.items() if k in users},
    )


def metric_of(name: str) -> str:
    return "auc" if name == "wide_deep" else "ndcg@10"


def run(
    name: str, net: Recommender, inter: Interactions, opts: dict[str, Any], warm: bool = False
) -> tuple[History, dict[str, float]]:
    """Train ``net`` on ``inter``'s training part; its history and test metrics. A warm run
    validates before training too (epoch 0), as ``trainer.service`` does."""
    split = protocol_split(inter, "loo-full", seed=opts["seed"], click=name == "wide_deep")
    validate = make_validator(net, inter, split, "loo-full")
    config = replace(train_config(name, **opts), validate_start=warm)
    history = fit(net, inter.subset(split.train), validate, config)
    return history, evaluate(net, inter, split, "loo-full")


def seconds_to(history: History, metric: str, target: float) -> float | None:
    """Cumulative epoch seconds until an epoch's ``metric`` first reaches ``target``."""
    total = 0.0
    for epoch in history.epochs:
        total += epoch["seconds"]
        if epoch.get(metric, float("-inf")) >= target:
            return total
    return None


def compare(
    name: str, first: Interactions, second: Interactions, opts: dict[str, Any]
) -> dict[str, Any]:
    metric = metric_of(name)
    previous = build_model(name, first, seed=opts["seed"])
    t0 = time.perf_counter()
    run(name, previous, first, opts)
    round_one = time.perf_counter() - t0

    cold = build_model(name, second, seed=opts["seed"])
    t0 = time.perf_counter()
    cold_history, cold_test = run(name, cold, second, opts)
    cold_total = time.perf_counter() - t0
    target = cold_history.best_metric
    cold_to_best = seconds_to(cold_history, metric, target)

    t0 = time.perf_counter()
    warm, began = warm_start_model(name, previous, second, seed=opts["seed"])
    overhead = time.perf_counter() - t0
    warm_history, warm_test = run(name, warm, second, opts, warm=True)
    warm_total = time.perf_counter() - t0
    start = warm_history.epochs[0][metric]  # epoch 0: before any training
    reached = seconds_to(warm_history, metric, target)  # epoch 0's validation included
    warm_to_target = None if reached is None else overhead + reached
    return {
        "model": name,
        "metric": metric,
        "round_one_seconds": round(round_one, 1),
        "new_users": began.new_users,
        "new_items": began.new_items,
        "cold_best": round(target, 4),
        "cold_best_epoch": cold_history.best_epoch,
        "cold_seconds_to_best": round(cold_to_best or 0.0, 1),
        "cold_seconds_total": round(cold_total, 1),
        "warm_start_score": round(start, 4),
        "warm_seconds_to_cold_best": None if warm_to_target is None else round(warm_to_target, 1),
        "warm_best": round(warm_history.best_metric, 4),
        "warm_best_epoch": warm_history.best_epoch,
        "warm_seconds_total": round(warm_total, 1),
        "ratio_to_best": None
        if warm_to_target is None or not cold_to_best
        else round(warm_to_target / cold_to_best, 3),
        "cold_test": round(cold_test[metric], 4),
        "warm_test": round(warm_test[metric], 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--models", default="mf,bpr,ncf,wide_deep")
    parser.add_argument("--first", type=float, default=0.8, help="share of round one")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    raw = load_movielens(args.data)
    opts = {"seed": args.seed, "threads": args.threads}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_db_engine(f"sqlite:///{tmp}/ids.db")
        create_schema(engine)
        ids = IdRegistry(engine)
        first = build(first_part(raw, args.first), ids)
        second = build(raw, ids)
        print(
            f"round one: {len(first)} ratings, {first.n_users} users, {first.n_items} items; "
            f"round two: {len(second)} ratings, {second.n_users} users, {second.n_items} items"
        )
        for name in args.models.split(","):
            result = compare(name, first, second, opts)
            results.append(result)
            print(
                f"{name:<10} {result['metric']}: scratch best {result['cold_best']} at epoch "
                f"{result['cold_best_epoch']} in {result['cold_seconds_to_best']} s "
                f"(stopped after {result['cold_seconds_total']} s); warm starts at "
                f"{result['warm_start_score']}, reaches it in "
                f"{result['warm_seconds_to_cold_best']} s (ratio {result['ratio_to_best']}), "
                f"best {result['warm_best']} at epoch {result['warm_best_epoch']} "
                f"(stopped after {result['warm_seconds_total']} s); test scratch "
                f"{result['cold_test']} / warm {result['warm_test']}",
                flush=True,
            )
        engine.dispose()
    print(json.dumps({"threads": args.threads, "first": args.first, "results": results}))


if __name__ == "__main__":
    main()
