"""The training_jobs table: submit within the queue limit, atomic claims, stages, outcomes, and
stale running jobs failed. On PostgreSQL when STREAMREC_TEST_DATABASE_URL is set, else SQLite."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy import Engine

from streamrec.schemas.api import TrainingJobRequest
from streamrec.stores.model_registry import ModelVersion
from streamrec.stores.training_jobs import RegisteredVersion, TrainingJobStore

T = TypeVar("T")
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def store(engine: Engine) -> TrainingJobStore:
    return TrainingJobStore(engine)


def _request(seed: int = 0) -> TrainingJobRequest:
    return TrainingJobRequest(model="mf", data="synthetic", epochs=1, seed=seed)


def _submit(store: TrainingJobStore, seed: int = 0, at: datetime = T0) -> str:
    job = store.submit(_request(seed), max_queued=100, now=at)
    assert job is not None
    return job.id


def _version(name: str = "mf", number: int = 3, active: bool = True) -> ModelVersion:
    return ModelVersion(
        name=name,
        version=number,
        created_at=T0,
        artifact_class="streamrec.trainer.models.mf:MF",
        metrics={"test": {"ndcg@10": 0.25, "hr@10": 1, "note": "x"}, "epochs": 2},
        config={},
        n_users=1,
        n_items=1,
        data_window={},
        path=Path("mf/v3"),
        active=active,
    )


def _all_at_once(calls: int, call: Callable[[], T]) -> list[T]:
    """Run ``call`` from ``calls`` threads released together."""
    barrier = threading.Barrier(calls)

    def run() -> T:
        barrier.wait(timeout=30)
        return call()

    with ThreadPoolExecutor(max_workers=calls) as pool:
        futures = [pool.submit(run) for _ in range(calls)]
        return [f.result(timeout=60) for f in futures]


def test_a_submitted_job_is_queued_with_its_request(store: TrainingJobStore) -> None:
    job_id = _submit(store, seed=7)
    job = store.get(job_id)
    assert job is not None
    assert (job.status, job.stage, job.request) == ("queued", "queued", _request(7))
    assert job.created_at == T0  # back in UTC, on SQLite too
    assert (job.started_at, job.finished_at, job.version, job.error, job.worker) == (None,) * 5
    assert store.get("0123456789abcdef") is None


def test_past_the_queue_limit_nothing_is_written(store: TrainingJobStore) -> None:
    accepted = [store.submit(_request(seed), max_queued=2) for seed in range(3)]
    assert [job is not None for job in accepted] == [True, True, False]
    assert store.count_queued() == 2 and len(store.newest(10)) == 2
    claimed = store.claim("w1")  # a running job does not count against the queue
    assert claimed is not None
    assert store.submit(_request(9), max_queued=2) is not None


def test_concurrent_submissions_never_pass_the_limit(store: TrainingJobStore) -> None:
    results = _all_at_once(8, lambda: store.submit(_request(), max_queued=3))
    assert sum(job is not None for job in results) == 3
    assert store.count_queued() == 3


def test_claims_take_the_oldest_queued_job_first(store: TrainingJobStore) -> None:
    second = _submit(store, seed=2, at=T0 + timedelta(seconds=1))
    first = _submit(store, seed=1, at=T0)
    claimed = store.claim("w1", now=T0 + timedelta(seconds=5))
    assert claimed is not None and claimed.id == first
    assert (claimed.status, claimed.worker) == ("running", "w1")
    assert claimed.started_at == claimed.heartbeat_at == T0 + timedelta(seconds=5)
    then = store.claim("w2")
    assert then is not None and then.id == second and then.worker == "w2"
    assert store.claim("w1") is None


def test_two_claims_never_get_the_same_job(store: TrainingJobStore) -> None:
    for round_ in range(3):
        submitted = {_submit(store, seed=n, at=T0 + timedelta(seconds=n)) for n in range(4)}
        claims = _all_at_once(8, lambda: store.claim(f"w{threading.get_ident()}"))
        claimed = [job.id for job in claims if job is not None]
        assert sorted(claimed) == sorted(submitted), f"round {round_}: {claimed}"
        assert store.count_queued() == 0


def test_stage_and_heartbeat_belong_to_the_claiming_worker(store: TrainingJobStore) -> None:
    job_id = _submit(store)
    assert not store.set_stage(job_id, "w1", "training")  # not running yet
    assert store.claim("w1", now=T0) is not None
    assert not store.set_stage(job_id, "w2", "training")
    assert store.set_stage(job_id, "w1", "loading data", now=T0 + timedelta(seconds=3))
    assert store.heartbeat(job_id, "w1", now=T0 + timedelta(seconds=9))
    job = store.get(job_id)
    assert job is not None
    assert (job.stage, job.heartbeat_at) == ("loading data", T0 + timedelta(seconds=9))


def test_a_success_records_the_registered_version(store: TrainingJobStore) -> None:
    job_id = _submit(store)
    store.claim("w1")
    assert store.succeed(job_id, "w1", _version(), now=T0 + timedelta(minutes=1))
    job = store.get(job_id)
    assert job is not None
    assert (job.status, job.stage, job.error) == ("succeeded", "finished", None)
    assert job.finished_at == T0 + timedelta(minutes=1)
    assert job.version == RegisteredVersion("mf", 3, True, {"ndcg@10": 0.25, "hr@10": 1.0})
    assert not store.heartbeat(job_id, "w1")  # finished: nothing left to beat for


def test_a_failure_records_the_error(store: TrainingJobStore) -> None:
    job_id = _submit(store)
    store.claim("w1")
    assert not store.fail(job_id, "w2", "not mine")
    assert store.fail(job_id, "w1", "no interactions in the archive")
    job = store.get(job_id)
    assert job is not None
    assert (job.status, job.stage, job.version) == ("failed", "finished", None)
    assert job.error == "no interactions in the archive"


def test_running_jobs_without_a_recent_heartbeat_fail(store: TrainingJobStore) -> None:
    dead, alive, waiting = (_submit(store, seed=n, at=T0 + timedelta(seconds=n)) for n in range(3))
    store.claim("dead-worker", now=T0)
    store.claim("live-worker", now=T0)
    store.heartbeat(alive, "live-worker", now=T0 + timedelta(seconds=50))
    failed = store.fail_stale(T0 + timedelta(seconds=30), "its worker stopped")
    assert failed == [dead]
    statuses = {job.id: (job.status, job.error) for job in store.newest(10)}
    assert statuses == {
        dead: ("failed", "its worker stopped"),
        alive: ("running", None),
        waiting: ("queued", None),
    }


def test_newest_first_within_the_limit(store: TrainingJobStore) -> None:
    ids = [_submit(store, seed=n, at=T0 + timedelta(seconds=n)) for n in range(5)]
    assert [job.id for job in store.newest(3)] == ids[::-1][:3]
