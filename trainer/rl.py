"""The pure parts of online reinforcement learning: state, rewards, replay and DQN updates.

Nothing here talks to Kafka, Redis or the registry; ``trainer/online.py`` turns events
into ``Transition``s, pushes them into a ``ReplayBuffer`` and calls ``DQNLearner.update``.

Candidates are stored as id-registry item indices, not vectors: a transition then costs
2·K ints instead of 2·K·D floats (100 candidates of 64-d vectors: 800 B instead of 51 kB), and
the content vectors are looked up from the current item matrix when a batch is sampled.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from streamrec.core.errors import InvalidInput
from streamrec.schemas.events import ExplorationMethod
from streamrec.trainer.models.dueling_dqn import DuelingDQN, DuelingDQNConfig

RATING_MIN, RATING_MAX = 0.5, 5.0
# user_state's features after the mean item vector, in this order. They are computed from the
# feature store's user hash (stores/features.py), so ``user_stats()`` can be passed as is.
STATE_COUNTERS = ("ratings", "clicks", "impressions", "mean_rating", "ctr")
COUNT_SCALE = 1000.0  # a count of COUNT_SCALE (or more) maps to 1
# Recent items averaged into the user state. The edge computes it (/v1/rank, rerank=dqn:
# ``trainer.policy.ContentRows.state``) and logs it with each slate, and the online learner
# trains on that logged state: what the policy is trained on is what it served.
STATE_RECENT_ITEMS = 50


# -- rewards and state ------------------------------------------------------------------------
def reward_from_rating(rating: float) -> float:
    """A rating 0.5..5 scaled linearly to -1..1 (0.5 → -1, 2.75 → 0, 5 → 1)."""
    if not RATING_MIN <= rating <= RATING_MAX:
        raise InvalidInput(f"rating must be in [{RATING_MIN}, {RATING_MAX}], not {rating}")
    return 2.0 * (rating - RATING_MIN) / (RATING_MAX - RATING_MIN) - 1.0


def state_dim(item_dim: int) -> int:
    """Size of ``user_state`` vectors for content vectors of size ``item_dim``."""
    return item_dim + len(STATE_COUNTERS)


def user_state(
    recent_item_vectors: np.ndarray, counters: Mapping[str, float | str], item_dim: int
) -> np.ndarray:
    """(item_dim + 5,) the documented state: the mean content vector of the user's recent
    items (zeros for a user with none), then log-scaled ratings, clicks and impressions
    counts in [0, 1], the mean rating scaled to [-1, 1] (0 without ratings) and the CTR.

    ``counters`` is the feature store's user hash (``ratings``, ``rating_sum``, ``clicks``,
    ``impressions``; values may be Redis strings); missing counters count as 0.
    """
    vectors = np.asarray(recent_item_vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != item_dim:
        raise InvalidInput(
            f"recent item vectors must have shape (L, {item_dim}), got {vectors.shape}"
        )
    mean = vectors.mean(axis=0) if len(vectors) else np.zeros(item_dim, np.float32)
    ratings, rating_sum, clicks, impressions = (
        _counter(counters, name) for name in ("ratings", "rating_sum", "clicks", "impressions")
    )
    mean_rating = 0.0
    if ratings:  # clipped: float rounding of the sum must not step outside 0.5..5
        mean_rating = reward_from_rating(_clip(rating_sum / ratings, RATING_MIN, RATING_MAX))
    ctr = _clip(clicks / impressions, 0.0, 1.0) if impressions else 0.0
    extra = [_log_scale(ratings), _log_scale(clicks), _log_scale(impressions), mean_rating, ctr]
    return np.concatenate([mean, np.asarray(extra, np.float32)])


def _counter(counters: Mapping[str, float | str], name: str) -> float:
    try:
        value = float(counters.get(name, 0) or 0)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"counter {name!r} must be a number, not {counters[name]!r}") from exc
    if not math.isfinite(value) or (value < 0 and name != "rating_sum"):
        raise InvalidInput(f"counter {name!r} must be a finite count, not {value}")
    return value


def _log_scale(count: float) -> float:
    # Counts are heavy-tailed; log keeps a 10-event user distinguishable from a new one.
    return min(math.log1p(count) / math.log1p(COUNT_SCALE), 1.0)


def _clip(x: float, lo: float, hi: float) -> float:
    return min(max(x, lo), hi)


# -- transitions and replay -------------------------------------------------------------------
@dataclass(frozen=True)
class Transition:
    state: np.ndarray  # (S,) user_state when the slate was served
    candidates: Sequence[int]  # (C,) item indices of the slate, C ≥ 1
    action: int  # index into candidates of the item the reward is for
    reward: float
    next_state: np.ndarray  # (S,) user_state at the next slate
    next_candidates: Sequence[int]  # (C',) its item indices; may be empty when done
    done: bool  # no bootstrapping from the next slate


@dataclass(frozen=True)
class ReplaySample:
    """Index form of a sampled batch; ``to_batch`` looks the content vectors up."""

    states: np.ndarray  # (B, S) float32
    candidates: np.ndarray  # (B, K) int64 item indices, -1 = padding
    actions: np.ndarray  # (B,) int64
    rewards: np.ndarray  # (B,) float32
    next_states: np.ndarray  # (B, S) float32
    next_candidates: np.ndarray  # (B, K) int64, -1 = padding
    done: np.ndarray  # (B,) bool

    def to_batch(self, item_vectors: np.ndarray | Tensor) -> DQNBatch:
        """Tensors for ``DQNLearner.update``; ``item_vectors`` is (n_items, D), row = index."""
        table = torch.as_tensor(item_vectors, dtype=torch.float32)  # (N, D)
        for idx in (self.candidates, self.next_candidates):
            if idx.size and idx.max() >= table.shape[0]:
                raise InvalidInput(
                    f"item index {int(idx.max())} is outside the item matrix of "
                    f"{table.shape[0]} rows"
                )
        items, mask = _gather(table, self.candidates)
        next_items, next_mask = _gather(table, self.next_candidates)
        return DQNBatch(
            states=torch.from_numpy(self.states),
            items=items,
            mask=mask,
            actions=torch.from_numpy(self.actions),
            rewards=torch.from_numpy(self.rewards),
            next_states=torch.from_numpy(self.next_states),
            next_items=next_items,
            next_mask=next_mask,
            done=torch.from_numpy(self.done),
        )


def _gather(table: Tensor, idx: np.ndarray) -> tuple[Tensor, Tensor]:
    index = torch.from_numpy(idx)  # (B, K)
    mask = index >= 0  # (B, K)
    return table[index.clamp(min=0)], mask  # (B, K, D), (B, K)


@dataclass(frozen=True)
class DQNBatch:
    states: Tensor  # (B, S)
    items: Tensor  # (B, C, D)
    mask: Tensor  # (B, C) bool
    actions: Tensor  # (B,) int64 index into C
    rewards: Tensor  # (B,)
    next_states: Tensor  # (B, S)
    next_items: Tensor  # (B, C', D)
    next_mask: Tensor  # (B, C') bool; an all-False row has no next value
    done: Tensor  # (B,) bool


class ReplayBuffer:
    """A ring of the newest ``capacity`` transitions in preallocated arrays: its memory is
    fixed at construction (``nbytes``) whatever the stream length; sampling is uniform, with
    replacement, from a seeded generator."""

    def __init__(self, capacity: int, state_dim: int, max_candidates: int, seed: int = 0) -> None:
        if capacity < 1 or state_dim < 1 or max_candidates < 1:
            raise InvalidInput("capacity, state_dim and max_candidates must be ≥ 1")
        self.capacity, self.state_dim, self.max_candidates = capacity, state_dim, max_candidates
        k = max_candidates
        self._states = np.zeros((capacity, state_dim), np.float32)
        self._next_states = np.zeros((capacity, state_dim), np.float32)
        # int32 indices: the id registry stays far below 2**31 items, and it halves the ring.
        self._candidates = np.full((capacity, k), -1, np.int32)
        self._next_candidates = np.full((capacity, k), -1, np.int32)
        self._actions = np.zeros(capacity, np.int32)
        self._rewards = np.zeros(capacity, np.float32)
        self._done = np.zeros(capacity, np.bool_)
        self._rng = np.random.default_rng(seed)
        self._next = 0  # total pushes; the slot is _next % capacity
        self.size = 0

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._arrays())

    def _arrays(self) -> tuple[np.ndarray, ...]:
        return (
            self._states,
            self._next_states,
            self._candidates,
            self._next_candidates,
            self._actions,
            self._rewards,
            self._done,
        )

    def __len__(self) -> int:
        return self.size

    def push(self, t: Transition) -> None:
        self._check(t)
        i = self._next % self.capacity
        self._states[i] = t.state
        self._next_states[i] = t.next_state
        self._candidates[i] = -1
        self._candidates[i, : len(t.candidates)] = t.candidates
        self._next_candidates[i] = -1
        self._next_candidates[i, : len(t.next_candidates)] = t.next_candidates
        self._actions[i], self._rewards[i], self._done[i] = t.action, t.reward, t.done
        self._next += 1
        self.size = min(self.size + 1, self.capacity)

    def _check(self, t: Transition) -> None:
        s, k = self.state_dim, self.max_candidates
        for name, vec in (("state", t.state), ("next_state", t.next_state)):
            if np.shape(vec) != (s,):
                raise InvalidInput(f"{name} must have shape ({s},), got {np.shape(vec)}")
        if not 1 <= len(t.candidates) <= k or len(t.next_candidates) > k:
            raise InvalidInput(
                f"candidates must hold 1..{k} items and next_candidates 0..{k}, got "
                f"{len(t.candidates)} and {len(t.next_candidates)}"
            )
        if not 0 <= t.action < len(t.candidates):
            raise InvalidInput(
                f"action {t.action} is not an index into {len(t.candidates)} candidates"
            )
        if min(t.candidates) < 0 or (len(t.next_candidates) and min(t.next_candidates) < 0):
            raise InvalidInput("item indices must be ≥ 0")
        if not math.isfinite(t.reward):
            raise InvalidInput(f"reward must be finite, not {t.reward}")

    def sample(self, batch_size: int) -> ReplaySample:
        if self.size == 0:
            raise InvalidInput("cannot sample from an empty replay buffer")
        rows = self._rng.integers(0, self.size, batch_size)  # (B,)
        return self._take(rows)

    def _take(self, rows: np.ndarray) -> ReplaySample:
        return ReplaySample(
            states=self._states[rows],
            candidates=_trim(self._candidates[rows]),
            actions=self._actions[rows].astype(np.int64),
            rewards=self._rewards[rows],
            next_states=self._next_states[rows],
            next_candidates=_trim(self._next_candidates[rows]),
            done=self._done[rows],
        )

    def newest(self, n: int) -> ReplaySample:
        """The ``n`` most recent transitions, oldest first (inspection and tests)."""
        n = min(n, self.size)
        rows = (np.arange(self._next - n, self._next) % self.capacity).astype(np.int64)
        return self._take(rows)


def _trim(candidates: np.ndarray) -> np.ndarray:
    """(B, K') int64 without the padding columns no row uses: the ring is as wide as the
    largest slate allowed, a batch only as wide as its largest slate (slates of 10 in a ring
    of 50 would otherwise cost five times the compute)."""
    width = max(int((candidates >= 0).sum(axis=1).max(initial=0)), 1)
    return candidates[:, :width].astype(np.int64)


# -- learning ---------------------------------------------------------------------------------
class DQNLearner:
    """Online + target networks and the double-DQN update.

    The hyper-parameters come from ``config`` (by default the model's own config, so a
    snapshot records how it was trained). ``policy()`` gives a frozen copy to publish or
    serve: never serve from ``online`` while it trains.
    """

    def __init__(self, model: DuelingDQN, config: DuelingDQNConfig | None = None) -> None:
        self.config = config or model.config
        arch = (model.config.state_dim, model.config.item_dim)
        if (self.config.state_dim, self.config.item_dim) != arch:
            raise InvalidInput(
                f"learner config is for (state_dim, item_dim) = "
                f"{(self.config.state_dim, self.config.item_dim)}, "
                f"the model is {arch}"
            )
        self.online = model.train()
        self.target = copy.deepcopy(model).eval()
        self.target.requires_grad_(False)
        # Parameter lists held once, and multi-tensor (foreach) kernels: at these sizes a step
        # is bound by per-tensor call overhead, not arithmetic.
        self._online_params: list[torch.Tensor] = list(self.online.parameters())
        self._target_params: list[torch.Tensor] = list(self.target.parameters())
        self.optimizer = torch.optim.Adam(
            self._online_params,
            lr=self.config.lr,
            weight_decay=self.config.weight_decay,
            foreach=True,
        )
        self.steps = 0

    @torch.no_grad()
    def targets(self, batch: DQNBatch) -> Tensor:
        """(B,) r + gamma·Q_target(s', argmax_a Q_online(s', a)) (0 when done or no next slate).
        The online net picks, the target net evaluates: this curbs max-operator optimism."""
        best = self.online(batch.next_states, batch.next_items, batch.next_mask).argmax(1)  # (B,)
        q_next = self.target(batch.next_states, batch.next_items, batch.next_mask)  # (B, C')
        value = q_next.gather(1, best[:, None])[:, 0]  # (B,)
        bootstrap = batch.next_mask.any(dim=1) & ~batch.done  # (B,)
        value = torch.where(bootstrap, value, torch.zeros_like(value))  # -inf rows never leak
        return batch.rewards + self.config.gamma * value

    def update(self, batch: DQNBatch) -> float:
        """One gradient step on ``batch``; returns the Huber loss before the step."""
        _check_actions(batch)
        target = self.targets(batch)  # (B,)
        q = self.online(batch.states, batch.items, batch.mask)  # (B, C)
        q_taken = q.gather(1, batch.actions[:, None])[:, 0]  # (B,)
        loss = F.huber_loss(q_taken, target, delta=self.config.huber_delta)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self._online_params, self.config.grad_clip, foreach=True)
        self.optimizer.step()
        self.steps += 1
        self._sync_target()
        return float(loss.detach())

    @torch.no_grad()
    def _sync_target(self) -> None:
        if self.config.tau > 0.0:  # Polyak averaging: θ' ← (1 - τ)θ' + τθ
            torch._foreach_lerp_(self._target_params, self._online_params, self.config.tau)
        elif self.steps % self.config.target_sync_every == 0:
            self.target.load_state_dict(self.online.state_dict())

    def policy(self) -> DuelingDQN:
        """A frozen eval-mode copy of the online network, safe to publish or serve."""
        snapshot = copy.deepcopy(self.online).eval()
        snapshot.requires_grad_(False)
        return snapshot


def _check_actions(batch: DQNBatch) -> None:
    # An action pointing at padding would train on a -inf Q-value: refuse the batch instead.
    c = batch.items.shape[1]
    a = batch.actions
    if a.dim() != 1 or a.shape[0] != batch.states.shape[0] or a.min() < 0 or a.max() >= c:
        raise InvalidInput(f"actions must be {batch.states.shape[0]} indices in [0, {c})")
    if not batch.mask.gather(1, a[:, None]).all():
        raise InvalidInput("an action points at a masked (padding) candidate")


# -- exploration ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Exploration:
    """How a slate is drawn from Q-values at serving time.

    * ``greedy``: best first; every propensity is 1.
    * ``epsilon_greedy``: each position takes the best remaining item with probability
      1 - epsilon, else a uniformly random remaining one.
    * ``softmax``: positions are drawn without replacement with probability proportional to
      exp(Q / temperature) (Plackett-Luce).

    ``propensities[p]`` is the probability that the item at position p was drawn there given
    the positions before it, which is what inverse-propensity estimators need.
    """

    method: ExplorationMethod = "greedy"
    epsilon: float = 0.1
    temperature: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.epsilon <= 1.0:
            raise InvalidInput(f"epsilon must be in [0, 1], not {self.epsilon}")
        if self.temperature <= 0.0:
            raise InvalidInput(f"temperature must be > 0, not {self.temperature}")

    def draw(
        self, q: np.ndarray, k: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """((n,) indices into ``q`` in serving order, (n,) propensities), n = min(k, len(q))."""
        q = np.asarray(q, dtype=np.float64)
        n = min(k, len(q))
        if self.method == "epsilon_greedy" and self.epsilon > 0.0:
            return _epsilon_greedy(q, n, self.epsilon, rng)
        if self.method == "softmax":
            return _plackett_luce(q / self.temperature, n, rng)
        return np.argsort(-q, kind="stable")[:n], np.ones(n)


def _epsilon_greedy(
    q: np.ndarray, n: int, epsilon: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    greedy = np.argsort(-q, kind="stable")
    taken = np.zeros(len(q), np.bool_)
    order, props = np.empty(n, np.int64), np.empty(n)
    g = 0
    for p in range(n):
        while taken[greedy[g]]:
            g += 1
        best, remaining = greedy[g], len(q) - p
        pick = best
        if rng.random() < epsilon:
            pick = np.flatnonzero(~taken)[rng.integers(remaining)]
        order[p] = pick
        props[p] = (1.0 - epsilon) * (pick == best) + epsilon / remaining
        taken[pick] = True
    return order, props


def _plackett_luce(
    logits: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    # Gumbel-top-n draws the whole ordering in one pass; the propensities then follow from
    # the softmax over what was left at each position.
    order = np.argsort(-(logits + rng.gumbel(size=len(logits))), kind="stable")[:n]
    left = np.ones(len(logits), np.bool_)
    props = np.empty(n)
    for p, pick in enumerate(order):
        rest = logits[left]
        props[p] = math.exp(logits[pick] - rest.max()) / np.exp(rest - rest.max()).sum()
        left[pick] = False
    return order, props
