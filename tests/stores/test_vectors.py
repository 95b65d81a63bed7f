"""One contract suite for both VectorStore backends: Qdrant Edge and qdrant-client local mode."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.errors import ConfigurationError, InvalidInput, NotFound, ServiceUnavailable
from core.settings import Settings
from stores.vectors import (
    EdgeVectorStore,
    QdrantServerVectorStore,
    RetryPolicy,
    VectorBatch,
    Vectors,
    VectorStore,
    array_source,
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
NO_RETRY_SLEEP = RetryPolicy(attempts=4, base_delay=0.0, max_delay=0.0)


@pytest.fixture(params=["edge", "local"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorStore]:
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


# -- bulk upsert -------------------------------------------------------------------------------


def chunks(n: int, size: int, fail_after: int | None = None) -> Iterator[VectorBatch]:
    """The clustered points as a stream of input chunks; optionally dies after some chunks."""
    ids, vectors, payloads = clustered(n)
    for number, lo in enumerate(range(0, n, size)):
        if fail_after is not None and number == fail_after:
            raise KeyboardInterrupt("simulated crash of the loader")
        yield ids[lo : lo + size], vectors[lo : lo + size], payloads[lo : lo + size]


class RecordingStore:
    """Delegates to a store, records upserted ids, and can fail chosen upsert calls."""

    def __init__(self, inner: VectorStore, fail_calls: Sequence[int] = ()) -> None:
        self.inner = inner
        self.fail_calls = set(fail_calls)
        self.calls = 0
        self.upserted: list[int] = []

    def upsert(
        self, collection: str, ids: Sequence[int], vectors: Vectors, payloads: Any = None
    ) -> None:
        self.calls += 1
        if self.calls in self.fail_calls:
            raise ServiceUnavailable("simulated: Qdrant did not answer")
        self.inner.upsert(collection, ids, vectors, payloads)
        self.upserted.extend(ids)

    def optimize(self, collection: str) -> None:
        self.inner.optimize(collection)


def assert_exactly(store: VectorStore, name: str, n: int) -> None:
    assert store.count(name) == n
    records = store.retrieve(name, range(n))
    assert [r.id for r in records] == list(range(n))
    _, vectors, payloads = clustered(n)
    for r in records[:: max(1, n // 50)]:
        np.testing.assert_allclose(r.vector, vectors[r.id], rtol=1e-5)
        assert r.payload == payloads[r.id]


def test_interrupted_bulk_upsert_resumes_exactly(store: VectorStore, tmp_path: Path) -> None:
    name = store.create_item_version("mf", DIM)
    checkpoint = tmp_path / "bulk.json"
    recording = RecordingStore(store)
    kwargs: dict[str, Any] = {"checkpoint_path": checkpoint, "batch_size": 256, "optimize": False}
    with pytest.raises(KeyboardInterrupt):
        bulk_upsert(recording, name, chunks(3000, 100, fail_after=13), **kwargs)  # type: ignore[arg-type]
    saved = json.loads(checkpoint.read_text())
    assert saved["offset"] == 1280 and not saved["complete"]  # 5 whole batches of 256
    assert store.count(name) == 1280

    progress: list[int] = []
    result = bulk_upsert(recording, name, chunks(3000, 100), on_progress=progress.append, **kwargs)  # type: ignore[arg-type]
    assert result.resumed_from == 1280 and result.points == 3000
    assert progress[0] == 1280 and progress[-1] == 3000
    assert sorted(recording.upserted) == list(range(3000))  # each point sent exactly once
    assert_exactly(store, name, 3000)
    assert json.loads(checkpoint.read_text())["complete"]
    again = bulk_upsert(recording, name, chunks(3000, 100), **kwargs)  # type: ignore[arg-type]
    assert again.batches == 0 and len(recording.upserted) == 3000


def test_bulk_upsert_gives_up_then_resumes_from_callable_source(
    store: VectorStore, tmp_path: Path
) -> None:
    name = store.create_item_version("mf", DIM)
    checkpoint = tmp_path / "bulk.json"
    ids, vectors, payloads = clustered(2000)
    source = array_source(ids, vectors, payloads, chunk=300)
    failing = RecordingStore(store, fail_calls=range(4, 100))  # the 4th call on never answers
    with pytest.raises(ServiceUnavailable):
        bulk_upsert(
            failing,  # type: ignore[arg-type]
            name,
            source,
            checkpoint_path=checkpoint,
            batch_size=500,
            retry=NO_RETRY_SLEEP,
            optimize=False,
        )
    assert json.loads(checkpoint.read_text())["offset"] == 1500
    healthy = RecordingStore(store)
    result = bulk_upsert(healthy, name, source, checkpoint_path=checkpoint, batch_size=500)  # type: ignore[arg-type]
    assert healthy.upserted == list(range(1500, 2000))
    assert result.points == 2000 and result.batches == 1
    assert_exactly(store, name, 2000)
    assert [h.id % 4 for h in store.query(name, axis(2), k=5)] == [2] * 5  # optimized, still right


def test_bulk_upsert_retries_transient_failures(store: VectorStore) -> None:
    name = store.create_item_version("mf", DIM)
    flaky = RecordingStore(store, fail_calls=[2, 3])
    pauses: list[float] = []
    retry = RetryPolicy(attempts=5, base_delay=0.1, max_delay=1.0)
    result = bulk_upsert(
        flaky,  # type: ignore[arg-type]
        name,
        chunks(1000, 250),
        batch_size=400,
        retry=retry,
        sleep=pauses.append,
        optimize=False,
    )
    assert result.retries == 2 and result.batches == 3
    assert len(pauses) == 2 and 0.05 <= pauses[0] <= 0.1 and 0.1 <= pauses[1] <= 0.2
    assert_exactly(store, name, 1000)


def test_bulk_upsert_does_not_retry_bad_input(store: VectorStore) -> None:
    name = store.create_item_version("mf", DIM)
    bad: list[VectorBatch] = [([1, 2], np.zeros((2, DIM + 1)), None)]
    pauses: list[float] = []
    with pytest.raises(InvalidInput):
        bulk_upsert(store, name, bad, sleep=pauses.append, optimize=False)
    assert pauses == []


def test_checkpoint_of_another_collection_is_refused(store: VectorStore, tmp_path: Path) -> None:
    name = store.create_item_version("mf", DIM)
    checkpoint = tmp_path / "bulk.json"
    checkpoint.write_text(json.dumps({"collection": "items_x__v1", "offset": 5, "batches": 1}))
    with pytest.raises(InvalidInput):
        bulk_upsert(store, name, chunks(10, 10), checkpoint_path=checkpoint)


# -- backend specifics -------------------------------------------------------------------------


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
