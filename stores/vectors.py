"""Vector collections: one ``VectorStore`` interface, two backends, and a resumable bulk upsert.

Backends:

- ``EdgeVectorStore``: Qdrant Edge in-process (the embedded default), one shard directory per
  collection under ``<base_dir>/collections/``, aliases as pointer files under
  ``<base_dir>/aliases/`` replaced atomically with ``os.replace``.
- ``QdrantServerVectorStore``: a ``QdrantClient`` (a real server, or local mode in tests).

Collections (point ids are the dense indices of ``core.ids``, used as-is):

- ``items_<model>__v<N>``: one per published model version; the alias ``items_<model>`` points
  at the current one, and the previous one stays for rollback.
- ``users_<model>``: user query vectors, upserted by the vectors consumer.
- ``items_content``: Doc2Vec content vectors.

Thread-safety: ``query``, ``retrieve``, ``upsert`` and ``swap_alias`` may be called from any
thread at the same time. Edge shards are internally synchronised (measured: concurrent query
and upsert never fail), so Edge calls only take a per-shard gate that makes closing or
deleting a shard wait for the calls in flight. qdrant-client local mode is plain Python with
no locking, so that backend serialises every call behind one lock when the client is local.

Edge quirks (qdrant-edge-py 0.9.0) the code works around:

- A shard directory can be opened once per process and by one process (its WAL is locked):
  keep a single ``EdgeVectorStore`` per base directory in a process.
- Every call holds the GIL. ``EdgeShard.optimize()`` (the HNSW build) took 27 s for 100k
  64-d vectors here and froze every Python thread meanwhile, so ``optimize`` runs it in a
  child process on a closed shard. Without it queries scan (about 3 ms at 100k).
- Errors are plain ``Exception`` with a message; they are mapped to ``core.errors`` by text.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np

from core.errors import (
    ConfigurationError,
    InvalidInput,
    NotFound,
    ServiceUnavailable,
    StreamrecError,
)

if TYPE_CHECKING:
    import qdrant_edge
    from qdrant_client import QdrantClient

    from core.settings import Settings

log = logging.getLogger(__name__)

Distance = Literal["dot", "cosine"]
FieldType = Literal["keyword", "integer", "float"]
Vectors = np.ndarray | Sequence[Sequence[float]]
Payloads = Sequence[Mapping[str, Any]] | None

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


class VectorStore(ABC):
    """Collections, aliases, upsert and query: what the edge, consumers and publisher need."""

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


# ---------------------------------------------------------------------------------------------
# Qdrant Edge
# ---------------------------------------------------------------------------------------------

_OPTIMIZE_SCRIPT = (
    "import sys, qdrant_edge as q\ns = q.EdgeShard.load(sys.argv[1])\ns.optimize()\ns.close()\n"
)


class _Gate:
    """Counts the calls using a shard, so closing waits for them (Edge fails on a closed one)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._users = 0
        self._closed = False

    @contextlib.contextmanager
    def use(self, name: str) -> Iterator[None]:
        with self._cond:
            if self._closed:
                raise NotFound(f"collection {name!r} was closed or deleted")
            self._users += 1
        try:
            yield
        finally:
            with self._cond:
                self._users -= 1
                self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.wait_for(lambda: self._users == 0)


@dataclass
class _Shard:
    shard: qdrant_edge.EdgeShard
    gate: _Gate


def _edge_error(exc: Exception, name: str) -> StreamrecError:
    text = str(exc)
    lowered = text.lower()
    if "dimension" in lowered or "wrong input" in lowered or "bad input" in lowered:
        return InvalidInput(f"{name}: {text}")
    if "does not exist" in lowered or "not found" in lowered or "not initialized" in lowered:
        return NotFound(f"{name}: {text}")
    if "wouldblock" in lowered:
        return ServiceUnavailable(f"{name}: shard is open in another process ({text})")
    return ServiceUnavailable(f"{name}: Qdrant Edge error: {text}")


def _write_atomic(path: Path, text: str) -> None:
    """Write a file so readers see either the old or the new content, never a partial one."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class EdgeVectorStore(VectorStore):
    """Qdrant Edge in-process: one shard directory per collection under ``base_dir``."""

    def __init__(self, base_dir: Path | str) -> None:
        import qdrant_edge  # imported here so server-only deployments do not need the wheel

        self._qe = qdrant_edge
        self._base = Path(base_dir)
        self._collections = self._base / "collections"
        self._aliases = self._base / "aliases"
        self._collections.mkdir(parents=True, exist_ok=True)
        self._aliases.mkdir(parents=True, exist_ok=True)
        self._open: dict[str, _Shard] = {}
        self._offline: set[str] = set()  # being optimized or deleted: must not be reopened
        self._lock = threading.Lock()  # guards _open and _offline
        self._alias_lock = threading.Lock()  # serialises swaps within this process
        # alias -> (file identity, target): a stat per query instead of a read + parse. Our own
        # swaps drop the entry; another process's swap (os.replace) changes inode and times.
        self._alias_cache: dict[str, tuple[tuple[int, ...], str]] = {}

    # -- helpers -----------------------------------------------------------------------------
    def _dir(self, name: str) -> Path:
        return self._collections / _check_name(name)

    def _shard(self, name: str) -> _Shard:
        handle = self._open.get(name)
        if handle is not None:
            return handle
        with self._lock:
            handle = self._open.get(name)
            if handle is None:
                if name in self._offline:
                    raise ServiceUnavailable(f"collection {name!r} is being optimized or deleted")
                path = self._dir(name)
                if not path.is_dir():
                    raise NotFound(f"collection {name!r} does not exist")
                try:
                    shard = self._qe.EdgeShard.load(str(path))
                except Exception as exc:
                    raise _edge_error(exc, name) from exc
                handle = self._open[name] = _Shard(shard, _Gate())
            return handle

    def _target(self, name: str) -> str:
        """A collection name from a collection or alias name."""
        if name in self._open:
            return name
        target = self.resolve_alias(name)
        if target is not None:
            return target
        if self._dir(name).is_dir():
            return name
        raise NotFound(f"collection or alias {name!r} does not exist")

    def _run(self, name: str, call: Callable[[qdrant_edge.EdgeShard], Any]) -> Any:
        target = self._target(name)
        handle = self._shard(target)
        with handle.gate.use(target):
            try:
                return call(handle.shard)
            except Exception as exc:
                raise _edge_error(exc, target) from exc

    def _close_shard(self, name: str) -> None:
        with self._lock:
            handle = self._open.pop(name, None)
        if handle is not None:
            handle.gate.close()
            handle.shard.close()

    @contextlib.contextmanager
    def _taken_offline(self, name: str) -> Iterator[None]:
        """Close a shard and keep this process from reopening it until the block ends.

        A reopen meanwhile would lock the WAL the optimizing child needs, or hold files of a
        directory being deleted.
        """
        with self._lock:
            if name in self._offline:
                raise ServiceUnavailable(f"collection {name!r} is being optimized or deleted")
            self._offline.add(name)
        try:
            self._close_shard(name)
            yield
        finally:
            with self._lock:
                self._offline.discard(name)

    # -- collections -------------------------------------------------------------------------
    def create_collection(
        self,
        name: str,
        dim: int,
        distance: Distance = "dot",
        payload_indexes: Mapping[str, FieldType] = ITEM_PAYLOAD_INDEXES,
        *,
        exist_ok: bool = False,
    ) -> None:
        qe = self._qe
        final = self._dir(name)
        if final.exists() or self.resolve_alias(name) is not None:
            if exist_ok and final.exists():
                return
            raise InvalidInput(f"collection or alias {name!r} already exists")
        # Built under a hidden name and renamed, so a crash never leaves a half-made collection.
        staging = self._collections / f".new-{name}-{uuid.uuid4().hex}"
        config = qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=dim, distance=_edge_distance(distance))
        )
        try:
            shard = qe.EdgeShard.create(str(staging), config)
            for field, kind in payload_indexes.items():
                shard.update(qe.UpdateOperation.create_field_index(field, _edge_schema(kind)))
            shard.close()
        except Exception as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise _edge_error(exc, name) from exc
        try:
            os.rename(staging, final)
        except OSError as exc:  # another thread created it first
            shutil.rmtree(staging, ignore_errors=True)
            if not (exist_ok and final.exists()):
                raise InvalidInput(f"collection {name!r} already exists") from exc

    def collection_exists(self, name: str) -> bool:
        return self._dir(name).is_dir()

    def list_collections(self) -> list[str]:
        return sorted(
            p.name for p in self._collections.iterdir() if p.is_dir() and not p.name.startswith(".")
        )

    def _drop_collection(self, name: str) -> None:
        # Renamed first so the name disappears at once, then removed at leisure.
        trash = self._collections / f".trash-{name}-{uuid.uuid4().hex}"
        with self._taken_offline(name):
            os.rename(self._dir(name), trash)
        shutil.rmtree(trash, ignore_errors=True)

    def optimize(self, collection: str) -> None:
        """Build the HNSW index in a child process (in-process it holds the GIL for seconds).

        The collection is closed meanwhile (calls on it fail with ServiceUnavailable), so
        optimize a new version before swapping an alias to it, not a live collection.
        """
        name = self._target(collection)
        with self._taken_offline(name):
            proc = subprocess.run(
                [sys.executable, "-c", _OPTIMIZE_SCRIPT, str(self._dir(name))],
                capture_output=True,
                text=True,
                check=False,
            )
        if proc.returncode != 0:
            raise ServiceUnavailable(f"optimizing {name!r} failed: {proc.stderr.strip()[-2000:]}")

    # -- points ------------------------------------------------------------------------------
    def upsert(
        self, collection: str, ids: Sequence[int], vectors: Vectors, payloads: Payloads = None
    ) -> None:
        if len(ids) == 0:
            return
        matrix = _as_matrix(vectors)
        id_list = _check_points(ids, matrix, payloads)
        rows = matrix.tolist()
        pays = payloads if payloads is not None else [{}] * len(id_list)
        points = [
            self._qe.Point(i, row, dict(p)) for i, row, p in zip(id_list, rows, pays, strict=True)
        ]
        operation = self._qe.UpdateOperation.upsert_points(points)
        self._run(collection, lambda shard: shard.update(operation))

    def query(
        self,
        collection: str,
        vector: Sequence[float] | np.ndarray,
        k: int,
        genres: Sequence[str] | None = None,
        exclude_ids: Sequence[int] | None = None,
    ) -> list[Hit]:
        qe = self._qe
        request = qe.QueryRequest(
            limit=k,
            query=qe.Query.Nearest(np.asarray(vector, dtype=np.float32).tolist()),
            filter=self._filter(genres, exclude_ids),
            with_payload=True,
        )
        points = self._run(collection, lambda shard: shard.query(request))
        return [Hit(int(p.id), float(p.score), p.payload or {}) for p in points]

    def _filter(
        self, genres: Sequence[str] | None, exclude_ids: Sequence[int] | None
    ) -> qdrant_edge.Filter | None:
        qe = self._qe
        must = [qe.FieldCondition("genres", match=qe.MatchAny(list(genres)))] if genres else None
        must_not = [qe.HasIdCondition({int(i) for i in exclude_ids})] if exclude_ids else None
        return qe.Filter(must=must, must_not=must_not) if must or must_not else None

    def retrieve(self, collection: str, ids: Sequence[int]) -> list[Record]:
        id_list: list[Any] = [int(i) for i in ids]
        found = self._run(collection, lambda shard: shard.retrieve(id_list, True, True))
        records = (Record(int(r.id), list(r.vector), r.payload or {}) for r in found)
        return _ordered(records, id_list)

    def count(self, collection: str) -> int:
        return int(self._run(collection, lambda shard: shard.count(self._qe.CountRequest())))

    # -- aliases -----------------------------------------------------------------------------
    def _alias_file(self, alias: str) -> Path:
        return self._aliases / f"{_check_name(alias)}.json"

    def swap_alias(self, alias: str, collection: str) -> str | None:
        if not self.collection_exists(collection):
            raise NotFound(f"collection {collection!r} does not exist")
        if self.collection_exists(alias):
            raise InvalidInput(f"{alias!r} is a collection name and cannot be an alias")
        with self._alias_lock:
            previous = self.resolve_alias(alias)
            _write_atomic(self._alias_file(alias), json.dumps({"collection": collection}))
            self._alias_cache.pop(alias, None)
        return previous

    def resolve_alias(self, alias: str) -> str | None:
        path = self._alias_file(alias)
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            return None
        key = (stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size)
        cached = self._alias_cache.get(alias)
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            target = str(json.loads(path.read_text(encoding="utf-8"))["collection"])
        except FileNotFoundError:  # deleted between stat and read
            return None
        self._alias_cache[alias] = (key, target)
        return target

    def list_aliases(self) -> dict[str, str]:
        names = (p.name.removesuffix(".json") for p in self._aliases.glob("*.json"))
        resolved = {name: self.resolve_alias(name) for name in names}
        return {alias: target for alias, target in sorted(resolved.items()) if target}

    def delete_alias(self, alias: str) -> None:
        with self._alias_lock:
            try:
                self._alias_file(alias).unlink()
            except FileNotFoundError as exc:
                raise NotFound(f"alias {alias!r} does not exist") from exc
            self._alias_cache.pop(alias, None)

    def close(self) -> None:
        for name in list(self._open):
            self._close_shard(name)


def _choose(table: dict[str, Any], value: str, what: str) -> Any:
    """Map one of our names onto a backend's enum, or say which names exist."""
    if value not in table:
        raise InvalidInput(f"{what} must be one of {sorted(table)}, got {value!r}")
    return table[value]


def _edge_distance(distance: Distance) -> Any:
    import qdrant_edge as qe

    return _choose({"dot": qe.Distance.Dot, "cosine": qe.Distance.Cosine}, distance, "distance")


def _edge_schema(kind: FieldType) -> Any:
    import qdrant_edge as qe

    table = {
        "keyword": qe.PayloadSchemaType.Keyword,
        "integer": qe.PayloadSchemaType.Integer,
        "float": qe.PayloadSchemaType.Float,
    }
    return _choose(table, kind, "payload index type")


# ---------------------------------------------------------------------------------------------
# Qdrant server (qdrant-client; local mode in tests)
# ---------------------------------------------------------------------------------------------


def _server_error(exc: Exception, what: str) -> StreamrecError:
    from qdrant_client.common.client_exceptions import ResourceExhaustedResponse
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    if isinstance(exc, UnexpectedResponse):
        status = exc.status_code or 0
        detail = exc.content.decode("utf-8", "replace")[:500]
        if status == 404:
            return NotFound(f"{what}: {detail}")
        if status in (400, 409, 422):
            return InvalidInput(f"{what}: {detail}")
        return ServiceUnavailable(f"{what}: Qdrant answered {status}: {detail}")
    if isinstance(exc, ResponseHandlingException | ResourceExhaustedResponse | OSError):
        return ServiceUnavailable(f"{what}: Qdrant did not answer: {exc}")
    # Local mode raises ValueError for a missing collection and for bad input.
    if "not found" in str(exc).lower():
        return NotFound(f"{what}: {exc}")
    return InvalidInput(f"{what}: {exc}")


class QdrantServerVectorStore(VectorStore):
    """The Qdrant server through qdrant-client; the client's local mode stands in for tests."""

    def __init__(self, client: QdrantClient) -> None:
        from qdrant_client.local.qdrant_local import QdrantLocal

        self._client = client
        # Local mode has no internal locking (numpy arrays resized on upsert): serialise it.
        # The HTTP client is thread-safe, so a real server gets no lock.
        self._local = isinstance(getattr(client, "_client", None), QdrantLocal)
        self._lock: contextlib.AbstractContextManager[Any] = (
            threading.RLock() if self._local else contextlib.nullcontext()
        )

    def _call(self, what: str, call: Callable[[], Any]) -> Any:
        import httpx
        from qdrant_client.common.client_exceptions import QdrantException
        from qdrant_client.http.exceptions import ApiException

        with self._lock:
            try:
                return call()
            except (ApiException, QdrantException, httpx.HTTPError, OSError, ValueError) as exc:
                raise _server_error(exc, what) from exc

    def create_collection(
        self,
        name: str,
        dim: int,
        distance: Distance = "dot",
        payload_indexes: Mapping[str, FieldType] = ITEM_PAYLOAD_INDEXES,
        *,
        exist_ok: bool = False,
    ) -> None:
        from qdrant_client import models

        _check_name(name)
        if self.collection_exists(name) or self.resolve_alias(name) is not None:
            if exist_ok and self.collection_exists(name):
                return
            raise InvalidInput(f"collection or alias {name!r} already exists")
        params = models.VectorParams(size=dim, distance=_server_distance(distance))
        self._call(name, lambda: self._client.create_collection(name, vectors_config=params))
        for field, kind in payload_indexes.items():
            schema = _server_schema(kind)
            create_index = partial(
                self._client.create_payload_index, name, field, field_schema=schema, wait=True
            )
            self._call(name, create_index)

    def collection_exists(self, name: str) -> bool:
        return name in self.list_collections()

    def list_collections(self) -> list[str]:
        found = self._call("list collections", self._client.get_collections)
        return sorted(c.name for c in found.collections)

    def _drop_collection(self, name: str) -> None:
        self._call(name, lambda: self._client.delete_collection(name))

    def upsert(
        self, collection: str, ids: Sequence[int], vectors: Vectors, payloads: Payloads = None
    ) -> None:
        from qdrant_client import models

        if len(ids) == 0:
            return
        matrix = _as_matrix(vectors)
        id_list = _check_points(ids, matrix, payloads)
        pays = [dict(p) for p in payloads] if payloads is not None else None
        batch = models.Batch(ids=id_list, vectors=matrix.tolist(), payloads=pays)
        self._call(collection, lambda: self._client.upsert(collection, points=batch, wait=True))

    def query(
        self,
        collection: str,
        vector: Sequence[float] | np.ndarray,
        k: int,
        genres: Sequence[str] | None = None,
        exclude_ids: Sequence[int] | None = None,
    ) -> list[Hit]:
        from qdrant_client import models

        must = (
            [models.FieldCondition(key="genres", match=models.MatchAny(any=list(genres)))]
            if genres
            else None
        )
        must_not = (
            [models.HasIdCondition(has_id=[int(i) for i in exclude_ids])] if exclude_ids else None
        )
        query_filter = models.Filter(must=must, must_not=must_not) if must or must_not else None
        query = np.asarray(vector, dtype=np.float32).tolist()
        result = self._call(
            collection,
            lambda: self._client.query_points(
                collection, query=query, limit=k, query_filter=query_filter, with_payload=True
            ),
        )
        return [Hit(int(p.id), float(p.score), p.payload or {}) for p in result.points]

    def retrieve(self, collection: str, ids: Sequence[int]) -> list[Record]:
        id_list: list[Any] = [int(i) for i in ids]
        found = self._call(
            collection,
            lambda: self._client.retrieve(
                collection, id_list, with_payload=True, with_vectors=True
            ),
        )
        records = (Record(int(r.id), list(r.vector), r.payload or {}) for r in found)
        return _ordered(records, id_list)

    def count(self, collection: str) -> int:
        result = self._call(collection, lambda: self._client.count(collection, exact=True))
        return int(result.count)

    def swap_alias(self, alias: str, collection: str) -> str | None:
        from qdrant_client import models

        if not self.collection_exists(collection):
            raise NotFound(f"collection {collection!r} does not exist")
        previous = self.resolve_alias(alias)
        operations: list[Any] = []
        if previous is not None:
            operations.append(
                models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias))
            )
        # Delete + create in one request: the server applies them atomically.
        operations.append(
            models.CreateAliasOperation(
                create_alias=models.CreateAlias(collection_name=collection, alias_name=alias)
            )
        )
        self._call(alias, lambda: self._client.update_collection_aliases(operations))
        return previous

    def resolve_alias(self, alias: str) -> str | None:
        return self.list_aliases().get(alias)

    def list_aliases(self) -> dict[str, str]:
        found = self._call("list aliases", self._client.get_aliases)
        return {a.alias_name: a.collection_name for a in found.aliases}

    def delete_alias(self, alias: str) -> None:
        from qdrant_client import models

        if self.resolve_alias(alias) is None:
            raise NotFound(f"alias {alias!r} does not exist")
        operation = models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias))
        self._call(alias, lambda: self._client.update_collection_aliases([operation]))

    def close(self) -> None:
        self._call("close", self._client.close)


def _server_distance(distance: Distance) -> Any:
    from qdrant_client import models

    table = {"dot": models.Distance.DOT, "cosine": models.Distance.COSINE}
    return _choose(table, distance, "distance")


def _server_schema(kind: FieldType) -> Any:
    from qdrant_client import models

    table = {
        "keyword": models.PayloadSchemaType.KEYWORD,
        "integer": models.PayloadSchemaType.INTEGER,
        "float": models.PayloadSchemaType.FLOAT,
    }
    return _choose(table, kind, "payload index type")


def open_vector_store(
    settings_or_url: Settings | str, base_dir: Path | str | None = None, *, timeout: int = 60
) -> VectorStore:
    """The store a URL names.

    ``embedded`` → Qdrant Edge under ``base_dir`` (default ``<var_dir>/qdrant``);
    ``http(s)://...`` → a Qdrant server; ``:memory:`` or ``path:<dir>`` → qdrant-client local
    mode (tests only: slow beyond a few thousand points, see DESIGN.md §2).
    """
    if isinstance(settings_or_url, str):
        url = settings_or_url
    else:
        url = settings_or_url.qdrant_url
        base_dir = base_dir if base_dir is not None else settings_or_url.var_dir / "qdrant"
    url = url.strip()
    if url.lower() == "embedded":
        if base_dir is None:
            raise ConfigurationError("the embedded vector store needs a base directory")
        return EdgeVectorStore(base_dir)

    from qdrant_client import QdrantClient

    if url.lower().startswith(("http://", "https://")):
        return QdrantServerVectorStore(QdrantClient(url=url, timeout=timeout))
    # Our lock serialises local mode, which makes sharing its SQLite handle across threads safe.
    if url == ":memory:":
        client = QdrantClient(location=":memory:", force_disable_check_same_thread=True)
        return QdrantServerVectorStore(client)
    if url.startswith("path:"):
        client = QdrantClient(path=url.removeprefix("path:"), force_disable_check_same_thread=True)
        return QdrantServerVectorStore(client)
    raise ConfigurationError(
        f"STREAMREC_QDRANT_URL must be 'embedded', an http(s):// URL, ':memory:' or "
        f"'path:<dir>', got {url!r}"
    )


# ---------------------------------------------------------------------------------------------
# Bulk upsert
# ---------------------------------------------------------------------------------------------

VectorBatch = tuple[Sequence[int], Vectors, Payloads]
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
