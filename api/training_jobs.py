"""Training jobs started over HTTP: the API's side. It records requests and reads status; it
runs nothing.

A submitted job is a row in SQL (``stores.training_jobs``), so it survives a restart of the API
and every API process sees the same jobs. A worker runs them one at a time through the code of
``streamrec train`` (``apps.training_jobs``: inside ``streamrec up``, or on its own as
``streamrec training-worker``); without one, jobs wait. At most ``max_queued`` jobs wait; a
further submission is refused.
"""

from __future__ import annotations

from streamrec.core.errors import NotFound, ServiceUnavailable
from streamrec.schemas.api import ModelVersionRef, TrainingJob, TrainingJobRequest
from streamrec.stores.training_jobs import TrainingJobRecord, TrainingJobStore

MAX_QUEUED_JOBS = 4
MAX_LISTED_JOBS = 100
# trainer.service.ARCHIVE: only the archive is live data, every other source trains offline
# (tests/api/test_training_jobs.py checks the two agree).
LIVE_DATA = "archive"


class TrainingJobs:
    """Submit, list and follow training jobs (blocking SQL: call from a thread)."""

    def __init__(self, store: TrainingJobStore, max_queued: int = MAX_QUEUED_JOBS) -> None:
        if max_queued < 1:
            raise ValueError("max_queued must be at least 1")
        self.max_queued = max_queued
        self._store = store

    def submit(self, request: TrainingJobRequest) -> TrainingJob:
        job = self._store.submit(request, max_queued=self.max_queued)
        if job is None:
            raise ServiceUnavailable(
                f"the training queue is full ({self.max_queued} jobs wait to run): retry when "
                "one has finished (GET /v1/training/jobs)"
            )
        return view(job)

    def get(self, job_id: str) -> TrainingJob:
        job = self._store.get(job_id)
        if job is None:
            raise NotFound(f"no training job {job_id!r}")
        return view(job)

    def newest_first(self) -> list[TrainingJob]:
        return [view(job) for job in self._store.newest(MAX_LISTED_JOBS)]


def is_offline(request: TrainingJobRequest) -> bool:
    return request.data != LIVE_DATA


def view(job: TrainingJobRecord) -> TrainingJob:
    version = job.version
    # An offline job's version lives in its own registry: never live, whatever it says there.
    offline = is_offline(job.request)
    return TrainingJob(
        id=job.id,
        status=job.status,
        stage=job.stage,
        request=job.request,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        error=job.error,
        model_version=ModelVersionRef(
            name=version.name, version=version.version, active=version.active and not offline
        )
        if version
        else None,
        test_metrics=version.test_metrics if version else {},
        offline=offline,
    )
