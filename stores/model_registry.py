"""Model registry: versioned artifacts on disk, indexed in SQL, one live version per name.

Layout: ``<root>/<name>/v<N>/`` holds whatever the artifact writes (torch models: a plain
state dict in ``weights.pt`` and ``config.json``) plus ``metrics.json`` and ``meta.json``
(artifact class, id-registry sizes, data window: what it was trained on). A version is rebuilt
from those files alone.

Each version has a status (``schemas.api.VersionStatus``): ``candidate`` when registered,
``live`` once activated (by hand, or by a promotion decision), ``rejected`` when a promotion
decision refused it, ``retired`` when another version replaced it as live. ``active`` is the
live pointer (true exactly for the live version). Status, activation time and the promotion
record change after the files are written, so they live in SQL only. Retention
(``retire_old``) deletes the oldest rejected and retired versions, never the live one and never
a candidate (it awaits a decision).

The artifact is any object with ``save_artifacts(directory) -> config dict`` and a classmethod
``load_artifacts(directory)``. Its class is recorded as ``module:Class`` and re-imported on
load; only classes under ``trainer.`` are accepted, so a tampered ``meta.json`` cannot make the
loader import arbitrary code, and imports still point one way (stores never imports trainer
statically).
"""

from __future__ import annotations

import importlib
import json
import math
import re
import shutil
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import (
    JSON,
    Boolean,
    Connection,
    DateTime,
    Engine,
    Integer,
    String,
    UniqueConstraint,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from streamrec.core.db import Base
from streamrec.core.errors import InvalidInput, NotFound, StateConflict
from streamrec.schemas.api import PromotionDecision, VersionStatus

NAME_RE = re.compile(r"^[a-z0-9_]+$")
ALLOWED_PREFIX = "streamrec.trainer."
# Versions registered before the packages moved under ``streamrec.`` name ``trainer.models…``;
# their files are unchanged, so the old path loads the same class.
LEGACY_PREFIX = "trainer."
METRICS_FILE = "metrics.json"
META_FILE = "meta.json"
# Versions retention may delete: settled, not serving, not awaiting a decision.
SETTLED = (VersionStatus.RETIRED, VersionStatus.REJECTED)
DropCollections = Callable[[str, int], None]  # (name, version): drop its vector collections


class ModelVersionRow(Base):
    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    artifact_class: Mapped[str] = mapped_column(String(200), nullable=False)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    n_users: Mapped[int] = mapped_column(Integer, default=0)  # id-registry sizes at training
    n_items: Mapped[int] = mapped_column(Integer, default=0)
    data_window: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    path: Mapped[str] = mapped_column(String(300), nullable=False)  # relative to the root
    active: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)  # = status live
    status: Mapped[str] = mapped_column(String(16), default=VersionStatus.CANDIDATE.value)
    activated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    promotion: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))

    __table_args__ = (UniqueConstraint("name", "version"),)


_TABLE = ModelVersionRow.__table__


class Artifact(Protocol):
    def save_artifacts(self, directory: Path) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Promotion:
    """A promotion decision: a candidate and the live version scored on the same held-out
    events (``trainer.promotion`` decides; the registry records and applies it). Scores are
    None when there was none (no live version) or it was not a number."""

    metric: str
    candidate_score: float | None
    live_score: float | None
    live_version: int | None
    tolerance: float
    decision: PromotionDecision
    reason: str
    heldout_events: int = 0
    decided_at: datetime | None = None
    # The paired per-user difference's standard error and how many of them a candidate may
    # fall short by (trainer.promotion); None / 0 for the bare comparison.
    difference_se: float | None = None
    confidence: float = 0.0

    def __post_init__(self) -> None:
        if self.decision not in ("promote", "reject"):
            raise InvalidInput(f"decision must be promote or reject, not {self.decision!r}")
        # JSON (and PostgreSQL) has no NaN: a score that is not a number is recorded as None.
        object.__setattr__(self, "candidate_score", _finite(self.candidate_score))
        object.__setattr__(self, "live_score", _finite(self.live_score))
        object.__setattr__(self, "difference_se", _finite(self.difference_se))
        object.__setattr__(self, "decided_at", _utc(self.decided_at))

    @property
    def promoted(self) -> bool:
        return self.decision == "promote"

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "candidate_score": self.candidate_score,
            "live_score": self.live_score,
            "live_version": self.live_version,
            "tolerance": self.tolerance,
            "decision": self.decision,
            "reason": self.reason,
            "heldout_events": self.heldout_events,
            "decided_at": _iso(self.decided_at),
            "difference_se": self.difference_se,
            "confidence": self.confidence,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Promotion:
        return cls(
            metric=str(raw["metric"]),
            candidate_score=raw.get("candidate_score"),
            live_score=raw.get("live_score"),
            live_version=raw.get("live_version"),
            tolerance=float(raw["tolerance"]),
            decision=raw["decision"],
            reason=str(raw.get("reason", "")),
            heldout_events=int(raw.get("heldout_events", 0)),
            decided_at=_parse_time(raw.get("decided_at")),
            difference_se=raw.get("difference_se"),
            confidence=float(raw.get("confidence", 0.0)),
        )


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    created_at: datetime
    artifact_class: str
    metrics: dict[str, Any]
    config: dict[str, Any]
    n_users: int
    n_items: int
    data_window: dict[str, Any]
    path: Path
    active: bool
    status: VersionStatus = VersionStatus.CANDIDATE
    activated_at: datetime | None = None  # when it last went live
    promotion: Promotion | None = None


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or len(name) > 64:
        raise InvalidInput(f"model name {name!r} must match {NAME_RE.pattern} (max 64 chars)")
    return name


def validate_version(version: int) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidInput(f"model version {version!r} must be a positive integer")
    return version


class ModelRegistry:
    def __init__(
        self, engine: Engine, root_dir: str | Path, now: Callable[[], datetime] | None = None
    ) -> None:
        self._engine = engine
        self.root = Path(root_dir).resolve()
        self._now = now or _utc_now  # the time written as created_at/activated_at/decided_at

    # -- paths --------------------------------------------------------------------------------
    def version_dir(self, name: str, version: int) -> Path:
        path = (self.root / validate_name(name) / f"v{validate_version(version)}").resolve()
        if not path.is_relative_to(self.root):  # belt and braces: names are already validated
            raise InvalidInput(f"model path {path} escapes the registry root")
        return path

    # -- writes -------------------------------------------------------------------------------
    def register(
        self,
        name: str,
        artifact: Artifact,
        metrics: dict[str, Any] | None = None,
        n_users: int = 0,
        n_items: int = 0,
        data_window: dict[str, Any] | None = None,
        activate: bool = False,
    ) -> ModelVersion:
        """Write ``artifact`` as the next version of ``name`` and index it: a ``candidate``, or
        the live version when ``activate``."""
        validate_name(name)
        cls = type(artifact)
        class_path = f"{cls.__module__}:{cls.__qualname__}"
        _check_class_path(class_path)
        staging = self.root / name / f".staging-{uuid.uuid4().hex}"
        staging.mkdir(parents=True)
        try:
            config = artifact.save_artifacts(staging)
            meta = {
                "artifact_class": class_path,
                "n_users": n_users,
                "n_items": n_items,
                "data_window": data_window or {},
            }
            _write_json(staging / META_FILE, meta)
            _write_json(staging / METRICS_FILE, metrics or {})
            version = self._commit(name, staging, class_path, config, meta, metrics or {})
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if activate:
            return self.activate(name, version)
        return self.get(name, version)

    def _commit(
        self,
        name: str,
        staging: Path,
        class_path: str,
        config: dict[str, Any],
        meta: dict[str, Any],
        metrics: dict[str, Any],
    ) -> int:
        """Move the staged files to the next free ``v<N>`` and insert its row."""
        for _ in range(5):  # another writer may take the same number; the constraint tells us
            version = self._next_version(name)
            target = self.version_dir(name, version)
            if target.exists():  # files left by a crash without a row: never overwrite them
                raise InvalidInput(f"{target} exists but is not registered; move it away")
            staging.rename(target)
            row = ModelVersionRow(
                name=name,
                version=version,
                created_at=self._now(),
                artifact_class=class_path,
                metrics=metrics,
                config=config,
                n_users=meta["n_users"],
                n_items=meta["n_items"],
                data_window=meta["data_window"],
                path=target.relative_to(self.root).as_posix(),
                active=False,
                status=VersionStatus.CANDIDATE.value,
                activated_at=None,
                promotion=None,
            )
            try:
                with self._engine.begin() as conn:
                    conn.execute(insert(ModelVersionRow), [_row_values(row)])
                return version
            except IntegrityError:
                target.rename(staging)
        raise InvalidInput(f"could not allocate a version for {name!r}; retry")

    def _next_version(self, name: str) -> int:
        with self._engine.connect() as conn:
            current = conn.execute(
                select(func.max(ModelVersionRow.version)).where(ModelVersionRow.name == name)
            ).scalar_one()
        return (current or 0) + 1

    def activate(self, name: str, version: int) -> ModelVersion:
        """Make ``version`` the live version of ``name`` (one transaction), whatever its status:
        an admin may roll back to a retired version or overrule a rejection. The version that
        was live becomes ``retired``."""
        validate_name(name)
        validate_version(version)
        with self._engine.begin() as conn:
            _lock(conn, name)
            if _status(conn, name, version) != VersionStatus.LIVE:
                self._make_live(conn, name, version)
        return self.get(name, version)

    def _make_live(self, conn: Connection, name: str, version: int) -> None:
        conn.execute(
            update(ModelVersionRow)
            .where(
                ModelVersionRow.name == name,
                ModelVersionRow.version != version,
                or_(
                    ModelVersionRow.active.is_(True),
                    ModelVersionRow.status == VersionStatus.LIVE.value,
                ),
            )
            .values(active=False, status=VersionStatus.RETIRED.value)
        )
        conn.execute(
            update(ModelVersionRow)
            .where(ModelVersionRow.name == name, ModelVersionRow.version == version)
            .values(active=True, status=VersionStatus.LIVE.value, activated_at=self._now())
        )

    def record_promotion(self, name: str, version: int, promotion: Promotion) -> ModelVersion:
        """Record the promotion decision on candidate ``version`` and apply it in one
        transaction: ``promote`` makes it live (the live one is retired), ``reject`` marks it
        rejected and the live version keeps serving.

        Refused (``InvalidInput``) unless the version is a candidate, and (``StateConflict``)
        when the live version is no longer the one it was scored against: the comparison is
        stale, score again.
        """
        validate_name(name)
        validate_version(version)
        record = replace(promotion, decided_at=promotion.decided_at or self._now())
        with self._engine.begin() as conn:
            _lock(conn, name)
            status = _status(conn, name, version)
            if status != VersionStatus.CANDIDATE:
                raise InvalidInput(
                    f"{name} v{version} is {status.value}, not a candidate: only a candidate's "
                    "promotion can be decided"
                )
            live = conn.execute(
                select(ModelVersionRow.version).where(
                    ModelVersionRow.name == name,
                    ModelVersionRow.status == VersionStatus.LIVE.value,
                )
            ).scalar()
            if live != record.live_version:
                raise StateConflict(
                    f"{name} v{version} was scored against live "
                    f"{_version_label(record.live_version)} but the live version is now "
                    f"{_version_label(live)}: score it again"
                )
            values: dict[str, Any] = {"promotion": record.to_json()}
            if not record.promoted:
                values["status"] = VersionStatus.REJECTED.value
            conn.execute(
                update(ModelVersionRow)
                .where(ModelVersionRow.name == name, ModelVersionRow.version == version)
                .values(**values)
            )
            if record.promoted:
                self._make_live(conn, name, version)
        return self.get(name, version)

    def retire_old(
        self,
        name: str,
        keep: int,
        drop_collections: DropCollections | None = None,
        protect: Collection[int] = (),
    ) -> list[int]:
        """Delete the versions of ``name`` beyond the ``keep`` newest rejected and retired ones
        (rows, files, and through ``drop_collections(name, version)`` their vector collections)
        so disk stays bounded. Never the live version, never a candidate (it awaits a
        decision), never a version in ``protect`` (one pinned for a comparison). Returns the
        versions deleted, oldest first.

        Collections go first: if dropping them fails, the version is still registered and the
        next call tries again. A version activated meanwhile keeps its row and files (the
        delete is conditional) and gets its collections back when it is published.
        """
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
            raise InvalidInput(f"keep must be an integer >= 0, got {keep!r}")
        settled = [
            v.version
            for v in self.list(name)
            if v.status in SETTLED and not v.active and v.version not in protect
        ]
        removed = []
        for version in settled[: max(0, len(settled) - keep)]:
            if drop_collections is not None:
                drop_collections(name, version)
            if self._delete_settled(name, version):
                shutil.rmtree(self.version_dir(name, version), ignore_errors=True)
                removed.append(version)
        return removed

    def _delete_settled(self, name: str, version: int) -> bool:
        with self._engine.begin() as conn:
            result = conn.execute(
                delete(ModelVersionRow).where(
                    ModelVersionRow.name == name,
                    ModelVersionRow.version == version,
                    ModelVersionRow.active.is_(False),
                    ModelVersionRow.status.in_([s.value for s in SETTLED]),
                )
            )
        return bool(result.rowcount)

    def delete(self, name: str, version: int) -> None:
        """Remove a version's row and files; the live version cannot be deleted."""
        found = self.get(name, version)
        if found.active:
            raise InvalidInput(
                f"{name} v{version} is the active version; activate another version first"
            )
        with self._engine.begin() as conn:
            deleted = conn.execute(
                delete(ModelVersionRow).where(
                    ModelVersionRow.name == name,
                    ModelVersionRow.version == version,
                    ModelVersionRow.active.is_(False),
                )
            ).rowcount
        if not deleted:  # activated (or deleted) since the check above: its files stay
            raise InvalidInput(f"{name} v{version} changed while being deleted; look again")
        shutil.rmtree(self.version_dir(name, version), ignore_errors=True)

    # -- reads --------------------------------------------------------------------------------
    def list(self, name: str | None = None) -> list[ModelVersion]:
        query = select(_TABLE).order_by(ModelVersionRow.name, ModelVersionRow.version)
        if name is not None:
            query = query.where(ModelVersionRow.name == validate_name(name))
        with self._engine.connect() as conn:
            return [self._version(row) for row in conn.execute(query).mappings()]

    def get(self, name: str, version: int) -> ModelVersion:
        validate_name(name)
        validate_version(version)
        query = select(_TABLE).where(
            ModelVersionRow.name == name, ModelVersionRow.version == version
        )
        with self._engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        if row is None:
            raise NotFound(f"model {name} has no version {version}")
        return self._version(row)

    def active(self, name: str) -> ModelVersion | None:
        """The live version of ``name``, if any."""
        query = select(_TABLE).where(
            ModelVersionRow.name == validate_name(name), ModelVersionRow.active.is_(True)
        )
        with self._engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return self._version(row) if row is not None else None

    def load(self, name: str, version: int | None = None) -> Any:
        """Rebuild a version (the active one by default) from its own files."""
        if version is None:
            found = self.active(name)
            if found is None:
                raise NotFound(f"model {name} has no active version")
        else:
            found = self.get(name, version)
        directory = self.version_dir(found.name, found.version)
        meta = json.loads((directory / META_FILE).read_text())
        cls = _import_class(meta["artifact_class"])
        return cls.load_artifacts(directory)

    def _version(self, row: Any) -> ModelVersion:
        promotion = row["promotion"]
        return ModelVersion(
            name=row["name"],
            version=row["version"],
            created_at=_aware(row["created_at"]),
            artifact_class=row["artifact_class"],
            metrics=dict(row["metrics"] or {}),
            config=dict(row["config"] or {}),
            n_users=row["n_users"],
            n_items=row["n_items"],
            data_window=dict(row["data_window"] or {}),
            path=self.root / row["path"],
            active=bool(row["active"]),
            status=VersionStatus(row["status"]),
            activated_at=_utc(row["activated_at"]),
            promotion=Promotion.from_json(promotion) if promotion else None,
        )


def _lock(conn: Connection, name: str) -> None:
    """Lock ``name``'s rows until the transaction ends (PostgreSQL; SQLite has one writer at a
    time anyway), so two status changes of one model never interleave."""
    conn.execute(
        select(ModelVersionRow.id).where(ModelVersionRow.name == name).with_for_update()
    ).all()


def _status(conn: Connection, name: str, version: int) -> VersionStatus:
    status = conn.execute(
        select(ModelVersionRow.status).where(
            ModelVersionRow.name == name, ModelVersionRow.version == version
        )
    ).scalar()
    if status is None:
        raise NotFound(f"model {name} has no version {version}")
    return VersionStatus(status)


def _version_label(version: int | None) -> str:
    return f"v{version}" if version is not None else "none"


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime | None) -> datetime | None:
    return _aware(value) if value is not None else None


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything here is written in UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse_time(value: str | None) -> datetime | None:
    return _utc(datetime.fromisoformat(value)) if value else None


def _finite(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _row_values(row: ModelVersionRow) -> dict[str, Any]:
    return {
        c.name: getattr(row, c.name) for c in ModelVersionRow.__table__.columns if c.name != "id"
    }


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True, default=str))


def _check_class_path(class_path: str) -> None:
    module, _, qualname = class_path.partition(":")
    if not module.startswith(ALLOWED_PREFIX) or not qualname.isidentifier():
        raise InvalidInput(f"artifact class {class_path!r} is not a trainer class")


def _import_class(class_path: str) -> Any:
    if class_path.startswith(LEGACY_PREFIX):
        class_path = f"streamrec.{class_path}"
    _check_class_path(class_path)
    module, _, qualname = class_path.partition(":")
    cls = getattr(importlib.import_module(module), qualname, None)
    if cls is None or not hasattr(cls, "load_artifacts"):
        raise InvalidInput(f"artifact class {class_path!r} cannot be loaded")
    return cls
