"""Vector reads of the edge: a user's vector → nearest items, an item's vector → similar items.

Every method is blocking (Qdrant Edge holds the GIL, the id registry may hit SQL on a cache
miss): routes call them through ``asyncio.to_thread``, one hop per request.

The version served is the one the ``items_<model>`` alias points at, resolved once per request;
the user vector is read from ``users_<model>__v<N>`` of that same version and the query goes
to the versioned collection itself, so an alias swap mid-request cannot pair a vector of one
version with items of another.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from core.errors import NotFound
from core.ids import IdKind, IdRegistry
from stores.vectors import (
    Hit,
    VectorStore,
    item_version_name,
    items_alias,
    parse_version,
    user_version_name,
)


@dataclass(frozen=True)
class VectorAnswer:
    version: int
    hits: list[Hit]
    updated_ms: int | None = None  # when the user vector was computed


class VectorServer:
    def __init__(self, vectors: VectorStore, ids: IdRegistry) -> None:
        self._vectors = vectors
        self._ids = ids

    def live_version(self, model: str) -> int | None:
        """The published version behind ``items_<model>``, or None when nothing is."""
        target = self._vectors.resolve_alias(items_alias(model))
        parsed = parse_version(target) if target else None
        return parsed[1] if parsed else None

    def recommend(
        self,
        model: str,
        user_id: str,
        k: int,
        seen: Iterable[str] = (),
        genres: Sequence[str] | None = None,
    ) -> VectorAnswer | None:
        """Top-k items for the user's vector; None when the user has no vector to query with
        (the caller falls back to popular items)."""
        version = self.live_version(model)
        user = self._ids.lookup(IdKind.USER, [user_id]).get(user_id)
        if version is None or user is None:
            return None
        try:
            found = self._vectors.retrieve(user_version_name(model, version), [user])
            if not found:
                return None
            exclude = sorted(self._ids.lookup(IdKind.ITEM, seen).values())
            hits = self._vectors.query(
                item_version_name(model, version), found[0].vector, k, genres, exclude
            )
        except NotFound:  # that version was swapped out and deleted since we resolved it
            return None
        updated = found[0].payload.get("updated_ms")
        return VectorAnswer(version, hits, int(updated) if updated is not None else None)

    def similar(self, model: str, item_id: str, k: int) -> VectorAnswer:
        """The k nearest items to ``item_id`` under ``model`` (itself excluded)."""
        version = self.live_version(model)
        if version is None:
            raise NotFound(
                f"model {model!r} has no published item vectors: run "
                f"`streamrec vectors publish --model {model}`"
            )
        index = self._ids.lookup(IdKind.ITEM, [item_id]).get(item_id)
        if index is None:
            raise NotFound(f"item {item_id!r} is unknown")
        collection = item_version_name(model, version)
        found = self._vectors.retrieve(collection, [index])
        if not found:
            raise NotFound(
                f"item {item_id!r} has no vector in {model} v{version}: it arrived after that "
                "version was trained (or has no text, for content); it gets one at the next "
                "publish"
            )
        hits = self._vectors.query(collection, found[0].vector, k, exclude_ids=[index])
        return VectorAnswer(version, hits)
