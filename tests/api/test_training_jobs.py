"""Training jobs over HTTP: admin key, bounded requests, jobs recorded in SQL (surviving a
restart of the API, the queue limit counted there), and run by a training worker in the API's
process (as ``streamrec up`` runs it) through ``streamrec train``'s code path, one at a time,
with the new version in the registry."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from fastapi import FastAPI
from sqlalchemy import Engine, func, select

from streamrec.api.app import InProcessHook, create_app
from streamrec.api.training_jobs import MAX_QUEUED_JOBS, TrainingJobs, is_offline
from streamrec.apps.training_jobs import (
    StageCallback,
    TrainingRunner,
    WorkerConfig,
    run_training_worker,
)
from streamrec.core.ids import IdMapping
from streamrec.core.settings import Settings
from streamrec.schemas.api import TrainingJobRequest
from streamrec.schemas.events import RatingEvent, SourcedEvent
from streamrec.stores.catalog import Archive
from streamrec.stores.model_registry import ModelVersion
from streamrec.stores.training_jobs import TrainingJobStore
from streamrec.trainer import service
from streamrec.trainer.models.dueling_dqn import DuelingDQN, DuelingDQNConfig
from streamrec.trainer.service import Workspace
from tests.conftest import ADMIN_KEY, INGEST_KEY, wait_until

pytestmark = pytest.mark.kafka

ADMIN = {"X-API-Key": ADMIN_KEY}
JOBS = "/v1/training/jobs"
TRAIN_TIMEOUT_S = 180.0


Served = tuple[FastAPI, httpx.AsyncClient]


@asynccontextmanager
async def _serving(
    settings: Settings, hooks: Sequence[InProcessHook] = ()
) -> AsyncIterator[Served]:
    app = create_app(settings, in_process=hooks)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://streamrec") as client:
            yield app, client


def _worker(run: TrainingRunner | None = None) -> InProcessHook:
    config = WorkerConfig(poll_seconds=0.05)
    return run_training_worker(config) if run is None else run_training_worker(config, run)


@pytest.fixture
async def edge(settings: Settings) -> AsyncIterator[Served]:
    """The API alone, no worker: jobs are recorded and wait."""
    async with _serving(settings) as served:
        yield served


@pytest.fixture
async def edge_with_worker(settings: Settings) -> AsyncIterator[Served]:
    """The API with a training worker in its process, as ``streamrec up`` runs it."""
    async with _serving(settings, [_worker()]) as served:
        yield served


async def _wait_finished(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + TRAIN_TIMEOUT_S
    while asyncio.get_running_loop().time() < deadline:
        response = await client.get(f"{JOBS}/{job_id}", headers=ADMIN)
        assert response.status_code == 200, response.text
        if response.json()["status"] in ("succeeded", "failed"):
            return response.json()
        await asyncio.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish within {TRAIN_TIMEOUT_S:.0f}s")


async def test_jobs_need_the_admin_key(edge: Served) -> None:
    _, client = edge
    body = {"model": "mf", "data": "synthetic", "epochs": 1}
    for headers in ({}, {"X-API-Key": INGEST_KEY}, {"X-API-Key": "nope"}):
        for response in (
            await client.post(JOBS, json=body, headers=headers),
            await client.get(JOBS, headers=headers),
            await client.get(f"{JOBS}/abc", headers=headers),
        ):
            assert response.status_code == 401, response.text
            assert "admin key" in response.json()["message"]
    assert (await client.get(JOBS, headers=ADMIN)).json()["jobs"] == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"data": "/etc/passwd"}, "data"),
        ({"data": "../../var/ratings.csv"}, "data"),
        ({"data": "ml-100k"}, "data"),
        ({"model": "dqn"}, "model"),
        ({"model": "../mf"}, "model"),
        ({"epochs": 0}, "epochs"),
        ({"epochs": 101}, "epochs"),
        ({"batch_size": 10_000_000}, "batch_size"),
        ({"lr": 0}, "lr"),
        ({"protocol": "everything"}, "protocol"),
        ({"path": "/tmp/x"}, "path"),
    ],
)
async def test_requests_outside_the_bounds_are_422(
    edge: Served, change: dict[str, Any], field: str
) -> None:
    _, client = edge
    body = {"model": "mf", "data": "synthetic", "epochs": 1, **change}
    response = await client.post(JOBS, json=body, headers=ADMIN)
    assert response.status_code == 422, response.text
    assert field in response.json()["message"] and "Traceback" not in response.text
    assert (await client.get(JOBS, headers=ADMIN)).json()["jobs"] == []


def _id_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(IdMapping)).scalar_one()


async def test_a_synthetic_job_trains_offline_and_leaves_live_state_alone(
    edge_with_worker: Served,
) -> None:
    app, client = edge_with_worker
    runtime = app.state.runtime
    live_id_rows = _id_rows(runtime.services.engine)
    body = {"model": "mf", "data": "synthetic", "epochs": 1}
    response = await client.post(JOBS, json=body, headers=ADMIN)
    assert response.status_code == 202, response.text
    assert response.json()["status"] in ("queued", "running")
    job = await _wait_finished(client, response.json()["id"])
    assert job["status"] == "succeeded", job
    assert job["stage"] == "finished" and job["error"] is None
    assert job["offline"] is True
    assert job["model_version"] == {"name": "mf", "version": 1, "active": False}
    assert job["test_metrics"]["ndcg@10"] >= 0.0
    assert job["started_at"] <= job["finished_at"]
    # the version lives in the offline run; the live registries never saw it
    run_dir = runtime.settings.var_dir / "offline" / "synthetic"
    assert (run_dir / "models" / "mf" / "v1" / "weights.pt").is_file()
    assert (await client.get("/v1/models/mf")).status_code == 404
    assert (await client.get("/v1/models")).json()["models"] == []
    assert _id_rows(runtime.services.engine) == live_id_rows
    jobs = (await client.get(JOBS, headers=ADMIN)).json()["jobs"]
    assert [j["id"] for j in jobs] == [job["id"]]


async def test_an_archive_job_registers_a_live_version_with_its_data_window(
    edge_with_worker: Served,
) -> None:
    app, client = edge_with_worker
    start = datetime(2024, 1, 1, tzinfo=UTC)
    events = [
        SourcedEvent(
            RatingEvent(
                user_id=f"u{u}",
                item_id=f"m{(u + n) % 12}",
                rating=float(1 + (u * n) % 5),
                ts=start + timedelta(minutes=10 * u + n),
            ),
            "streamrec.ratings",
            u % 2,
            5 * u + n,
        )
        for u in range(8)
        for n in range(5)
    ]
    Archive(app.state.runtime.services.engine, log_id="log-1").write_batch(events)
    body = {"model": "mf", "data": "archive", "epochs": 1}
    response = await client.post(JOBS, json=body, headers=ADMIN)
    job = await _wait_finished(client, response.json()["id"])
    assert job["status"] == "succeeded", job
    assert job["offline"] is False
    assert job["model_version"] == {"name": "mf", "version": 1, "active": True}
    listed = (await client.get("/v1/models/mf")).json()
    assert listed["active_version"] == 1
    window = listed["versions"][0]["data_window"]
    assert window["source"] == "archive" and window["events"] == 40 and window["users"] == 8
    assert [(o["partition"], o["first"], o["last"]) for o in window["offsets"]] == [
        (0, 0, 34),
        (1, 5, 39),
    ]


async def test_a_failing_job_reports_its_error(edge_with_worker: Served) -> None:
    _, client = edge_with_worker
    body = {"model": "mf", "data": "archive", "epochs": 1}  # the archive is empty
    response = await client.post(JOBS, json=body, headers=ADMIN)
    assert response.status_code == 202, response.text
    job = await _wait_finished(client, response.json()["id"])
    assert job["status"] == "failed" and job["model_version"] is None
    assert "no interactions" in job["error"], job["error"]
    assert (await client.get("/v1/models")).json()["models"] == []


async def test_unknown_job_is_404(edge: Served) -> None:
    _, client = edge
    response = await client.get(f"{JOBS}/0123456789abcdef", headers=ADMIN)
    assert response.status_code == 404, response.text
    assert "no training job" in response.json()["message"]


def test_offline_is_what_the_trainer_says_it_is() -> None:
    for data in ("synthetic", "archive"):
        request = TrainingJobRequest.model_validate({"model": "mf", "data": data})
        assert is_offline(request) == service.is_offline(data)


async def test_past_the_queue_limit_a_job_is_503(edge: Served) -> None:
    _, client = edge  # no worker: every job waits
    body = {"model": "mf", "data": "synthetic"}
    for seed in range(MAX_QUEUED_JOBS):
        response = await client.post(JOBS, json={**body, "seed": seed}, headers=ADMIN)
        assert response.status_code == 202 and response.json()["status"] == "queued"
    refused = await client.post(JOBS, json={**body, "seed": 99}, headers=ADMIN)
    assert refused.status_code == 503, refused.text
    assert "queue is full" in refused.json()["message"]
    listed = (await client.get(JOBS, headers=ADMIN)).json()
    assert listed["max_queued"] == MAX_QUEUED_JOBS
    assert [j["request"]["seed"] for j in listed["jobs"]] == list(range(MAX_QUEUED_JOBS))[::-1]


async def test_jobs_survive_a_restart_of_the_api_and_run_after_it(settings: Settings) -> None:
    body = {"model": "mf", "data": "synthetic", "epochs": 1}
    async with _serving(settings) as (_, client):  # no worker yet
        submitted = (await client.post(JOBS, json=body, headers=ADMIN)).json()
    runner = _GatedRunner()
    runner.release.set()
    async with _serving(settings, [_worker(runner)]) as (_, client):
        job = await _wait_finished(client, submitted["id"])
    assert job["status"] == "succeeded", job
    assert job["created_at"] == submitted["created_at"] and job["request"] == submitted["request"]


class _GatedRunner:
    """Stands in for the trainer: blocks until released, counts how many run at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self._lock = threading.Lock()
        self.running = 0
        self.most_at_once = 0

    def __call__(
        self, request: TrainingJobRequest, live: Workspace, var_dir: Path, stage: StageCallback
    ) -> ModelVersion:
        with self._lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        stage("training")
        try:
            assert self.release.wait(TRAIN_TIMEOUT_S)
            torch.manual_seed(request.seed)
            net = DuelingDQN(
                DuelingDQNConfig(state_dim=3, item_dim=2, hidden=(4,), adv_hidden=(2,))
            )
            return live.models.register("dqn", net.eval())
        finally:
            with self._lock:
                self.running -= 1


async def test_one_job_at_a_time_and_a_full_queue_is_503(settings: Settings) -> None:
    runner = _GatedRunner()
    async with _serving(settings, [_worker(runner)]) as (app, client):
        store = TrainingJobStore(app.state.runtime.services.engine)
        app.state.training_jobs = TrainingJobs(store, max_queued=1)
        try:
            body = {"model": "mf", "data": "synthetic"}
            first = (await client.post(JOBS, json={**body, "seed": 1}, headers=ADMIN)).json()

            async def first_is_training() -> bool:
                job = (await client.get(f"{JOBS}/{first['id']}", headers=ADMIN)).json()
                return job["stage"] == "training"

            await wait_until(first_is_training, timeout=TRAIN_TIMEOUT_S, interval=0.02)
            second = await client.post(JOBS, json={**body, "seed": 2}, headers=ADMIN)
            assert second.status_code == 202 and second.json()["status"] == "queued"
            third = await client.post(JOBS, json={**body, "seed": 3}, headers=ADMIN)
            assert third.status_code == 503, third.text
            assert "queue is full" in third.json()["message"]
            runner.release.set()
            ids = (first["id"], second.json()["id"])
            finished = [await _wait_finished(client, job_id) for job_id in ids]
        finally:
            runner.release.set()
    assert [j["status"] for j in finished] == ["succeeded", "succeeded"]
    assert [j["model_version"]["version"] for j in finished] == [1, 2]
    assert runner.most_at_once == 1
