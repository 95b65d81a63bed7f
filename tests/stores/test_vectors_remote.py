"""The vector host (``stores/vectors/host.py``) and its client (``stores/vectors/remote.py``).

The contract suite in ``test_vectors.py`` runs on a ``RemoteVectorStore`` too (its ``remote``
parameter, through ``remote_edge_store`` below: Edge served from an event loop in a thread of
its own, as the owning process serves it). The tests here serve Edge from the test's own event
loop and drive the client from worker threads (``asyncio.to_thread``), as API workers do, and
cover what only the remote store has: results identical to the direct store's, errors
travelling as their class, where calls run, the token, the size bound, an unreachable host.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from pydantic import SecretStr

from streamrec.core.errors import ConfigurationError, InvalidInput, NotFound, ServiceUnavailable
from streamrec.core.settings import Settings
from streamrec.stores.vectors import (
    EdgeVectorStore,
    Hit,
    Payloads,
    Record,
    RemoteVectorStore,
    Vectors,
    VectorStore,
    items_alias,
    open_vector_store,
    serve_vector_store,
)
from streamrec.stores.vectors.host import create_vector_host_app, listen_socket
from tests.stores.test_vectors import DIM, axis, clustered

TOKEN = "test-vector-host-token"


@contextlib.contextmanager
def remote_edge_store(base_dir: Path) -> Iterator[RemoteVectorStore]:
    """A ``RemoteVectorStore`` on an Edge store served from an event loop in its own thread.

    The thread stands in for the owning process: only its loop calls the Edge store.
    """
    edge = EdgeVectorStore(base_dir)
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def serve() -> None:
        stop = asyncio.Event()
        async with serve_vector_store(edge, token=TOKEN) as host:
            state.update(url=host.url, stop=stop, loop=asyncio.get_running_loop())
            ready.set()
            await stop.wait()

    def run() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:  # re-raised in the test's thread below
            state["error"] = exc
        finally:
            ready.set()

    thread = threading.Thread(target=run, name="vector-host-owner")
    thread.start()
    ready.wait()
    try:
        if "error" in state:
            raise state["error"]
        with RemoteVectorStore(state["url"], TOKEN) as remote:
            yield remote  # type: ignore[misc]  # __enter__ is typed as the base class
    finally:
        if "stop" in state:
            state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join()
        edge.close()
    if "error" in state:
        raise state["error"]


# -- a host on the test's event loop ---------------------------------------------------------
@contextlib.asynccontextmanager
async def served(
    store: VectorStore, token: str = TOKEN, **options: Any
) -> AsyncIterator[RemoteVectorStore]:
    async with serve_vector_store(store, token=token, **options) as host:
        remote = RemoteVectorStore(host.url, token)
        try:
            yield remote
        finally:
            remote.close()


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[EdgeVectorStore]:
    store = EdgeVectorStore(tmp_path / "qdrant")
    yield store
    store.close()


async def off_loop(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call the remote store from a worker thread, as an API worker does."""
    return await asyncio.to_thread(call, *args, **kwargs)


async def test_remote_answers_exactly_what_the_store_answers(edge: EdgeVectorStore) -> None:
    async with served(edge) as remote:
        assert remote.call_on_event_loop is False
        name = await off_loop(remote.create_item_version, "mf", DIM)
        assert await off_loop(remote.collection_exists, name)
        assert not await off_loop(remote.collection_exists, "items_mf__v9")
        assert await off_loop(remote.list_collections) == edge.list_collections() == [name]
        ids, vectors, payloads = clustered(300)
        await off_loop(remote.upsert, name, ids, vectors, payloads)
        assert await off_loop(remote.count, name) == edge.count(name) == 300

        excluded = [h.id for h in edge.query(name, axis(0), k=5)]
        for genres, exclude in [(None, None), (["drama", "action"], None), (None, excluded)]:
            hits = await off_loop(remote.query, name, axis(0), 10, genres, exclude)
            assert hits == edge.query(name, axis(0), 10, genres, exclude)
            assert all(isinstance(h, Hit) and isinstance(h.id, int) for h in hits)
        filtered = await off_loop(remote.query, name, axis(0), 10, ["drama"], excluded)
        assert len(filtered) == 10 and all(h.payload["genres"] == ["drama"] for h in filtered)

        records = await off_loop(remote.retrieve, name, [7, 9999, 3])
        assert records == edge.retrieve(name, [7, 9999, 3])
        assert [r.id for r in records] == [7, 3] and isinstance(records[0], Record)
        assert records[0].vector == vectors[7].tolist()  # float32 crosses the wire exactly
        assert await off_loop(remote.retrieve, name, [9999]) == []

        alias = items_alias("mf")
        assert await off_loop(remote.swap_alias, alias, name) is None
        v2 = await off_loop(remote.create_item_version, "mf", DIM)
        assert await off_loop(remote.swap_alias, alias, v2) == name
        assert await off_loop(remote.resolve_alias, alias) == edge.resolve_alias(alias) == v2
        assert await off_loop(remote.list_aliases) == {alias: v2}
        # versions, rollback and pruning come from the base class, over remote primitives.
        assert await off_loop(remote.versions, alias) == [1, 2]
        assert await off_loop(remote.rollback_alias, alias) == name
        await off_loop(remote.swap_alias, alias, v2)
        v3 = await off_loop(remote.create_item_version, "mf", DIM)
        await off_loop(remote.swap_alias, alias, v3)
        assert await off_loop(remote.prune_versions, alias, 2) == [name]
        assert edge.list_collections() == [v2, v3]
        await off_loop(remote.delete_alias, alias)
        assert edge.list_aliases() == {}
        await off_loop(remote.delete_collection, v3)
        assert edge.list_collections() == [v2]


async def test_domain_errors_come_back_as_their_class_and_message(edge: EdgeVectorStore) -> None:
    async with served(edge) as remote:
        name = await off_loop(remote.create_item_version, "mf", DIM)
        await off_loop(remote.swap_alias, "items_mf", name)
        cases: list[tuple[type[Exception], Callable[[VectorStore], object]]] = [
            (NotFound, lambda s: s.query("items_nope", axis(0), 3)),
            (NotFound, lambda s: s.count("items_nope")),
            (NotFound, lambda s: s.delete_alias("items_nope")),
            (NotFound, lambda s: s.swap_alias("items_x", "items_x__v9")),
            (NotFound, lambda s: s.delete_collection("items_nope__v1")),
            (InvalidInput, lambda s: s.delete_collection(name)),  # live behind its alias
            (InvalidInput, lambda s: s.create_collection(name, DIM)),  # exists
            (InvalidInput, lambda s: s.create_collection("../escape", DIM)),
            (InvalidInput, lambda s: s.upsert(name, [1], [[1.0, 2.0]])),  # wrong dimension
        ]
        for error, call in cases:
            with pytest.raises(error) as direct:
                call(edge)
            with pytest.raises(error) as through_host:
                await off_loop(call, remote)
            assert type(through_host.value) is error
            assert str(through_host.value) == str(direct.value)


class CallRecorder(VectorStore):
    """Delegates to a store and records which thread ran each call."""

    def __init__(self, inner: VectorStore, on_loop: bool) -> None:
        self.inner = inner
        self.on_loop = on_loop
        self.threads: dict[str, set[int]] = {}

    def _seen(self, method: str) -> None:
        self.threads.setdefault(method, set()).add(threading.get_ident())

    @property
    def call_on_event_loop(self) -> bool:
        return self.on_loop

    def create_collection(self, name: str, dim: int, *args: Any, **kwargs: Any) -> None:
        self._seen("create_collection")
        self.inner.create_collection(name, dim, *args, **kwargs)

    def collection_exists(self, name: str) -> bool:
        self._seen("collection_exists")
        return self.inner.collection_exists(name)

    def list_collections(self) -> list[str]:
        self._seen("list_collections")
        return self.inner.list_collections()

    def _drop_collection(self, name: str) -> None:
        self._seen("_drop_collection")
        self.inner.delete_collection(name)

    def optimize(self, collection: str) -> None:
        self._seen("optimize")
        self.inner.optimize(collection)

    def upsert(
        self, collection: str, ids: Sequence[int], vectors: Vectors, payloads: Payloads = None
    ) -> None:
        self._seen("upsert")
        self.inner.upsert(collection, ids, vectors, payloads)

    def query(self, collection: str, vector: Any, k: int, *args: Any) -> list[Hit]:
        self._seen("query")
        return self.inner.query(collection, vector, k, *args)

    def retrieve(self, collection: str, ids: Sequence[int]) -> list[Record]:
        self._seen("retrieve")
        return self.inner.retrieve(collection, ids)

    def count(self, collection: str) -> int:
        self._seen("count")
        return self.inner.count(collection)

    def swap_alias(self, alias: str, collection: str) -> str | None:
        self._seen("swap_alias")
        return self.inner.swap_alias(alias, collection)

    def resolve_alias(self, alias: str) -> str | None:
        self._seen("resolve_alias")
        return self.inner.resolve_alias(alias)

    def list_aliases(self) -> dict[str, str]:
        self._seen("list_aliases")
        return self.inner.list_aliases()

    def delete_alias(self, alias: str) -> None:
        self._seen("delete_alias")
        self.inner.delete_alias(alias)


async def _exercise(remote: RemoteVectorStore) -> None:
    name = await off_loop(remote.create_item_version, "mf", DIM)
    await off_loop(remote.upsert, name, *clustered(50))
    await off_loop(remote.optimize, name)
    await off_loop(remote.query, name, axis(0), 5)
    await off_loop(remote.retrieve, name, [1, 2])
    await off_loop(remote.swap_alias, "items_mf", name)
    await off_loop(remote.count, "items_mf")


@pytest.mark.parametrize("on_loop", [True, False])
async def test_calls_run_where_the_store_says(edge: EdgeVectorStore, on_loop: bool) -> None:
    """On the serving loop for a store called on the loop (Edge), never from another thread
    (optimize aside: it waits for a child process); in worker threads otherwise."""
    recorder = CallRecorder(edge, on_loop)
    loop_thread = threading.get_ident()
    async with served(recorder) as remote:
        await _exercise(remote)
    optimize_threads = recorder.threads.pop("optimize")
    assert loop_thread not in optimize_threads
    called = set().union(*recorder.threads.values())
    assert {"upsert", "query", "retrieve", "swap_alias", "count"} <= set(recorder.threads)
    if on_loop:
        assert called == {loop_thread}
    else:
        assert loop_thread not in called


async def test_a_wrong_or_missing_token_is_refused(edge: EdgeVectorStore) -> None:
    async with serve_vector_store(edge, token=TOKEN) as host:
        wrong = RemoteVectorStore(host.url, "not-the-token")
        with wrong, pytest.raises(ConfigurationError) as refused:
            await off_loop(wrong.list_collections)
        message = str(refused.value)
        assert host.url in message and "STREAMREC_VECTOR_HOST_TOKEN" in message
        assert "\n" not in message
        async with httpx.AsyncClient(base_url=host.url) as client:
            for headers in (
                {},
                {"Authorization": "Bearer not-the-token"},
                {"Authorization": TOKEN},
            ):
                response = await client.post(
                    "/v1/vectors/list_collections", json={}, headers=headers
                )
                assert response.status_code == 401
                assert response.json()["error"]["kind"] == "Unauthorized"
            good = {"Authorization": f"Bearer {TOKEN}"}
            response = await client.post("/v1/vectors/list_collections", json={}, headers=good)
            assert response.status_code == 200 and response.json() == {"result": []}
    with pytest.raises(ConfigurationError):
        create_vector_host_app(edge, token="")


async def test_unknown_methods_and_malformed_arguments(edge: EdgeVectorStore) -> None:
    async with serve_vector_store(edge, token=TOKEN) as host:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=host.url, headers=auth) as client:
            response = await client.post("/v1/vectors/_drop_collection", json={"name": "x"})
            assert response.status_code == 404
            assert response.json()["error"]["kind"] == "UnknownMethod"
            for body in (b"not json", b'{"collection": "x"}', b'{"collection": "x", "k": 0}'):
                response = await client.post("/v1/vectors/query", content=body)
                assert response.status_code == 422, body
                assert response.json()["error"]["kind"] == "InvalidInput"
            bad_matrix = {"collection": "x", "ids": [1], "vectors": {"shape": [1, 8], "f32": ""}}
            response = await client.post("/v1/vectors/upsert", json=bad_matrix)
            assert response.status_code == 422
            assert "needs 32" in response.json()["error"]["message"]
            response = await client.get("/healthz", headers={})
            assert response.json() == {"status": "ok"}


async def test_request_size_is_bounded(edge: EdgeVectorStore) -> None:
    async with served(edge, max_request_bytes=64 * 1024) as remote:
        name = await off_loop(remote.create_item_version, "mf", DIM)
        await off_loop(remote.upsert, name, *clustered(100))  # about 10 kB: accepted
        with pytest.raises(InvalidInput, match="smaller batches"):
            await off_loop(remote.upsert, name, *clustered(3000))
        assert edge.count(name) == 100

        def chunked() -> Iterator[bytes]:  # no Content-Length: bounded while read
            yield b'{"collection": "' + b"x" * 70_000
            yield b'"}'

        auth = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=remote.url, headers=auth) as client:
            response = await off_loop(client.post, "/v1/vectors/count", content=chunked())
        assert response.status_code == 413
        assert response.json()["error"]["kind"] == "TooLarge"


async def test_numpy_payload_values_cross_the_wire(edge: EdgeVectorStore) -> None:
    async with served(edge) as remote:
        name = await off_loop(remote.create_item_version, "mf", DIM)
        payloads: list[Mapping[str, Any]] = [
            {"genres": ["drama"], "year": np.int64(1999), "popularity": np.float32(0.5)}
        ]
        await off_loop(remote.upsert, name, np.array([4]), np.ones((1, DIM)), payloads)
        (record,) = await off_loop(remote.retrieve, name, [4])
        assert record.payload == {"genres": ["drama"], "year": 1999, "popularity": 0.5}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_unreachable_host_is_service_unavailable_naming_it() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there any more
    remote = RemoteVectorStore(url, TOKEN)
    with remote, pytest.raises(ServiceUnavailable) as down:
        remote.count("items_mf")
    message = str(down.value)
    assert url in message and "unreachable" in message and "\n" not in message


def test_a_host_that_does_not_answer_is_service_unavailable() -> None:
    """Accepts the connection (the kernel's backlog) but never answers: the call's timeout."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        remote = RemoteVectorStore(url, TOKEN, timeout_seconds=0.2)
        with remote, pytest.raises(ServiceUnavailable, match=r"did not answer count within 0\.2 s"):
            remote.count("items_mf")


async def test_the_host_listens_on_loopback_and_refuses_a_taken_port(
    edge: EdgeVectorStore,
) -> None:
    async with serve_vector_store(edge, token=TOKEN) as host:
        assert host.host == "127.0.0.1" and host.url == f"http://127.0.0.1:{host.port}"
        with pytest.raises(ConfigurationError, match="cannot listen"):
            async with serve_vector_store(edge, port=host.port, token=TOKEN):
                pass


def test_settings_with_a_host_url_open_a_remote_store(tmp_path: Path) -> None:
    settings = Settings(
        var_dir=tmp_path,
        vector_host_url="http://127.0.0.1:9",
        vector_host_token=SecretStr(TOKEN),
        vector_host_timeout_seconds=2.5,
    )
    with open_vector_store(settings) as store:
        assert isinstance(store, RemoteVectorStore) and store.url == "http://127.0.0.1:9"
    assert not (tmp_path / "qdrant").exists()  # the Edge shards are the owner's
    no_token = settings.model_copy(update={"vector_host_token": None})
    with pytest.raises(ConfigurationError, match="STREAMREC_VECTOR_HOST_TOKEN"):
        open_vector_store(no_token)
    bad_scheme = settings.model_copy(update={"vector_host_url": "127.0.0.1:9"})
    with pytest.raises(ConfigurationError, match="http"):
        open_vector_store(bad_scheme)
    assert Settings(vector_host_token="  ").vector_host_token is None
    with open_vector_store(Settings(var_dir=tmp_path, vector_host_url=" ")) as local:
        assert isinstance(local, EdgeVectorStore)


async def test_answers_on_kept_alive_connections_are_not_held_back() -> None:
    """The listening socket says TCP, so asyncio sets TCP_NODELAY on each connection: without
    it Nagle's algorithm held every answer after a connection's first for the client's
    delayed ACK (40 ms a call, measured)."""
    sock = listen_socket("127.0.0.1", 0)
    nodelay: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted = transport.get_extra_info("socket")
            nodelay.set_result(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
    async with server:
        _reader, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        assert await nodelay != 0
        writer.close()
