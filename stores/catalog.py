"""Catalog (items, users) and the interactions archive, in SQL through SQLAlchemy 2.

The archive is itself a consumer of the log: every valid event lands here once (the
``event_id`` primary key plus ``ON CONFLICT DO NOTHING`` make re-delivery harmless), and it is
the training data of the retrain jobs.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    String,
    Text,
    Uuid,
    func,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, mapped_column

from core.db import Base
from schemas.events import (
    ClickEvent,
    Event,
    ImpressionEvent,
    ItemEvent,
    RatingEvent,
    SourcedEvent,
)


class ItemRow(Base):
    __tablename__ = "items"

    item_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    title: Mapped[str] = mapped_column(String(500), default="")
    genres: Mapped[list[str]] = mapped_column(JSON, default=list)
    year: Mapped[int | None] = mapped_column(Integer, nullable=True)
    text: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class UserRow(Base):
    __tablename__ = "users"

    user_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class InteractionRow(Base):
    """One row per rating, click or impression event."""

    __tablename__ = "interactions"

    event_id: Mapped[Any] = mapped_column(Uuid, primary_key=True)
    type: Mapped[str] = mapped_column(String(16))
    user_id: Mapped[str] = mapped_column(String(128))
    item_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    rating: Mapped[float | None] = mapped_column(Float, nullable=True)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    model: Mapped[str | None] = mapped_column(String(64), nullable=True)
    variant: Mapped[str | None] = mapped_column(String(64), nullable=True)
    position: Mapped[int | None] = mapped_column(Integer, nullable=True)
    item_ids: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    topic: Mapped[str] = mapped_column(String(64))
    partition: Mapped[int] = mapped_column(Integer)
    offset: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        Index("ix_interactions_user_ts", "user_id", "ts"),
        Index("ix_interactions_type_ts", "type", "ts"),
    )


def _insert(engine: Engine, table):  # type: ignore[no-untyped-def]
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


class Archive:
    """Bulk writes of events into the catalog and interactions tables."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def write_batch(self, events: Sequence[SourcedEvent]) -> int:
        """Insert events and their log coordinates in one transaction.

        Returns the number of interaction rows actually inserted (duplicates are skipped).
        """
        interactions: list[dict[str, Any]] = []
        items: dict[str, dict[str, Any]] = {}
        users: dict[str, dict[str, Any]] = {}
        for event, topic, partition, offset, _published_ms in events:
            if isinstance(event, ItemEvent):
                items[event.item_id] = {
                    "item_id": event.item_id,
                    "title": event.title,
                    "genres": list(event.genres),
                    "year": event.year,
                    "text": event.text,
                    "updated_at": event.ts,
                }
                continue
            users.setdefault(event.user_id, {"user_id": event.user_id, "first_seen": event.ts})
            interactions.append(_interaction_row(event, topic, partition, offset))
        inserted = 0
        with self._engine.begin() as conn:
            if items:
                stmt = _insert(self._engine, ItemRow.__table__)
                stmt = stmt.on_conflict_do_update(
                    index_elements=["item_id"],
                    set_={
                        c: stmt.excluded[c]
                        for c in ("title", "genres", "year", "text", "updated_at")
                    },
                )
                conn.execute(stmt, list(items.values()))
            if users:
                stmt = _insert(self._engine, UserRow.__table__).on_conflict_do_nothing()
                conn.execute(stmt, list(users.values()))
            if interactions:
                # RETURNING counts what was really inserted; executemany rowcount does not on
                # every driver (psycopg reports 0 for batched INSERT ... ON CONFLICT).
                stmt = (
                    _insert(self._engine, InteractionRow.__table__)
                    .on_conflict_do_nothing()
                    .returning(InteractionRow.__table__.c.event_id)
                )
                inserted = len(conn.execute(stmt, interactions).all())
        return inserted

    def count_interactions(self, type_: str | None = None) -> int:
        query = select(func.count()).select_from(InteractionRow)
        if type_ is not None:
            query = query.where(InteractionRow.type == type_)
        with self._engine.connect() as conn:
            return conn.execute(query).scalar_one()

    def items(self, item_ids: Sequence[str]) -> dict[str, ItemRow]:
        with self._engine.connect() as conn:
            rows = conn.execute(select(ItemRow).where(ItemRow.item_id.in_(list(item_ids))))
            return {row.item_id: row for row in rows}


def _interaction_row(event: Event, topic: str, partition: int, offset: int) -> dict[str, Any]:
    row: dict[str, Any] = {
        "event_id": event.event_id,
        "type": event.type,
        "user_id": event.user_id,
        "ts": event.ts,
        "item_id": None,
        "rating": None,
        "request_id": None,
        "model": None,
        "variant": None,
        "position": None,
        "item_ids": None,
        "topic": topic,
        "partition": partition,
        "offset": offset,
    }
    if isinstance(event, RatingEvent):
        row.update(item_id=event.item_id, rating=event.rating)
    elif isinstance(event, ClickEvent):
        row.update(
            item_id=event.item_id,
            request_id=event.request_id,
            model=event.model,
            variant=event.variant,
            position=event.position,
        )
    elif isinstance(event, ImpressionEvent):
        row.update(
            request_id=event.request_id,
            model=event.model,
            variant=event.variant,
            item_ids=list(event.item_ids),
        )
    return row
