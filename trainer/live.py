"""Making a model version live: ``streamrec vectors publish``, the retrain loop's promotion and
activation through the API all go through ``publish_version``.

Going live means every user is served by the new version, so a publish writes, in order:

1. the version's item vectors into a NEW versioned collection ``items_<model>__v<N>`` (N = the
   model registry version), streamed in resumable batches (checkpointed) and indexed. Doc2Vec's
   collections keep their former key (``items_content`` → ``items_content__v<N>``); catalog
   items with text that the Doc2Vec version has no row for (newer than its training) get an
   inferred vector, as the vectors consumer gives a new item one at once;
2. the user vectors of EVERY user with state into ``users_<model>__v<N>``
   (``trainer.user_vectors.all_user_vectors``: trained rows, SASRec's live sequence from the
   archive, a fold-in otherwise), in bulk batches;
3. with a ``CandidateStore`` (every caller with Redis at hand: the CLI passes none when Redis
   is embedded or does not answer, and the vectors group then backfills the lists from the
   stored vectors before it sets the live pointer), the request path's precomputed lists in
   Redis (``stores.candidates``): every user's top-C unseen items, computed from the
   vectors of step 2 against the items of step 1 by ``trainer.candidates.CandidateIndex``
   (the collection's distance, as the engine ranks), and every item's top-K neighbours;
4. only then the alias ``items_<model>`` swaps to the new collection, atomically, and right
   after it the Redis live pointer ``sr:live:<model>`` (the request path reads it); the
   previous version stays for rollback. If step 1, 2 or 3 fails, the alias does not move.

Point id = id-registry index; an item's payload carries ``item_id`` (the external id, so the
edge needs no reverse lookup), title, genres, year and popularity (interactions in the SQL
archive) for filtering and display; a user's carries ``updated_ms`` and ``version``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from sqlalchemy import Engine, select

from streamrec.core.datasets import Item
from streamrec.core.errors import InvalidInput, NotFound
from streamrec.core.ids import IdKind, IdRegistry
from streamrec.schemas.models import ModelKind
from streamrec.stores.candidates import CandidateStore, Ranked
from streamrec.stores.catalog import ItemRow
from streamrec.stores.model_registry import ModelRegistry, ModelVersion
from streamrec.stores.vectors import (
    VectorBatch,
    VectorStore,
    bulk_upsert,
    item_version_name,
    items_alias,
)
from streamrec.trainer.candidates import CandidateIndex, SeenRows
from streamrec.trainer.doc2vec import Doc2VecModel, item_text, tokenize
from streamrec.trainer.publish import (
    PayloadSource,
    Published,
    PublishProgress,
    sql_payloads,
    vector_model,
)
from streamrec.trainer.user_vectors import (
    DEFAULT_HISTORY,
    LoadedModel,
    all_user_vectors,
    fixed_vector,
    load_model,
)

log = logging.getLogger(__name__)


def _version(models: ModelRegistry, name: str, version: int | None) -> ModelVersion:
    if version is not None:
        return models.get(name, version)
    found = models.active(name)
    if found is None:
        raise NotFound(f"model {name} has no active version: train one or pass --version")
    return found


def _rows(matrix: np.ndarray, registered: int) -> np.ndarray:
    """Indices worth publishing: registered items with a non-zero vector (Doc2Vec leaves rows
    of items without text at zero, which would be everyone's neighbour under dot product)."""
    rows = np.arange(min(len(matrix), registered))
    return rows[np.any(matrix[rows] != 0.0, axis=1)]


def _batches(
    matrix: np.ndarray, rows: np.ndarray, external: list[str], payloads: PayloadSource, chunk: int
) -> Callable[[int], Iterator[VectorBatch]]:
    """A resumable source: payloads are read per chunk, so memory stays bounded."""

    def source(start: int) -> Iterator[VectorBatch]:
        for lo in range(start, len(rows), chunk):
            idx = rows[lo : lo + chunk]
            ids = [external[i] for i in idx]
            found = payloads(ids)
            pays = [{"item_id": e, **found.get(e, {})} for e in ids]
            yield idx.tolist(), matrix[idx], pays

    return source


def _inferred_items(
    model: LoadedModel, rows: np.ndarray, external: list[str], engine: Engine, chunk: int
) -> tuple[np.ndarray, np.ndarray]:
    """Content only: (indices, vectors) of catalog items with text that the Doc2Vec version
    has no row for (registered after it was trained, or without text then), inferred."""
    if not isinstance(model.net, Doc2VecModel):
        return np.zeros(0, np.int64), np.zeros((0, model.dim), np.float32)
    published = set(rows.tolist())
    candidates = [i for i in range(len(external)) if i not in published]
    texts: list[str] = []
    indices: list[int] = []
    for start in range(0, len(candidates), chunk):
        part = candidates[start : start + chunk]
        by_id = {external[i]: i for i in part}
        with engine.connect() as conn:
            found = conn.execute(select(ItemRow).where(ItemRow.item_id.in_(list(by_id)))).all()
        for row in found:
            item = Item(row.item_id, row.title or "", tuple(row.genres or ()), None, row.text or "")
            text = item_text(item)
            if tokenize(text):
                texts.append(text)
                indices.append(by_id[row.item_id])
    if not texts:
        return np.zeros(0, np.int64), np.zeros((0, model.dim), np.float32)
    return np.asarray(indices, np.int64), model.net.infer_many(texts)


_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _model_lock(model: str) -> threading.Lock:
    """One publish of a serving model at a time in this process (the retrain loop and an
    admin's activation may both publish)."""
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(model, threading.Lock())


def _write_items(
    vectors: VectorStore,
    ids: IdRegistry,
    engine: Engine,
    kind: ModelKind,
    model: LoadedModel,
    collection: str,
    *,
    checkpoint_dir: Path | None,
    on_progress: PublishProgress | None,
    chunk: int,
) -> tuple[int, int, CandidateIndex]:
    """Item vectors into ``collection`` (created if needed); returns (points, inferred, the
    published items as a ``CandidateIndex`` for the precomputed lists)."""
    matrix = model.items
    external = ids.external_ids(IdKind.ITEM)
    rows = _rows(matrix, len(external))
    extra_idx, extra_vecs = _inferred_items(model, rows, external, engine, chunk)
    if len(rows) == 0 and len(extra_idx) == 0:
        raise InvalidInput(f"{kind.name} v{model.version} has no item vectors for known items")
    checkpoint = (checkpoint_dir / f"{collection}.json") if checkpoint_dir else None
    if not vectors.collection_exists(collection):
        if checkpoint is not None:  # a checkpoint of a collection since deleted (retention)
            checkpoint.unlink(missing_ok=True)
        vectors.create_item_version(kind.collection, matrix.shape[1], kind.distance, model.version)
    total = len(rows) + len(extra_idx)
    payloads = sql_payloads(engine)
    result = bulk_upsert(
        vectors,
        collection,
        _batches(matrix, rows, external, payloads, chunk),
        checkpoint_path=checkpoint,
        batch_size=chunk,
        on_progress=(lambda done: on_progress("items", done, total)) if on_progress else None,
    )  # bulk_upsert optimizes (Edge index build) before we swap
    if len(extra_idx):
        # Not checkpointed: items keep arriving, so every publish infers the current ones.
        # Searchable without a rebuilt index (unindexed points are scanned), as the items the
        # vectors consumer adds to the live collection are.
        for lo in range(0, len(extra_idx), chunk):
            idx = extra_idx[lo : lo + chunk]
            names = [external[i] for i in idx]
            found = payloads(names)
            pays = [{"item_id": e, **found.get(e, {})} for e in names]
            vectors.upsert(collection, idx.tolist(), extra_vecs[lo : lo + chunk], pays)
        if on_progress:
            on_progress("items", total, total)
    published = np.concatenate([rows, extra_idx]).astype(np.int64)
    index = CandidateIndex(
        published,
        np.concatenate([matrix[rows], extra_vecs]) if len(extra_idx) else matrix[rows],
        [external[i] for i in published],
        kind.distance,
    )
    return result.points + len(extra_idx), len(extra_idx), index


def _write_users(
    vectors: VectorStore,
    ids: IdRegistry,
    engine: Engine,
    model: LoadedModel,
    *,
    on_progress: PublishProgress | None,
    chunk: int,
    history: int,
    now_ms: int,
    candidates: CandidateStore | None = None,
    index: CandidateIndex | None = None,
) -> int:
    """Every user's vector into ``users_<model>__v<N>``; returns the vectors written. With
    ``candidates`` and ``index``, each batch's users get their candidates written too.

    Not checkpointed: a rerun recomputes from the archive as it is then (vectors go stale,
    item vectors do not). Not indexed: the edge reads user vectors by id, never searches them.
    """
    vectors.create_collection(model.collection, model.dim, "dot", {}, exist_ok=True)
    plan = all_user_vectors(
        model,
        engine,
        ids,
        history=history,
        chunk=chunk,
        updated_ms=now_ms,
        on_progress=(lambda done, total: on_progress("users", done, total))
        if on_progress
        else None,
    )
    if on_progress:
        on_progress("users", 0, plan.total)
    batches = plan.batches
    if candidates is not None and index is not None:
        # Read after the plan: it registers archive users the registry did not know yet.
        users = ids.external_ids(IdKind.USER)
        seen = SeenRows(candidates, ids, capacity=0)  # each user is asked once: keep none
        batches = _with_candidates(batches, users, index, candidates, seen, model, now_ms)
    result = bulk_upsert(vectors, model.collection, batches, batch_size=chunk, optimize=False)
    return result.points


def _with_candidates(
    batches: Iterator[VectorBatch],
    users: list[str],
    index: CandidateIndex,
    candidates: CandidateStore,
    seen_rows: SeenRows,
    model: LoadedModel,
    updated_ms: int,
) -> Iterator[VectorBatch]:
    """The user batches as they are, each one's candidates written on the way: the users'
    top-C items of this version, their seen items (the feature store's) left out."""
    for user_rows, user_vectors, payloads in batches:
        names = [users[int(u)] for u in user_rows]
        if names:
            seen = seen_rows.rows_many(names)
            ranked = index.top(np.asarray(user_vectors), candidates.per_user, seen)
            candidates.write_candidates(
                model.serving,
                model.version,
                {
                    user: Ranked(
                        found.items, found.scores, updated_ms, fixed_vector(model, int(row))
                    )
                    for user, found, row in zip(names, ranked, user_rows, strict=True)
                },
            )
        yield user_rows, user_vectors, payloads


def _write_neighbours(candidates: CandidateStore, index: CandidateIndex, model: LoadedModel) -> int:
    """Every published item's top-K neighbours (similar items); returns the items."""
    found = index.neighbours(None, candidates.neighbours)
    candidates.write_neighbours(model.serving, model.version, found)
    return len(found)


def publish_version(
    models: ModelRegistry,
    vectors: VectorStore,
    ids: IdRegistry,
    engine: Engine,
    model: str,
    version: int | None = None,
    *,
    checkpoint_dir: Path | None = None,
    on_progress: PublishProgress | None = None,
    chunk: int = 2000,
    history: int = DEFAULT_HISTORY,
    candidates: CandidateStore | None = None,
) -> Published:
    """``trainer.publish.publish_version`` (documented there): items, users (and, with
    ``candidates``, the precomputed lists), then the swap and the Redis live pointer."""
    started = time.perf_counter()
    kind = vector_model(model)  # its name, or a former name (content)
    with _model_lock(kind.name):
        found = _version(models, kind.name, version)
        loaded = load_model(models, found.name, kind.collection, found.version)
        collection = item_version_name(kind.collection, found.version)
        points, inferred, index = _write_items(
            vectors,
            ids,
            engine,
            kind,
            loaded,
            collection,
            checkpoint_dir=checkpoint_dir,
            on_progress=on_progress,
            chunk=chunk,
        )
        users_started = time.perf_counter()
        users = _write_users(
            vectors,
            ids,
            engine,
            loaded,
            on_progress=on_progress,
            chunk=chunk,
            history=history,
            now_ms=int(time.time() * 1000),
            candidates=candidates,
            index=index,
        )
        if candidates is not None:
            _write_neighbours(candidates, index, loaded)
        user_seconds = time.perf_counter() - users_started
        alias = items_alias(kind.collection)
        previous = vectors.swap_alias(alias, collection)
        if candidates is not None:
            candidates.set_live(kind.collection, found.version)
    log.info(
        "published %s v%d: %d items in %s, %d user vectors in %s (%.1fs), was %s",
        kind.name,
        found.version,
        points,
        collection,
        users,
        loaded.collection,
        user_seconds,
        previous,
    )
    return Published(
        model=kind.name.value,
        version=found.version,
        collection=collection,
        alias=alias,
        points=points,
        previous=previous,
        seconds=time.perf_counter() - started,
        users=users,
        users_collection=loaded.collection,
        user_seconds=user_seconds,
        inferred=inferred,
    )
