"""The edge of the DQN: the active ``dqn`` and ``doc2vec`` versions, hot-swapped, and the
inference the original model server offered (bulk Q-values, ranking, text embeddings).

``ActiveModels`` serves the ACTIVE registry version of a model and re-reads which version is
active at most every ``check_every_s`` seconds, so a snapshot published by the online learner
(or ``streamrec train``) is served on a later request without a restart, while most requests
cost no SQL at all. Loaded models are cached per name; an old model stays usable by requests
that already hold it.

Every method here is blocking (SQL, torch, gensim): routes call them through
``asyncio.to_thread``, one hop per request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamrec.core.errors import ConfigurationError, InvalidInput, NotFound
from streamrec.core.ids import IdRegistry
from streamrec.schemas.events import PolicyLog
from streamrec.stores.model_registry import ModelRegistry
from streamrec.trainer.doc2vec import Doc2VecModel
from streamrec.trainer.models.dueling_dqn import DuelingDQN, FrozenDuelingDQN
from streamrec.trainer.rl import (
    Exploration,
    content_vectors,
    state_dim,
    state_from_history,
)

DQN = "dqn"
DOC2VEC = "doc2vec"
_EXPECTED: dict[str, type] = {DQN: DuelingDQN, DOC2VEC: Doc2VecModel}
_HOW_TO_ACTIVATE = {
    DQN: "run the online learner (it publishes dqn snapshots) or activate a dqn version",
    DOC2VEC: "run `streamrec train --model doc2vec` or activate a doc2vec version",
}
MAX_NAMED = 10  # items named in an error message; the rest are counted


@dataclass(frozen=True)
class Loaded:
    name: str
    version: int
    model: Any


@dataclass
class _Slot:
    loaded: Loaded | None = None
    checked_at: float = float("-inf")


class ActiveModels:
    """The active version of registry models, reloaded when the active version changes."""

    def __init__(
        self,
        registry: ModelRegistry,
        check_every_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._check_every = check_every_s
        self._clock = clock
        self._slots: dict[str, _Slot] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, name: str) -> Loaded:
        """The active version of ``name``; NotFound when none is active."""
        with self._lock(name):  # one thread loads; the others wait and reuse it
            slot = self._slots.setdefault(name, _Slot())
            now = self._clock()
            if now - slot.checked_at >= self._check_every:
                slot.loaded = self._refresh(name, slot.loaded)
                slot.checked_at = now
            if slot.loaded is None:
                raise NotFound(f"no {name} version is active: {_HOW_TO_ACTIVATE.get(name, '')}")
            return slot.loaded

    def _lock(self, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())

    def _refresh(self, name: str, current: Loaded | None) -> Loaded | None:
        active = self._registry.active(name)
        if active is None:
            return None
        if current is not None and current.version == active.version:
            return current
        # Load that exact version: activation may move on between the two reads.
        model = self._registry.load(name, active.version)
        expected = _EXPECTED.get(name)
        if expected is not None and not isinstance(model, expected):
            raise ConfigurationError(
                f"{name} v{active.version} is a {type(model).__name__}, not a {expected.__name__}"
            )
        return Loaded(name, active.version, model)


@dataclass(frozen=True)
class Ranked:
    dqn_version: int
    doc2vec_version: int
    items: list[tuple[str, float]]  # (item id, Q-value), best first


@dataclass(frozen=True)
class Reranked:
    """A served slate and what the policy saw and did, for the impression's policy log."""

    dqn_version: int | None  # None: no dqn is active, the base order was served
    doc2vec_version: int
    items: list[tuple[str, float | None]]  # (item id, Q-value or None without a vector)
    state: np.ndarray  # (S,) the user state the Q-values were computed for
    exploration: Exploration
    propensities: list[float]  # per item of ``items``

    def policy_log(self) -> PolicyLog:
        """What goes into the slate's impression for the online learner (schemas.events)."""
        explore = self.exploration
        return PolicyLog(
            policy_version=self.dqn_version,
            content_version=self.doc2vec_version,
            state=[round(float(x), 6) for x in self.state],
            exploration=explore.method,
            epsilon=explore.epsilon if explore.method == "epsilon_greedy" else None,
            temperature=explore.temperature if explore.method == "softmax" else None,
            propensities=self.propensities,
        )


@dataclass(frozen=True)
class _Pair:
    """An active dqn and the doc2vec item table it was checked against."""

    dqn_version: int
    doc2vec_version: int
    dqn: FrozenDuelingDQN
    table: np.ndarray

    def q_values(self, state: np.ndarray, vectors: Mapping[str, np.ndarray]) -> np.ndarray:
        """(C,) Q-values of the items of ``vectors`` (at least one), in their order."""
        return self.dqn.q_values(state, np.stack(list(vectors.values())))


class RLServer:
    """Bulk Q-values, ranking by Q-value and Doc2Vec embeddings from the active versions."""

    def __init__(
        self,
        models: ActiveModels,
        ids: IdRegistry,
        exploration: Exploration | None = None,
        seed: int | None = None,
    ) -> None:
        self._models = models
        self._ids = ids
        self.exploration = exploration or Exploration()
        self._rng = np.random.default_rng(seed)
        self._rng_lock = threading.Lock()  # Generators are not thread-safe
        # Doc2VecModel.infer reseeds the gensim model's shared RNG before each text: two
        # threads interleaving would draw from each other's stream and break "same text, same
        # vector", so inference runs one request at a time.
        self._infer_lock = threading.Lock()
        self._frozen: tuple[int, FrozenDuelingDQN] | None = None  # (dqn version, its copy)

    def _frozen_dqn(self, loaded: Loaded) -> FrozenDuelingDQN:
        """The numpy copy of the active dqn that slates are scored with, made once per version
        (two threads may both make it for a new version: the same copy, harmless)."""
        held = self._frozen
        if held is None or held[0] != loaded.version:
            held = self._frozen = (loaded.version, loaded.model.frozen())
        return held[1]

    def q_values(
        self, user_embedding: Sequence[float], item_embeddings: Sequence[Sequence[float]]
    ) -> tuple[int, np.ndarray]:
        """(dqn version, (C,) Q-values) for raw vectors, checked against that version."""
        loaded = self._models.get(DQN)
        dqn: DuelingDQN = loaded.model
        s, d = dqn.config.state_dim, dqn.config.item_dim
        tag = f"the active dqn v{loaded.version}"
        if len(user_embedding) != s:
            raise InvalidInput(
                f"user_embedding must have {s} values ({tag} state size), got {len(user_embedding)}"
            )
        wrong = [i for i, v in enumerate(item_embeddings) if len(v) != d]
        if wrong:
            raise InvalidInput(
                f"item_embeddings must be vectors of {d} values ({tag} item size): "
                f"item_embeddings[{wrong[0]}] has {len(item_embeddings[wrong[0]])}"
                + (f" ({len(wrong)} vectors of the wrong size)" if len(wrong) > 1 else "")
            )
        return loaded.version, dqn.q_values(user_embedding, item_embeddings)

    def rank(
        self,
        item_ids: Sequence[str],
        recent_item_ids: Sequence[str],
        stats: Mapping[str, str],
    ) -> Ranked:
        """``item_ids`` (duplicates dropped) ordered by Q-value for the user whose recent items
        and feature counters are given; 422 naming the candidates without a content vector."""
        pair = self._pair()
        candidates = list(dict.fromkeys(item_ids))
        vectors = content_vectors(self._ids, pair.table, candidates)
        missing = [i for i in candidates if i not in vectors]
        if missing:
            raise InvalidInput(
                f"no content vector in doc2vec v{pair.doc2vec_version} for "
                f"{_name_some(missing)} (unknown item, newer than that version, or without "
                "text): leave them out of item_ids or retrain doc2vec"
            )
        state = state_from_history(self._ids, pair.table, recent_item_ids, stats)
        q = pair.q_values(state, vectors)
        items = list(vectors)
        scored = [(items[i], float(q[i])) for i in np.argsort(-q, kind="stable")]
        return Ranked(pair.dqn_version, pair.doc2vec_version, scored)

    def rerank(
        self,
        item_ids: Sequence[str],
        recent_item_ids: Sequence[str],
        stats: Mapping[str, str],
        k: int,
    ) -> Reranked:
        """A slate of ``k`` from a base model's candidates, drawn by ``exploration`` from their
        Q-values. Lenient, unlike ``rank``: candidates without a content vector follow the
        drawn ones in their given order with no Q-value (a base model may know items Doc2Vec
        has not seen yet). With doc2vec active but no dqn yet, the base order is served and
        still logged with its state, so the online learner can start from base-model traffic.
        NotFound when no doc2vec version is active."""
        d2v = self._models.get(DOC2VEC)
        table = d2v.model.item_vectors()  # (n_items, D), row = id-registry index
        state = state_from_history(self._ids, table, recent_item_ids, stats)
        candidates = list(dict.fromkeys(item_ids))
        try:
            dqn = self._models.get(DQN)
        except NotFound:
            slate = candidates[:k]
            return Reranked(
                None,
                d2v.version,
                [(i, None) for i in slate],
                state,
                Exploration(),
                [1.0] * len(slate),
            )
        _check_pair(dqn, d2v, table.shape[1])
        pair = _Pair(dqn.version, d2v.version, self._frozen_dqn(dqn), table)
        vectors = content_vectors(self._ids, table, candidates)
        drawn: list[tuple[str, float | None]] = []
        propensities: list[float] = []
        if vectors:
            q = pair.q_values(state, vectors)
            with self._rng_lock:
                order, props = self.exploration.draw(q, k, self._rng)
            items = list(vectors)
            drawn = [(items[i], float(q[i])) for i in order]
            propensities = [float(p) for p in props]
        rest = [i for i in candidates if i not in vectors][: k - len(drawn)]
        drawn.extend((i, None) for i in rest)
        propensities.extend([1.0] * len(rest))
        return Reranked(dqn.version, d2v.version, drawn, state, self.exploration, propensities)

    def _pair(self) -> _Pair:
        dqn_loaded, d2v_loaded = self._models.get(DQN), self._models.get(DOC2VEC)
        table = d2v_loaded.model.item_vectors()  # (n_items, D), row = id-registry index
        _check_pair(dqn_loaded, d2v_loaded, table.shape[1])
        return _Pair(dqn_loaded.version, d2v_loaded.version, self._frozen_dqn(dqn_loaded), table)

    def embed(self, texts: Sequence[str]) -> tuple[int, np.ndarray]:
        """(doc2vec version, (len(texts), D) vectors); row i equals the single inference."""
        loaded = self._models.get(DOC2VEC)
        with self._infer_lock:
            return loaded.version, loaded.model.infer_many(texts)


def _check_pair(dqn: Loaded, doc2vec: Loaded, item_dim: int) -> None:
    # The learner trains on doc2vec vectors: a size mismatch means the two were not deployed
    # together, which no request can fix.
    config = dqn.model.config
    if (config.item_dim, config.state_dim) != (item_dim, state_dim(item_dim)):
        raise ConfigurationError(
            f"dqn v{dqn.version} takes {config.state_dim}-d states and {config.item_dim}-d "
            f"items but doc2vec v{doc2vec.version} gives {item_dim}-d vectors (states of "
            f"{state_dim(item_dim)}): activate a matching pair"
        )


def _name_some(ids: Sequence[str]) -> str:
    named = ", ".join(repr(i) for i in ids[:MAX_NAMED])
    return named if len(ids) <= MAX_NAMED else f"{named} and {len(ids) - MAX_NAMED} more"
