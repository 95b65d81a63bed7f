"""A vector store other processes can use: its methods over HTTP JSON, for ``RemoteVectorStore``.

Qdrant Edge shards can be opened by one process only. The process that owns them (the one
running the consumer groups) serves its store with ``serve_vector_store``; other processes
(API workers) reach it through ``stores.vectors.remote.RemoteVectorStore``.

The protocol, the same for every method:

- ``POST /v1/vectors/<method>`` with ``Authorization: Bearer <token>`` and a JSON object of
  the method's arguments; ``<method>`` is one of ``METHODS``.
- 200 ``{"result": ...}``, or an error status with ``{"error": {"kind", "message"}}``: ``kind``
  is the ``core.errors`` class the store raised (``NotFound`` 404, ``InvalidInput`` 422,
  ``StateConflict`` 409, ``ServiceUnavailable`` 503, ``ConfigurationError`` 500), or
  ``Unauthorized`` (401), ``UnknownMethod`` (404), ``TooLarge`` (413), ``Internal`` (500: an
  unexpected error, logged here with its traceback).
- Matrices (upserted and retrieved vectors) travel as ``{"shape": [n, d], "f32": <base64 of
  little-endian float32, row-major>}``: for a 1,000 x 64 upsert, encoding plus decoding take
  2 ms and 346 kB against 59 ms and 1.3 MB as JSON lists of floats (measured), and the stores
  keep float32 anyway, so nothing is lost. A query's single vector is a JSON list.
- ``GET /healthz`` (no token): 200 ``{"status": "ok"}`` while it serves.

Calls run where the store says (``VectorStore.call_on_event_loop``): Edge's on the event loop
the server runs on, serialised with whatever else runs there (the owner's consumers), because
Edge is only called from that loop; other stores' calls in a worker thread. ``optimize`` always
runs in a thread: Edge waits there for a child process building the index (27 s at 100k
points), which must not stall the loop.

Cost (measured 2026-12-01, 2 shared cores, owner and client in two processes on loopback, an
optimized Edge collection of 1,682 x 64 with payloads, 3,000 calls each, two runs), p50 / p99
in µs, direct on Edge against through the host: query k=10 116-121 / 182-259 against 799-849 /
1,195-1,240 (with a genre filter and 50 exclusions 137-148 / 242-315 against 924-1,059 /
1,384-3,341); retrieve 1 id 8 / 9-12 against 574-582 / 857-887; retrieve 50 ids 180-190 /
263-288 against 1,207-1,210 / 1,749-1,914. An upsert of 1,000 x 64 with
payloads: 27 ms direct, 34 ms through the host (p50).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import logging
import math
import socket
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import uvicorn
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from streamrec.core.errors import (
    ConfigurationError,
    InvalidInput,
    NotFound,
    ServiceUnavailable,
    StateConflict,
    StreamrecError,
)
from streamrec.stores.vectors.base import ITEM_PAYLOAD_INDEXES, Distance, FieldType, VectorStore

log = logging.getLogger(__name__)

PATH_PREFIX = "/v1/vectors/"
# Holds a bulk-upsert batch of 10,000 x 256 float32 (13.7 MB in base64) with its payloads.
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
# Longer than the client's keep-alive (remote.py), so the client always drops an idle
# connection first and never sends a request on one the server is closing.
KEEP_ALIVE_SECONDS = 75

# The error classes that cross the wire as themselves (their name is the kind), with their
# HTTP status; a subclass travels as its nearest listed base.
ERROR_STATUS: dict[type[StreamrecError], int] = {
    NotFound: 404,
    InvalidInput: 422,
    StateConflict: 409,
    ServiceUnavailable: 503,
    ConfigurationError: 500,
    StreamrecError: 500,
}


# -- matrices --------------------------------------------------------------------------------
def encode_matrix(matrix: np.ndarray) -> dict[str, Any]:
    """A 2-d array as ``{"shape", "f32"}``: base64 of little-endian float32, row-major."""
    data = np.ascontiguousarray(matrix, dtype="<f4")
    return {"shape": list(data.shape), "f32": base64.b64encode(data.tobytes()).decode("ascii")}


class Matrix(BaseModel):
    """An encoded matrix (``encode_matrix``)."""

    model_config = ConfigDict(extra="forbid")

    shape: tuple[int, int]
    f32: str

    def decode(self) -> np.ndarray:
        rows, cols = self.shape
        if rows < 0 or cols < 0:
            raise InvalidInput(f"matrix shape must not be negative, got {[rows, cols]}")
        try:
            raw = base64.b64decode(self.f32, validate=True)
        except ValueError as exc:
            raise InvalidInput(f"matrix data is not base64: {exc}") from exc
        if len(raw) != rows * cols * 4:
            raise InvalidInput(
                f"matrix data has {len(raw)} bytes; shape {[rows, cols]} needs {rows * cols * 4}"
            )
        return np.frombuffer(raw, dtype="<f4").reshape(rows, cols)


def decode_matrix(data: Mapping[str, Any]) -> np.ndarray:
    return Matrix.model_validate(data).decode()


# -- methods ---------------------------------------------------------------------------------
class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _NoArgs(_Args):
    pass


class _Name(_Args):
    name: str


class _Collection(_Args):
    collection: str


class _Alias(_Args):
    alias: str


class _Create(_Args):
    name: str
    dim: int = Field(ge=1)
    distance: Distance = "dot"
    payload_indexes: dict[str, FieldType] = Field(
        default_factory=lambda: dict(ITEM_PAYLOAD_INDEXES)
    )
    exist_ok: bool = False


class _Upsert(_Args):
    collection: str
    ids: list[int]
    vectors: Matrix
    payloads: list[dict[str, Any]] | None = None


class _Query(_Args):
    collection: str
    vector: list[float]
    k: int = Field(ge=1)
    genres: list[str] | None = None
    exclude_ids: list[int] | None = None


class _Retrieve(_Args):
    collection: str
    ids: list[int]


class _Swap(_Args):
    alias: str
    collection: str


@dataclass(frozen=True)
class _Method:
    args: type[_Args]
    call: Callable[[VectorStore, Any], Any]  # (store, parsed args) -> a JSON-able result
    in_thread: bool = False  # always in a worker thread, even for a store called on the loop


def _create(store: VectorStore, a: _Create) -> None:
    store.create_collection(a.name, a.dim, a.distance, a.payload_indexes, exist_ok=a.exist_ok)


def _upsert(store: VectorStore, a: _Upsert) -> None:
    store.upsert(a.collection, a.ids, a.vectors.decode(), a.payloads)


def _query(store: VectorStore, a: _Query) -> list[list[Any]]:
    hits = store.query(a.collection, a.vector, a.k, a.genres, a.exclude_ids)
    return [[hit.id, hit.score, hit.payload] for hit in hits]


def _retrieve(store: VectorStore, a: _Retrieve) -> dict[str, Any]:
    records = store.retrieve(a.collection, a.ids)
    matrix = np.asarray([r.vector for r in records], dtype=np.float32).reshape(
        len(records), len(records[0].vector) if records else 0
    )
    return {
        "ids": [r.id for r in records],
        "vectors": encode_matrix(matrix),
        "payloads": [r.payload for r in records],
    }


METHODS: dict[str, _Method] = {
    "create_collection": _Method(_Create, _create),
    "collection_exists": _Method(_Name, lambda s, a: s.collection_exists(a.name)),
    "list_collections": _Method(_NoArgs, lambda s, a: s.list_collections()),
    # The whole check-then-drop of VectorStore.delete_collection, in one call on the owner.
    "delete_collection": _Method(_Name, lambda s, a: s.delete_collection(a.name)),
    "optimize": _Method(_Collection, lambda s, a: s.optimize(a.collection), in_thread=True),
    "upsert": _Method(_Upsert, _upsert),
    "query": _Method(_Query, _query),
    "retrieve": _Method(_Retrieve, _retrieve),
    "count": _Method(_Collection, lambda s, a: s.count(a.collection)),
    "swap_alias": _Method(_Swap, lambda s, a: s.swap_alias(a.alias, a.collection)),
    "resolve_alias": _Method(_Alias, lambda s, a: s.resolve_alias(a.alias)),
    "list_aliases": _Method(_NoArgs, lambda s, a: s.list_aliases()),
    "delete_alias": _Method(_Alias, lambda s, a: s.delete_alias(a.alias)),
}


# -- the app ---------------------------------------------------------------------------------
class _TooLarge(Exception):
    pass


def _error(kind: str, message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": {"kind": kind, "message": message}}, status_code=status)


def _domain_error(exc: StreamrecError) -> JSONResponse:
    kind = next(cls for cls in type(exc).__mro__ if cls in ERROR_STATUS)
    return _error(kind.__name__, str(exc), ERROR_STATUS[kind])


def _readable(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():  # a body without Content-Length is bounded too
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def create_vector_host_app(
    store: VectorStore, token: str, *, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
) -> Starlette:
    """The ASGI app serving ``store``'s methods to holders of ``token`` (see the module doc)."""
    if not token:
        raise ConfigurationError("the vector host needs a non-empty token")
    expected = f"Bearer {token}".encode()
    on_loop = store.call_on_event_loop

    async def call(request: Request) -> JSONResponse:
        given = request.headers.get("authorization", "").encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(given, expected):
            return _error("Unauthorized", "missing or wrong bearer token", 401)
        name = request.path_params["method"]
        method = METHODS.get(name)
        if method is None:
            return _error("UnknownMethod", f"no vector store method {name!r}", 404)
        try:
            body = await _read_body(request, max_request_bytes)
        except _TooLarge:
            return _error("TooLarge", f"request body over {max_request_bytes} bytes", 413)
        try:
            args = method.args.model_validate_json(body or b"{}")
            if on_loop and not method.in_thread:
                result = method.call(store, args)
            else:
                result = await asyncio.to_thread(method.call, store, args)
            return JSONResponse({"result": result})
        except ValidationError as exc:
            return _domain_error(InvalidInput(f"{name}: {_readable(exc)}"))
        except StreamrecError as exc:
            return _domain_error(exc)
        except Exception as exc:  # a bug: the client gets its type and message, the log its trace
            log.exception("vector host: %s failed", name)
            return _error("Internal", f"{type(exc).__name__}: {exc}", 500)

    async def healthz(_request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    routes = [
        Route(PATH_PREFIX + "{method}", call, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
    return Starlette(routes=routes)


# -- serving on the current event loop -------------------------------------------------------
class _Server(uvicorn.Server):
    """uvicorn that leaves signals to the process owning the loop and says when it listens."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn would replace the owner's SIGINT/SIGTERM handlers while it serves and
        # re-raise the signal when it stops: the owner decides when this server stops.
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.listening.set()


@dataclass(frozen=True)
class VectorHost:
    """A running vector host: where clients reach it."""

    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def listen_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A TCP socket listening on ``host:port`` (0: a free port), as the vector host wants it."""
    # Bound here rather than by uvicorn: a port in use is then an exception for the caller,
    # where uvicorn would call sys.exit inside its task (a SystemExit on the owner's loop).
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP
    # (socket.create_server leaves it 0), and without it every answer on a kept-alive
    # connection waited 40 ms for the client's delayed ACK (measured).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(socket.SOMAXCONN)
    except OSError as exc:
        sock.close()
        raise ConfigurationError(f"the vector host cannot listen on {host}:{port}: {exc}") from exc
    return sock


@contextlib.asynccontextmanager
async def serve_vector_store(
    store: VectorStore,
    host: str = "127.0.0.1",
    port: int = 0,
    token: str = "",
    *,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    shutdown_grace_seconds: float = 3.0,
    sock: socket.socket | None = None,
) -> AsyncIterator[VectorHost]:
    """Serve ``store`` over HTTP from a task on the running event loop for the block's length.

    Yields once the server accepts connections (``port=0``: a free port, see the yielded
    ``VectorHost``). On exit it stops accepting, lets requests in flight finish for up to
    ``shutdown_grace_seconds``, and returns; the store stays open (its owner closes it).
    ``sock``: a socket already listening (``listen_socket``; ``streamrec up`` binds it in the
    supervisor and hands it down, so the port is never free for another process to take,
    and clients of a restarting host wait in its backlog); ``host`` and ``port`` are then
    ignored.
    """
    app = create_vector_host_app(store, token, max_request_bytes=max_request_bytes)
    if sock is None:
        sock = listen_socket(host, port)
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(
        app,
        lifespan="off",
        interface="asgi3",
        log_config=None,  # the owner's logging stays as it is; records go through it
        log_level="warning",
        access_log=False,
        proxy_headers=False,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        timeout_graceful_shutdown=math.ceil(shutdown_grace_seconds),
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="vector-host")

    def report_early_end(ended: asyncio.Task[None]) -> None:
        # Nobody awaits the task until the block ends: say at once that clients lost it.
        if not server.should_exit and not ended.cancelled():
            log.error("the vector host on %s:%s stopped: %r", host, port, ended.exception())

    task.add_done_callback(report_early_end)
    try:
        listening = asyncio.create_task(server.listening.wait())
        await asyncio.wait({task, listening}, return_when=asyncio.FIRST_COMPLETED)
        if not server.listening.is_set():
            listening.cancel()
            task.result()  # the start-up's own error, if it raised one
            raise ServiceUnavailable(f"the vector host on {host}:{port} stopped while starting")
        bound_host, bound_port = sock.getsockname()[:2]
        yield VectorHost(str(bound_host), int(bound_port))
    finally:
        server.should_exit = True
        await task
        sock.close()
