"""Training jobs over HTTP (admin key): start one, list them, follow one.

The API records a job in SQL and reads its status there (``api.training_jobs``); a worker runs
it (``apps.training_jobs``: in ``streamrec up``, or ``streamrec training-worker``). Jobs and
their outcomes survive restarts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, FastAPI, Path, status

from streamrec.api.deps import AdminKey, TrainingJobsDep
from streamrec.api.responses import error_responses
from streamrec.api.training_jobs import TrainingJobs
from streamrec.schemas.api import TrainingJob, TrainingJobList, TrainingJobRequest


@asynccontextmanager
async def training_jobs(app: FastAPI) -> AsyncIterator[None]:
    """The job records, on the runtime's SQL engine (nested in the app's lifespan)."""
    app.state.training_jobs = TrainingJobs(app.state.runtime.stores.training_jobs)
    yield


router = APIRouter(
    prefix="/v1/training/jobs",
    tags=["training"],
    dependencies=[AdminKey],
    lifespan=training_jobs,
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
    return await asyncio.to_thread(jobs.submit, body)


@router.get("")
async def list_jobs(jobs: TrainingJobsDep) -> TrainingJobList:
    """The newest jobs (100), newest first."""
    listed = await asyncio.to_thread(jobs.newest_first)
    return TrainingJobList(jobs=listed, max_queued=jobs.max_queued)


@router.get(
    "/{job_id}", responses=error_responses(described={404: "Unknown job", 422: "Bad job id"})
)
async def get_job(job_id: JobId, jobs: TrainingJobsDep) -> TrainingJob:
    """Status (queued, running, succeeded, failed), stage, the registered version or the
    error."""
    return await asyncio.to_thread(jobs.get, job_id)
