"""The SQL archive: bulk, idempotent on re-delivery, catalog upserts."""

from __future__ import annotations

from sqlalchemy import Engine

from schemas.events import ClickEvent, ItemEvent, RatingEvent, SourcedEvent
from stores.catalog import Archive


def test_redelivered_events_are_archived_once(engine: Engine) -> None:
    archive = Archive(engine)
    batch = [
        SourcedEvent(RatingEvent(user_id="u", item_id="i", rating=4), "streamrec.ratings", 0, 0),
        SourcedEvent(ClickEvent(user_id="u", item_id="j", position=2), "streamrec.clicks", 1, 0),
    ]
    assert archive.write_batch(batch) == 2
    assert archive.write_batch(batch) == 0
    assert archive.count_interactions() == 2
    assert archive.count_interactions("click") == 1


def test_item_events_upsert_the_catalog(engine: Engine) -> None:
    archive = Archive(engine)
    archive.write_batch(
        [SourcedEvent(ItemEvent(item_id="m", title="Old"), "streamrec.items", 0, 0)]
    )
    archive.write_batch(
        [
            SourcedEvent(
                ItemEvent(item_id="m", title="New", genres=["Drama"], year=1999),
                "streamrec.items",
                0,
                1,
            )
        ]
    )
    row = archive.items(["m"])["m"]
    assert (row.title, row.genres, row.year) == ("New", ["Drama"], 1999)
    assert archive.count_interactions() == 0
