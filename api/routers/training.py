"""Training jobs over HTTP (admin key): start one, list them, follow one.

Jobs run one at a time off the event loop through the code path of ``streamrec train`` (see
``api.training_jobs``); records are kept in this process's memory, the registered model version
is the durable outcome.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, FastAPI, Path, status

from api.deps import AdminKey, TrainingJobsDep
from api.responses import error_responses
from api.training_jobs import TrainingJobs
from schemas.api import TrainingJob, TrainingJobList, TrainingJobRequest


@asynccontextmanager
async def run_training_jobs(app: FastAPI) -> AsyncIterator[None]:
    """The job worker lives as long as the app (nested in its lifespan, after the runtime)."""
    runtime = app.state.runtime
    jobs = TrainingJobs(runtime.services, runtime.models)
    jobs.start()
    app.state.training_jobs = jobs
    try:
        yield
    finally:
        await jobs.stop()


router = APIRouter(
    prefix="/v1/training/jobs",
    tags=["training"],
    dependencies=[AdminKey],
    lifespan=run_training_jobs,
    responses=error_responses(described={401: "Missing or wrong admin X-API-Key"}),
)

JobId = Annotated[str, Path(min_length=1, max_length=64, description="The job id")]


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    responses=error_responses(
        413,
        described={
            422: "Unknown model or data, a bound broken, or not JSON",
            503: "The queue is full",
        },
    ),
)
async def start_job(body: TrainingJobRequest, jobs: TrainingJobsDep) -> TrainingJob:
    """Queue a training job; 202 with its record. Follow it with GET .../jobs/{id}."""
    return jobs.submit(body).view()


@router.get("")
async def list_jobs(jobs: TrainingJobsDep) -> TrainingJobList:
    """This process's jobs, newest first."""
    return TrainingJobList(
        jobs=[job.view() for job in jobs.newest_first()], max_queued=jobs.max_queued
    )


@router.get(
    "/{job_id}", responses=error_responses(described={404: "Unknown job", 422: "Bad job id"})
)
async def get_job(job_id: JobId, jobs: TrainingJobsDep) -> TrainingJob:
    """Status (queued, running, succeeded, failed), stage, the registered version or the
    error."""
    return jobs.get(job_id).view()
