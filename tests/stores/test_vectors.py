"""One contract suite for both VectorStore backends: Qdrant Edge and qdrant-client local mode.

The bulk loader (``stores/vectors/bulk.py``) has its own file, ``test_vectors_bulk.py``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qdrant_client import QdrantClient

from streamrec.core.errors import ConfigurationError, InvalidInput, NotFound
from streamrec.core.settings import Settings
from streamrec.stores.vectors import (
    EdgeVectorStore,
    QdrantServerVectorStore,
    RemoteVectorStore,
    VectorBatch,
    VectorStore,
    bulk_upsert,
    items_alias,
    open_vector_store,
    parse_version,
    users_collection,
)

# Local mode warns that payload indexes do nothing there; the call still has to succeed.
pytestmark = pytest.mark.filterwarnings("ignore:Payload indexes have no effect")

DIM = 8
GENRES = ["action", "comedy", "drama", "horror"]


# Named apart from the fixture so test_vectors_bulk.py can import it without shadowing.
@pytest.fixture(name="store", params=["edge", "local", "remote"])
def store_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorStore]:
    if request.param == "remote":  # Edge served by a vector host, reached over HTTP
        from tests.stores.test_vectors_remote import remote_edge_store

        with remote_edge_store(tmp_path / "qdrant") as remote:
            yield remote
        return
    url = "embedded" if request.param == "edge" else ":memory:"
    vector_store = open_vector_store(url, tmp_path / "qdrant")
    yield vector_store
    vector_store.close()


def clustered(n: int, seed: int = 0) -> tuple[list[int], np.ndarray, list[dict[str, Any]]]:
    """n points in len(GENRES) clusters: point i belongs to cluster i % 4, along axis i % 4."""
    rng = np.random.default_rng(seed)
    ids = list(range(n))
    vectors = rng.normal(0, 0.05, (n, DIM)).astype(np.float32)
    for i in ids:
        vectors[i, i % len(GENRES)] += 1.0 + i / n  # later ids score higher within a cluster
    payloads = [
        {
            "title": f"item {i}",
            "genres": [GENRES[i % 4]],
            "year": 1990 + i % 30,
            "popularity": i / n,
        }
        for i in ids
    ]
    return ids, vectors, payloads


def chunks(n: int, size: int, fail_after: int | None = None) -> Iterator[VectorBatch]:
    """The clustered points as a stream of input chunks; optionally dies after some chunks."""
    ids, vectors, payloads = clustered(n)
    for number, lo in enumerate(range(0, n, size)):
        if fail_after is not None and number == fail_after:
            raise KeyboardInterrupt("simulated crash of the loader")
        yield ids[lo : lo + size], vectors[lo : lo + size], payloads[lo : lo + size]


def axis(index: int) -> list[float]:
    vector = [0.0] * DIM
    vector[index] = 1.0
    return vector


def make_items(store: VectorStore, n: int = 400, model: str = "mf") -> str:
    name = store.create_item_version(model, DIM)
    store.upsert(name, *clustered(n))
    return name


# -- points ------------------------------------------------------------------------------------


def test_upsert_query_returns_nearest_with_payload(store: VectorStore) -> None:
    name = make_items(store)
    hits = store.query(name, axis(1), k=5)
    assert len(hits) == 5
    assert all(h.id % 4 == 1 for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    top = hits[0]
    assert top.payload["title"] == f"item {top.id}"
    assert top.payload["genres"] == ["comedy"]
    assert isinstance(top.id, int)
    assert store.count(name) == 400


def test_genre_filter_and_exclusions(store: VectorStore) -> None:
    name = make_items(store)
    # The query points at cluster 0, but only drama (cluster 2) may come back.
    hits = store.query(name, axis(0), k=10, genres=["drama"])
    assert len(hits) == 10 and all(h.payload["genres"] == ["drama"] for h in hits)
    unfiltered = [h.id for h in store.query(name, axis(0), k=10)]
    excluded = unfiltered[:5]
    hits = store.query(name, axis(0), k=10, exclude_ids=excluded)
    assert not set(excluded) & {h.id for h in hits}
    assert [h.id for h in hits][:5] == unfiltered[5:]
    both = store.query(name, axis(0), k=10, genres=["action", "drama"], exclude_ids=excluded)
    assert {h.payload["genres"][0] for h in both} <= {"action", "drama"}
    assert not set(excluded) & {h.id for h in both}


def test_retrieve_keeps_order_and_skips_missing(store: VectorStore) -> None:
    name = make_items(store)
    _, vectors, _ = clustered(400)
    records = store.retrieve(name, [7, 9999, 3])
    assert [r.id for r in records] == [7, 3]
    np.testing.assert_allclose(records[0].vector, vectors[7], rtol=1e-5)
    assert records[1].payload["year"] == 1993


def test_upsert_replaces_by_id(store: VectorStore) -> None:
    name = make_items(store, n=40)
    store.upsert(name, [5], [axis(3)], [{"genres": ["horror"], "title": "new"}])
    assert store.count(name) == 40
    assert store.retrieve(name, [5])[0].payload["title"] == "new"


def test_users_collection_and_cosine(store: VectorStore) -> None:
    name = users_collection("mf")
    store.create_collection(name, DIM, "cosine", payload_indexes={})
    store.upsert(name, [1, 2], [[3.0] + [0.0] * 7, [0.0, 5.0] + [0.0] * 6])
    hits = store.query(name, [10.0] + [0.0] * 7, k=2)
    assert hits[0].id == 1 and hits[0].score == pytest.approx(1.0, abs=1e-5)
    store.create_collection(name, DIM, "cosine", payload_indexes={}, exist_ok=True)
    with pytest.raises(InvalidInput):
        store.create_collection(name, DIM)


def test_bad_input_and_unknown_collection(store: VectorStore) -> None:
    name = make_items(store, n=10)
    with pytest.raises(InvalidInput):
        store.upsert(name, [1], [[1.0, 2.0]])  # wrong dimension
    with pytest.raises(InvalidInput):
        store.upsert(name, [1, 2], [axis(0)])  # lengths differ
    with pytest.raises(NotFound):
        store.query("items_nope", axis(0), k=3)
    with pytest.raises(InvalidInput):
        store.create_collection("../escape", DIM)


# -- aliases and versions ----------------------------------------------------------------------


def test_alias_swap_rollback_and_prune(store: VectorStore) -> None:
    alias = items_alias("mf")
    v1 = make_items(store, n=40)
    assert store.swap_alias(alias, v1) is None
    v2 = store.create_item_version("mf", DIM)
    assert parse_version(v2) == (alias, 2)
    store.upsert(v2, [1000], [axis(0)], [{"genres": ["action"], "title": "only in v2"}])
    assert store.swap_alias(alias, v2) == v1
    assert store.resolve_alias(alias) == v2
    assert [h.id for h in store.query(alias, axis(0), k=5)] == [1000]
    assert store.list_aliases() == {alias: v2}
    assert store.retrieve(alias, [1000])[0].payload["title"] == "only in v2"

    with pytest.raises(InvalidInput):
        store.delete_collection(v2)  # live behind the alias
    assert store.rollback_alias(alias) == v1
    assert store.count(alias) == 40
    with pytest.raises(NotFound):
        store.rollback_alias(alias)  # nothing older than v1

    store.swap_alias(alias, v2)
    v3 = store.create_item_version("mf", DIM)
    store.swap_alias(alias, v3)
    assert store.prune_versions(alias, keep=2) == [v1]
    assert store.versions(alias) == [2, 3]
    assert store.list_collections() == [v2, v3]
    store.delete_alias(alias)
    store.delete_collection(v3)
    assert store.list_collections() == [v2]


def test_swap_alias_to_missing_collection_fails(store: VectorStore) -> None:
    with pytest.raises(NotFound):
        store.swap_alias("items_mf", "items_mf__v9")
    assert store.resolve_alias("items_mf") is None


def test_concurrent_queries_upserts_and_alias_swaps(store: VectorStore) -> None:
    alias = items_alias("mf")
    v1 = make_items(store, n=300)
    v2 = make_items(store, n=300)
    store.swap_alias(alias, v1)
    users = users_collection("mf")
    store.create_collection(users, DIM, payload_indexes={})
    errors: list[BaseException] = []
    served: list[int] = []
    stop = threading.Event()

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            try:
                hits = store.query(alias, rng.normal(size=DIM), k=10, genres=["action"])
                served.append(len(hits))
            except Exception as exc:  # the assertion below reports it
                errors.append(exc)
                return

    def user_writer() -> None:
        rng = np.random.default_rng(9)
        for batch in range(40):
            try:
                store.upsert(users, range(batch * 10, batch * 10 + 10), rng.normal(size=(10, DIM)))
            except Exception as exc:
                errors.append(exc)
                return

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    threads.append(threading.Thread(target=user_writer))
    for thread in threads:
        thread.start()
    for i in range(30):
        store.swap_alias(alias, v2 if i % 2 == 0 else v1)
    threads[-1].join()
    stop.set()
    for thread in threads:
        thread.join()
    assert not errors, errors[:3]
    assert served and all(n == 10 for n in served)
    assert store.count(users) == 400


def test_publishing_a_version_never_fails_live_queries(store: VectorStore) -> None:
    """Bulk-load, index and swap in v2 while requests keep querying the alias (on v1)."""
    alias = items_alias("mf")
    store.swap_alias(alias, make_items(store, n=200))
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                assert len(store.query(alias, axis(0), k=5, exclude_ids=[0, 4])) == 5
            except BaseException as exc:  # the assertion below reports it
                errors.append(exc)
                return

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        v2 = store.create_item_version("mf", DIM)
        bulk_upsert(store, v2, chunks(1500, 500), batch_size=300, optimize=True)
        store.swap_alias(alias, v2)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not errors, errors[:3]
    assert store.count(alias) == 1500


# -- backend specifics -------------------------------------------------------------------------


def test_only_the_in_process_edge_is_called_on_the_event_loop(store: VectorStore) -> None:
    """Edge answers in-process holding the GIL (a thread buys nothing); local mode, standing in
    for the server, and the remote store must run in a thread like the server's network calls."""
    expected = isinstance(store, EdgeVectorStore)
    assert isinstance(store, EdgeVectorStore | QdrantServerVectorStore | RemoteVectorStore)
    assert store.call_on_event_loop is expected


def test_a_real_server_is_called_in_a_thread() -> None:
    """The HTTP client (no request is made here) waits on the network: never on the loop."""
    client = QdrantClient(url="http://127.0.0.1:9", check_compatibility=False)
    with QdrantServerVectorStore(client) as server:
        assert server.call_on_event_loop is False
    # Abstract in the interface: a new backend cannot inherit a default answer.
    assert "call_on_event_loop" in VectorStore.__abstractmethods__


def test_edge_alias_swapped_by_another_store_is_seen(tmp_path: Path) -> None:
    """A publisher process swaps the pointer file; the serving store follows it."""
    base = tmp_path / "qdrant"
    serving = EdgeVectorStore(base)
    publisher = EdgeVectorStore(base)  # stands in for another process (opens other shards)
    v1 = make_items(serving, n=20)
    serving.swap_alias("items_mf", v1)
    assert serving.count("items_mf") == 20
    v2 = publisher.create_item_version("mf", DIM)
    publisher.upsert(v2, [0], [axis(0)])
    publisher.close()  # the publisher lets go of v2 before the server opens it
    publisher.swap_alias("items_mf", v2)
    assert serving.count("items_mf") == 1
    serving.close()


def test_edge_reopens_persisted_state(tmp_path: Path) -> None:
    base = tmp_path / "qdrant"
    with EdgeVectorStore(base) as first:
        name = make_items(first, n=50)
        first.swap_alias("items_mf", name)
    with EdgeVectorStore(base) as second:
        assert second.count("items_mf") == 50
        assert second.list_collections() == [name]


def test_open_vector_store_chooses_backend(tmp_path: Path) -> None:
    settings = Settings(qdrant_url="embedded", var_dir=tmp_path)
    with open_vector_store(settings) as edge:
        assert isinstance(edge, EdgeVectorStore)
    assert (tmp_path / "qdrant" / "collections").is_dir()
    with open_vector_store(f"path:{tmp_path / 'local'}") as local:
        assert isinstance(local, QdrantServerVectorStore)
    with pytest.raises(ConfigurationError):
        open_vector_store("qdrant.example:6333")
    with pytest.raises(ConfigurationError):
        open_vector_store("embedded")  # no base directory
