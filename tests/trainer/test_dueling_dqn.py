"""The dueling head: mean-centred advantages, masking, input checks and versioned snapshots."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import Engine

from streamrec.core.errors import InvalidInput
from streamrec.stores.model_registry import ModelRegistry
from streamrec.trainer.models.dueling_dqn import DuelingDQN, DuelingDQNConfig

torch.set_num_threads(1)

CONFIG = DuelingDQNConfig(state_dim=6, item_dim=5, hidden=(16, 8), adv_hidden=(8,))


def _model(seed: int = 0, **overrides: object) -> DuelingDQN:
    torch.manual_seed(seed)
    return DuelingDQN(replace(CONFIG, **overrides)).eval()  # type: ignore[arg-type]


def _value(model: DuelingDQN, states: torch.Tensor) -> torch.Tensor:
    return model.value(model.trunk(states))  # (B, 1) V(s)


def test_advantages_are_mean_centred_over_the_candidates() -> None:
    model = _model()
    states, items = torch.randn(4, 6), torch.randn(4, 7, 5)
    with torch.no_grad():
        q = model(states, items)  # (4, 7)
        centred = q - _value(model, states)  # = A - mean A
    assert q.shape == (4, 7)
    torch.testing.assert_close(centred.mean(dim=1), torch.zeros(4), atol=1e-6, rtol=0)
    assert centred.abs().max() > 1e-3  # not trivially zero: candidates do differ


def test_masked_candidates_are_left_out_of_the_mean_and_get_minus_inf() -> None:
    model = _model()
    states, items = torch.randn(3, 6), torch.randn(3, 5, 5)
    mask = torch.tensor([[True] * 5, [True, True, False, True, False], [False] * 4 + [True]])
    with torch.no_grad():
        q = model(states, items, mask)
        centred = q - _value(model, states)
        other = items.clone()
        other[~mask] = 100.0  # what sits under padding must not matter
        q_other = model(states, other, mask)
    assert torch.isneginf(q[~mask]).all() and torch.isfinite(q[mask]).all()
    for row in range(3):
        torch.testing.assert_close(
            centred[row][mask[row]].mean(), torch.tensor(0.0), atol=1e-6, rtol=0
        )
    torch.testing.assert_close(q[mask], q_other[mask])
    # The one valid candidate of the last row is worth exactly V(s).
    with torch.no_grad():
        torch.testing.assert_close(q[2, 4], _value(model, states)[2, 0])
    # Without a mask the full row agrees with an all-True mask.
    with torch.no_grad():
        torch.testing.assert_close(
            model(states, items), model(states, items, torch.ones(3, 5, dtype=torch.bool))
        )


def test_q_values_for_one_state_matches_the_batched_forward() -> None:
    model = _model(dropout=0.5).train()  # q_values must ignore dropout and restore the mode
    state, items = np.random.default_rng(0).normal(size=(2, 6)), np.ones((3, 5))
    items[1] = -1.0
    q = model.q_values(state[0], items.tolist())
    assert model.training
    assert q.shape == (3,) and q.dtype == np.float32
    with torch.no_grad():
        expected = model.eval()(
            torch.tensor(state[:1], dtype=torch.float32),
            torch.tensor(items[None], dtype=torch.float32),
        )[0]
    np.testing.assert_allclose(q, expected.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(q, model.q_values(state[0], items))


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda m: m(torch.randn(2, 7), torch.randn(2, 3, 5)), r"states must have shape \(B, 6\)"),
        (lambda m: m(torch.randn(6), torch.randn(1, 3, 5)), r"states must have shape \(B, 6\)"),
        (lambda m: m(torch.randn(2, 6), torch.randn(2, 3, 4)), r"shape \(2, C, 5\)"),
        (lambda m: m(torch.randn(2, 6), torch.randn(3, 3, 5)), r"shape \(2, C, 5\)"),
        (lambda m: m(torch.randn(2, 6), torch.randn(2, 0, 5)), r"C ≥ 1"),
        (
            lambda m: m(
                torch.randn(2, 6), torch.randn(2, 3, 5), torch.ones(2, 4, dtype=torch.bool)
            ),
            r"mask must be a bool tensor of shape \(2, 3\)",
        ),
        (lambda m: m(torch.randn(2, 6), torch.randn(2, 3, 5), torch.ones(2, 3)), r"bool tensor"),
        (lambda m: m.q_values([0.0] * 5, [[0.0] * 5]), r"state must have shape \(6,\)"),
        (lambda m: m.q_values([0.0] * 6, []), r"items must have shape \(C, 5\)"),
        (lambda m: m.q_values([0.0] * 6, [[0.0] * 4]), r"items must have shape \(C, 5\)"),
        (lambda m: m.q_values([0.0] * 6, [[0.0] * 5, [0.0]]), r"vectors of size 5"),
        (lambda m: m.q_values([float("nan")] * 6, [[0.0] * 5]), r"finite"),
    ],
)
def test_wrong_shapes_name_the_expected_shape(call, expected: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInput, match=expected):
        call(_model())


@pytest.mark.parametrize("adv_hidden", [(8,), (), (8, 4)])
def test_the_frozen_copy_scores_as_the_network_and_ignores_later_training(
    adv_hidden: tuple[int, ...],
) -> None:
    model = _model(seed=3, adv_hidden=adv_hidden, dropout=0.5)
    rng = np.random.default_rng(1)
    state, items = rng.normal(size=6).astype(np.float32), rng.normal(size=(7, 5))
    frozen = model.frozen()
    expected = model.q_values(state, items)
    np.testing.assert_allclose(frozen.q_values(state, items), expected, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # the network trains on: the copy keeps the weights it was made of
        for parameter in model.parameters():
            parameter.add_(1.0)
    np.testing.assert_allclose(frozen.q_values(state, items), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(InvalidInput, match=r"\(6,\) state and \(C, 5\) items"):
        frozen.q_values(state, items[:, :4])


def test_config_rejects_settings_that_cannot_work() -> None:
    with pytest.raises(InvalidInput, match="gamma"):
        DuelingDQNConfig(gamma=1.0)
    with pytest.raises(InvalidInput, match="target_sync_every"):
        DuelingDQNConfig(tau=0.0, target_sync_every=0)


def test_registry_round_trip_gives_identical_q_values(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    models = ModelRegistry(sqlite_engine, tmp_path / "models")
    model = _model(seed=3, hidden=(12, 8), gamma=0.5)
    version = models.register("dqn", model, {"ctr": 0.1}, activate=True)
    assert version.artifact_class == "streamrec.trainer.models.dueling_dqn:DuelingDQN"
    assert version.config["hidden"] == [12, 8] and version.config["gamma"] == 0.5
    loaded = models.load("dqn")
    assert isinstance(loaded, DuelingDQN) and not loaded.training
    assert loaded.config == model.config  # tuples restored from JSON lists
    rng = np.random.default_rng(1)
    state, items = rng.normal(size=6), rng.normal(size=(20, 5))
    np.testing.assert_array_equal(loaded.q_values(state, items), model.q_values(state, items))
