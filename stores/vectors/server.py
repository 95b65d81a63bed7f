"""The Qdrant server through qdrant-client; the client's local mode stands in for it in tests.

Thread-safety: the HTTP client is thread-safe, so a real server gets no lock. qdrant-client
local mode is plain Python with no locking, so this backend serialises every call behind one
lock when the client is local.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping, Sequence
from functools import partial
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
)

if TYPE_CHECKING:
    from qdrant_client import QdrantClient


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

    @property
    def call_on_event_loop(self) -> bool:
        """False: a server call waits on the network, and a local-mode call is pure Python
        that can take tens of milliseconds; in a thread, neither stalls the event loop."""
        return False

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
