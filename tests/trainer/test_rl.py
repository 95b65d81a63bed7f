"""Rewards, the user state, the bounded replay buffer and the double-DQN learner."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from streamrec.core.errors import InvalidInput
from streamrec.trainer.models.dueling_dqn import DuelingDQN, DuelingDQNConfig
from streamrec.trainer.rl import (
    DQNBatch,
    DQNLearner,
    ReplayBuffer,
    Transition,
    reward_from_rating,
    state_dim,
    user_state,
)

torch.set_num_threads(1)


# -- rewards and state ------------------------------------------------------------------------
@pytest.mark.parametrize(("rating", "reward"), [(0.5, -1.0), (2.75, 0.0), (5.0, 1.0), (4.0, 5 / 9)])
def test_reward_scales_ratings_linearly_to_minus_one_one(rating: float, reward: float) -> None:
    assert reward_from_rating(rating) == pytest.approx(reward)


@pytest.mark.parametrize("rating", [0.0, 5.5, float("nan")])
def test_reward_rejects_ratings_out_of_range(rating: float) -> None:
    with pytest.raises(InvalidInput, match=r"\[0.5, 5.0\]"):
        reward_from_rating(rating)


def test_user_state_is_mean_vector_then_normalised_counters() -> None:
    recent = np.array([[1.0, 0.0, 2.0], [3.0, 2.0, 0.0]])
    stats = {"ratings": "3", "rating_sum": "15", "clicks": "1", "impressions": "4", "last_ts": "9"}
    s = user_state(recent, stats, item_dim=3)
    assert s.shape == (state_dim(3),) == (8,) and s.dtype == np.float32
    np.testing.assert_allclose(s[:3], [2.0, 1.0, 1.0])
    log = np.log1p([3, 1, 4]) / np.log1p(1000)
    np.testing.assert_allclose(s[3:], [*log, 1.0, 0.25], rtol=1e-6)  # mean rating 5 → 1
    cold = user_state(np.zeros((0, 3)), {}, item_dim=3)  # a brand-new user: all zeros
    np.testing.assert_array_equal(cold, np.zeros(8, np.float32))
    with pytest.raises(InvalidInput, match=r"\(L, 3\)"):
        user_state(np.zeros((2, 4)), {}, item_dim=3)
    with pytest.raises(InvalidInput, match="clicks"):
        user_state(recent, {"clicks": "many"}, item_dim=3)


# -- replay -----------------------------------------------------------------------------------
def _transition(i: int, s: int = 4, n_items: int = 50) -> Transition:
    c = 1 + i % 5
    cands = [(i + j) % n_items for j in range(c)]
    return Transition(
        np.full(s, i, np.float32),
        cands,
        i % c,
        float(i),
        np.full(s, -i, np.float32),
        cands[:-1],
        done=i % 2 == 0,
    )


def test_replay_memory_is_bounded_and_keeps_the_newest() -> None:
    tracemalloc.start()
    try:
        buf = ReplayBuffer(capacity=200, state_dim=4, max_candidates=5, seed=0)
        bound = buf.nbytes
        before, _ = tracemalloc.get_traced_memory()
        for i in range(10 * 200):
            buf.push(_transition(i))
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert buf.nbytes == bound == 200 * (2 * 4 * 4 + 2 * 5 * 4 + 4 + 4 + 1)
    assert after - before < 16_384  # no per-push growth: a leak of even 8 B/push shows
    assert len(buf) == 200
    newest = buf.newest(200)
    np.testing.assert_array_equal(newest.rewards, np.arange(1800, 2000, dtype=np.float32))
    last = newest.candidates[-1]  # i = 1999: 5 candidates 1999 % 50 ..
    np.testing.assert_array_equal(last, [49, 0, 1, 2, 3])
    # Batches are only as wide as their widest slate: every next slate here has 4 items.
    np.testing.assert_array_equal(newest.next_candidates[-1], [49, 0, 1, 2])
    sampled = set(buf.sample(1000).rewards.tolist())  # uniform: only the newest, most of them
    assert sampled <= set(map(float, range(1800, 2000))) and len(sampled) > 180


def test_sampling_is_seeded() -> None:
    a, b = (ReplayBuffer(100, 4, 5, seed=7) for _ in range(2))
    for i in range(300):
        a.push(_transition(i))
        b.push(_transition(i))
    np.testing.assert_array_equal(a.sample(32).rewards, b.sample(32).rewards)


def test_replay_rejects_transitions_that_do_not_fit() -> None:
    buf = ReplayBuffer(10, state_dim=4, max_candidates=3)
    good = _transition(2)
    with pytest.raises(InvalidInput, match=r"\(4,\)"):
        buf.push(Transition(np.zeros(5), [1], 0, 0.0, np.zeros(4), [], True))
    with pytest.raises(InvalidInput, match=r"1\.\.3"):
        buf.push(Transition(good.state, [1, 2, 3, 4], 0, 0.0, good.next_state, [], True))
    with pytest.raises(InvalidInput, match="action 2"):
        buf.push(Transition(good.state, [1, 2], 2, 0.0, good.next_state, [], True))
    with pytest.raises(InvalidInput, match="empty"):
        buf.sample(4)


def test_to_batch_looks_up_vectors_and_masks_padding() -> None:
    buf = ReplayBuffer(4, state_dim=4, max_candidates=4)
    buf.push(Transition(np.zeros(4), [2, 0], 1, 1.0, np.ones(4), [1], False))
    buf.push(Transition(np.zeros(4), [1, 2, 0], 1, 1.0, np.ones(4), [], False))
    table = np.arange(6, dtype=np.float32).reshape(3, 2)  # item i = [2i, 2i+1]
    batch = buf.newest(2).to_batch(table)
    # As wide as the widest slate of the batch (3), not the ring (4); padding is masked.
    assert batch.items.shape == (2, 3, 2)
    torch.testing.assert_close(batch.items[0, :2], torch.tensor([[4.0, 5.0], [0.0, 1.0]]))
    assert batch.mask.tolist() == [[True, True, False], [True, True, True]]
    assert batch.next_mask.tolist() == [[True], [False]]
    with pytest.raises(InvalidInput, match="outside the item matrix of 2 rows"):
        buf.newest(1).to_batch(table[:2])


# -- learning ---------------------------------------------------------------------------------
class _Fixed(nn.Module):
    """Stands in for a network: returns the same Q-values whatever the input."""

    def __init__(self, q: list[list[float]]) -> None:
        super().__init__()
        self.q = torch.tensor(q)

    def forward(self, states: Tensor, items: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.q


def _batch(rewards: list[float], done: list[bool], next_mask: list[list[bool]]) -> DQNBatch:
    b, c = len(rewards), len(next_mask[0])
    return DQNBatch(
        states=torch.zeros(b, 2),
        items=torch.zeros(b, c, 3),
        mask=torch.ones(b, c, dtype=torch.bool),
        actions=torch.zeros(b, dtype=torch.long),
        rewards=torch.tensor(rewards),
        next_states=torch.zeros(b, 2),
        next_items=torch.zeros(b, c, 3),
        next_mask=torch.tensor(next_mask),
        done=torch.tensor(done),
    )


def test_double_dqn_target_uses_online_argmax_and_target_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = DuelingDQNConfig(state_dim=2, item_dim=3, hidden=(4,), adv_hidden=(4,), gamma=0.9)
    learner = DQNLearner(DuelingDQN(config))
    # Row 0: online picks item 1 (5.0), the target values it at 3.0 — not its own max 10.0,
    # nor the online 5.0. Row 1 is terminal, row 2 has no next slate: reward only.
    monkeypatch.setattr(learner, "online", _Fixed([[1.0, 5.0, 2.0]] * 3))
    monkeypatch.setattr(learner, "target", _Fixed([[10.0, 3.0, 7.0]] * 3))
    batch = _batch(
        [0.5, 1.0, -1.0],
        [False, True, False],
        [[True, True, True], [True, True, True], [False, False, False]],
    )
    torch.testing.assert_close(learner.targets(batch), torch.tensor([0.5 + 0.9 * 3.0, 1.0, -1.0]))


def test_target_network_sync_soft_and_hard() -> None:
    torch.manual_seed(0)
    soft = DuelingDQNConfig(state_dim=2, item_dim=3, hidden=(4,), adv_hidden=(4,), tau=0.25)
    learner = DQNLearner(DuelingDQN(soft))
    before = [p.clone() for p in learner.target.parameters()]
    learner.update(_batch([1.0, 0.0], [True, True], [[True] * 3] * 2))
    for old, t, o in zip(
        before, learner.target.parameters(), learner.online.parameters(), strict=True
    ):
        torch.testing.assert_close(t, 0.75 * old + 0.25 * o)
    hard = DuelingDQNConfig(
        state_dim=2, item_dim=3, hidden=(4,), adv_hidden=(4,), tau=0.0, target_sync_every=3
    )
    learner = DQNLearner(DuelingDQN(hard))
    batch = _batch([1.0, 0.0], [True, True], [[True] * 3] * 2)

    def same() -> bool:
        pairs = zip(learner.target.parameters(), learner.online.parameters(), strict=True)
        return all(torch.equal(t, o) for t, o in pairs)

    learner.update(batch)
    learner.update(batch)
    assert not same()
    learner.update(batch)
    assert same()


def test_update_refuses_actions_on_padding() -> None:
    config = DuelingDQNConfig(state_dim=2, item_dim=3, hidden=(4,), adv_hidden=(4,))
    learner = DQNLearner(DuelingDQN(config))
    batch = _batch([1.0], [True], [[True] * 3])
    padded = DQNBatch(**{**batch.__dict__, "mask": torch.tensor([[False, True, True]])})
    with pytest.raises(InvalidInput, match="masked"):
        learner.update(padded)
    with pytest.raises(InvalidInput, match="state_dim"):
        DQNLearner(DuelingDQN(config), DuelingDQNConfig(state_dim=5, item_dim=3))


def test_dqn_learns_the_best_item_of_a_contextual_bandit() -> None:
    """8 items with random content vectors, random user contexts; item 3 pays 1, others 0.
    Uniformly explored slates (shuffled, so position says nothing) are enough for the learner
    to rank item 3 first, clearly, for unseen contexts within a few hundred updates."""
    rng = np.random.default_rng(0)
    n_items, d, s, best = 8, 8, 6, 3
    items = rng.normal(size=(n_items, d)).astype(np.float32)
    config = DuelingDQNConfig(
        state_dim=s,
        item_dim=d,
        hidden=(32, 16),
        adv_hidden=(16,),
        gamma=0.5,
        lr=5e-3,
        tau=0.05,
        batch_size=32,
    )
    torch.manual_seed(0)
    learner = DQNLearner(DuelingDQN(config))
    buf = ReplayBuffer(capacity=2048, state_dim=s, max_candidates=n_items, seed=0)
    state = rng.normal(size=s).astype(np.float32)
    # The logged stream: random slates, a uniformly random pick. Enough distinct contexts
    # matter more than more updates: 600 transitions let some seeds overfit the contexts.
    for _ in range(2000):
        slate = rng.permutation(n_items)
        action = int(rng.integers(n_items))
        nxt = rng.normal(size=s).astype(np.float32)
        reward = 1.0 if slate[action] == best else 0.0
        next_slate = rng.permutation(n_items).tolist()
        done = bool(rng.random() < 0.5)
        buf.push(Transition(state, slate.tolist(), action, reward, nxt, next_slate, done))
        state = nxt
    losses = [learner.update(buf.sample(config.batch_size).to_batch(items)) for _ in range(300)]
    assert np.isfinite(losses).all()  # TD loss is noisy (bootstrapped, 1-in-8 rewards): no trend
    policy = learner.policy()
    for _ in range(20):
        slate = rng.permutation(n_items)
        q = policy.q_values(rng.normal(size=s), items[slate])
        assert slate[int(np.argmax(q))] == best
        assert np.sort(q)[-1] - np.sort(q)[-2] > 0.2  # clearly first (seeds 0-9: ≥ 0.6)
