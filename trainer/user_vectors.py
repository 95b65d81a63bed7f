"""User query vectors of a model version: what the vectors consumer computes for the users of
each batch and ``trainer.publish`` computes for every user before an alias swaps.

A user's vector for a version is, by model kind:

* SASRec (sequential): the model's encoding of the user's live sequence, the last ``max_len``
  distinct items it rated or clicked, oldest first;
* MF, NCF, Wide & Deep: the trained user row when the user is known to the model (index below
  its ``n_users``), else a fold-in;
* Content (Doc2Vec, no user rows): always the fold-in.

The fold-in of a user new to the model is the mean of its recent items' vectors: its dot
product with an item is the mean similarity of that item to what the user just had. A user
with neither a trained row nor an item known to the model gets no vector (the edge serves it
popular items, saying why).

``all_user_vectors`` is the bulk path: every user with history in the SQL archive (ratings and
clicks; the archive is the durable record the Redis state is built from), plus the trained
users without archived history: one streamed query, vectors computed in chunks of users (memory
holds the id maps and one chunk, not the archive).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np
import torch
from sqlalchemy import Engine, select

from streamrec.core.errors import InvalidInput
from streamrec.core.ids import IdKind, IdRegistry
from streamrec.stores.catalog import InteractionRow
from streamrec.stores.model_registry import ModelRegistry
from streamrec.stores.vectors import VectorBatch, user_version_name
from streamrec.trainer.data import pad_sequences
from streamrec.trainer.models.base import Query, Recommender
from streamrec.trainer.publish import DEFAULT_HISTORY, item_matrix

HISTORY_TYPES = ("rating", "click")  # the interactions that make a user's history
_STREAM_ROWS = 5000  # archive rows fetched per round trip while streaming histories

# (users processed, users in total)
UserProgress = Callable[[int, int], None]


@dataclass
class LoadedModel:
    serving: str  # its collections' key (schemas.models: the model's name, content for doc2vec)
    version: int
    net: Any  # a Recommender, or the Doc2Vec model for content
    items: np.ndarray  # (n_items, d) item vectors, for fold-in
    collection: str  # users_<model>__v<N>

    @property
    def sequential(self) -> bool:
        return bool(getattr(self.net, "sequential", False))

    @property
    def n_users(self) -> int:
        return int(self.net.n_users) if isinstance(self.net, Recommender) else 0

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def dim(self) -> int:
        return int(self.items.shape[1])

    def history_length(self, history: int = DEFAULT_HISTORY) -> int:
        """Items of a user's history the model reads: SASRec its ``max_len``, a fold-in
        ``history``."""
        return int(self.net.config.max_len) if self.sequential else history


def fixed_vector(model: LoadedModel, user_index: int) -> bool:
    """Whether the user's vector in ``model`` is its trained row (MF, NCF, Wide & Deep, a user
    the version was trained on), which no event changes until the next version; a sequence
    model's vector and a fold-in change with every event of the user."""
    return not model.sequential and user_index < model.n_users


def load_model(models: ModelRegistry, name: str, serving: str, version: int) -> LoadedModel:
    """Version ``version`` of registry model ``name``, ready to compute user vectors into the
    collections of key ``serving`` (``schemas.models.ModelKind.collection``)."""
    net = models.load(name, version)
    if isinstance(net, torch.nn.Module):
        net.eval()
    return LoadedModel(serving, version, net, item_matrix(net), user_version_name(serving, version))


def merge_history(recent_newest_first: Sequence[str], batch: Sequence[str]) -> list[str]:
    """Oldest-first distinct items: Redis history, then this batch's items (in event order);
    an item seen again moves to the end."""
    order: dict[str, None] = {}
    for item in [*reversed(recent_newest_first), *batch]:
        order.pop(item, None)
        order[item] = None
    return list(order)


def model_histories(
    model: LoadedModel,
    histories: Sequence[Sequence[str]],
    item_index: Mapping[str, int],
    limit: int,
) -> list[list[int]]:
    """Histories of external item ids as the model's item indices, oldest first: items the
    model has no row for are left out, then the newest ``limit`` kept."""
    n_items = model.n_items
    mapped = []
    for history in histories:
        known = [item_index[i] for i in history if i in item_index and item_index[i] < n_items]
        mapped.append(known[-limit:] if limit > 0 else [])
    return mapped


def fold_in(items: np.ndarray, histories: Sequence[Sequence[int]]) -> np.ndarray:
    """(len(histories), d): the mean of each (non-empty) history's item vectors."""
    return np.stack([items[list(h)].mean(0) for h in histories]).astype(np.float32)


def query_vectors(
    model: LoadedModel, users: Sequence[int], histories: Sequence[Sequence[int]]
) -> tuple[list[int], np.ndarray]:
    """Positions (into ``users``) that get a vector, and their (n, d) vectors.

    ``histories`` hold item indices oldest first, already limited to the model's items.
    """
    empty = np.zeros((0, model.dim), np.float32)
    with torch.no_grad():
        if model.sequential:
            keep = [p for p, h in enumerate(histories) if h]
            if not keep:
                return [], empty
            seqs = pad_sequences([np.asarray(histories[p]) for p in keep], model.net.config.max_len)
            out = model.net.user_vectors(Query(torch.zeros(len(keep), dtype=torch.long), seqs))
            return keep, out.numpy().astype(np.float32)
        trained = [p for p, u in enumerate(users) if fixed_vector(model, u)]
        folded = [p for p, h in enumerate(histories) if h and not fixed_vector(model, users[p])]
        rows: list[np.ndarray] = []
        if trained:
            query = Query(torch.as_tensor([users[p] for p in trained], dtype=torch.long))
            rows.append(model.net.user_vectors(query).numpy())
        if folded:
            rows.append(fold_in(model.items, [histories[p] for p in folded]))
        keep = trained + folded
        if not keep:
            return [], empty
        return keep, np.concatenate(rows).astype(np.float32)


# -- every user, in bulk ------------------------------------------------------------------------


@dataclass(frozen=True)
class UserVectorPlan:
    """Who gets a vector in a bulk pass, and the batches that compute them."""

    total: int  # users the pass considers: with archived history, or trained without it
    batches: Iterator[VectorBatch]  # computed lazily: bounded memory whatever the archive's size


def _history_users(engine: Engine) -> list[str]:
    t = InteractionRow.__table__.c
    query = (
        select(t.user_id)
        .distinct()
        .where(t.type.in_(HISTORY_TYPES), t.item_id.is_not(None))
        .order_by(t.user_id)
    )
    with engine.connect() as conn:
        return list(conn.execute(query).scalars())


def _archived_histories(engine: Engine, keep: int) -> Iterator[tuple[str, list[str]]]:
    """(user, its newest ``keep`` distinct items oldest first) for every user with history,
    in user id order; one streamed query over the (user_id, ts) index."""
    t = InteractionRow.__table__.c
    query = (
        select(t.user_id, t.item_id)
        .where(t.type.in_(HISTORY_TYPES), t.item_id.is_not(None))
        .order_by(t.user_id, t.ts, t.event_id)
    )
    with engine.connect() as conn:
        rows = conn.execution_options(stream_results=True, yield_per=_STREAM_ROWS).execute(query)
        user: str | None = None
        items: dict[str, None] = {}
        for row_user, item in rows:
            if row_user != user:
                if user is not None:
                    yield user, list(items)[-keep:]
                user, items = row_user, {}
            items.pop(item, None)  # an item seen again moves to the end, as in Redis
            items[item] = None
        if user is not None:
            yield user, list(items)[-keep:]


def _chunks(
    pairs: Iterable[tuple[int, list[str]]], size: int
) -> Iterator[list[tuple[int, list[str]]]]:
    it = iter(pairs)
    while part := list(islice(it, size)):
        yield part


def all_user_vectors(
    model: LoadedModel,
    engine: Engine,
    ids: IdRegistry,
    *,
    history: int = DEFAULT_HISTORY,
    chunk: int = 1000,
    updated_ms: int = 0,
    on_progress: UserProgress | None = None,
) -> UserVectorPlan:
    """The user vectors of ``model`` for every user with state, in batches of ``chunk`` users.

    Users with archived history come first (user id order), then users known to the model
    without archived history (trained rows; none for SASRec, which needs a sequence, nor for
    content). Users in the archive but not in the id registry are registered (the point id is
    the registry index). ``on_progress`` gets (users processed, ``total``) after each chunk;
    a user whose items are all unknown to the model is processed but gets no vector.
    """
    if history < 1 or chunk < 1:
        raise InvalidInput(f"history and chunk must be >= 1, got {history} and {chunk}")
    user_index = {e: i for i, e in enumerate(ids.external_ids(IdKind.USER))}
    with_history = _history_users(engine)
    missing = [u for u in with_history if u not in user_index]
    if missing:  # the archive group registers before it writes; this only guards the order
        user_index.update(ids.assign(IdKind.USER, missing))
    listed = set(with_history)
    had_history = {user_index[u] for u in with_history}
    trained_only = (
        []
        if model.sequential
        else [i for i in range(min(model.n_users, len(user_index))) if i not in had_history]
    )
    total = len(with_history) + len(trained_only)
    item_index = {e: i for i, e in enumerate(ids.external_ids(IdKind.ITEM))}
    payload = {"updated_ms": updated_ms, "version": model.version}
    keep = model.history_length(history)

    def users_and_histories() -> Iterator[tuple[int, list[str]]]:
        for user, items in _archived_histories(engine, keep):
            if user in listed:  # users new since the count wait for their next event
                yield user_index[user], items
        for index in trained_only:
            yield index, []

    def batches() -> Iterator[VectorBatch]:
        done = 0
        for part in _chunks(users_and_histories(), chunk):
            users = [user for user, _ in part]
            mapped = model_histories(model, [h for _, h in part], item_index, keep)
            kept, vecs = query_vectors(model, users, mapped)
            yield [users[p] for p in kept], vecs, [payload] * len(kept)
            done += len(part)
            if on_progress:
                on_progress(done, total)

    return UserVectorPlan(total, batches())
