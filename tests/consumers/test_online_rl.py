"""The online-RL subscriber: a batch's bad records go to the DLQ, its valid events reach the
learner (``trainer.online``, tested in tests/trainer/test_online.py) with the events it skips
counted by reason; and the whole loop over the embedded Kafka trains a policy the edge serves."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from faststream.kafka import KafkaBroker, TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage
from sqlalchemy import Engine

from streamrec.consumers import online_rl
from streamrec.consumers.dlq import DeadLetterSink
from streamrec.core.ids import IdRegistry
from streamrec.core.metrics import Metrics
from streamrec.core.settings import Settings
from streamrec.schemas.events import ClickEvent, ImpressionEvent, PolicyLog
from streamrec.schemas.topics import Topic
from streamrec.stores.model_registry import ModelRegistry
from streamrec.trainer.doc2vec import Doc2VecConfig, Doc2VecModel
from streamrec.trainer.online import OnlineLearner
from streamrec.trainer.policy import ActiveModels
from tests.api.test_rl import DIM, ITEMS, S, _doc2vec, _registry
from tests.conftest import INGEST_KEY, wait_until

torch.set_num_threads(1)  # tiny networks on a shared machine: more threads only contend
GROUP = "streamrec-online-rl"


def _subscribed(learner: OnlineLearner, metrics: Metrics) -> tuple[KafkaBroker, list[bytes]]:
    """A broker with the online-RL subscriber and a window on the DLQ topic."""
    broker = KafkaBroker(["localhost:9092"])
    online_rl.register(
        broker, learner, DeadLetterSink(broker, metrics), metrics, Settings(_env_file=None)
    )
    letters: list[bytes] = []

    @broker.subscriber(Topic.DLQ.value)
    async def on_dead_letter(body: object, msg: KafkaMessage) -> None:
        letters.append(msg.body)

    return broker, letters


def _skipped(metrics: Metrics, reason: str) -> float | None:
    return metrics.registry.get_sample_value(
        "streamrec_events_skipped_total", {"group": GROUP, "reason": reason}
    )


async def test_bad_records_are_dead_lettered_and_skips_counted_by_reason(
    engine: Engine, tmp_path: Path
) -> None:
    registry, ids = ModelRegistry(engine, tmp_path / "models"), IdRegistry(engine)
    learner = OnlineLearner(ActiveModels(registry, check_every_s=0.0), registry, ids)
    metrics = Metrics()
    broker, letters = _subscribed(learner, metrics)
    t0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
    slate = ImpressionEvent(
        user_id="u",
        request_id="r1",
        item_ids=["m0", "m1"],
        model="mf+dqn",
        ts=t0,
        policy=PolicyLog(content_version=1, state=[0.0] * S, propensities=[1.0, 1.0]),
    )
    plain = ImpressionEvent(user_id="u", request_id="r2", item_ids=["m0"], model="mf", ts=t0)
    bad = json.dumps({"type": "impression", "user_id": "u"}).encode()
    async with TestKafkaBroker(broker) as test_broker:
        # No Doc2Vec active yet: the learner waits, and says why it kept nothing.
        await test_broker.publish_batch(
            slate.model_dump_json().encode(), bad, topic=Topic.IMPRESSIONS.value
        )
        assert learner.joiner is None
        assert _skipped(metrics, "no_doc2vec_active") == 1.0
        registry.register(
            "doc2vec",
            Doc2VecModel(Doc2VecConfig(vector_size=DIM, epochs=10)).fit(ITEMS, ids),
            activate=True,
        )
        later = ClickEvent(user_id="u", item_id="m0", request_id="r1", ts=t0 + timedelta(hours=1))
        await test_broker.publish_batch(
            slate.model_dump_json().encode(),
            plain.model_dump_json().encode(),
            topic=Topic.IMPRESSIONS.value,
        )
        await test_broker.publish_batch(later.model_dump_json().encode(), topic=Topic.CLICKS.value)
        await learner.wait_idle()
    assert letters == [bad]  # the original bytes; its neighbours were applied
    assert _skipped(metrics, "no_policy_log") == 1.0
    assert learner.transitions == 2  # r1 closed by the later click's event time
    consumed = metrics.registry.get_sample_value(
        "streamrec_events_consumed_total", {"group": GROUP, "topic": Topic.IMPRESSIONS.value}
    )
    assert consumed == 3.0


# -- the whole loop over the embedded Kafka -----------------------------------------------------
@pytest.fixture
def loop_settings(settings: Settings) -> Settings:
    settings.rl_feedback_window_seconds = 1.0
    settings.rl_train_every = 1
    settings.rl_snapshot_every_updates = 5
    settings.model_reload_seconds = 0.2
    return settings


@pytest.mark.kafka
async def test_served_slates_and_clicks_train_a_policy_the_edge_then_serves(
    loop_settings: Settings, app_client: Any
) -> None:
    app, client = app_client
    runtime = app.state.runtime
    registry = _registry(runtime)
    registry.register("doc2vec", _doc2vec(runtime), activate=True)
    headers = {"X-API-Key": INGEST_KEY}
    ratings = [
        {"type": "rating", "user_id": "fan", "item_id": f"m{i}", "rating": 4.0} for i in range(9)
    ]
    assert (await client.post("/v1/events", json=ratings, headers=headers)).status_code == 202

    async def popular_known() -> bool:
        return len(await runtime.features.popular(9)) == 9

    await wait_until(popular_known)
    params = {"k": 5, "rerank": "dqn", "exclude_seen": "false"}
    for _ in range(15):  # 15 slates of 5 items: more transitions than one batch of 64
        body = (await client.get("/v1/users/u1/recommendations", params=params)).json()
        assert body["rerank_fallback"] is True  # no dqn yet: base order, logged for learning
        click = {
            "type": "click",
            "user_id": "u1",
            "item_id": body["items"][0]["item_id"],
            "request_id": body["request_id"],
            "position": 0,
        }
        assert (await client.post("/v1/events", json=click, headers=headers)).status_code == 202
    # Event time closes the feedback windows: a later event moves the watermark past them.
    later = (datetime.now(UTC) + timedelta(seconds=5)).isoformat()
    tick = {"type": "rating", "user_id": "fan", "item_id": "m0", "rating": 4.0, "ts": later}
    assert (await client.post("/v1/events", json=tick, headers=headers)).status_code == 202

    async def policy_published() -> bool:
        return await asyncio.to_thread(registry.active, "dqn") is not None

    await wait_until(policy_published, timeout=60)
    snapshot = registry.active("dqn")
    assert snapshot is not None and snapshot.metrics["transitions"] >= 64
    assert snapshot.data_window["content_version"] == 1

    served: dict[str, Any] = {}

    async def policy_served() -> bool:  # the edge re-reads the active version every 0.2 s
        served.update((await client.get("/v1/users/u1/recommendations", params=params)).json())
        return served["rerank_fallback"] is False

    await wait_until(policy_served, timeout=10)
    body = served
    assert body["reranked_by"]["version"] >= snapshot.version
    assert all(item["q_value"] is not None for item in body["items"])
