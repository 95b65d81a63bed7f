"""The resumable bulk loader (``stores/vectors/bulk.py``), run against both backends."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamrec.core.errors import InvalidInput, ServiceUnavailable
from streamrec.stores.vectors import (
    RetryPolicy,
    VectorBatch,
    Vectors,
    VectorStore,
    array_source,
    bulk_upsert,
)
from tests.stores.test_vectors import (  # the store fixture runs each test on both backends
    DIM,
    axis,
    chunks,
    clustered,
    store_fixture,  # noqa: F401
)

# Local mode warns that payload indexes do nothing there; the call still has to succeed.
pytestmark = pytest.mark.filterwarnings("ignore:Payload indexes have no effect")

NO_RETRY_SLEEP = RetryPolicy(attempts=4, base_delay=0.0, max_delay=0.0)


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
