"""The one id registry: external user/item ids ↔ dense indices, shared by every model.

The earlier system pickled an id map per model and the models disagreed about which row was
which item. Here one append-only SQL table owns the mapping: an index, once given, never
changes, every model and every vector point uses it, and a model version records the
registry size it was trained with (rows past that size are items it has not seen yet).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from enum import StrEnum

from sqlalchemy import (
    Connection,
    Engine,
    Integer,
    String,
    UniqueConstraint,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from streamrec.core.db import Base


class IdKind(StrEnum):
    USER = "user"
    ITEM = "item"


class IdMapping(Base):
    __tablename__ = "id_registry"

    kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    external_id: Mapped[str] = mapped_column(String(128), nullable=False)

    # Lookups go by external id; the constraint also makes a double registration fail loudly.
    __table_args__ = (UniqueConstraint("kind", "external_id"),)


_ADVISORY_LOCK = {IdKind.USER: 7_410_001, IdKind.ITEM: 7_410_002}
_CHUNK = 1000


class IdRegistry:
    """Get-or-create dense indices, safe across threads and processes (the archive and
    vectors groups register ids from processes of their own): see ``_serialise_registrations``.

    Known mappings are cached in-process: the table is append-only, so a cached entry is
    never stale.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._cache: dict[IdKind, dict[str, int]] = {IdKind.USER: {}, IdKind.ITEM: {}}
        self._lock = threading.Lock()

    def lookup(self, kind: IdKind, external_ids: Iterable[str]) -> dict[str, int]:
        """Indices of the ids already registered; unknown ids are left out."""
        cache = self._cache[kind]
        wanted = list(dict.fromkeys(external_ids))
        missing = [e for e in wanted if e not in cache]
        if missing:
            with self._engine.connect() as conn:
                for found in self._select(conn, kind, missing):
                    cache[found[0]] = found[1]
        return {e: cache[e] for e in wanted if e in cache}

    def assign(self, kind: IdKind, external_ids: Iterable[str]) -> dict[str, int]:
        """Indices for every id, registering new ones at the end of the table in given order."""
        wanted = list(dict.fromkeys(external_ids))
        known = self.lookup(kind, wanted)
        new = [e for e in wanted if e not in known]
        if not new:
            return known
        with self._lock, self._engine.begin() as conn:
            _serialise_registrations(conn, kind)
            # Another process may have registered some of them since the lookup.
            for external_id, idx in self._select(conn, kind, new):
                known[external_id] = idx
                self._cache[kind][external_id] = idx
            new = [e for e in new if e not in known]
            start = conn.execute(
                select(func.coalesce(func.max(IdMapping.idx) + 1, 0)).where(IdMapping.kind == kind)
            ).scalar_one()
            rows = [
                {"kind": str(kind), "idx": start + n, "external_id": e} for n, e in enumerate(new)
            ]
            if rows:
                conn.execute(insert(IdMapping), rows)
        for n, external in enumerate(new):
            known[external] = start + n
            self._cache[kind][external] = start + n
        return known

    def size(self, kind: IdKind) -> int:
        with self._engine.connect() as conn:
            return conn.execute(
                select(func.count()).select_from(IdMapping).where(IdMapping.kind == kind)
            ).scalar_one()

    def external_ids(self, kind: IdKind) -> list[str]:
        """Every registered id in index order: ``external_ids(kind)[idx]`` decodes an index."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(IdMapping.external_id).where(IdMapping.kind == kind).order_by(IdMapping.idx)
            ).scalars()
            return list(rows)

    @staticmethod
    def _select(conn: Connection, kind: IdKind, ids: Sequence[str]) -> list[tuple[str, int]]:
        found: list[tuple[str, int]] = []
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            rows = conn.execute(
                select(IdMapping.external_id, IdMapping.idx).where(
                    IdMapping.kind == kind, IdMapping.external_id.in_(chunk)
                )
            )
            found.extend((external_id, idx) for external_id, idx in rows)
        return found


def _serialise_registrations(conn: Connection, kind: IdKind) -> None:
    """Hold, until ``conn``'s transaction ends, the lock that orders registrations of ``kind``
    between processes, so that reading the table's end and appending after it are one step:
    PostgreSQL's advisory lock of the kind, or SQLite's one write lock (BEGIN IMMEDIATE; the
    driver would begin only at the INSERT, after another process may have appended at the
    same indices). Threads of one process are ordered by ``IdRegistry._lock`` before this."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_LOCK[kind]})
    elif conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")
