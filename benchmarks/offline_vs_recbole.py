"""Offline quality and training time: streamrec against RecBole 1.2.1, same data, same run.

    python benchmarks/offline_vs_recbole.py                   # both sides (installs RecBole)
    python benchmarks/offline_vs_recbole.py --ours-only       # streamrec only, no install
    python benchmarks/offline_vs_recbole.py --models bpr,pop  # a subset
    python benchmarks/offline_vs_recbole.py --models sasrec --ours-only --seed 1 \
        --model-set stride=10 --train-set lr=5e-4                # try one setting

Pairs and protocols (RecBole's defaults for ml-100k, see /work/shared/peers/recbole.md):

* Pop vs Pop, BPR vs BPR, NCF vs NeuMF: each user's interactions shuffled and split 80/10/10,
  full ranking, items seen in earlier parts hidden, every held-out interaction a positive.
* Pop: same protocol and candidate set on both sides; the scores differ. Ours counts each
  item's training interactions. RecBole 1.2.1's Pop runs one epoch of its training loader
  (batches of 1,024 interactions plus one sampled negative each) and does
  ``item_cnt[item] = item_cnt[item] + 1`` per batch: repeated indices add 1 once, negatives
  count too, so it scores the number of batches an item appears in, which saturates for every
  popular item (ties broken by index). ``recbole_pop_counts`` reproduces that on our split and
  lands on RecBole's figure (the script prints it under the table), so the Pop ratio above 1 is
  RecBole's counting, not a different protocol.
* Wide & Deep vs WideDeep: label rating >= 4, random 80/10/10 over all interactions, AUC and
  log loss. Both see user age, gender and occupation (ours: age in ml-1m's seven groups, from
  users.csv / u.user), genres and the item's release year (ours: year and decade, from the
  title).
* SASRec vs SASRec: time-ordered leave-one-out, max length 50, full ranking, seen items not
  hidden. Ours also learns one score offset for items already in its input (``repeat_score``,
  see trainer/models/sasrec.py); RecBole's has none, and ``--model-set repeat_score=false``
  runs ours without it. A full RecBole SASRec run takes one to two hours here (145-250
  s/epoch), so by default the script times ``--recbole-sasrec-epochs`` epochs side by side and
  takes RecBole's final quality from the cached full run recorded in recbole.md (the table says
  "cached"; that run used seed 2020). ``--recbole-sasrec-epochs 0`` runs RecBole's full SASRec
  instead.
* Our SASRec on the sampled protocol (100 negatives) next to the paper's ML-1M figures, for
  orientation only (different data).

Both sides split with their own random generator, so the rows in each part differ while the
protocol is the same; ``--seed`` seeds both. Training seconds include per-epoch validation on
both sides. RecBole runs with jemalloc preloaded where the machine has it (recbole.md: 1.5-2x
faster SASRec).

RecBole lives in its own virtual environment under benchmarks/peers/ (it needs numpy<2 and
old setuptools); torch is installed there from the CPU wheel index before RecBole so nothing
pulls CUDA.
"""

from __future__ import annotations

import argparse
import ctypes.util
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamrec.core.datasets import load_movielens  # noqa: E402
from streamrec.core.db import create_db_engine  # noqa: E402
from streamrec.core.ids import IdRegistry  # noqa: E402
from streamrec.stores.schema import create_schema  # noqa: E402
from streamrec.trainer.data import Interactions, build, sample_negatives  # noqa: E402
from streamrec.trainer.evaluate import evaluate, make_validator, protocol_split  # noqa: E402
from streamrec.trainer.loop import TrainConfig, fit  # noqa: E402
from streamrec.trainer.models import MODELS, build_model, train_config  # noqa: E402
from streamrec.trainer.models.base import Query, Recommender  # noqa: E402

PEERS = ROOT / "benchmarks" / "peers"
VENV = PEERS / "recbole-venv"
RECBOLE_PINS = [
    "recbole==1.2.1",
    "setuptools>=77.0.3,<81",
    "numpy<2",
    "pandas<2.3",
    "scipy<1.14",
    "scikit-learn<1.6",
    "ray==2.6.3",
]
# RecBole's full SASRec run on this machine (recbole.md): best valid at epoch 17, stopped at 28.
CACHED_RECBOLE_SASREC = {
    "ndcg@10": 0.0609,
    "hr@10": 0.1251,
    "recall@10": 0.1251,
    "mrr@10": 0.0417,
    "seconds_per_epoch": 145.0,
}
PAPER_SASREC_ML1M = {"hr@10": 0.8245, "ndcg@10": 0.5905}

PAIRS = {  # ours → (RecBole model, protocol, key metric)
    "pop": ("Pop", "random-split", "ndcg@10"),
    "bpr": ("BPR", "random-split", "ndcg@10"),
    "ncf": ("NeuMF", "random-split", "ndcg@10"),
    "wide_deep": ("WideDeep", "random-split", "auc"),
    "sasrec": ("SASRec", "loo-full", "ndcg@10"),
}


@dataclass(frozen=True)
class _PopConfig:
    n_users: int
    n_items: int


class Popularity(Recommender):
    """Items ranked by a popularity count (the same for every user): by default the number of
    training interactions; ``counts`` overrides it (see ``recbole_pop_counts``)."""

    input_kind = "none"

    def __init__(self, train: Interactions, counts: np.ndarray | None = None) -> None:
        super().__init__(_PopConfig(train.n_users, train.n_items))
        if counts is None:
            counts = np.bincount(train.items, minlength=train.n_items)
        self.register_buffer("counts", torch.from_numpy(counts.astype(np.float32)))

    def full_scores(self, query: Query) -> Tensor:
        return self.counts.expand(len(query.users), -1)


def recbole_pop_counts(train: Interactions, seed: int, batch_size: int = 2048) -> np.ndarray:
    """The counts RecBole 1.2.1's Pop ends up with, reproduced to explain its lower NDCG.

    Its TraditionalTrainer runs one epoch of the ordinary training loader: pointwise batches of
    1,024 shuffled training interactions plus one uniform negative each (2,048 rows), and
    ``Pop.calculate_loss`` does ``item_cnt[item] = item_cnt[item] + 1`` over the batch's item
    column, label ignored. An indexed assignment with repeated indices adds 1 once, so an item
    scores the number of *batches* it appears in, as positive or as sampled negative: counts
    saturate at ~78 for every item with more than a few dozen interactions and ties among the
    popular items are broken by index, not by popularity.
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(train))
    negatives = sample_negatives(train, train.users[order], 1, rng)[:, 0]
    per_batch = batch_size // 2  # RecBole: batch_size // (1 + negatives per positive)
    counts = np.zeros(train.n_items, dtype=np.int64)
    for start in range(0, len(order), per_batch):
        rows = order[start : start + per_batch]
        batch_items = np.concatenate([train.items[rows], negatives[start : start + per_batch]])
        counts[np.unique(batch_items)] += 1
    return counts


def run_ours(
    name: str,
    inter: Interactions,
    seed: int,
    threads: int,
    model_set: dict[str, Any] | None = None,
    train_set: dict[str, Any] | None = None,
) -> dict[str, Any]:
    _, protocol, _ = PAIRS[name]
    click = name == "wide_deep"
    exclude_seen = name != "sasrec"  # RecBole hides seen items for general models only
    split = protocol_split(inter, protocol, seed=seed, click=click)
    train = inter.subset(split.train)
    started = time.perf_counter()
    if name == "pop":
        model: Recommender = Popularity(train)
        epochs = 0
    else:
        model = build_model(name, inter, seed=seed, **(model_set or {}))
        validate = make_validator(model, inter, split, protocol, exclude_seen=exclude_seen)
        overrides = {"seed": seed, "threads": threads, **(train_set or {})}
        history = fit(model, train, validate, train_config(name, **overrides))
        epochs = len(history.epochs)
    seconds = time.perf_counter() - started
    result = evaluate(model, inter, split, protocol, exclude_seen=exclude_seen)
    out = {"metrics": result, "seconds": seconds, "epochs": epochs}
    if name == "pop":  # the same protocol with RecBole's Pop counting (see recbole_pop_counts)
        counting = Popularity(train, recbole_pop_counts(train, seed))
        out["recbole_counting"] = evaluate(counting, inter, split, protocol)
    if name == "sasrec":
        out["sampled"] = evaluate(model, inter, split, "loo-sampled")
        repeat = getattr(model, "repeat_w", None)  # None with --model-set repeat_score=false
        out["repeat_w"] = None if repeat is None else float(repeat.detach())
    return out


# --- RecBole side -----------------------------------------------------------------------------

RUNNER = r"""
import json, sys, time
from recbole.quick_start import run_recbole
model, config = sys.argv[1], json.loads(sys.argv[2])
started = time.perf_counter()
result = run_recbole(model=model, dataset="ml-100k", config_dict=config, saved=False)
seconds = time.perf_counter() - started
print("RESULT " + json.dumps({"test": {k: float(v) for k, v in result["test_result"].items()},
                              "seconds": seconds}))
"""


def ensure_recbole() -> Path:
    python = VENV / "bin" / "python"
    if python.exists():
        probe = subprocess.run([python, "-c", "import recbole"], capture_output=True)
        if probe.returncode == 0:
            return python
    PEERS.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    # CPU torch first, from the CPU index, so RecBole's requirement is already satisfied. Where
    # that index is unreachable, pip's own configuration (a wheelhouse, a mirror) must have it.
    cpu_index = ["--index-url", "https://download.pytorch.org/whl/cpu"]
    if subprocess.run([*pip, "torch==2.13.0", *cpu_index]).returncode != 0:
        subprocess.run([*pip, "torch==2.13.0"], check=True)
    subprocess.run([*pip, *RECBOLE_PINS], check=True)
    return python


def recbole_config(model: str, epochs: int | None, seed: int = 2020) -> dict[str, Any]:
    config: dict[str, Any] = {
        "use_gpu": False,
        "seed": seed,
        "reproducibility": True,
        "epochs": epochs or (30 if model == "SASRec" else 50),
        "worker": 0,
        "show_progress": False,
    }
    if model == "SASRec":
        config["train_neg_sample_args"] = None  # cross-entropy over all items
    if model == "WideDeep":
        config["metrics"] = ["AUC", "LogLoss"]
        config["valid_metric"] = "AUC"
    else:
        config["metrics"] = ["Recall", "MRR", "NDCG", "Hit"]
        config["topk"] = [10]
    return config


def recbole_env(threads: int) -> dict[str, str]:
    """RecBole's process environment: its checkpoint reload needs torch's pre-2.6 pickle
    loading, and jemalloc, where the machine has it, makes its SASRec 1.5-2x faster
    (recbole.md), so it is preloaded to give the peer its best showing."""
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "OMP_NUM_THREADS": str(threads)}
    jemalloc = ctypes.util.find_library("jemalloc")
    if jemalloc:
        env["LD_PRELOAD"] = " ".join(filter(None, (env.get("LD_PRELOAD"), jemalloc)))
    return env


def run_recbole(
    python: Path, model: str, epochs: int | None, threads: int, seed: int = 2020
) -> dict[str, Any]:
    config = recbole_config(model, epochs, seed)
    with tempfile.TemporaryDirectory() as workdir:  # RecBole writes logs into the cwd
        proc = subprocess.run(
            [str(python), "-c", RUNNER, model, json.dumps(config)],
            capture_output=True,
            text=True,
            cwd=workdir,
            env=recbole_env(threads),
        )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"RecBole {model} failed:\n{proc.stderr[-2000:]}")
    raw = json.loads(lines[-1].removeprefix("RESULT "))
    names = {
        "ndcg@10": "ndcg@10",
        "hit@10": "hr@10",
        "recall@10": "recall@10",
        "mrr@10": "mrr@10",
        "auc": "auc",
        "logloss": "logloss",
    }
    metrics = {names[k.lower()]: v for k, v in raw["test"].items() if k.lower() in names}
    return {"metrics": metrics, "seconds": raw["seconds"]}


# --- report -----------------------------------------------------------------------------------


def _row(
    pair: str, metric: str, ours: dict[str, Any], theirs: dict[str, Any] | None, note: str = ""
) -> str:
    mine = ours["metrics"].get(metric, float("nan"))
    if theirs is None:
        return f"{pair:<24} {metric:<9} {mine:>8.4f} {'-':>8} {'-':>6} {ours['seconds']:>8.1f}"
    other = theirs["metrics"].get(metric, float("nan"))
    # Log loss: lower is better, so the ratio is inverted to keep ">= 1.0 means we win".
    ratio = other / mine if metric == "logloss" else mine / other if other else float("nan")
    return (
        f"{pair:<24} {metric:<9} {mine:>8.4f} {other:>8.4f} {ratio:>6.3f} "
        f"{ours['seconds']:>8.1f} {theirs['seconds']:>8.1f} {note}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "ml-100k"))
    parser.add_argument("--models", default=",".join(PAIRS))
    parser.add_argument("--ours-only", action="store_true", help="skip RecBole")
    parser.add_argument(
        "--recbole-sasrec-epochs",
        type=int,
        default=2,
        help="epochs of RecBole SASRec to time (0: full 30-epoch run)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--seed",
        type=int,
        default=2020,
        help="seeds both sides (RecBole's cached SASRec figure is seed 2020)",
    )
    parser.add_argument(
        "--model-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a model config field (JSON value), e.g. stride=10",
    )
    parser.add_argument(
        "--train-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a training setting (JSON value), e.g. lr=5e-4",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = [n for n in args.models.split(",") if n]
    unknown = set(names) - set(PAIRS)
    if unknown:
        parser.error(f"unknown models: {', '.join(sorted(unknown))}")
    config_fields = [MODELS[n].config_cls for n in names if n in MODELS]
    if args.model_set and not config_fields:
        parser.error("--model-set: no model in --models has a config (pop has none)")
    model_set = parse_settings(parser, "--model-set", args.model_set, config_fields)
    train_set = parse_settings(parser, "--train-set", args.train_set, [TrainConfig])

    with tempfile.TemporaryDirectory() as tmp:
        engine = create_db_engine(f"sqlite:///{tmp}/bench.db")
        create_schema(engine)
        inter = build(load_movielens(args.data), IdRegistry(engine))
        ours = {
            name: run_ours(name, inter, args.seed, args.threads, model_set, train_set)
            for name in names
        }

    theirs: dict[str, dict[str, Any] | None] = dict.fromkeys(names)
    notes: dict[str, str] = {}
    if not args.ours_only:
        python = ensure_recbole()
        for name in names:
            peer = PAIRS[name][0]
            epochs = args.recbole_sasrec_epochs or None if peer == "SASRec" else None
            result = run_recbole(python, peer, epochs, args.threads, args.seed)
            if peer == "SASRec" and args.recbole_sasrec_epochs:
                per_epoch = result["seconds"] / args.recbole_sasrec_epochs
                result = {
                    "metrics": CACHED_RECBOLE_SASREC,
                    "seconds": per_epoch * 28,
                }  # cached run's 28 epochs at today's speed
                notes[name] = (
                    f"RecBole quality cached (recbole.md, seed 2020), its time = 28 "
                    f"epochs x {per_epoch:.0f} s measured now"
                )
            theirs[name] = result

    if model_set or train_set:
        print(f"ours with model config {model_set} and training settings {train_set}")
    print(
        f"{'pair':<24} {'metric':<9} {'ours':>8} {'RecBole':>8} {'ratio':>6} "
        f"{'ours_s':>8} {'theirs_s':>8}"
    )
    for name in names:
        peer, _, key = PAIRS[name]
        pair = f"{name} vs {peer}"
        metrics = (
            ("auc", "logloss") if key == "auc" else ("ndcg@10", "hr@10", "recall@10", "mrr@10")
        )
        for metric in metrics:
            print(
                _row(
                    pair,
                    metric,
                    ours[name],
                    theirs[name],
                    notes.get(name, "") if metric == key else "",
                )
            )
        print(f"{'':<24} epochs run: {ours[name]['epochs']}")
    if "pop" in ours:
        counting = ours["pop"]["recbole_counting"]
        print(
            f"\nPop with RecBole's per-batch counting reproduced (see recbole_pop_counts), same "
            f"split and protocol as ours: NDCG@10 {counting['ndcg@10']:.4f}, "
            f"HR@10 {counting['hr@10']:.4f}, MRR@10 {counting['mrr@10']:.4f}"
        )
    if "sasrec" in ours:
        sampled = ours["sasrec"]["sampled"]
        paper = PAPER_SASREC_ML1M
        print(
            f"\nSASRec, 100 sampled negatives (orientation only: paper figures are ML-1M): "
            f"HR@10 {sampled['hr@10']:.4f} (paper {paper['hr@10']}), "
            f"NDCG@10 {sampled['ndcg@10']:.4f} (paper {paper['ndcg@10']})"
        )
        repeat = ours["sasrec"]["repeat_w"]
        if repeat is None:
            print("Our SASRec ran without repeat_score (plain SASRec)")
        else:
            print(
                f"Our SASRec learned a score of {repeat:+.2f} for items already in its input "
                "(repeat_score; RecBole's SASRec has none; plain SASRec: "
                "--model-set repeat_score=false)"
            )
    print(json.dumps(summary(names, ours, theirs)))


def parse_settings(
    parser: argparse.ArgumentParser, option: str, pairs: list[str], classes: list[type]
) -> dict[str, Any]:
    """KEY=VALUE pairs as a dict (values parsed as JSON, else kept as text); every key must be
    a field of each class in ``classes``."""
    settings: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep:
            parser.error(f"{option} expects KEY=VALUE, got {pair!r}")
        for cls in classes:
            known = {f.name for f in dataclasses.fields(cls)}
            if key not in known:
                parser.error(
                    f"{option}: {cls.__name__} has no field {key!r} "
                    f"(fields: {', '.join(sorted(known))})"
                )
        try:
            settings[key] = json.loads(text)
        except json.JSONDecodeError:
            settings[key] = text
    return settings


def summary(
    names: list[str], ours: dict[str, Any], theirs: dict[str, dict[str, Any] | None]
) -> dict[str, Any]:
    """The closing JSON line: per pair our and RecBole's key metric and seconds, the ratio, and
    whether quality (ratio >= 1) and time (ours <= theirs) were met; Pop is reported but not
    judged (RecBole's Pop miscounts, see recbole_pop_counts)."""
    figures: dict[str, Any] = {}
    met = True
    for name in names:
        key = PAIRS[name][2]
        mine, other = ours[name], theirs[name]
        row: dict[str, Any] = {
            "metric": key,
            "ours": mine["metrics"].get(key),
            "ours_seconds": mine["seconds"],
        }
        if other is not None:
            value = other["metrics"].get(key)
            row |= {
                "theirs": value,
                "theirs_seconds": other["seconds"],
                "ratio": row["ours"] / value if value else None,
            }
            if name != "pop":
                met &= bool(row["ratio"] and row["ratio"] >= 1.0)
                met &= mine["seconds"] <= other["seconds"]
        figures[name] = row
    targets = {"ratio_min": 1.0, "ours_seconds_max": "theirs_seconds"}
    return {"figures": figures, "targets": targets, "met": met and None not in theirs.values()}


if __name__ == "__main__":
    main()
