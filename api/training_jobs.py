"""Training jobs started over HTTP: a bounded queue and one worker, training off the event loop.

Jobs run one at a time, in a worker thread, through the same functions as ``streamrec train``
(``trainer.service``): same data loading, same training loop, same registration. At most
``max_queued`` jobs wait behind the running one; a further submission is refused.

Job records live in this process's memory only (the last ``MAX_KEPT_JOBS``): they are gone
after a restart, and another API process has its own. The durable outcome of a job is the
model version it registered (``GET /v1/models``). Queued jobs are dropped when the API stops;
a job already training finishes in its thread (or dies with the process).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from core.errors import NotFound, ServiceUnavailable, StreamrecError
from core.services import Services
from schemas.api import (
    JobStage,
    JobStatus,
    ModelVersionRef,
    TrainingJob,
    TrainingJobRequest,
)
from stores.model_registry import ModelRegistry, ModelVersion
from trainer.service import Workspace, is_offline, load_data, train_model, workspace

log = logging.getLogger(__name__)

MAX_QUEUED_JOBS = 4
MAX_KEPT_JOBS = 100
_EXPECTED_ERRORS = (StreamrecError, OSError, ValueError)

StageCallback = Callable[[JobStage], None]
TrainingRunner = Callable[
    [TrainingJobRequest, Services, ModelRegistry, StageCallback], ModelVersion
]


def run_training(
    request: TrainingJobRequest, services: Services, models: ModelRegistry, stage: StageCallback
) -> ModelVersion:
    """``streamrec train`` for one request (blocking; call it in a thread): the same
    ``trainer.service.train_model``, with the API's connections for the archive and an offline
    run of its own (``<var_dir>/offline/synthetic``) for synthetic data, which therefore never
    touches the live id registry or model registry."""
    live = Workspace(services.engine, services.ids, models, offline=False)
    with workspace(request.data, services.settings.var_dir, live) as ws:
        stage("loading data")
        data = load_data(request.data, ws.engine, request.seed)
        stage("training")
        options = {
            "epochs": request.epochs,
            "batch_size": request.batch_size,
            "lr": request.lr,
            "patience": request.patience,
            "seed": request.seed,
            "threads": 0,
        }
        return train_model(
            request.model.value,
            data,
            ws.ids,
            ws.models,
            request.protocol,
            options,
            request.exclude_seen,
            request.activate,
        )


@dataclass
class JobRecord:
    id: str
    request: TrainingJobRequest
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    status: JobStatus = "queued"
    stage: JobStage = "queued"
    started_at: datetime | None = None
    finished_at: datetime | None = None
    version: ModelVersion | None = None
    error: str | None = None

    def set_stage(self, stage: JobStage) -> None:
        self.stage = stage

    def finish(self, status: JobStatus, error: str | None = None) -> None:
        self.status, self.stage, self.error = status, "finished", error
        self.finished_at = datetime.now(UTC)

    def view(self) -> TrainingJob:
        version = self.version
        # An offline job's version lives in its own registry: never live, whatever it says there.
        offline = is_offline(self.request.data)
        return TrainingJob(
            id=self.id,
            status=self.status,
            stage=self.stage,
            request=self.request,
            created_at=self.created_at,
            started_at=self.started_at,
            finished_at=self.finished_at,
            error=self.error,
            model_version=ModelVersionRef(
                name=version.name, version=version.version, active=version.active and not offline
            )
            if version
            else None,
            test_metrics=_test_metrics(version.metrics) if version else {},
            offline=offline,
        )


def _test_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    test = metrics.get("test", {})
    if not isinstance(test, dict):
        return {}
    return {k: float(v) for k, v in test.items() if isinstance(v, int | float)}


class TrainingJobs:
    """The queue, the worker and the records of this process's training jobs."""

    def __init__(
        self,
        services: Services,
        models: ModelRegistry,
        run: TrainingRunner = run_training,
        max_queued: int = MAX_QUEUED_JOBS,
    ) -> None:
        if max_queued < 1:
            raise ValueError("max_queued must be at least 1")
        self.max_queued = max_queued
        self._services, self._models, self._run = services, models, run
        self._queue: asyncio.Queue[JobRecord] = asyncio.Queue(maxsize=max_queued)
        self._jobs: dict[str, JobRecord] = {}
        self._worker: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._worker = asyncio.create_task(self._work(), name="training-jobs")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for job in self._jobs.values():
            if job.status in ("queued", "running"):
                job.finish("failed", "the API stopped before the job finished")

    def submit(self, request: TrainingJobRequest) -> JobRecord:
        job = JobRecord(id=uuid.uuid4().hex, request=request)
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            raise ServiceUnavailable(
                f"the training queue is full ({self.max_queued} jobs wait behind the running "
                "one): retry when one has finished (GET /v1/training/jobs)"
            ) from None
        self._jobs[job.id] = job
        self._forget_old()
        return job

    def get(self, job_id: str) -> JobRecord:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(
                f"no training job {job_id!r} in this API process (records are kept in memory "
                "until a restart; registered versions are listed by GET /v1/models)"
            )
        return job

    def newest_first(self) -> list[JobRecord]:
        return list(reversed(self._jobs.values()))

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            await self._execute(job)

    async def _execute(self, job: JobRecord) -> None:
        job.status, job.started_at = "running", datetime.now(UTC)
        log.info("training job %s started: %s", job.id, job.request.model_dump())
        try:
            job.version = await asyncio.to_thread(
                self._run, job.request, self._services, self._models, job.set_stage
            )
        except _EXPECTED_ERRORS as exc:
            log.warning("training job %s failed: %s", job.id, exc)
            job.finish("failed", str(exc) or type(exc).__name__)
            return
        except Exception:
            log.exception("training job %s failed unexpectedly", job.id)
            job.finish("failed", f"internal error in training job {job.id}; see the server log")
            return
        job.finish("succeeded")
        log.info("training job %s registered %s v%d", job.id, job.version.name, job.version.version)

    def _forget_old(self) -> None:
        """Keep the newest records; never drop a job that has not finished."""
        for job_id in list(self._jobs):
            if len(self._jobs) <= MAX_KEPT_JOBS:
                return
            if self._jobs[job_id].status in ("succeeded", "failed"):
                del self._jobs[job_id]
