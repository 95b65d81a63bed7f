"""The training-jobs worker: a queued job trains through ``trainer.service`` and records its
version, a failing one its error; heartbeats while it trains; a dead worker's job fails when a
worker starts; stopping fails the job it was running and interrupts its training."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import torch

from streamrec.apps.training_jobs import (
    STALE_ERROR,
    STOPPED_ERROR,
    JobInterrupted,
    StageCallback,
    TrainingWorker,
    WorkerConfig,
)
from streamrec.core.errors import InvalidInput
from streamrec.core.settings import Settings
from streamrec.schemas.api import TrainingJobRequest
from streamrec.stores.factory import SqlStores, open_sql_stores
from streamrec.stores.model_registry import ModelVersion
from streamrec.stores.training_jobs import TrainingJobRecord, TrainingJobStore
from streamrec.trainer.models.dueling_dqn import DuelingDQN, DuelingDQNConfig
from streamrec.trainer.service import Workspace
from tests.conftest import wait_until

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
DEADLINE_S = 60.0
FAST = WorkerConfig(poll_seconds=0.02, heartbeat_seconds=0.02, stale_after_seconds=60)


class DateClock:
    """The worker's wall clock, moved by hand."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def sql(settings: Settings) -> Iterator[SqlStores]:
    with open_sql_stores(settings) as opened:
        yield opened


@pytest.fixture
def store(sql: SqlStores) -> TrainingJobStore:
    return TrainingJobStore(sql.engine)


def _worker(sql: SqlStores, store: TrainingJobStore, **options: object) -> TrainingWorker:
    live = Workspace(sql.engine, sql.ids, sql.models, offline=False)
    return TrainingWorker(store, live, sql.settings.var_dir, **options)  # type: ignore[arg-type]


def _submit(store: TrainingJobStore, **request: object) -> str:
    body = {"model": "mf", "data": "synthetic", "epochs": 1, **request}
    job = store.submit(TrainingJobRequest.model_validate(body), max_queued=10)
    assert job is not None
    return job.id


def _job(store: TrainingJobStore, job_id: str) -> TrainingJobRecord:
    job = store.get(job_id)
    assert job is not None
    return job


class _GatedRunner:
    """Stands in for the trainer: says it trains, then waits to be released, in short steps
    (as a training loop runs Python between torch calls, where an interrupt lands)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.done = threading.Event()
        self.interrupted = False

    def __call__(
        self, request: TrainingJobRequest, live: Workspace, var_dir: Path, stage: StageCallback
    ) -> ModelVersion:
        deadline = time.monotonic() + DEADLINE_S
        try:
            stage("training")
            while not self.release.wait(0.01):
                assert time.monotonic() < deadline, "never released"
            torch.manual_seed(request.seed)
            config = DuelingDQNConfig(state_dim=3, item_dim=2, hidden=(4,), adv_hidden=(2,))
            return live.models.register("dqn", DuelingDQN(config).eval())
        except JobInterrupted:
            self.interrupted = True
            raise
        finally:
            self.done.set()


def _is(store: TrainingJobStore, job_id: str, **expected: object) -> Callable[[], Awaitable[bool]]:
    async def holds() -> bool:
        job = await asyncio.to_thread(store.get, job_id)
        return job is not None and all(getattr(job, k) == v for k, v in expected.items())

    return holds


async def test_a_queued_job_runs_to_succeeded_with_its_version(
    sql: SqlStores, store: TrainingJobStore
) -> None:
    job_id = _submit(store)
    worker = _worker(sql, store, config=FAST)
    assert await worker.run_once()
    job = _job(store, job_id)
    assert (job.status, job.stage, job.error, job.worker) == (
        "succeeded",
        "finished",
        None,
        worker.name,
    )
    assert job.version is not None
    assert (job.version.name, job.version.version) == ("mf", 1)
    assert job.version.test_metrics["ndcg@10"] >= 0.0
    assert job.started_at is not None and job.finished_at is not None
    assert job.started_at <= job.finished_at
    # Synthetic data trains offline: the version is in the offline run, not the live registry.
    run = sql.settings.var_dir / "offline" / "synthetic"
    assert (run / "models" / "mf" / "v1" / "weights.pt").is_file()
    assert sql.models.list() == []
    assert not await worker.run_once()  # nothing left


async def test_a_failing_job_records_the_error(sql: SqlStores, store: TrainingJobStore) -> None:
    job_id = _submit(store, data="archive")  # the archive is empty
    assert await _worker(sql, store).run_once()
    job = _job(store, job_id)
    assert (job.status, job.stage, job.version) == ("failed", "finished", None)
    assert job.error is not None and "no interactions" in job.error
    assert sql.models.list() == []


async def test_an_unexpected_error_is_recorded_and_the_worker_goes_on(
    sql: SqlStores, store: TrainingJobStore
) -> None:
    def broken(*_: object) -> ModelVersion:
        raise KeyError("a bug")

    first, second = _submit(store, seed=1), _submit(store, seed=2)
    worker = _worker(sql, store, run=broken)
    assert await worker.run_once() and await worker.run_once()
    for job_id in (first, second):
        job = _job(store, job_id)
        assert job.status == "failed" and job.error is not None
        assert "internal error" in job.error and "a bug" not in job.error


async def test_a_domain_error_message_is_the_jobs_error(
    sql: SqlStores, store: TrainingJobStore
) -> None:
    def refuse(*_: object) -> ModelVersion:
        raise InvalidInput("doc2vec has no warm start")

    job_id = _submit(store)
    assert await _worker(sql, store, run=refuse).run_once()
    assert _job(store, job_id).error == "doc2vec has no warm start"


async def test_a_training_worker_beats_and_records_its_stage(
    sql: SqlStores, store: TrainingJobStore
) -> None:
    clock, runner = DateClock(), _GatedRunner()
    job_id = _submit(store)
    worker = _worker(sql, store, run=runner, config=FAST, clock=clock)
    running = asyncio.create_task(worker.run_once())
    try:
        await wait_until(_is(store, job_id, stage="training"), timeout=DEADLINE_S, interval=0.02)
        clock.now = T0 + timedelta(seconds=30)
        await wait_until(_is(store, job_id, heartbeat_at=clock.now), timeout=DEADLINE_S)
        runner.release.set()
        assert await asyncio.wait_for(running, DEADLINE_S)
    finally:
        runner.release.set()
    job = _job(store, job_id)
    assert job.status == "succeeded" and job.version is not None
    assert (job.version.name, job.version.version) == ("dqn", 1)


async def test_a_dead_workers_job_fails_when_a_worker_starts(
    sql: SqlStores, store: TrainingJobStore
) -> None:
    job_id = _submit(store)
    assert store.claim("killed-worker", now=T0) is not None
    clock = DateClock(T0 + timedelta(seconds=FAST.stale_after_seconds - 1))
    worker = _worker(sql, store, config=FAST, clock=clock)
    assert worker.fail_stale() == []  # within the lease: its worker may be alive
    assert _job(store, job_id).status == "running"
    clock.now = T0 + timedelta(seconds=FAST.stale_after_seconds + 1)
    assert not await worker.run_once()  # what a worker does first
    job = _job(store, job_id)
    assert (job.status, job.error) == ("failed", STALE_ERROR)


async def test_stopping_fails_the_running_job_and_interrupts_its_training(
    sql: SqlStores, store: TrainingJobStore
) -> None:
    runner = _GatedRunner()
    job_id = _submit(store)
    worker = _worker(sql, store, run=runner, config=FAST)
    worker.start()
    try:
        await wait_until(_is(store, job_id, stage="training"), timeout=DEADLINE_S, interval=0.02)
        await worker.stop()  # never released: only the interrupt ends the training
        assert runner.done.is_set() and runner.interrupted
    finally:
        runner.release.set()
    job = _job(store, job_id)
    assert (job.status, job.error, job.version) == ("failed", STOPPED_ERROR, None)
    assert sql.models.list() == []
