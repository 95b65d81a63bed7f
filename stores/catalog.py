"""Catalog (items, users) and the interactions archive, in SQL through SQLAlchemy 2.

The archive is itself a consumer of the log: every valid event lands here once (the
``event_id`` primary key plus ``ON CONFLICT DO NOTHING`` make re-delivery harmless), and it is
the training data of the retrain jobs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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
    Row,
    String,
    Text,
    Uuid,
    and_,
    false,
    func,
    not_,
    or_,
    select,
    tuple_,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql.elements import ColumnElement

from streamrec.core.db import Base
from streamrec.schemas.events import (
    ClickEvent,
    Event,
    ImpressionEvent,
    ItemEvent,
    PolicyLog,
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
    """One row per rating, click or impression event.

    An impression also keeps how it was served: ``model_version`` (the vector model's version)
    and, when a policy re-ranked the slate, ``policy``/``policy_version`` as columns (to select
    on) and the rest of its ``PolicyLog`` in ``policy_log`` (JSON: content_version, state,
    exploration, epsilon, temperature, propensities, the latter one per entry of ``item_ids``),
    which is what off-policy evaluation and the online learner read back.
    """

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
    model_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    policy: Mapped[str | None] = mapped_column(String(64), nullable=True)
    policy_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    policy_log: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    topic: Mapped[str] = mapped_column(String(64))
    partition: Mapped[int] = mapped_column(Integer)
    offset: Mapped[int] = mapped_column(BigInteger)
    # The Kafka log (cluster id) the coordinates above belong to: the embedded broker starts a
    # new log on every `up`, so (topic, partition, offset) alone can name two events.
    log_id: Mapped[str | None] = mapped_column(String(64), nullable=True)

    __table_args__ = (
        Index("ix_interactions_user_ts", "user_id", "ts"),
        Index("ix_interactions_type_ts", "type", "ts"),
        Index("ix_interactions_log_position", "log_id", "topic", "partition", "offset"),
    )


# (Kafka log id, topic, partition): where an archived row came from. The log id is None for
# rows written without one (before migration 0003, or by a writer that did not know it).
LogPosition = tuple[str | None, str, int]


@dataclass(frozen=True)
class Watermark:
    """How far into the log an archive read went: the newest archived offset per (Kafka log,
    topic, partition).

    A partition's rows are archived in offset order, one consumer batch per transaction, so
    once offset ``o`` is archived every archived row before it is too: "every row at or below
    the watermark" names the same rows whenever it is asked. Positions the watermark does not
    name (a new partition, a new log after a restart of the embedded broker) are above it.
    """

    offsets: Mapping[LogPosition, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.offsets)

    def covers(self, position: LogPosition, offset: int) -> bool:
        """Whether the record at ``offset`` of ``position`` is at or below the watermark."""
        newest = self.offsets.get(position)
        return newest is not None and offset <= newest

    def to_json(self) -> list[dict[str, Any]]:
        """Rows ``{"log_id", "topic", "partition", "offset"}``, sorted: what a model version
        records of the data it covered."""
        return [
            {"log_id": log_id, "topic": topic, "partition": partition, "offset": offset}
            for (log_id, topic, partition), offset in sorted(
                self.offsets.items(), key=lambda kv: (kv[0][0] or "", kv[0][1], kv[0][2])
            )
        ]

    @classmethod
    def from_json(cls, rows: Iterable[Mapping[str, Any]]) -> Watermark:
        return cls(
            {
                (row.get("log_id"), str(row["topic"]), int(row["partition"])): int(row["offset"])
                for row in rows
            }
        )

    @classmethod
    def of_rows(cls, rows: Iterable[tuple[str | None, str, int, int]]) -> Watermark:
        """The watermark of ``(log_id, topic, partition, offset)`` rows: the newest per position."""
        offsets: dict[LogPosition, int] = {}
        for log_id, topic, partition, offset in rows:
            key = (log_id, topic, partition)
            if offset > offsets.get(key, -1):
                offsets[key] = offset
        return cls(offsets)


def _covered(watermark: Watermark) -> ColumnElement[bool]:
    """SQL: the interaction row is at or below ``watermark``."""
    t = InteractionRow.__table__.c
    terms = [
        and_(
            # IS NOT DISTINCT FROM: a NULL log id matches a None position, never "unknown"
            t.log_id.is_not_distinct_from(log_id),
            t.topic == topic,
            t.partition == partition,
            t.offset <= offset,
        )
        for (log_id, topic, partition), offset in watermark.offsets.items()
    ]
    return or_(*terms) if terms else false()


def between_watermarks(
    since: Watermark | None = None, until: Watermark | None = None
) -> list[ColumnElement[bool]]:
    """WHERE terms for interaction rows above ``since`` (exclusive) and at or below ``until``
    (inclusive); no term for a bound left out."""
    terms: list[ColumnElement[bool]] = []
    if since is not None and len(since):
        terms.append(not_(_covered(since)))
    if until is not None:
        terms.append(_covered(until))
    return terms


def _insert(engine: Engine, table: Any) -> Any:
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


class Archive:
    """Bulk writes of events into the catalog and interactions tables."""

    def __init__(self, engine: Engine, log_id: str | None = None) -> None:
        self._engine = engine
        self._log_id = log_id  # the Kafka log the written coordinates belong to

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
            row = _interaction_row(event, topic, partition, offset)
            row["log_id"] = self._log_id
            interactions.append(row)
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

    def watermark(self, types: Sequence[str] | None = None) -> Watermark:
        """The newest archived offset per (log, topic, partition), over rows of ``types``
        (every type by default)."""
        t = InteractionRow.__table__.c
        query = select(t.log_id, t.topic, t.partition, func.max(t.offset)).group_by(
            t.log_id, t.topic, t.partition
        )
        if types is not None:
            query = query.where(t.type.in_(list(types)))
        with self._engine.connect() as conn:
            return Watermark.of_rows((r[0], r[1], r[2], r[3]) for r in conn.execute(query))

    def count_between(
        self,
        since: Watermark | None = None,
        until: Watermark | None = None,
        types: Sequence[str] | None = None,
    ) -> int:
        """Archived interactions of ``types`` above ``since`` and at or below ``until``: how
        much new data arrived after a version's watermark, for instance."""
        t = InteractionRow.__table__.c
        query = select(func.count()).select_from(InteractionRow)
        query = query.where(*between_watermarks(since, until))
        if types is not None:
            query = query.where(t.type.in_(list(types)))
        with self._engine.connect() as conn:
            return conn.execute(query).scalar_one()

    def impressions(
        self,
        *,
        policy: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
    ) -> list[ImpressionEvent]:
        """Archived impressions in event-time order, rebuilt as the events that were served.

        ``policy`` keeps the slates that policy ordered (their ``policy.propensities`` give, per
        shown item, the probability it was put there: what off-policy estimators weight by);
        ``since`` (inclusive) and ``until`` (exclusive) bound the event time.
        """
        t = InteractionRow.__table__.c
        query = select(
            t.event_id,
            t.user_id,
            t.ts,
            t.request_id,
            t.item_ids,
            t.model,
            t.model_version,
            t.variant,
            t.policy,
            t.policy_version,
            t.policy_log,
        ).where(t.type == "impression")
        if policy is not None:
            query = query.where(t.policy == policy)
        if since is not None:
            query = query.where(t.ts >= since)
        if until is not None:
            query = query.where(t.ts < until)
        query = query.order_by(t.ts, t.event_id)
        if limit is not None:
            query = query.limit(limit)
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return [_impression_from_row(row) for row in rows]

    def count_items(self) -> int:
        with self._engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(ItemRow)).scalar_one()

    def positions(self, log_id: str) -> dict[tuple[str, int], int]:
        """The newest archived offset per (topic, partition) of the Kafka log ``log_id``."""
        t = InteractionRow.__table__.c
        query = (
            select(t.topic, t.partition, func.max(t.offset))
            .where(t.log_id == log_id)
            .group_by(t.topic, t.partition)
        )
        with self._engine.connect() as conn:
            return {(topic, part): high for topic, part, high in conn.execute(query)}

    def catalog_events(self) -> list[ItemEvent]:
        """Every catalog item as the item event that last set it (title, genres, year, text)."""
        with self._engine.connect() as conn:
            rows = conn.execute(select(ItemRow.__table__).order_by(ItemRow.item_id)).all()
        return [
            ItemEvent(
                item_id=row.item_id,
                title=row.title,
                genres=row.genres or [],
                year=row.year,
                text=row.text,
                ts=row.updated_at,
            )
            for row in rows
        ]

    def interaction_page(
        self, after: tuple[Any, Any] | None, limit: int
    ) -> tuple[list[Event], tuple[Any, Any] | None]:
        """Up to ``limit`` archived ratings, clicks and impressions after the cursor ``after``,
        rebuilt as the events that were applied, in event-time order (ties by event id), and
        the cursor of the next page (None at the end). Keyset paging: each page is one short
        query, whatever the archive's size."""
        table = InteractionRow.__table__
        t = table.c
        query = select(table).order_by(t.ts, t.event_id).limit(limit)
        if after is not None:
            query = query.where(tuple_(t.ts, t.event_id) > tuple_(*after))
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        cursor = (rows[-1].ts, rows[-1].event_id) if len(rows) == limit else None
        return [_event_from_row(row) for row in rows], cursor

    def items(self, item_ids: Sequence[str]) -> dict[str, Any]:
        """Catalog rows by item id: each has ``ItemRow``'s columns as attributes (a Core row,
        not an ORM object: nothing is attached to a session)."""
        with self._engine.connect() as conn:
            rows = conn.execute(select(ItemRow).where(ItemRow.item_id.in_(list(item_ids))))
            return {row.item_id: row for row in rows}


def _event_from_row(row: Row[Any]) -> Event:
    if row.type == "impression":
        return _impression_from_row(row)
    if row.type == "rating":
        return RatingEvent(
            event_id=row.event_id,
            user_id=row.user_id,
            ts=row.ts,
            item_id=row.item_id,
            rating=row.rating,
        )
    return ClickEvent(
        event_id=row.event_id,
        user_id=row.user_id,
        ts=row.ts,
        item_id=row.item_id,
        request_id=row.request_id,
        position=row.position,
        model=row.model,
        variant=row.variant,
    )


def _impression_from_row(row: Any) -> ImpressionEvent:  # a Row of InteractionRow columns
    policy = None
    if row.policy is not None:
        policy = PolicyLog(
            policy=row.policy, policy_version=row.policy_version, **(row.policy_log or {})
        )
    return ImpressionEvent(
        event_id=row.event_id,
        user_id=row.user_id,
        ts=row.ts,
        request_id=row.request_id,
        item_ids=row.item_ids,
        model=row.model,
        model_version=row.model_version,
        variant=row.variant,
        policy=policy,
    )


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
        "model_version": None,
        "policy": None,
        "policy_version": None,
        "policy_log": None,
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
            model_version=event.model_version,
        )
        if event.policy is not None:
            row.update(
                policy=event.policy.policy,
                policy_version=event.policy.policy_version,
                policy_log=event.policy.model_dump(
                    mode="json", exclude={"policy", "policy_version"}
                ),
            )
    return row
