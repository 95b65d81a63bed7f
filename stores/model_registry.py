"""Model registry: versioned artifacts on disk, indexed in SQL, one active version per name.

Layout: ``<root>/<name>/v<N>/`` holds whatever the artifact writes (torch models: a plain
state dict in ``weights.pt`` and ``config.json``) plus ``metrics.json`` and ``meta.json``
(artifact class, id-registry sizes, data window). A version is rebuilt from those files alone.

The artifact is any object with ``save_artifacts(directory) -> config dict`` and a classmethod
``load_artifacts(directory)``. Its class is recorded as ``module:Class`` and re-imported on
load; only classes under ``trainer.`` are accepted, so a tampered ``meta.json`` cannot make the
loader import arbitrary code, and imports still point one way (stores never imports trainer
statically).
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Engine,
    Integer,
    String,
    UniqueConstraint,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base
from core.errors import InvalidInput, NotFound

NAME_RE = re.compile(r"^[a-z0-9_]+$")
ALLOWED_PREFIX = "trainer."
METRICS_FILE = "metrics.json"
META_FILE = "meta.json"


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
    active: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)

    __table_args__ = (UniqueConstraint("name", "version"),)


_TABLE = ModelVersionRow.__table__


class Artifact(Protocol):
    def save_artifacts(self, directory: Path) -> dict[str, Any]: ...


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


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or len(name) > 64:
        raise InvalidInput(f"model name {name!r} must match {NAME_RE.pattern} (max 64 chars)")
    return name


def validate_version(version: int) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidInput(f"model version {version!r} must be a positive integer")
    return version


class ModelRegistry:
    def __init__(self, engine: Engine, root_dir: str | Path) -> None:
        self._engine = engine
        self.root = Path(root_dir).resolve()

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
        """Write ``artifact`` as the next version of ``name`` and index it."""
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
                created_at=datetime.now(UTC),
                artifact_class=class_path,
                metrics=metrics,
                config=config,
                n_users=meta["n_users"],
                n_items=meta["n_items"],
                data_window=meta["data_window"],
                path=target.relative_to(self.root).as_posix(),
                active=False,
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
        """Make ``version`` the one active version of ``name`` (one transaction)."""
        self.get(name, version)
        with self._engine.begin() as conn:
            conn.execute(
                update(ModelVersionRow).where(ModelVersionRow.name == name).values(active=False)
            )
            conn.execute(
                update(ModelVersionRow)
                .where(ModelVersionRow.name == name, ModelVersionRow.version == version)
                .values(active=True)
            )
        return self.get(name, version)

    def delete(self, name: str, version: int) -> None:
        """Remove a version's row and files; the active version cannot be deleted."""
        found = self.get(name, version)
        if found.active:
            raise InvalidInput(
                f"{name} v{version} is the active version; activate another version first"
            )
        with self._engine.begin() as conn:
            conn.execute(
                delete(ModelVersionRow).where(
                    ModelVersionRow.name == name, ModelVersionRow.version == version
                )
            )
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
        return ModelVersion(
            name=row["name"],
            version=row["version"],
            created_at=row["created_at"],
            artifact_class=row["artifact_class"],
            metrics=dict(row["metrics"] or {}),
            config=dict(row["config"] or {}),
            n_users=row["n_users"],
            n_items=row["n_items"],
            data_window=dict(row["data_window"] or {}),
            path=self.root / row["path"],
            active=bool(row["active"]),
        )


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
    _check_class_path(class_path)
    module, _, qualname = class_path.partition(":")
    cls = getattr(importlib.import_module(module), qualname, None)
    if cls is None or not hasattr(cls, "load_artifacts"):
        raise InvalidInput(f"artifact class {class_path!r} cannot be loaded")
    return cls
