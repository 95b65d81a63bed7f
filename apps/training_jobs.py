"""The training-jobs worker: runs the jobs the API recorded (``POST /v1/training/jobs``).

A program, not part of the library: it joins the job records (``stores.training_jobs``) to the
training service (``trainer.service``), so the API that records jobs imports no training code.
It runs inside ``streamrec up`` (``run_training_worker``, an ``in_process`` hook of the API, on
its connections) and on its own as ``streamrec training-worker`` (production: a process or
container of its own, off the API's CPU).

Each worker runs one job at a time, in a thread, through the code of ``streamrec train`` (same
data loading, training loop and registration). Several workers may run: each claim takes a
different job (``TrainingJobStore.claim``).

**A dead worker's job fails; it is not run again.** While it trains, a worker writes a heartbeat
every ``heartbeat_seconds``. Every worker, when it starts and each time it looks for work, marks
failed the running jobs whose heartbeat is older than ``stale_after_seconds``: their worker was
killed or hangs. Not requeued: a job that killed its worker (out of memory) would kill the next
one too, and a half-finished one may still register its version. Submit it again to retry.

**Stopping** marks the running job failed, then interrupts its training: ``JobInterrupted`` is
raised in the training thread at the next Python instruction it runs (the training loop runs
Python between torch calls), so the thread unwinds (its ``with`` blocks close what they opened)
and the process exits at once instead of waiting for the training to end. The thread is a
daemon, should it be stuck in one long native call.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Generic, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from streamrec.api.app import InProcessHook, Shutdown
from streamrec.api.runtime import Runtime
from streamrec.core.errors import ServiceUnavailable, StreamrecError
from streamrec.core.settings import Settings
from streamrec.schemas.api import JobStage, TrainingJobRequest
from streamrec.stores.factory import open_sql_stores
from streamrec.stores.model_registry import ModelVersion
from streamrec.stores.training_jobs import TrainingJobRecord, TrainingJobStore
from streamrec.trainer.service import Workspace, load_data, train_model, workspace

log = logging.getLogger(__name__)

T = TypeVar("T")
StageCallback = Callable[[JobStage], None]
TrainingRunner = Callable[[TrainingJobRequest, Workspace, Path, StageCallback], ModelVersion]
Clock = Callable[[], datetime]

# What a training run may raise for a reason its request or data gives: the message says why.
_EXPECTED_ERRORS = (StreamrecError, OSError, ValueError)
STALE_ERROR = (
    "the worker running this job stopped answering before it finished (killed or hung); "
    "submit it again"
)
STOPPED_ERROR = "the worker stopped before the job finished; submit it again"


@dataclass(frozen=True)
class WorkerConfig:
    poll_seconds: float = 1.0  # how often an idle worker looks for queued jobs
    heartbeat_seconds: float = 5.0  # how often a training worker says it is alive
    # A running job without a heartbeat this long is failed: its worker is gone.
    stale_after_seconds: float = 60.0
    # How long stopping waits for an interrupted training thread to end.
    interrupt_seconds: float = 5.0

    def __post_init__(self) -> None:
        if not 0 < self.heartbeat_seconds < self.stale_after_seconds:
            raise ValueError("heartbeat_seconds must be positive and below stale_after_seconds")
        if self.poll_seconds <= 0:
            raise ValueError("poll_seconds must be positive")


def run_training(
    request: TrainingJobRequest, live: Workspace, var_dir: Path, stage: StageCallback
) -> ModelVersion:
    """``streamrec train`` for one request (blocking; call it in a thread): the same
    ``trainer.service.train_model``, on the live workspace for the archive and in an offline
    run of its own (``<var_dir>/offline/synthetic``) for synthetic data, which therefore never
    touches the live id registry or model registry."""
    with workspace(request.data, var_dir, live) as ws:
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


def worker_name() -> str:
    """Who runs a job, as its record shows it: host, process, and a tag for this worker."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _utc_now() -> datetime:
    return datetime.now(UTC)


class TrainingWorker:
    """Claims queued jobs one at a time and runs each in a thread, recording stage and outcome."""

    def __init__(
        self,
        store: TrainingJobStore,
        live: Workspace,
        var_dir: Path,
        *,
        run: TrainingRunner = run_training,
        config: WorkerConfig | None = None,
        clock: Clock = _utc_now,
        name: str | None = None,
    ) -> None:
        self.name = name or worker_name()
        self._store, self._live, self._var_dir, self._run = store, live, var_dir, run
        self._config = config or WorkerConfig()
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._current: str | None = None  # the job id being trained, until its outcome is written
        self._training: _TrainingThread[ModelVersion] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self.run_forever(), name="training-worker")

    async def stop(self) -> None:
        """Stop looking for jobs; a job still training is marked failed and interrupted."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        job_id, training = self._current, self._training
        self._current, self._training = None, None
        if job_id is not None:
            log.warning("training job %s interrupted: the worker is stopping", job_id)
            await asyncio.to_thread(
                self._store.fail, job_id, self.name, STOPPED_ERROR, self._clock()
            )
        if training is not None and not await training.interrupt(self._config.interrupt_seconds):
            log.warning(
                "training job %s: its thread is still in a native call after %.0f s; left to "
                "end with the process",
                job_id,
                self._config.interrupt_seconds,
            )

    async def run_forever(self) -> None:
        log.info("training worker %s: waiting for jobs", self.name)
        while True:
            try:
                ran = await self.run_once()
            except (SQLAlchemyError, ServiceUnavailable) as exc:
                log.warning("training worker %s: SQL unavailable, retrying: %s", self.name, exc)
                ran = False
            except Exception:
                log.exception("training worker %s: unexpected error; carrying on", self.name)
                ran = False
            if not ran:
                await asyncio.sleep(self._config.poll_seconds)

    async def run_once(self) -> bool:
        """Fail the jobs of dead workers, then claim and run one queued job; False when none
        waited."""
        await asyncio.to_thread(self.fail_stale)
        job = await asyncio.to_thread(self._store.claim, self.name, self._clock())
        if job is None:
            return False
        await self._execute(job)
        return True

    def fail_stale(self) -> list[str]:
        before = self._clock() - timedelta(seconds=self._config.stale_after_seconds)
        failed = self._store.fail_stale(before, STALE_ERROR, self._clock())
        for job_id in failed:
            log.warning("training job %s failed: its worker stopped answering", job_id)
        return failed

    async def _execute(self, job: TrainingJobRecord) -> None:
        self._current = job.id
        log.info("training job %s started: %s", job.id, job.request.model_dump(mode="json"))
        stage = partial(self._set_stage, job.id)
        work = partial(self._run, job.request, self._live, self._var_dir, stage)
        self._training = _TrainingThread(work, name=f"training-job-{job.id}")
        await self._beat_until_done(job.id, self._training.outcome)
        try:
            version = self._training.outcome.result()
        except _EXPECTED_ERRORS as exc:
            log.warning("training job %s failed: %s", job.id, exc)
            error = str(exc) or type(exc).__name__
            await self._finish(partial(self._store.fail, job.id, self.name, error))
            return
        except Exception:
            log.exception("training job %s failed unexpectedly", job.id)
            error = f"internal error in training job {job.id}; see the training worker's log"
            await self._finish(partial(self._store.fail, job.id, self.name, error))
            return
        await self._finish(partial(self._store.succeed, job.id, self.name, version))
        log.info("training job %s registered %s v%d", job.id, version.name, version.version)

    async def _finish(self, record: Callable[[datetime], bool]) -> None:
        """Write the outcome (``record(now)``); only then is the job no longer this worker's."""
        await asyncio.to_thread(record, self._clock())
        self._current, self._training = None, None

    def _set_stage(self, job_id: str, stage: JobStage) -> None:
        """From the training thread."""
        self._store.set_stage(job_id, self.name, stage, self._clock())

    async def _beat_until_done(self, job_id: str, training: asyncio.Future[ModelVersion]) -> None:
        while not training.done():
            await asyncio.wait({training}, timeout=self._config.heartbeat_seconds)
            if training.done():
                return
            try:
                await asyncio.to_thread(self._store.heartbeat, job_id, self.name, self._clock())
            except SQLAlchemyError as exc:
                # The training goes on; missing beats only risk the job being judged stale.
                log.warning("training job %s: heartbeat not written: %s", job_id, exc)


class JobInterrupted(BaseException):
    """Raised inside a training thread to stop it (``_TrainingThread.interrupt``). Not an
    ``Exception``, so no ``except Exception`` in the training code takes it for its own error."""


class _TrainingThread(Generic[T]):
    """``work`` in a thread of its own, its outcome settled on the caller's event loop, and a
    way to stop it. Not ``asyncio.to_thread``: a pool's thread cannot be interrupted, and the
    pool's threads are joined at exit, so a stopping process would wait for the training."""

    def __init__(self, work: Callable[[], T], name: str) -> None:
        self._loop = asyncio.get_running_loop()
        self.outcome: asyncio.Future[T] = self._loop.create_future()
        self._thread = threading.Thread(target=self._run, args=(work,), name=name, daemon=True)
        self._thread.start()

    def _run(self, work: Callable[[], T]) -> None:
        try:
            result = work()
        except BaseException as exc:  # handed to the awaiting side, which decides
            self._settle(partial(self.outcome.set_exception, exc))
        else:
            self._settle(partial(self.outcome.set_result, result))

    def _settle(self, settle: Callable[[], None]) -> None:
        def if_still_awaited() -> None:
            if not self.outcome.done():  # cancelled: the job was interrupted
                settle()

        # A closed loop: the worker stopped, and recorded the job's outcome already.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(if_still_awaited)

    async def interrupt(self, timeout: float) -> bool:
        """Raise ``JobInterrupted`` in the thread at the next Python instruction it runs (the
        only way to stop a thread from outside), then wait up to ``timeout`` seconds for it to
        end; True if it did."""
        self.outcome.cancel()
        ident = self._thread.ident
        if ident is not None and self._thread.is_alive():
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(ident), ctypes.py_object(JobInterrupted)
            )
        await asyncio.to_thread(self._thread.join, timeout)
        return not self._thread.is_alive()


def run_training_worker(
    config: WorkerConfig | None = None, run: TrainingRunner = run_training
) -> InProcessHook:
    """The hook that runs a training worker in the API's process (``streamrec up``), on its
    connections; stopped with the API. ``run``: what trains a job (tests pass a stand-in)."""

    async def start(runtime: Runtime, shutdown: Shutdown) -> None:
        stores = runtime.stores
        worker = TrainingWorker(
            stores.training_jobs,
            Workspace(stores.engine, stores.ids, stores.models, offline=False),
            stores.settings.var_dir,
            run=run,
            config=config,
        )
        worker.start()
        shutdown.on_exit("the training worker", worker.stop)

    return start


async def run_worker(settings: Settings, config: WorkerConfig | None = None) -> None:
    """``streamrec training-worker``: a worker on the SQL stores of ``settings`` until SIGINT
    or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with open_sql_stores(settings) as sql:
        worker = TrainingWorker(
            sql.training_jobs,
            Workspace(sql.engine, sql.ids, sql.models, offline=False),
            settings.var_dir,
            config=config,
        )
        worker.start()
        try:
            await stop.wait()
        finally:
            await worker.stop()
