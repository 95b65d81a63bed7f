"""The one training loop for every torch recommender.

Seeded, CPU threads set explicitly, Adam, validation after every epoch with early stopping on
one metric (NDCG@10 by default, AUC for click models), and the best epoch's weights restored.
Progress goes to an optional ``rich.progress.Progress`` the caller owns (the CLI), so the
library itself never writes to the terminal.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from rich.progress import Progress

from streamrec.core.errors import InvalidInput
from streamrec.trainer.data import Interactions, count_batches, iter_batches

if TYPE_CHECKING:  # trainer.models imports this module for TrainConfig
    from streamrec.trainer.models.base import Recommender

log = logging.getLogger(__name__)

Validator = Callable[["Recommender"], dict[str, float]]


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 2048
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 5  # epochs without improvement of ``metric`` before stopping
    metric: str = "ndcg@10"
    seed: int = 0
    threads: int = 0  # 0: half the cores (at least 1); the machine usually runs other work
    # Validate before the first epoch too, as epoch 0, which may stay the best: a warm start
    # then never ends below the score it started from (the carried-over weights are kept).
    validate_start: bool = False


@dataclass
class History:
    epochs: list[dict[str, float]] = field(default_factory=list)  # epoch, loss, seconds, metrics
    best_epoch: int = 0
    best_metric: float = -math.inf
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "epochs": self.epochs,
            "best_epoch": self.best_epoch,
            "best_metric": self.best_metric,
            "seconds": self.seconds,
        }


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # some libraries still read the global state
    torch.manual_seed(seed)


def set_threads(threads: int) -> int:
    n = threads or max(1, (os.cpu_count() or 2) // 2)
    torch.set_num_threads(n)
    return n


def _batch_options(model: Recommender) -> dict[str, float]:
    cfg = model.config
    opts: dict[str, float] = {}
    for name in ("neg", "label_threshold", "max_len", "stride"):
        if hasattr(cfg, name):
            opts[name] = getattr(cfg, name)
    return opts


def fit(
    model: Recommender,
    train: Interactions,
    validate: Validator | None = None,
    config: TrainConfig | None = None,
    progress: Progress | None = None,
) -> History:
    """Train ``model`` in place on ``train``; with ``validate``, stop early and keep the best."""
    config = config or TrainConfig()
    if config.epochs < 1:
        raise InvalidInput("epochs must be at least 1")
    seed_everything(config.seed)
    set_threads(config.threads)
    rng = np.random.default_rng(config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    history, best_state, stale = History(), None, 0
    n_batches = count_batches(model.input_kind, train, config.batch_size, **_batch_options(model))
    task = progress.add_task("training", total=config.epochs * n_batches) if progress else None
    started = time.perf_counter()
    if config.validate_start and validate is not None:
        best_state = _start_record(model, validate, config, history)
    for epoch in range(1, config.epochs + 1):
        t0 = time.perf_counter()
        loss = _train_epoch(model, train, optimizer, rng, config, progress, task)
        record: dict[str, float] = {"epoch": epoch, "loss": loss}
        if validate is not None:
            record.update(validate(model))
        record["seconds"] = time.perf_counter() - t0
        history.epochs.append(record)
        log.info("epoch %d %s", epoch, {k: round(v, 4) for k, v in record.items()})
        score = record.get(config.metric, -loss)  # without validation: lowest loss wins
        if progress is not None and task is not None:
            progress.update(
                task, description=f"epoch {epoch} loss {loss:.4f} {config.metric} {score:.4f}"
            )
        if score > history.best_metric:
            history.best_metric, history.best_epoch, stale = score, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= config.patience:
                log.info("early stop at epoch %d (best %d)", epoch, history.best_epoch)
                break
    if progress is not None and task is not None:
        # An early stop ran fewer batches than planned: the bar ends full, at what really ran.
        progress.update(task, total=len(history.epochs) * n_batches)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    history.seconds = time.perf_counter() - started
    return history


def _start_record(
    model: Recommender, validate: Validator, config: TrainConfig, history: History
) -> dict[str, Any]:
    """Epoch 0: the untrained model's validation, the best so far; its weights to restore."""
    t0 = time.perf_counter()
    record: dict[str, float] = {"epoch": 0, **validate(model)}
    record["seconds"] = time.perf_counter() - t0
    history.epochs.append(record)
    history.best_metric, history.best_epoch = record.get(config.metric, -math.inf), 0
    log.info("epoch 0 (before training) %s", {k: round(v, 4) for k, v in record.items()})
    return copy.deepcopy(model.state_dict())


def _train_epoch(
    model: Recommender,
    train: Interactions,
    optimizer: torch.optim.Optimizer,
    rng: np.random.Generator,
    config: TrainConfig,
    progress: Progress | None,
    task: Any,
) -> float:
    model.train()
    total, count = 0.0, 0
    batches = iter_batches(model.input_kind, train, config.batch_size, rng, **_batch_options(model))
    for batch in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = model.loss(batch)
        loss.backward()
        optimizer.step()
        total += float(loss.detach())
        count += 1
        if progress is not None:
            progress.advance(task)
    return total / max(count, 1)
