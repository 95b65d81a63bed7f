"""Qdrant Edge in-process (the embedded default).

One shard directory per collection under ``<base_dir>/collections/``, aliases as pointer files
under ``<base_dir>/aliases/`` replaced atomically with ``os.replace``.

Thread-safety: Edge shards are internally synchronised (measured: concurrent query and upsert
never fail), so Edge calls only take a per-shard gate that makes closing or deleting a shard
wait for the calls in flight.

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
import os
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from streamrec.core.errors import InvalidInput, NotFound, ServiceUnavailable, StreamrecError
from streamrec.stores.vectors.base import (
    ITEM_PAYLOAD_INDEXES,
    Distance,
    FieldType,
    Hit,
    Payloads,
    Record,
    Vectors,
    VectorStore,
    _as_matrix,
    _check_name,
    _check_points,
    _choose,
    _ordered,
    _write_atomic,
)

if TYPE_CHECKING:
    import qdrant_edge

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

    @property
    def call_on_event_loop(self) -> bool:
        """True: an Edge call runs in this process, holds the GIL throughout and waits on no
        I/O (a query at 100k indexed points: 0.5 ms, 2.4 ms with a genre filter and 50
        exclusions; ``benchmarks/vectors_bulk.py``), so a worker thread would search nothing
        in parallel and the hop only adds CPU (see ``api/serving.py``)."""
        return True

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
