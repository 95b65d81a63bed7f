"""Exact top-n over a version's item vectors, ranked as the vector engine ranks them: what
``trainer.live.publish_version`` and the vectors group write into ``stores.candidates``.

The engine scores by the collection's distance: the dot product, or for ``cosine`` (doc2vec)
the dot product of unit vectors (Qdrant normalizes vectors of cosine collections on insert and
the query at search). ``CandidateIndex`` does the same with batched matrix products and
``argpartition`` (linear in the catalog per user, no sort of the whole row), so its lists are
the engine's ``query`` results up to float rounding (ties may come in another order).

What a user's list leaves out (the feature store's seen set) comes as registry indices
(``SeenRows``): masked per block of queries with one numpy assignment, not one Python lookup per
seen item and model. ``SeenRows`` keeps each user's seen items as indices in the process and reads
only what was added since from the seen log (``CandidateStore.seen_after``): a user who has seen
500 items costs the vectors group a read of the one or two new ones per batch, not 500 strings.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from streamrec.core.ids import IdKind, IdRegistry
from streamrec.stores.candidates import CandidateStore, Ranked

QUERY_BLOCK = 256  # query rows per matrix product: bounds memory to 256 x catalog floats
SEEN_USERS = 100_000  # users whose seen indices a process keeps (least recently used go)
_NO_ROWS = np.zeros(0, dtype=np.int64)


class SeenRows:
    """Users' seen items (the feature store's seen sets) as item registry indices, kept per
    process for the ``capacity`` most recently asked users and brought up to date from the seen
    log on every ask: what was seen before is held, what was added since is read.

    Items are registered as they are read (``IdRegistry.assign``): a seen item is live data, and
    an index for it now means it is left out of any version that gains it later. A log rebuilt
    shorter than what is held is read again whole; one rebuilt as long or longer (``streamrec
    rebuild`` while this process runs) is read on from the held position, so such a process is
    restarted after a rebuild (the edge's request-time filter keeps served lists exact).
    """

    def __init__(
        self, candidates: CandidateStore, ids: IdRegistry, capacity: int = SEEN_USERS
    ) -> None:
        self._candidates = candidates
        self._ids = ids
        self._capacity = capacity
        self._held: OrderedDict[str, tuple[int, np.ndarray]] = OrderedDict()  # (log read, rows)

    def rows_many(self, users: Sequence[str]) -> list[np.ndarray]:
        """Each user's seen items as registry indices, as the seen log holds them now."""
        held = [self._held.get(user, (0, _NO_ROWS)) for user in users]
        tails = self._candidates.seen_after(users, [read for read, _ in held])
        index = self._ids.assign(IdKind.ITEM, [item for tail in tails for item in tail.items])
        found: list[np.ndarray] = []
        for user, (read, rows), tail in zip(users, held, tails, strict=True):
            if tail.start != read:  # the log was rebuilt: what was held no longer counts
                rows = _NO_ROWS
            if tail.items:
                fresh = np.fromiter((index[item] for item in tail.items), np.int64, len(tail.items))
                rows = np.concatenate([rows, fresh])
            self._keep(user, tail.end, rows)
            found.append(rows)
        return found

    def _keep(self, user: str, read: int, rows: np.ndarray) -> None:
        self._held[user] = (read, rows)
        self._held.move_to_end(user)
        while len(self._held) > self._capacity:
            self._held.popitem(last=False)


class CandidateIndex:
    """The items of one version (registry indices, external ids, vectors) for top-n queries."""

    def __init__(
        self,
        rows: Sequence[int] | np.ndarray,
        vectors: np.ndarray,
        item_ids: Sequence[str],
        distance: str = "dot",
    ) -> None:
        self._cosine = distance == "cosine"
        self._rows: list[int] = [int(r) for r in rows]
        self._ids: list[str] = list(item_ids)
        self._id_array = np.asarray(self._ids, dtype=object)  # ids of many positions at once
        self._matrix = self._prepare(np.asarray(vectors, dtype=np.float32))
        self._row_position = self._positions_by_row()

    def __len__(self) -> int:
        return len(self._rows)

    def _positions_by_row(self) -> np.ndarray:
        """Registry index -> position here, -1 for an index not held: masks in one lookup."""
        lookup = np.full(max(self._rows, default=-1) + 1, -1, dtype=np.int64)
        lookup[self._rows] = np.arange(len(self._rows))
        return lookup

    def _position_of(self, row: int) -> int | None:
        """The position of registry index ``row`` here, None when not held."""
        held = int(self._row_position[row]) if 0 <= row < len(self._row_position) else -1
        return held if held >= 0 else None

    def _prepare(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(vectors), -1)
        if not self._cosine:
            return vectors
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.where(norms > 0, norms, 1.0)

    def add(self, rows: Sequence[int], vectors: np.ndarray, item_ids: Sequence[str]) -> None:
        """Items added to the live collection since (new content items); a row already held
        takes the new vector."""
        prepared = self._prepare(np.asarray(vectors, dtype=np.float32))
        fresh: list[int] = []
        for p, row in enumerate(rows):
            held = self._position_of(int(row))
            if held is not None:
                self._matrix[held] = prepared[p]
            else:
                fresh.append(p)
        if not fresh:
            return
        self._matrix = np.concatenate([self._matrix, prepared[fresh]])
        self._rows += [int(rows[p]) for p in fresh]
        self._ids += [item_ids[p] for p in fresh]
        self._id_array = np.asarray(self._ids, dtype=object)
        self._row_position = self._positions_by_row()

    def top(
        self,
        queries: np.ndarray,
        n: int,
        exclude: Sequence[np.ndarray] | None = None,
    ) -> list[Ranked]:
        """Per query vector, the ``n`` best items, best first, leaving out the items at the
        registry indices ``exclude[q]`` (a user's seen items, ``SeenRows``)."""
        queries = np.asarray(queries, dtype=np.float32).reshape(len(queries), -1)
        if self._cosine:
            norms = np.linalg.norm(queries, axis=1, keepdims=True)
            queries = queries / np.where(norms > 0, norms, 1.0)
        found: list[Ranked] = []
        for lo in range(0, len(queries), QUERY_BLOCK):
            scores = queries[lo : lo + QUERY_BLOCK] @ self._matrix.T
            if exclude is not None:
                self._mask(scores, exclude[lo : lo + len(scores)])
            found += self._best(scores, n)
        return found

    def _mask(self, scores: np.ndarray, exclude: Sequence[np.ndarray]) -> None:
        """Score -inf at each query's excluded registry indices that this version holds."""
        sizes = [len(rows) for rows in exclude]
        if not sum(sizes):
            return
        query = np.repeat(np.arange(len(exclude)), sizes)
        rows = np.concatenate([np.asarray(r, dtype=np.int64) for r in exclude])
        inside = (rows >= 0) & (rows < len(self._row_position))
        position = np.full(len(rows), -1, dtype=np.int64)
        position[inside] = self._row_position[rows[inside]]
        held = position >= 0
        scores[query[held], position[held]] = -np.inf

    def neighbours(self, rows: Sequence[int] | None, n: int) -> dict[str, Ranked]:
        """External id -> its ``n`` nearest other items, for the items at registry indices
        ``rows`` (every item when None)."""
        positions = (
            list(range(len(self._rows)))
            if rows is None
            else [p for p in map(self._position_of, map(int, rows)) if p is not None]
        )
        found: dict[str, Ranked] = {}
        for lo in range(0, len(positions), QUERY_BLOCK):
            block = positions[lo : lo + QUERY_BLOCK]
            scores = self._matrix[block] @ self._matrix.T
            scores[np.arange(len(block)), block] = -np.inf  # never its own neighbour
            for p, ranked in zip(block, self._best(scores, n), strict=True):
                found[self._ids[p]] = ranked
        return found

    def _best(self, scores: np.ndarray, n: int) -> list[Ranked]:
        width = scores.shape[1]
        take = min(n, width)
        if take == 0:
            return [Ranked([], []) for _ in range(len(scores))]
        if take < width:
            part = np.argpartition(-scores, take - 1, axis=1)[:, :take]
        else:
            part = np.broadcast_to(np.arange(width), (len(scores), width))
        picked = np.take_along_axis(scores, part, axis=1)
        order = np.argsort(-picked, axis=1, kind="stable")
        positions = np.take_along_axis(part, order, axis=1)
        values = np.take_along_axis(picked, order, axis=1).astype(np.float64)
        ids = self._id_array[positions]
        if np.isfinite(values).all():  # the usual case: no row ran out of candidates
            return [Ranked(i, v) for i, v in zip(ids.tolist(), values.tolist(), strict=True)]
        ranked: list[Ranked] = []
        for row_ids, row_values in zip(ids, values, strict=True):
            keep = np.isfinite(row_values)  # excluded items (and itself) scored -inf
            ranked.append(Ranked(row_ids[keep].tolist(), row_values[keep].tolist()))
        return ranked
