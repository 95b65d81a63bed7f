"""Resumable bulk upsert: a stream of batches into a collection, checkpointed after every
batch, retried with backoff on transient errors, with bounded memory."""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streamrec.core.errors import InvalidInput, ServiceUnavailable
from streamrec.stores.vectors.base import (
    Payloads,
    VectorBatch,
    Vectors,
    VectorStore,
    _as_matrix,
    _check_points,
    _write_atomic,
)

log = logging.getLogger(__name__)

# Either an iterable of batches (re-read from the start on resume, the done part skipped),
# or a callable that starts the stream at a given point offset (skips cheaply).
BatchSource = Iterable[VectorBatch] | Callable[[int], Iterable[VectorBatch]]


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter for transient errors (ServiceUnavailable)."""

    attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 15.0

    def delay(self, attempt: int) -> float:
        # Full-range jitter halves the chance that retrying writers collide again.
        return min(self.max_delay, self.base_delay * 2**attempt) * (0.5 + random.random() / 2)


@dataclass(frozen=True)
class BulkResult:
    collection: str
    points: int  # points in the collection's stream that are done, resumed part included
    batches: int  # batches written by this call
    resumed_from: int  # point offset this call started at
    retries: int
    seconds: float


@dataclass(frozen=True)
class Checkpoint:
    collection: str
    offset: int  # points of the stream written, in stream order
    batches: int
    complete: bool = False

    @staticmethod
    def load(path: Path, collection: str) -> Checkpoint:
        if not path.exists():
            return Checkpoint(collection, 0, 0)
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("collection") != collection:
            raise InvalidInput(
                f"checkpoint {path} belongs to collection {data.get('collection')!r}, "
                f"not {collection!r}: delete it or use another path"
            )
        return Checkpoint(
            collection, int(data["offset"]), int(data["batches"]), bool(data.get("complete"))
        )

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, json.dumps(self.__dict__))


def array_source(
    ids: Sequence[int], vectors: Vectors, payloads: Payloads = None, chunk: int = 10_000
) -> Callable[[int], Iterator[VectorBatch]]:
    """A resumable source over in-memory arrays (the caller already holds them)."""

    def batches(start: int) -> Iterator[VectorBatch]:
        for lo in range(start, len(ids), chunk):
            hi = min(lo + chunk, len(ids))
            yield ids[lo:hi], vectors[lo:hi], (payloads[lo:hi] if payloads is not None else None)

    return batches


def _rechunk(
    batches: Iterable[VectorBatch], size: int, skip: int
) -> Iterator[tuple[list[int], np.ndarray, list[Mapping[str, Any]]]]:
    """Batches of exactly ``size`` points (the last may be short), after skipping ``skip``.

    Holds at most one input batch plus one output batch: memory stays bounded whatever the
    stream's length.
    """
    ids: list[int] = []
    vecs: list[np.ndarray] = []
    pays: list[Mapping[str, Any]] = []
    for raw_ids, raw_vectors, raw_payloads in batches:
        if len(raw_ids) == 0:
            continue
        matrix = _as_matrix(raw_vectors)
        in_ids = _check_points(raw_ids, matrix, raw_payloads)
        in_pays = list(raw_payloads) if raw_payloads is not None else [{}] * len(in_ids)
        if skip:
            drop = min(skip, len(in_ids))
            in_ids, matrix, in_pays, skip = (
                in_ids[drop:],
                matrix[drop:],
                in_pays[drop:],
                skip - drop,
            )
        if not in_ids:
            continue
        ids.extend(in_ids)
        vecs.append(matrix)
        pays.extend(in_pays)
        while len(ids) >= size:
            joined = vecs[0] if len(vecs) == 1 else np.concatenate(vecs)
            yield ids[:size], joined[:size], pays[:size]
            ids, vecs, pays = ids[size:], [joined[size:]], pays[size:]
    if ids:
        yield ids, (vecs[0] if len(vecs) == 1 else np.concatenate(vecs)), pays


def _upsert_with_retry(
    store: VectorStore,
    collection: str,
    batch: tuple[list[int], np.ndarray, list[Mapping[str, Any]]],
    retry: RetryPolicy,
    sleep: Callable[[float], None],
) -> int:
    """Upsert one batch, retrying transient failures; returns the retries it took."""
    for attempt in range(retry.attempts):
        try:
            store.upsert(collection, *batch)
            return attempt
        except ServiceUnavailable as exc:
            if attempt + 1 == retry.attempts:
                raise
            pause = retry.delay(attempt)
            log.warning("upsert into %s failed (%s); retry in %.2fs", collection, exc, pause)
            sleep(pause)
    raise AssertionError("unreachable: attempts >= 1")  # pragma: no cover


def bulk_upsert(
    store: VectorStore,
    collection: str,
    source: BatchSource,
    *,
    checkpoint_path: Path | str | None = None,
    batch_size: int = 1000,
    retry: RetryPolicy = RetryPolicy(),  # frozen: sharing the default is safe
    on_progress: Callable[[int], None] | None = None,
    optimize: bool = True,
    sleep: Callable[[float], None] = time.sleep,
) -> BulkResult:
    """Stream ``source`` into ``collection`` in batches, resumably.

    After every batch the checkpoint (points done, in stream order) is replaced atomically;
    a rerun with the same checkpoint and the same stream skips what is done, so an
    interruption ends with every point exactly once (upserts are idempotent by id anyway).
    ``on_progress`` gets the number of points done so far (resumed part included).
    ``optimize`` builds the search index at the end (Edge; a no-op on the server).
    """
    if batch_size < 1:
        raise InvalidInput("batch_size must be >= 1")
    started = time.perf_counter()
    path = Path(checkpoint_path) if checkpoint_path is not None else None
    state = Checkpoint.load(path, collection) if path else Checkpoint(collection, 0, 0)
    resumed_from, batches, retries = state.offset, 0, 0
    if state.complete:
        return BulkResult(collection, state.offset, 0, resumed_from, 0, 0.0)
    if on_progress:
        on_progress(state.offset)
    stream = source(state.offset) if callable(source) else source
    skip = 0 if callable(source) else state.offset
    for batch in _rechunk(stream, batch_size, skip):
        retries += _upsert_with_retry(store, collection, batch, retry, sleep)
        batches += 1
        state = Checkpoint(collection, state.offset + len(batch[0]), state.batches + 1)
        if path:
            state.save(path)
        if on_progress:
            on_progress(state.offset)
    if optimize:
        store.optimize(collection)
    state = Checkpoint(collection, state.offset, state.batches, complete=True)
    if path:
        state.save(path)
    seconds = time.perf_counter() - started
    return BulkResult(collection, state.offset, batches, resumed_from, retries, seconds)
