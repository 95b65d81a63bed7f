"""The edge of the DQN: the active ``dqn`` and ``doc2vec`` versions, hot-swapped, and the
inference the original model server offered (bulk Q-values, ranking, text embeddings).

``ActiveModels`` serves the ACTIVE registry version of a model and re-reads which version is
active at most every ``check_every_s`` seconds, so a snapshot published by the online learner
(or ``streamrec train``) is served on a later request without a restart, while most requests
cost no SQL at all. Loaded models are cached per name; an old model stays usable by requests
that already hold it.

Every method here may block (SQL, torch, gensim): routes call them through
``asyncio.to_thread``, one hop per request. Except ``RLServer.rerank_held``, the
``rerank=dqn`` path of every recommendation: it serves from the versions held and their content
rows (``ContentRows``: item id -> row, read from the id registry once per doc2vec version), so it
does no I/O and runs on the event loop (numpy over ~50 vectors: cheaper than the thread hop);
it answers None when a version check is due or a new version's rows are not read yet, and the
route then calls ``rerank`` in a thread, which does both.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamrec.core.errors import ConfigurationError, InvalidInput, NotFound
from streamrec.core.ids import IdKind, IdRegistry
from streamrec.schemas.events import PolicyLog
from streamrec.stores.model_registry import ModelRegistry
from streamrec.trainer.doc2vec import Doc2VecModel
from streamrec.trainer.models.dueling_dqn import DuelingDQN, FrozenDuelingDQN
from streamrec.trainer.rl import (
    STATE_RECENT_ITEMS,
    Exploration,
    state_dim,
    user_state,
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

    def held(self, name: str) -> Loaded | None:
        """``get`` without I/O: the version held when it was checked within the period, None
        when a check is due (call ``get``, in a thread); NotFound when none was active then."""
        slot = self._slots.get(name)
        if slot is None or self._clock() - slot.checked_at >= self._check_every:
            return None
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
class ContentRows:
    """One doc2vec version's item vectors by external item id: the rows with a vector (items
    registered before the version and with text; ``content_vectors``'s rule), so that a
    request's vectors are dict lookups and one gather, with no id-registry lookup that could
    reach SQL. Read once per version: one dict entry per item with text."""

    version: int
    table: np.ndarray  # (n_items, D), row = id-registry index
    row_of: dict[str, int]

    @classmethod
    def read(cls, loaded: Loaded, ids: IdRegistry) -> ContentRows:
        """The rows of the doc2vec version ``loaded`` (blocking: reads the id registry)."""
        table = loaded.model.item_vectors()
        external = ids.external_ids(IdKind.ITEM)[: table.shape[0]]
        has_text = table[: len(external)].any(axis=1)  # all-zero: an item Doc2Vec never saw
        rows = {item: row for row, item in enumerate(external) if has_text[row]}
        return cls(loaded.version, table, rows)

    def vectors(self, item_ids: Sequence[str]) -> tuple[list[str], np.ndarray]:
        """The ids of ``item_ids`` that have a vector (in order) and their (n, D) vectors."""
        found = [item for item in item_ids if item in self.row_of]
        return found, self.table[[self.row_of[item] for item in found]]

    def state(self, recent_item_ids: Sequence[str], stats: Mapping[str, str]) -> np.ndarray:
        """(D + 5,) the user state (``trainer.rl.user_state``) of the user whose newest items
        (newest first) and counters are given: ``state_from_history`` without the registry."""
        _, recent = self.vectors(recent_item_ids[:STATE_RECENT_ITEMS])
        return user_state(recent, stats, self.table.shape[1])


@dataclass(frozen=True)
class _Pair:
    """An active dqn and the doc2vec item table it was checked against."""

    dqn_version: int
    doc2vec_version: int
    dqn: FrozenDuelingDQN
    content: ContentRows


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
        self._content: ContentRows | None = None  # of the doc2vec version last served

    def _frozen_dqn(self, loaded: Loaded) -> FrozenDuelingDQN:
        """The numpy copy of the active dqn that slates are scored with, made once per version
        (two threads may both make it for a new version: the same copy, harmless)."""
        held = self._frozen
        if held is None or held[0] != loaded.version:
            held = self._frozen = (loaded.version, loaded.model.frozen())
        return held[1]

    def _content_rows(self, loaded: Loaded) -> ContentRows:
        """The content rows of doc2vec version ``loaded``, read once per version (two threads
        may both read them for a new version: the same rows, harmless)."""
        held = self._content
        if held is None or held.version != loaded.version:
            held = self._content = ContentRows.read(loaded, self._ids)
        return held

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
        items, vectors = pair.content.vectors(candidates)
        if len(items) < len(candidates):
            missing = [i for i in candidates if i not in pair.content.row_of]
            raise InvalidInput(
                f"no content vector in doc2vec v{pair.doc2vec_version} for "
                f"{_name_some(missing)} (unknown item, newer than that version, or without "
                "text): leave them out of item_ids or retrain doc2vec"
            )
        state = pair.content.state(recent_item_ids, stats)
        q = pair.dqn.q_values(state, vectors)
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
        content = self._content_rows(d2v)
        try:
            dqn: Loaded | None = self._models.get(DQN)
        except NotFound:
            dqn = None
        return self._rerank(content, dqn, item_ids, recent_item_ids, stats, k)

    def rerank_held(
        self,
        item_ids: Sequence[str],
        recent_item_ids: Sequence[str],
        stats: Mapping[str, str],
        k: int,
    ) -> Reranked | None:
        """``rerank`` from the versions held, with no I/O (see the module doc); None when that
        needs a version check or a new version's content rows (call ``rerank``, in a thread)."""
        d2v = self._models.held(DOC2VEC)
        content = self._content
        if d2v is None or content is None or content.version != d2v.version:
            return None
        try:
            dqn = self._models.held(DQN)
        except NotFound:
            return self._rerank(content, None, item_ids, recent_item_ids, stats, k)
        if dqn is None:
            return None
        return self._rerank(content, dqn, item_ids, recent_item_ids, stats, k)

    def _rerank(
        self,
        content: ContentRows,
        dqn: Loaded | None,
        item_ids: Sequence[str],
        recent_item_ids: Sequence[str],
        stats: Mapping[str, str],
        k: int,
    ) -> Reranked:
        state = content.state(recent_item_ids, stats)
        candidates = list(dict.fromkeys(item_ids))
        if dqn is None:
            slate = candidates[:k]
            return Reranked(
                None,
                content.version,
                [(i, None) for i in slate],
                state,
                Exploration(),
                [1.0] * len(slate),
            )
        _check_pair(dqn, content.version, content.table.shape[1])
        items, vectors = content.vectors(candidates)
        drawn: list[tuple[str, float | None]] = []
        propensities: list[float] = []
        if items:
            q = self._frozen_dqn(dqn).q_values(state, vectors)
            with self._rng_lock:
                order, props = self.exploration.draw(q, k, self._rng)
            drawn = [(items[i], float(q[i])) for i in order]
            propensities = [float(p) for p in props]
        scored = set(items)
        rest = [i for i in candidates if i not in scored][: k - len(drawn)]
        drawn.extend((i, None) for i in rest)
        propensities.extend([1.0] * len(rest))
        return Reranked(dqn.version, content.version, drawn, state, self.exploration, propensities)

    def _pair(self) -> _Pair:
        dqn_loaded, d2v_loaded = self._models.get(DQN), self._models.get(DOC2VEC)
        content = self._content_rows(d2v_loaded)
        _check_pair(dqn_loaded, d2v_loaded.version, content.table.shape[1])
        return _Pair(dqn_loaded.version, d2v_loaded.version, self._frozen_dqn(dqn_loaded), content)

    def embed(self, texts: Sequence[str]) -> tuple[int, np.ndarray]:
        """(doc2vec version, (len(texts), D) vectors); row i equals the single inference."""
        loaded = self._models.get(DOC2VEC)
        with self._infer_lock:
            return loaded.version, loaded.model.infer_many(texts)


def _check_pair(dqn: Loaded, doc2vec_version: int, item_dim: int) -> None:
    # The learner trains on doc2vec vectors: a size mismatch means the two were not deployed
    # together, which no request can fix.
    config = dqn.model.config
    if (config.item_dim, config.state_dim) != (item_dim, state_dim(item_dim)):
        raise ConfigurationError(
            f"dqn v{dqn.version} takes {config.state_dim}-d states and {config.item_dim}-d "
            f"items but doc2vec v{doc2vec_version} gives {item_dim}-d vectors (states of "
            f"{state_dim(item_dim)}): activate a matching pair"
        )


def _name_some(ids: Sequence[str]) -> str:
    named = ", ".join(repr(i) for i in ids[:MAX_NAMED])
    return named if len(ids) <= MAX_NAMED else f"{named} and {len(ids) - MAX_NAMED} more"
