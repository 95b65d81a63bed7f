"""GET /v1/ops/lag and /metrics read the API process's one lag reader: lag and a status per
group and partition in the JSON, the same as Prometheus gauges. Events are published with no
consumer running, so the lag stays until the test drains it; readings are forced with
``refresh()`` (never waited for)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from streamrec.api.app import create_app
from streamrec.core.lag import LagReader
from streamrec.core.settings import Settings
from streamrec.schemas.topics import ConsumerGroup, Topic
from tests.conftest import INGEST_KEY, consume_until_drained

FEATURES = ConsumerGroup.FEATURES.value


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The API alone (no consumer groups), with its app for the lag reader."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://streamrec") as client:
            yield app, client


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def gauges(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def gauge(values: Samples, name: str, **labels: str) -> float | None:
    return values.get((name, frozenset(labels.items())))


async def test_lag_and_status_in_json_and_gauges_move_and_return_to_zero(api: Any) -> None:
    app, client = api
    reader: LagReader = app.state.lag
    ratings = [{"type": "rating", "user_id": "u1", "item_id": "i1", "rating": 4}] * 3
    response = await client.post("/v1/events", json=ratings, headers={"X-API-Key": INGEST_KEY})
    assert response.status_code == 202
    await reader.refresh()

    body = (await client.get("/v1/ops/lag")).json()
    groups = {g["group"]: g for g in body["groups"]}
    features = groups[FEATURES]
    # All three ratings share a user, so a partition: 3 behind there, nothing elsewhere.
    lagging = [p for p in features["partitions"] if p["lag"]]
    assert [(p["topic"], p["lag"], p["committed_offset"]) for p in lagging] == [
        (Topic.RATINGS.value, 3, None)
    ]
    assert lagging[0]["lag_seconds"] is not None and lagging[0]["lag_seconds"] >= 0
    # One reading of a lagging partition is no window yet: UNKNOWN; caught-up ones are OK.
    assert lagging[0]["status"] == "UNKNOWN"
    assert {p["status"] for p in features["partitions"] if not p["lag"]} == {"OK"}
    assert features["status"] == "UNKNOWN" and features["members"] is None
    assert groups[ConsumerGroup.RETRAIN.value]["total_lag"] == 3
    assert body["total_lag"] == 3 * len(groups)  # every group reads the ratings

    metrics = gauges((await client.get("/metrics")).text)
    labels = {
        "group": FEATURES,
        "topic": Topic.RATINGS.value,
        "partition": str(lagging[0]["partition"]),
    }
    assert gauge(metrics, "streamrec_consumer_lag_messages", **labels) == 3.0
    assert gauge(metrics, "streamrec_consumer_lag_seconds", **labels) is not None
    assert gauge(metrics, "streamrec_consumer_group_status", group=FEATURES, status="UNKNOWN") == 1
    assert gauge(metrics, "streamrec_consumer_group_status", group=FEATURES, status="OK") == 0
    assert gauge(metrics, "streamrec_consumer_lag_read_timestamp_seconds") == body["measured_at"]
    assert not any(name == "streamrec_consumer_group_members" for name, _ in metrics)

    # The features group consumes: its lag returns to 0, its status to OK.
    await consume_until_drained(app.state.runtime.stores, [ConsumerGroup.FEATURES])
    await reader.refresh()
    body = (await client.get("/v1/ops/lag")).json()
    features = next(g for g in body["groups"] if g["group"] == FEATURES)
    assert features["total_lag"] == 0 and features["status"] == "OK"
    assert {p["status"] for p in features["partitions"]} == {"OK"}
    metrics = gauges((await client.get("/metrics")).text)
    assert gauge(metrics, "streamrec_consumer_lag_messages", **labels) == 0.0
    assert gauge(metrics, "streamrec_consumer_lag_seconds", **labels) == 0.0
    assert gauge(metrics, "streamrec_consumer_group_status", group=FEATURES, status="OK") == 1
