"""``RemoteVectorStore``: the vector store of another process, served by ``stores.vectors.host``.

Processes that cannot open the Qdrant Edge shards themselves (an API worker beside the process
owning them) use this client; the protocol is described in ``host.py``. Errors the owner's
store raised (``NotFound``, ``InvalidInput``, ...) are raised here again as the same class
with the same message. A host that cannot be reached or does not answer in time is
``ServiceUnavailable`` naming its URL; a token it refuses is ``ConfigurationError``.

Thread-safety: the httpx client is shared between threads (its pool is thread-safe), and every
call is one request, so any thread may call at any time. Calls wait on the network:
``call_on_event_loop`` is False, so async callers use ``asyncio.to_thread``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
import numpy as np

from streamrec.core.errors import (
    ConfigurationError,
    InvalidInput,
    ServiceUnavailable,
    StreamrecError,
)
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
    _check_points,
)
from streamrec.stores.vectors.host import ERROR_STATUS, PATH_PREFIX, decode_matrix, encode_matrix

_ERROR_CLASSES: dict[str, type[StreamrecError]] = {cls.__name__: cls for cls in ERROR_STATUS}
# Below the host's keep-alive (host.KEEP_ALIVE_SECONDS): the client drops an idle connection
# before the server closes it, so no request goes out on a connection being closed.
KEEP_ALIVE_SECONDS = 30.0
# Edge builds the index in a child process: 27 s at 100k 64-d points, measured.
OPTIMIZE_TIMEOUT_SECONDS = 1800.0


def _json_default(value: object) -> object:
    # Payloads built with numpy (a popularity as np.float32) are accepted by the local stores.
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


class RemoteVectorStore(VectorStore):
    """The vector store another process serves with ``serve_vector_store``."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout_seconds: float = 5.0,
        connect_timeout_seconds: float = 1.0,
        optimize_timeout_seconds: float = OPTIMIZE_TIMEOUT_SECONDS,
        max_connections: int = 32,
    ) -> None:
        url = url.strip().rstrip("/")
        if not url.lower().startswith(("http://", "https://")):
            raise ConfigurationError(
                f"STREAMREC_VECTOR_HOST_URL must be an http(s):// URL, got {url!r}"
            )
        if not token:
            raise ConfigurationError(
                "STREAMREC_VECTOR_HOST_TOKEN must be set when STREAMREC_VECTOR_HOST_URL is"
            )
        self.url = url
        self._timeout = timeout_seconds
        self._connect_timeout = min(connect_timeout_seconds, timeout_seconds)
        self._optimize_timeout = optimize_timeout_seconds
        self._client = httpx.Client(
            base_url=url + PATH_PREFIX,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            timeout=httpx.Timeout(timeout_seconds, connect=self._connect_timeout),
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                keepalive_expiry=KEEP_ALIVE_SECONDS,
            ),
            trust_env=False,  # a proxy from the environment must not carry calls to the owner
        )

    @property
    def call_on_event_loop(self) -> bool:
        """False: every call is an HTTP round trip to another process."""
        return False

    # -- the wire ----------------------------------------------------------------------------
    def _call(self, method: str, args: Mapping[str, Any], timeout: float | None = None) -> Any:
        body = json.dumps(args, default=_json_default, separators=(",", ":")).encode()
        bound = timeout if timeout is not None else self._timeout
        # None would mean "no timeout" to httpx: the client's own applies unless one is given.
        per_call: httpx.Timeout | Any = (
            httpx.USE_CLIENT_DEFAULT
            if timeout is None
            else httpx.Timeout(timeout, connect=self._connect_timeout)
        )
        try:
            response = self._client.post(method, content=body, timeout=per_call)
        except httpx.TimeoutException as exc:
            raise ServiceUnavailable(
                f"vector host {self.url} did not answer {method} within {bound:g} s "
                f"({type(exc).__name__})"
            ) from exc
        except httpx.TransportError as exc:
            raise ServiceUnavailable(
                f"vector host {self.url} is unreachable ({type(exc).__name__}: "
                f"{_one_line(exc) or 'no detail'}): is the process owning the vector store "
                "running, and is STREAMREC_VECTOR_HOST_URL its address?"
            ) from exc
        if response.status_code == 200:
            try:
                return response.json()["result"]
            except (ValueError, KeyError, TypeError) as exc:
                raise ServiceUnavailable(
                    f"vector host {self.url} answered {method} with a malformed body"
                ) from exc
        raise self._error(method, response)

    def _error(self, method: str, response: httpx.Response) -> StreamrecError:
        status = response.status_code
        try:
            error = response.json()["error"]
            kind, message = str(error["kind"]), str(error["message"])
        except (ValueError, KeyError, TypeError):
            return ServiceUnavailable(
                f"vector host {self.url} answered {method} with {status}: "
                f"{_one_line(response.text)[:200]}"
            )
        if status == 401:
            return ConfigurationError(
                f"vector host {self.url} refused the token ({message}): "
                "STREAMREC_VECTOR_HOST_TOKEN must be the one the owning process serves with"
            )
        if status == 413:
            return InvalidInput(f"vector host {self.url}: {message}: send smaller batches")
        if kind == "UnknownMethod":
            return ConfigurationError(
                f"vector host {self.url}: {message} (is it running the same streamrec version?)"
            )
        known = _ERROR_CLASSES.get(kind)
        if known is not None:
            return known(message)
        return ServiceUnavailable(f"vector host {self.url} failed {method}: {kind}: {message}")

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
        self._call(
            "create_collection",
            {
                "name": name,
                "dim": dim,
                "distance": distance,
                "payload_indexes": dict(payload_indexes),
                "exist_ok": exist_ok,
            },
        )

    def collection_exists(self, name: str) -> bool:
        return bool(self._call("collection_exists", {"name": name}))

    def list_collections(self) -> list[str]:
        return [str(name) for name in self._call("list_collections", {})]

    def delete_collection(self, name: str) -> None:
        """One call: the owner checks and drops at once (no alias can slip in between)."""
        self._call("delete_collection", {"name": name})

    def _drop_collection(self, name: str) -> None:
        # Only VectorStore.delete_collection calls this, and it is replaced above; the host
        # exposes no unchecked drop, so this one checks too.
        self.delete_collection(name)

    def optimize(self, collection: str) -> None:
        self._call("optimize", {"collection": collection}, timeout=self._optimize_timeout)

    # -- points ------------------------------------------------------------------------------
    def upsert(
        self, collection: str, ids: Sequence[int], vectors: Vectors, payloads: Payloads = None
    ) -> None:
        if len(ids) == 0:
            return
        matrix = _as_matrix(vectors)
        id_list = _check_points(ids, matrix, payloads)  # refused here, without a round trip
        args = {
            "collection": collection,
            "ids": id_list,
            "vectors": encode_matrix(matrix),
            "payloads": [dict(p) for p in payloads] if payloads is not None else None,
        }
        self._call("upsert", args)

    def query(
        self,
        collection: str,
        vector: Sequence[float] | np.ndarray,
        k: int,
        genres: Sequence[str] | None = None,
        exclude_ids: Sequence[int] | None = None,
    ) -> list[Hit]:
        args = {
            "collection": collection,
            "vector": np.asarray(vector, dtype=np.float32).tolist(),
            "k": k,
            "genres": list(genres) if genres else None,
            "exclude_ids": [int(i) for i in exclude_ids] if exclude_ids else None,
        }
        hits = self._call("query", args)
        return [Hit(int(i), float(score), payload or {}) for i, score, payload in hits]

    def retrieve(self, collection: str, ids: Sequence[int]) -> list[Record]:
        found = self._call("retrieve", {"collection": collection, "ids": [int(i) for i in ids]})
        rows = decode_matrix(found["vectors"]).tolist()
        return [
            Record(int(i), row, payload or {})
            for i, row, payload in zip(found["ids"], rows, found["payloads"], strict=True)
        ]

    def count(self, collection: str) -> int:
        return int(self._call("count", {"collection": collection}))

    # -- aliases -----------------------------------------------------------------------------
    def swap_alias(self, alias: str, collection: str) -> str | None:
        previous = self._call("swap_alias", {"alias": alias, "collection": collection})
        return None if previous is None else str(previous)

    def resolve_alias(self, alias: str) -> str | None:
        target = self._call("resolve_alias", {"alias": alias})
        return None if target is None else str(target)

    def list_aliases(self) -> dict[str, str]:
        return {str(a): str(c) for a, c in self._call("list_aliases", {}).items()}

    def delete_alias(self, alias: str) -> None:
        self._call("delete_alias", {"alias": alias})

    def close(self) -> None:
        """Close this client's connections (the owner's store stays open)."""
        self._client.close()
