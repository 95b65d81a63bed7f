"""Experiments: per-variant impressions, clicks and CTR with a 95% Wilson interval, from the
counters the features consumer keeps in Redis (events go in through the API and Kafka)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from streamrec.api.experiment_stats import build_experiments, parse_counters, wilson_interval
from tests.conftest import INGEST_KEY, wait_until

pytestmark = pytest.mark.kafka

INGEST = {"X-API-Key": INGEST_KEY}


def _impressions(n: int, model: str, variant: str) -> list[dict[str, Any]]:
    return [
        {
            "type": "impression",
            "user_id": f"u{i}",
            "request_id": uuid.uuid4().hex,
            "item_ids": ["i1", "i2"],
            "model": model,
            "variant": variant,
        }
        for i in range(n)
    ]


def _clicks(n: int, model: str | None, variant: str | None) -> list[dict[str, Any]]:
    return [
        {"type": "click", "user_id": f"u{i}", "item_id": "i1", "model": model, "variant": variant}
        for i in range(n)
    ]


EVENTS = [
    *_impressions(10, "mf", "rerank:control"),
    *_clicks(3, "mf", "rerank:control"),
    *_impressions(8, "mf+dqn", "rerank:dqn"),
    *_impressions(1, "sasrec", "rerank:dqn"),
    *_clicks(2, "mf+dqn", "rerank:dqn"),
    *_clicks(4, None, "rerank:dqn"),  # no model: the consumer does not count it
    *_impressions(5, "mf", "other"),
]


async def test_experiment_counts_ctr_and_wilson_interval(app_client) -> None:  # type: ignore[no-untyped-def]
    _, client = app_client
    response = await client.post("/v1/events", json=EVENTS, headers=INGEST)
    assert response.status_code == 202, response.text

    async def counted() -> bool:
        found = await client.get("/v1/experiments/rerank")
        return found.status_code == 200 and found.json()["impressions"] == 19

    await wait_until(counted)
    experiment = (await client.get("/v1/experiments/rerank")).json()
    assert experiment["name"] == "rerank" and experiment["clicks"] == 5
    control, dqn = experiment["variants"]
    assert (control["variant"], control["impressions"], control["clicks"]) == (
        "rerank:control",
        10,
        3,
    )
    assert control["ctr"] == pytest.approx(0.3)
    assert (control["ctr_low"], control["ctr_high"]) == pytest.approx((0.1078, 0.6032), abs=1e-4)
    assert (dqn["variant"], dqn["impressions"], dqn["clicks"]) == ("rerank:dqn", 9, 2)
    by_model = {m["model"]: (m["impressions"], m["clicks"]) for m in dqn["models"]}
    assert by_model == {"mf+dqn": (8, 2), "sasrec": (1, 0)}
    listed = (await client.get("/v1/experiments")).json()["experiments"]
    assert [e["name"] for e in listed] == ["other", "rerank"]


async def test_unknown_experiment_is_404_with_a_message(app_client) -> None:  # type: ignore[no-untyped-def]
    _, client = app_client
    events = _impressions(2, "mf", "rerank:a")
    response = await client.post("/v1/events", json=events, headers=INGEST)
    assert response.status_code == 202, response.text

    async def counted() -> bool:
        return (await client.get("/v1/experiments/rerank")).status_code == 200

    await wait_until(counted)
    for name in ("rer", "rerank:a", "nothing"):  # neither prefixes nor full labels are names
        response = await client.get(f"/v1/experiments/{name}")
        assert response.status_code == 404, (name, response.text)
        body = response.json()
        assert body["error"] == "not_found" and name in body["message"]


def test_wilson_interval_reference_values() -> None:
    assert wilson_interval(0, 0) is None
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(50, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    assert wilson_interval(12, 10) == wilson_interval(10, 10)  # more clicks than lists: capped


def test_counter_fields_are_parsed_by_model_variant_and_kind() -> None:
    fields = {
        "mf|exp:a|impressions": "4",
        "mf|exp:a|clicks": "1",
        "mf+dqn|exp:b|with|bar|impressions": "2",  # a "|" inside the variant label
        "mf|exp:a|views": "9",
        "garbage": "7",
        "|exp:a|clicks": "3",  # not the layout: skipped
    }
    (experiment,) = build_experiments(parse_counters(fields)).experiments
    assert experiment.name == "exp" and (experiment.impressions, experiment.clicks) == (6, 1)
    assert [v.variant for v in experiment.variants] == ["exp:a", "exp:b|with|bar"]
    assert experiment.variants[1].models[0].model == "mf+dqn"
    assert experiment.variants[0].ctr == pytest.approx(0.25)
