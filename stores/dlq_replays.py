"""Which dead letters ``streamrec dlq replay`` has re-published, so each goes back at most once.

A source record that a consumer could not use is dead-lettered once per consumer group that
reads its topic (features and archive both reject a malformed rating), so the replay unit is
the source record, not the DLQ entry: one row per re-published source record, keyed by its
log coordinates plus its timestamp (the embedded broker's log starts again at offset 0 on each
``up``, so coordinates alone could name an older, different record). The row is written and
committed *before* the record is published (``claim``), then marked ``published`` once Kafka
acknowledged it: a crash in between leaves a claimed, unconfirmed row, which a later replay
skips and reports rather than risk publishing twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import BigInteger, Boolean, DateTime, Engine, Integer, String, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, mapped_column

from streamrec.core.db import Base


class DlqReplayRow(Base):
    __tablename__ = "dlq_replays"

    source_topic: Mapped[str] = mapped_column(String(255), primary_key=True)
    source_partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    source_offset: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    source_timestamp_ms: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    # The DLQ entry the record was replayed from (the first one selected, when several groups
    # dead-lettered it).
    dlq_partition: Mapped[int] = mapped_column(Integer)
    dlq_offset: Mapped[int] = mapped_column(BigInteger)
    replayed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    published: Mapped[bool] = mapped_column(Boolean, default=False)


@dataclass(frozen=True)
class SourceRecord:
    """A source record's identity in the log."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int


@dataclass(frozen=True)
class Replayed:
    published: bool
    replayed_at: datetime


class DlqReplayLog:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def replayed(self, records: Iterable[SourceRecord]) -> dict[SourceRecord, Replayed]:
        """The records among ``records`` that were replayed before (claimed or published)."""
        wanted = set(records)
        topics = {r.topic for r in wanted}
        found: dict[SourceRecord, Replayed] = {}
        if not wanted:
            return found
        table = DlqReplayRow.__table__
        with self._engine.connect() as conn:
            rows = conn.execute(select(table).where(table.c.source_topic.in_(topics)))
            for row in rows:
                record = SourceRecord(
                    row.source_topic,
                    row.source_partition,
                    row.source_offset,
                    row.source_timestamp_ms,
                )
                if record in wanted:
                    found[record] = Replayed(row.published, row.replayed_at)
        return found

    def claim_many(self, claims: Iterable[tuple[SourceRecord, int, int]]) -> set[SourceRecord]:
        """Record that these source records (with the DLQ partition and offset each is replayed
        from) are about to be re-published; returns those claimed now, not by an earlier run.

        Committed before the publish, in one transaction: the primary key makes each claim
        atomic, so two replays running at once never both publish the same record."""
        dialect = postgresql if self._engine.dialect.name == "postgresql" else sqlite
        table = DlqReplayRow.__table__
        now = datetime.now(UTC)
        claimed: set[SourceRecord] = set()
        with self._engine.begin() as conn:
            for record, dlq_partition, dlq_offset in claims:
                stmt = (
                    dialect.insert(table)
                    .values(
                        source_topic=record.topic,
                        source_partition=record.partition,
                        source_offset=record.offset,
                        source_timestamp_ms=record.timestamp_ms,
                        dlq_partition=dlq_partition,
                        dlq_offset=dlq_offset,
                        replayed_at=now,
                        published=False,
                    )
                    .on_conflict_do_nothing()
                    # RETURNING, not rowcount: psycopg reports no rowcount for this statement.
                    .returning(table.c.source_offset)
                )
                if conn.execute(stmt).first() is not None:
                    claimed.add(record)
        return claimed

    def mark_published_many(self, records: Iterable[SourceRecord]) -> None:
        row = DlqReplayRow
        with self._engine.begin() as conn:
            for record in records:
                conn.execute(
                    update(row)
                    .where(
                        row.source_topic == record.topic,
                        row.source_partition == record.partition,
                        row.source_offset == record.offset,
                        row.source_timestamp_ms == record.timestamp_ms,
                    )
                    .values(published=True)
                )
