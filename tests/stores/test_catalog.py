"""The SQL archive: bulk, idempotent on re-delivery, catalog upserts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, select

from streamrec.schemas.events import (
    ClickEvent,
    ImpressionEvent,
    ItemEvent,
    PolicyLog,
    RatingEvent,
    SourcedEvent,
)
from streamrec.stores.catalog import Archive, InteractionRow


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


def _impression(**fields: object) -> ImpressionEvent:
    defaults: dict[str, object] = {
        "user_id": "u",
        "request_id": "r",
        "item_ids": ["a", "b", "c"],
        "model": "mf",
    }
    return ImpressionEvent(**(defaults | fields))


def test_impressions_keep_their_serving_metadata(engine: Engine) -> None:
    """Model version and the whole policy log survive the archive, propensities included."""
    t0 = datetime(2026, 11, 22, 12, tzinfo=UTC)
    plain = _impression(request_id="plain", model_version=4, ts=t0)
    explored = _impression(
        request_id="explored",
        model="sasrec+dqn",
        model_version=2,
        variant="b",
        ts=t0 + timedelta(seconds=1),
        policy=PolicyLog(
            policy_version=7,
            content_version=3,
            state=[0.125, -1.5, 3.0e-8],
            exploration="epsilon_greedy",
            epsilon=0.1,
            propensities=[0.9333333333333333, 0.03333333333333333, 0.03333333333333333],
        ),
    )
    no_policy_active = _impression(
        request_id="fallback",
        ts=t0 + timedelta(seconds=2),
        policy=PolicyLog(policy_version=None, content_version=3, state=[1.0], propensities=[1] * 3),
    )
    softmax = _impression(
        request_id="softmax",
        ts=t0 + timedelta(seconds=3),
        policy=PolicyLog(
            policy="other",
            policy_version=1,
            content_version=1,
            state=[0.0],
            exploration="softmax",
            temperature=0.5,
            propensities=[0.5, 0.3, 0.2],
        ),
    )
    click = ClickEvent(user_id="u", item_id="b", request_id="explored", position=1)
    batch = [
        SourcedEvent(e, "streamrec.impressions", 0, n)
        for n, e in enumerate([plain, explored, no_policy_active, softmax])
    ] + [SourcedEvent(click, "streamrec.clicks", 0, 0)]
    archive = Archive(engine)
    assert archive.write_batch(batch) == 5

    assert archive.impressions() == [plain, explored, no_policy_active, softmax]
    assert archive.impressions(policy="dqn") == [explored, no_policy_active]
    assert archive.impressions(policy="dqn", since=t0 + timedelta(seconds=2)) == [no_policy_active]
    assert archive.impressions(until=t0 + timedelta(seconds=1)) == [plain]
    assert archive.impressions(limit=1) == [plain]
    # The propensity of the clicked item is one SQL read away for off-policy estimators.
    served = archive.impressions(policy="dqn")[0]
    assert served.policy is not None
    assert served.policy.propensities[click.position or 0] == 0.03333333333333333


def test_policy_log_is_stored_as_columns_and_json(engine: Engine) -> None:
    event = _impression(
        model_version=5,
        policy=PolicyLog(
            policy_version=2, content_version=1, state=[0.25], propensities=[0.2, 0.3, 0.5]
        ),
    )
    Archive(engine).write_batch([SourcedEvent(event, "streamrec.impressions", 0, 0)])
    with engine.connect() as conn:
        row = conn.execute(
            select(
                InteractionRow.model_version,
                InteractionRow.policy,
                InteractionRow.policy_version,
                InteractionRow.policy_log,
            )
        ).one()
    assert row.model_version == 5
    assert (row.policy, row.policy_version) == ("dqn", 2)
    assert row.policy_log == {
        "content_version": 1,
        "state": [0.25],
        "exploration": "greedy",
        "epsilon": None,
        "temperature": None,
        "propensities": [0.2, 0.3, 0.5],
    }
