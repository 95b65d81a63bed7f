"""The ``VectorStore`` interface, its shared types and the collection/alias naming.

Collections (point ids are the dense indices of ``core.ids``, used as-is):

- ``items_<model>__v<N>``: one per published model version; the alias ``items_<model>`` points
  at the current one, and the previous one stays for rollback.
- ``users_<model>``: user query vectors, upserted by the vectors consumer.
- ``items_content``: Doc2Vec content vectors.

Thread-safety: ``query``, ``retrieve``, ``upsert`` and ``swap_alias`` may be called from any
thread at the same time; each backend says how it ensures it.
"""

from __future__ import annotations

import os
import re
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from streamrec.core.errors import InvalidInput, NotFound

Distance = Literal["dot", "cosine"]
FieldType = Literal["keyword", "integer", "float"]
Vectors = np.ndarray | Sequence[Sequence[float]]
Payloads = Sequence[Mapping[str, Any]] | None
VectorBatch = tuple[Sequence[int], Vectors, Payloads]

ITEMS_CONTENT = "items_content"
# The fields the edge filters on; other payload keys (title, ...) are stored unindexed.
ITEM_PAYLOAD_INDEXES: Mapping[str, FieldType] = {
    "genres": "keyword",
    "year": "integer",
    "popularity": "float",
}
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,200}$")
_VERSIONED = re.compile(r"^(?P<alias>.+)__v(?P<version>\d+)$")


def items_alias(model: str) -> str:
    """The alias the edge queries for a model's item vectors."""
    return f"items_{_check_name(model)}"


def item_version_name(model: str, version: int) -> str:
    """The versioned collection behind ``items_<model>``."""
    if version < 1:
        raise InvalidInput(f"version must be >= 1, got {version}")
    return f"{items_alias(model)}__v{version}"


def users_collection(model: str) -> str:
    return f"users_{_check_name(model)}"


def user_version_name(model: str, version: int) -> str:
    """``users_<model>__v<N>``: user query vectors paired with ``items_<model>__v<N>`` (a new
    model version is a new embedding space, so its user vectors start afresh)."""
    if version < 1:
        raise InvalidInput(f"version must be >= 1, got {version}")
    return f"{users_collection(model)}__v{version}"


def parse_version(collection: str) -> tuple[str, int] | None:
    """``items_mf__v3`` → ``("items_mf", 3)``; None for a plain collection."""
    match = _VERSIONED.match(collection)
    return (match["alias"], int(match["version"])) if match else None


def _check_name(name: str) -> str:
    # Names become directory names on Edge: refuse anything that could escape base_dir.
    if not _NAME.match(name):
        raise InvalidInput(f"invalid collection/model name {name!r}: use letters, digits, _ or -")
    return name


class Hit(NamedTuple):
    id: int
    score: float
    payload: dict[str, Any]


class Record(NamedTuple):
    id: int
    vector: list[float]
    payload: dict[str, Any]


def _as_matrix(vectors: Vectors) -> np.ndarray:
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim != 2:
        raise InvalidInput(f"vectors must be a 2-d array, got shape {matrix.shape}")
    return matrix


def _check_points(ids: Sequence[int], matrix: np.ndarray, payloads: Payloads) -> list[int]:
    id_list = [int(i) for i in ids]
    if len(id_list) != len(matrix) or (payloads is not None and len(payloads) != len(id_list)):
        raise InvalidInput(
            f"ids ({len(id_list)}), vectors ({len(matrix)}) and payloads "
            f"({'-' if payloads is None else len(payloads)}) must have the same length"
        )
    if id_list and min(id_list) < 0:
        raise InvalidInput("point ids are registry indices and must be >= 0")
    return id_list


def _ordered(records: Iterable[Record], ids: Sequence[int]) -> list[Record]:
    """Records in the order asked for; ids without a point are left out."""
    by_id = {r.id: r for r in records}
    return [by_id[i] for i in ids if i in by_id]


def _choose(table: dict[str, Any], value: str, what: str) -> Any:
    """Map one of our names onto a backend's enum, or say which names exist."""
    if value not in table:
        raise InvalidInput(f"{what} must be one of {sorted(table)}, got {value!r}")
    return table[value]


def _write_atomic(path: Path, text: str) -> None:
    """Write a file so readers see either the old or the new content, never a partial one."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class VectorStore(ABC):
    """Collections, aliases, upsert and query: what the edge, consumers and publisher need."""

    # -- how to call it ----------------------------------------------------------------------
    @property
    @abstractmethod
    def call_on_event_loop(self) -> bool:
        """Whether async code should call this store directly on its event loop.

        True when every call runs to completion in this process, holds the GIL and is fast
        (a few milliseconds at most, no I/O to wait on): a worker thread would run no call in
        parallel and the hop only costs CPU, so calling inline is cheaper. False when calls
        wait on network I/O or can run for many milliseconds: async callers must run them in
        a thread (``asyncio.to_thread``) so the loop keeps serving other requests meanwhile.
        """

    # -- collections -------------------------------------------------------------------------
    @abstractmethod
    def create_collection(
        self,
        name: str,
        dim: int,
        distance: Distance = "dot",
        payload_indexes: Mapping[str, FieldType] = ITEM_PAYLOAD_INDEXES,
        *,
        exist_ok: bool = False,
    ) -> None:
        """Create a collection with indexes on the filtered payload fields."""

    @abstractmethod
    def collection_exists(self, name: str) -> bool:
        """True for a collection (not an alias) of that name."""

    @abstractmethod
    def list_collections(self) -> list[str]: ...

    @abstractmethod
    def _drop_collection(self, name: str) -> None: ...

    def delete_collection(self, name: str) -> None:
        """Delete a collection; refused while an alias points at it (it is live or rollback)."""
        if not self.collection_exists(name):
            raise NotFound(f"collection {name!r} does not exist")
        users = sorted(a for a, c in self.list_aliases().items() if c == name)
        if users:
            raise InvalidInput(f"collection {name!r} is the target of alias(es) {users}")
        self._drop_collection(name)

    def optimize(self, collection: str) -> None:  # noqa: B027 - a no-op unless the backend needs it
        """Build the search index after a bulk load (needed on Edge only)."""

    # -- points ------------------------------------------------------------------------------
    @abstractmethod
    def upsert(
        self, collection: str, ids: Sequence[int], vectors: Vectors, payloads: Payloads = None
    ) -> None:
        """Insert or replace points (idempotent by id)."""

    @abstractmethod
    def query(
        self,
        collection: str,
        vector: Sequence[float] | np.ndarray,
        k: int,
        genres: Sequence[str] | None = None,
        exclude_ids: Sequence[int] | None = None,
    ) -> list[Hit]:
        """Top-k points by the collection's distance; ``collection`` may be an alias.

        ``genres``: keep points with any of these genres. ``exclude_ids``: never return them.
        """

    @abstractmethod
    def retrieve(self, collection: str, ids: Sequence[int]) -> list[Record]:
        """Points with vector and payload, in the order of ``ids``; missing ids are skipped."""

    @abstractmethod
    def count(self, collection: str) -> int: ...

    # -- aliases -----------------------------------------------------------------------------
    @abstractmethod
    def swap_alias(self, alias: str, collection: str) -> str | None:
        """Point ``alias`` at ``collection`` atomically; returns the previous target."""

    @abstractmethod
    def resolve_alias(self, alias: str) -> str | None: ...

    @abstractmethod
    def list_aliases(self) -> dict[str, str]: ...

    @abstractmethod
    def delete_alias(self, alias: str) -> None: ...

    def close(self) -> None:  # noqa: B027 - backends without resources need nothing
        """Release files and connections."""

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- versions (shared by both backends) --------------------------------------------------
    def versions(self, alias: str) -> list[int]:
        """Existing version numbers of ``<alias>__v<N>``, ascending."""
        found = (parse_version(name) for name in self.list_collections())
        return sorted(v[1] for v in found if v is not None and v[0] == alias)

    def create_item_version(
        self, model: str, dim: int, distance: Distance = "dot", version: int | None = None
    ) -> str:
        """Create ``items_<model>__v<N>`` (the next free N unless given); returns its name."""
        existing = self.versions(items_alias(model))
        number = version if version is not None else (existing[-1] + 1 if existing else 1)
        name = item_version_name(model, number)
        self.create_collection(name, dim, distance, ITEM_PAYLOAD_INDEXES)
        return name

    def rollback_alias(self, alias: str) -> str:
        """Point ``alias`` back at the highest version below its current one."""
        current = self.resolve_alias(alias)
        parsed = parse_version(current) if current else None
        if parsed is None:
            raise NotFound(f"alias {alias!r} does not point at a versioned collection")
        older = [v for v in self.versions(alias) if v < parsed[1]]
        if not older:
            raise NotFound(f"no version of {alias!r} older than v{parsed[1]} to roll back to")
        target = f"{alias}__v{older[-1]}"
        self.swap_alias(alias, target)
        return target

    def prune_versions(self, alias: str, keep: int = 2) -> list[str]:
        """Delete all but the ``keep`` newest versions, never the live one; returns deleted."""
        live = self.resolve_alias(alias)
        newest = set(self.versions(alias)[-keep:]) if keep > 0 else set()
        doomed = [
            f"{alias}__v{v}"
            for v in self.versions(alias)
            if v not in newest and f"{alias}__v{v}" != live
        ]
        for name in doomed:
            self.delete_collection(name)
        return doomed
