"""Training jobs, durable in SQL: the API records requests, a worker runs them.

The API ``submit``s a job (refused when ``max_queued`` jobs already wait) and reads status
(``get``, ``newest``); a worker (``apps.training_jobs``) ``claim``s the oldest queued job, reports
its stage and a heartbeat while it trains, and records the outcome (``succeed`` with the
registered version, or ``fail`` with the error). Jobs survive a restart of either.

**Claiming is atomic.** One conditional ``UPDATE ... WHERE status = 'queued'``: on PostgreSQL the
candidate row is picked with ``FOR UPDATE SKIP LOCKED``, so concurrent workers take different
jobs instead of waiting on the same row; SQLite runs one writing statement at a time.

**A dead worker's job fails.** A running job whose worker has not written a heartbeat since a
given time is marked failed by ``fail_stale`` (called by every worker when it starts and as it
polls), never run again on its own: a job that killed its worker (out of memory) would kill
the next one too. Submit it again to retry.

**The queue limit holds across API processes.** ``submit`` inserts, then counts the queued jobs
in the same transaction and rolls back past the limit; the insert takes SQLite's write lock, and
on PostgreSQL a transaction-scoped advisory lock serialises submissions, so two processes
never both see room for one more.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast, overload

from sqlalchemy import (
    JSON,
    Boolean,
    Connection,
    DateTime,
    Engine,
    Index,
    Integer,
    Row,
    String,
    Text,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Mapped, mapped_column

from streamrec.core.db import Base
from streamrec.schemas.api import JobStage, JobStatus, TrainingJobRequest
from streamrec.stores.model_registry import ModelVersion

# Database-wide key (others: stores.schema 7_410_100, core.ids 7_410_001/2) serialising submits.
SUBMIT_LOCK_KEY = 7_410_200


class TrainingJobRow(Base):
    __tablename__ = "training_jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    request: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    stage: Mapped[str] = mapped_column(String(32), nullable=False)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The version the job registered (in the offline run's registry for offline data).
    model_name: Mapped[str | None] = mapped_column(String(64), nullable=True)
    model_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    model_active: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    test_metrics: Mapped[dict[str, float] | None] = mapped_column(JSON, nullable=True)
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (
        Index("ix_training_jobs_status_created", "status", "created_at"),  # count, claim
        Index("ix_training_jobs_created_at", "created_at"),  # newest first
    )


@dataclass(frozen=True)
class RegisteredVersion:
    """The model version a job registered, as it was when the job finished."""

    name: str
    version: int
    active: bool
    test_metrics: dict[str, float]


@dataclass(frozen=True)
class TrainingJobRecord:
    id: str
    request: TrainingJobRequest
    status: JobStatus
    stage: JobStage
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    version: RegisteredVersion | None = None
    worker: str | None = None  # who runs (or ran) it
    heartbeat_at: datetime | None = None


_TABLE = TrainingJobRow.__table__


class TrainingJobStore:
    """The ``training_jobs`` table. Every write takes ``now`` (a worker passes its clock's)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    # -- the API's side ---------------------------------------------------------------------
    def submit(
        self, request: TrainingJobRequest, *, max_queued: int, now: datetime | None = None
    ) -> TrainingJobRecord | None:
        """Record a queued job; None (nothing written) when ``max_queued`` jobs already wait."""
        job = TrainingJobRecord(
            id=uuid.uuid4().hex,
            request=request,
            status="queued",
            stage="queued",
            created_at=now or _utc_now(),
        )
        with self._engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SUBMIT_LOCK_KEY})
            conn.execute(
                insert(TrainingJobRow).values(
                    id=job.id,
                    request=request.model_dump(mode="json"),
                    status=job.status,
                    stage=job.stage,
                    created_at=job.created_at,
                )
            )
            if self._count_queued(conn) > max_queued:
                conn.rollback()
                return None
            conn.commit()
        return job

    def get(self, job_id: str) -> TrainingJobRecord | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(_TABLE).where(_TABLE.c.id == job_id)).first()
        return _record(row) if row is not None else None

    def newest(self, limit: int) -> list[TrainingJobRecord]:
        """The ``limit`` newest jobs, newest first."""
        query = select(_TABLE).order_by(_TABLE.c.created_at.desc(), _TABLE.c.id.desc())
        with self._engine.connect() as conn:
            return [_record(row) for row in conn.execute(query.limit(limit))]

    def count_queued(self) -> int:
        with self._engine.connect() as conn:
            return self._count_queued(conn)

    @staticmethod
    def _count_queued(conn: Connection) -> int:
        query = select(func.count()).select_from(_TABLE).where(_TABLE.c.status == "queued")
        return int(conn.execute(query).scalar_one())

    # -- the worker's side ------------------------------------------------------------------
    def claim(self, worker: str, now: datetime | None = None) -> TrainingJobRecord | None:
        """Take the oldest queued job for ``worker`` (now running), or None if none waits."""
        now = now or _utc_now()
        oldest = (
            select(_TABLE.c.id)
            .where(_TABLE.c.status == "queued")
            .order_by(_TABLE.c.created_at, _TABLE.c.id)
            .limit(1)
            .with_for_update(skip_locked=True)  # PostgreSQL; SQLite has no row locks to skip
            .scalar_subquery()
        )
        claim = (
            update(TrainingJobRow)
            # status again: the conditional update is what makes the claim atomic, whatever
            # the subquery saw.
            .where(_TABLE.c.id == oldest, _TABLE.c.status == "queued")
            .values(status="running", worker=worker, started_at=now, heartbeat_at=now)
            .returning(*_TABLE.c)
        )
        with self._engine.begin() as conn:
            row = conn.execute(claim).first()
        return _record(row) if row is not None else None

    def set_stage(
        self, job_id: str, worker: str, stage: JobStage, now: datetime | None = None
    ) -> bool:
        """Record the running job's stage (a heartbeat too); False if it is no longer
        ``worker``'s running job."""
        return self._update_running(job_id, worker, stage=stage, heartbeat_at=now or _utc_now())

    def heartbeat(self, job_id: str, worker: str, now: datetime | None = None) -> bool:
        """``worker`` still runs ``job_id``; False if the job is no longer its running job."""
        return self._update_running(job_id, worker, heartbeat_at=now or _utc_now())

    def succeed(
        self, job_id: str, worker: str, version: ModelVersion, now: datetime | None = None
    ) -> bool:
        """Record the version ``worker``'s job registered. Written even when the job was marked
        failed as stale meanwhile: the version exists, and the record says so."""
        return self._finish(
            job_id,
            worker,
            now,
            status="succeeded",
            model_name=version.name,
            model_version=version.version,
            model_active=version.active,
            test_metrics=_test_metrics(version.metrics),
        )

    def fail(self, job_id: str, worker: str, error: str, now: datetime | None = None) -> bool:
        return self._finish(job_id, worker, now, status="failed", error=error)

    def fail_stale(
        self, heartbeat_before: datetime, error: str, now: datetime | None = None
    ) -> list[str]:
        """Mark failed every running job whose worker's last heartbeat is older than
        ``heartbeat_before`` (its worker died or hangs); returns their ids."""
        stale = (
            update(TrainingJobRow)
            .where(
                _TABLE.c.status == "running",
                or_(_TABLE.c.heartbeat_at.is_(None), _TABLE.c.heartbeat_at < heartbeat_before),
            )
            .values(status="failed", stage="finished", error=error, finished_at=now or _utc_now())
            .returning(_TABLE.c.id)
        )
        with self._engine.begin() as conn:
            return [row.id for row in conn.execute(stale)]

    def _update_running(self, job_id: str, worker: str, **values: Any) -> bool:
        query = (
            update(TrainingJobRow)
            .where(_TABLE.c.id == job_id, _TABLE.c.worker == worker, _TABLE.c.status == "running")
            .values(**values)
            .returning(_TABLE.c.id)
        )
        with self._engine.begin() as conn:
            return conn.execute(query).first() is not None

    def _finish(self, job_id: str, worker: str, now: datetime | None, **values: Any) -> bool:
        query = (
            update(TrainingJobRow)
            .where(_TABLE.c.id == job_id, _TABLE.c.worker == worker)
            .values(stage="finished", finished_at=now or _utc_now(), **values)
            .returning(_TABLE.c.id)
        )
        with self._engine.begin() as conn:
            return conn.execute(query).first() is not None


def _record(row: Row[Any]) -> TrainingJobRecord:
    version = (
        RegisteredVersion(
            name=row.model_name,
            version=row.model_version,
            active=bool(row.model_active),
            test_metrics=dict(row.test_metrics or {}),
        )
        if row.model_name is not None and row.model_version is not None
        else None
    )
    return TrainingJobRecord(
        id=row.id,
        request=TrainingJobRequest.model_validate(row.request),
        status=cast(JobStatus, row.status),
        stage=cast(JobStage, row.stage),
        created_at=_utc(row.created_at),
        started_at=_utc(row.started_at),
        finished_at=_utc(row.finished_at),
        error=row.error,
        version=version,
        worker=row.worker,
        heartbeat_at=_utc(row.heartbeat_at),
    )


def _test_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    test = metrics.get("test", {})
    if not isinstance(test, dict):
        return {}
    return {k: float(v) for k, v in test.items() if isinstance(v, int | float)}


def _utc_now() -> datetime:
    return datetime.now(UTC)


@overload
def _utc(value: datetime) -> datetime: ...
@overload
def _utc(value: None) -> None: ...
@overload
def _utc(value: datetime | None) -> datetime | None: ...
def _utc(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; everything here is written in UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value
