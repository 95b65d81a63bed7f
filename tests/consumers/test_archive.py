"""The archive subscriber: FastStream's in-memory TestKafkaBroker drives the handler, which
writes into the real SQL archive and id registry (SQLite, or PostgreSQL when
STREAMREC_TEST_DATABASE_URL is set)."""

from __future__ import annotations

from faststream.kafka import KafkaBroker, TestKafkaBroker
from sqlalchemy import Engine

from streamrec.consumers import archive as archive_group
from streamrec.consumers.dlq import DeadLetterSink
from streamrec.core.ids import IdKind, IdRegistry
from streamrec.core.metrics import Metrics
from streamrec.core.settings import Settings
from streamrec.schemas.events import ClickEvent, ImpressionEvent, PolicyLog
from streamrec.schemas.topics import Topic
from streamrec.stores.catalog import Archive


async def test_served_slates_are_archived_with_their_policy_log(engine: Engine) -> None:
    settings = Settings(_env_file=None)
    broker = KafkaBroker(["localhost:9092"])
    archive, ids, metrics = Archive(engine), IdRegistry(engine), Metrics()
    archive_group.register(broker, archive, ids, DeadLetterSink(broker, metrics), metrics, settings)
    impression = ImpressionEvent(
        user_id="u",
        request_id="r1",
        item_ids=["x", "y"],
        model="mf+dqn",
        model_version=3,
        policy=PolicyLog(
            policy_version=2,
            content_version=1,
            state=[0.1, 0.2],
            exploration="softmax",
            temperature=0.7,
            propensities=[0.6, 0.4],
        ),
    )
    click = ClickEvent(user_id="u", item_id="y", request_id="r1", position=1, model="mf+dqn")
    async with TestKafkaBroker(broker) as test_broker:
        await test_broker.publish_batch(
            impression.model_dump_json().encode(), topic=Topic.IMPRESSIONS.value
        )
        await test_broker.publish_batch(click.model_dump_json().encode(), topic=Topic.CLICKS.value)

    assert archive.impressions() == [impression]
    assert archive.impressions(policy="dqn")[0].policy == impression.policy
    assert archive.count_interactions("click") == 1
    assert ids.lookup(IdKind.ITEM, ["x", "y"]) == {"x": 0, "y": 1}
