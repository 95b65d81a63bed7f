"""Restarting `up`: a new embedded Kafka (a new, empty log) beside the same Redis and SQL.

The defect (issue 11, item 4): the new log starts again at offset 0 while Redis still holds the
features group's applied offsets of the old one, so every event of the new log up to the old
offsets was skipped as "redelivered" (20 of 20 ratings after a restart never reached Redis).
"""

from __future__ import annotations

import pytest

from streamrec.core.db import create_db_engine
from streamrec.core.settings import Settings
from streamrec.schemas.events import ItemEvent, RatingEvent
from streamrec.schemas.topics import ConsumerGroup
from streamrec.stores.catalog import Archive
from streamrec.stores.factory import open_stores
from tests.conftest import consume_until_drained

pytestmark = pytest.mark.kafka
GROUPS = [ConsumerGroup.FEATURES, ConsumerGroup.ARCHIVE]


async def _run_up(settings: Settings, events: list) -> tuple[str, int]:  # type: ignore[type-arg]
    """One `up`: open the services (a new embedded Kafka), run the features and archive groups,
    publish ``events``, wait until both groups consumed them; (log id, user's ratings)."""
    async with open_stores(settings) as stores:
        services = stores.services
        await consume_until_drained(stores, GROUPS, events)
        stats = await stores.features.user_stats("u")
        assert services.kafka_log_id is not None
        return services.kafka_log_id, int(stats.get("ratings", 0))


async def test_events_after_a_restart_on_a_new_log_are_applied(settings: Settings) -> None:
    catalog = [ItemEvent(item_id=f"m{n}", title=f"M{n}", genres=["Drama"]) for n in range(30)]
    first = [RatingEvent(user_id="u", item_id=f"m{n}", rating=4) for n in range(10)]
    log_1, ratings_1 = await _run_up(settings, catalog + first)
    assert ratings_1 == 10

    later = [RatingEvent(user_id="u", item_id=f"m{n}", rating=3) for n in range(10, 30)]
    log_2, ratings_2 = await _run_up(settings, later)  # a new embedded broker: a new log

    assert log_2 != log_1
    assert ratings_2 == 30  # was 10: the 20 new ratings were skipped as "redelivered"
    engine = create_db_engine(settings.database_url)
    try:
        assert Archive(engine).count_interactions("rating") == 30
    finally:
        engine.dispose()
