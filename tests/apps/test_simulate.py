"""The user simulator: its click model, the shared script of users and dice, and one small run
of every policy, the DQN's through the embedded Kafka and the online-RL group."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from streamrec.apps import simulate_cli
from streamrec.apps.simulate import (
    POLICIES,
    Episode,
    SimulationConfig,
    World,
    _top,
    examination,
    plot_curves,
    run_simulation,
    run_static,
)
from streamrec.core.datasets import InteractionData, synthetic


def test_examination_falls_with_position_as_in_dcg() -> None:
    np.testing.assert_allclose(examination(3), [1.0, 1 / np.log2(3), 0.5])


def test_top_ranks_valid_unexcluded_items() -> None:
    scores = np.array([0.1, 0.9, 0.5, 0.7, 0.3])
    valid = np.array([True, True, True, False, True])
    assert _top(scores, 3, {1}, valid).tolist() == [2, 4, 0]
    assert _top(scores, 10, {0, 1, 2, 4}, valid).tolist() == []  # nothing left: empty slate


def _world(n_users: int = 3, n_items: int = 6) -> World:
    """Everyone loves item 0 and nothing else; the base ranker agrees, popularity does not."""
    taste = np.full((n_users, n_items), 0.5)
    taste[:, 0] = 5.0
    return World(
        data=InteractionData("toy", [], {}),
        past=InteractionData("toy", [], {}),
        user_ids=[f"u{u}" for u in range(n_users)],
        item_ids=[f"i{i}" for i in range(n_items)],
        taste=taste,
        base=np.tile(np.linspace(1.0, 0.0, n_items), (n_users, 1)),
        popularity=np.arange(n_items, dtype=np.float64),
        seen=[set() for _ in range(n_users)],
        users=np.arange(n_users),
        valid_items=np.ones(n_items, np.bool_),
    )


def test_static_policies_meet_the_same_users_and_dice() -> None:
    world = _world()
    config = SimulationConfig(
        slates=9, k=2, depth=2, attract_scale=50.0, checkpoints=3, policies=("base", "popular")
    )
    episode = Episode.draw(world, config)
    assert episode.users.shape == (9,) and episode.dice.shape == (9, 2)
    base = run_static(world, config, episode, "base")
    # Item 0 is clicked once per user (then it is seen and left out): 3 users, 3 clicks.
    assert (base.slates, base.shown, base.clicks) == (9, 18, 3)
    assert [n for n, _ in base.curve] == [3, 6, 9] and base.curve[-1][1] == base.ctr
    popular = run_static(world, config, episode, "popular")  # never shows item 0
    assert popular.clicks == 0
    assert run_static(world, config, episode, "base").clicks == base.clicks  # reproducible


def test_config_refuses_unknown_policies_and_shallow_candidates() -> None:
    with pytest.raises(Exception, match="policies must be among"):
        SimulationConfig(policies=("base", "oracle"))
    with pytest.raises(Exception, match="depth >= k"):
        SimulationConfig(k=20, depth=10)


@pytest.mark.kafka
def test_every_policy_runs_and_the_dqn_learns_through_kafka(tmp_path: Path) -> None:
    data = synthetic(n_users=60, n_items=40, n_events=1500, seed=1)
    config = SimulationConfig(
        slates=40,
        k=5,
        depth=10,
        base_epochs=2,
        oracle_epochs=2,
        sync_every=10,
        train_every=2,
        snapshot_every_updates=10,
        min_history=3,
    )
    stages: list[str] = []
    report = run_simulation(data, config, var_dir=tmp_path / "var", on_stage=stages.append)
    assert list(report.results) == ["random", "popular", "base", "dqn"]
    assert all(r.slates == 40 and r.shown == 200 for r in report.results.values())
    dqn = report.results["dqn"]
    # Every slate's 5 items became transitions once their windows closed (the last ones are
    # still open at the end), and the learner trained and published from them.
    assert 150 <= dqn.extra["transitions"] <= 200
    assert dqn.extra["updates"] >= 1 and dqn.extra["snapshots"] >= 1
    assert any("replaying" in s for s in stages)
    payload = report.as_dict()
    assert json.loads(json.dumps(payload))["results"]["dqn"]["slates"] == 40
    png = plot_curves(report, tmp_path / "ctr.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_rejects_bad_options_with_a_message() -> None:
    app = typer.Typer()
    app.callback()(lambda: None)  # a group, so the command keeps its name
    simulate_cli.register(app)
    result = CliRunner().invoke(app, ["simulate", "--policies", "base,oracle"])
    assert result.exit_code == 2
    assert "policies must be among" in result.output


def test_the_command_offers_the_simulators_policies() -> None:
    """`streamrec simulate` lives apart from the simulator (no PyTorch to register it)."""
    assert simulate_cli.POLICIES == POLICIES
