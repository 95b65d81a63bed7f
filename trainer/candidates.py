"""Exact top-n over a version's item vectors, ranked as the vector engine ranks them: what
``trainer.live.publish_version`` and the vectors group write into ``stores.candidates``.

The engine scores by the collection's distance: the dot product, or for ``cosine`` (doc2vec)
the dot product of unit vectors (Qdrant normalizes vectors of cosine collections on insert and
the query at search). ``CandidateIndex`` does the same with batched matrix products and
``argpartition`` (linear in the catalog per user, no sort of the whole row), so its lists are
the engine's ``query`` results up to float rounding (ties may come in another order).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

from streamrec.stores.candidates import Ranked

QUERY_BLOCK = 256  # query rows per matrix product: bounds memory to 256 x catalog floats


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
        self._position = {row: p for p, row in enumerate(self._rows)}
        self._by_id = {item: p for p, item in enumerate(self._ids)}

    def __len__(self) -> int:
        return len(self._rows)

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
            held = self._position.get(int(row))
            if held is not None:
                self._matrix[held] = prepared[p]
            else:
                fresh.append(p)
        if not fresh:
            return
        start = len(self._rows)
        self._matrix = np.concatenate([self._matrix, prepared[fresh]])
        for offset, p in enumerate(fresh):
            self._rows.append(int(rows[p]))
            self._ids.append(item_ids[p])
            self._position[int(rows[p])] = start + offset
            self._by_id[item_ids[p]] = start + offset
        self._id_array = np.asarray(self._ids, dtype=object)

    def top(
        self,
        queries: np.ndarray,
        n: int,
        exclude: Sequence[Collection[str]] | None = None,
    ) -> list[Ranked]:
        """Per query vector, the ``n`` best items, best first, leaving out the external ids in
        ``exclude[q]`` (a user's seen items)."""
        queries = np.asarray(queries, dtype=np.float32).reshape(len(queries), -1)
        if self._cosine:
            norms = np.linalg.norm(queries, axis=1, keepdims=True)
            queries = queries / np.where(norms > 0, norms, 1.0)
        by_id = self._by_id
        found: list[Ranked] = []
        for lo in range(0, len(queries), QUERY_BLOCK):
            scores = queries[lo : lo + QUERY_BLOCK] @ self._matrix.T
            if exclude is not None:
                for q in range(len(scores)):
                    masked = [by_id[i] for i in exclude[lo + q] if i in by_id]
                    scores[q, masked] = -np.inf
            found += self._best(scores, n)
        return found

    def neighbours(self, rows: Sequence[int] | None, n: int) -> dict[str, Ranked]:
        """External id -> its ``n`` nearest other items, for the items at registry indices
        ``rows`` (every item when None)."""
        positions = (
            list(range(len(self._rows)))
            if rows is None
            else [self._position[int(r)] for r in rows if int(r) in self._position]
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
