from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from rich.progress import Progress

from streamrec.core.errors import InvalidInput
from streamrec.trainer.data import Interactions, count_batches, leave_one_out
from streamrec.trainer.evaluate import make_validator
from streamrec.trainer.loop import TrainConfig, fit
from streamrec.trainer.models import build_model

FAST = TrainConfig(epochs=3, batch_size=512, lr=1e-2, threads=1)


def _weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_same_seed_same_weights(tiny: Interactions) -> None:
    runs = []
    for _ in range(2):
        model = build_model("ncf", tiny, gmf_dim=8, mlp_dim=8, hidden=(16, 8))
        fit(model, tiny, None, FAST)
        runs.append(_weights(model))
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


def test_early_stopping_restores_the_best_epoch(tiny: Interactions) -> None:
    model = build_model("bpr", tiny, dim=8)
    snapshots: list[list[torch.Tensor]] = []
    scores = iter([0.1, 0.5, 0.4, 0.3, 0.2, 0.9])

    def validate(m: torch.nn.Module) -> dict[str, float]:
        snapshots.append(_weights(m))
        return {"ndcg@10": next(scores)}

    config = TrainConfig(epochs=6, batch_size=512, lr=1e-2, patience=2, threads=1)
    history = fit(model, tiny, validate, config)
    assert [e["epoch"] for e in history.epochs] == [1, 2, 3, 4]  # 2 epochs without progress
    assert history.best_epoch == 2 and history.best_metric == 0.5
    assert all(torch.equal(a, b) for a, b in zip(_weights(model), snapshots[1], strict=True))


def test_validating_the_start_keeps_it_when_no_epoch_beats_it(tiny: Interactions) -> None:
    model = build_model("bpr", tiny, dim=8)
    start = _weights(model)
    scores = iter([0.5, 0.4, 0.3, 0.45])

    def validate(m: torch.nn.Module) -> dict[str, float]:
        return {"ndcg@10": next(scores)}

    config = TrainConfig(epochs=5, batch_size=512, lr=1e-2, patience=3, threads=1)
    history = fit(model, tiny, validate, replace(config, validate_start=True))
    assert [e["epoch"] for e in history.epochs] == [0, 1, 2, 3]
    assert "loss" not in history.epochs[0]  # nothing trained yet
    assert history.best_epoch == 0 and history.best_metric == 0.5
    assert all(torch.equal(a, b) for a, b in zip(_weights(model), start, strict=True))


def test_history_and_progress(tiny: Interactions) -> None:
    split = leave_one_out(tiny)
    model = build_model("sasrec", tiny, dim=16, max_len=10, inner=32)
    with Progress(disable=True) as progress:
        train = tiny.subset(split.train)
        history = fit(model, train, make_validator(model, tiny, split), FAST, progress)
        task = progress.tasks[0]
        per_epoch = count_batches("sequence", train, FAST.batch_size, max_len=10)
        batches = len(history.epochs) * per_epoch
        assert task.completed == task.total == batches  # full at the end, early stop or not
    record = history.epochs[0]
    assert {"epoch", "loss", "ndcg@10", "hr@10", "seconds"} <= set(record)
    assert history.seconds > 0


def test_zero_epochs_is_refused(tiny: Interactions) -> None:
    with pytest.raises(InvalidInput):
        fit(build_model("bpr", tiny), tiny, None, TrainConfig(epochs=0))
