"""The online learner (trainer.online): logged slates + clicks + ratings → exactly the expected
transitions, bounded memory, training off the loop and snapshots the edge serves without a
restart."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import numpy as np
import torch

from streamrec.core.ids import IdKind
from streamrec.schemas.events import ClickEvent, Event, ImpressionEvent, PolicyLog, RatingEvent
from streamrec.trainer.online import FeedbackJoiner, LearnerConfig, OnlineLearner
from streamrec.trainer.policy import ActiveModels
from streamrec.trainer.rl import Transition
from tests.api.test_rl import DIM, S, _doc2vec, _dqn, _registry, edge  # noqa: F401  (edge: fixture)

torch.set_num_threads(1)  # tiny networks on a shared machine: more threads only contend
T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
WINDOW = 30.0
INDEX = {f"i{n}": 10 + n for n in range(10)}  # "i9" stands for an item without a vector
NO_VECTOR = "i9"


def _lookup(item_ids: Sequence[str]) -> dict[str, int]:
    return {i: INDEX[i] for i in item_ids if i in INDEX and i != NO_VECTOR}


def _joiner(**kwargs: Any) -> FeedbackJoiner:
    return FeedbackJoiner(_lookup, content_version=1, state_size=3, window_s=WINDOW, **kwargs)


def _state(x: float) -> list[float]:
    return [x, x, x]


def _impression(
    request_id: str, items: list[str], at: float, x: float, user: str = "u", **policy: Any
) -> ImpressionEvent:
    """A logged slate whose state is (x, x, x) unless ``policy`` says otherwise."""
    log = {"content_version": 1, "state": _state(x), "propensities": [1.0] * len(items)}
    when = T0 + timedelta(seconds=at)
    return ImpressionEvent(
        user_id=user,
        request_id=request_id,
        item_ids=items,
        model="mf+dqn",
        ts=when,
        policy=PolicyLog(**(log | policy)),
    )


def _click(item: str, at: float, request_id: str | None = None, user: str = "u") -> ClickEvent:
    return ClickEvent(
        user_id=user, item_id=item, request_id=request_id, ts=T0 + timedelta(seconds=at)
    )


def _rating(item: str, rating: float, at: float, user: str = "u") -> RatingEvent:
    return RatingEvent(user_id=user, item_id=item, rating=rating, ts=T0 + timedelta(seconds=at))


def _tick(at: float) -> ClickEvent:
    """An unrelated event that moves event time (the watermark) on."""
    return _click("i0", at, user="someone-else")


def _summary(transitions: list[Transition]) -> list[tuple[Any, ...]]:
    return [
        (
            list(t.candidates),
            t.action,
            t.reward,
            float(t.state[0]),
            float(t.next_state[0]),
            list(t.next_candidates),
            t.done,
        )
        for t in transitions
    ]


def test_a_scripted_stream_gives_exactly_the_expected_transitions() -> None:
    joiner = _joiner()
    events: list[Event] = [
        _impression("r1", ["i1", "i2", "i3"], at=0, x=0.5),
        _click("i2", at=2, request_id="r1"),
        _impression("r2", ["i4", "i1"], at=5, x=0.25),
        _rating("i4", 5.0, at=8),  # no request id: the newest open slate that showed i4
    ]
    assert joiner.observe(events) == []  # windows still open
    assert joiner.open_slates == 2
    closed = joiner.observe([_tick(at=5 + WINDOW)])  # both windows have passed
    r1 = [11, 12, 13]
    r2 = [14, 11]
    assert _summary(closed) == [
        (r1, 0, 0.0, 0.5, 0.25, r2, False),  # not clicked; next slate is r2
        (r1, 1, 1.0, 0.5, 0.25, r2, False),  # clicked
        (r1, 2, 0.0, 0.5, 0.25, r2, False),
        (r2, 0, 1.0, 0.25, 0.25, [], False),  # rated 5 → 1; no next slate in the window
        (r2, 1, 0.0, 0.25, 0.25, [], False),
    ]
    assert joiner.open_slates == 0


def test_events_are_taken_by_event_time_and_early_clicks_wait_for_their_slate() -> None:
    joiner = _joiner()
    # Topics are fetched apart: the click arrives in an earlier batch than its impression.
    assert joiner.observe([_click("i3", at=1, request_id="r1")]) == []
    joiner.observe([_impression("r1", ["i3", "i4"], at=0, x=0.5)])
    closed = joiner.flush()
    assert [(t.action, t.reward) for t in closed] == [(0, 1.0), (1, 0.0)]


def test_a_rating_supersedes_the_click_that_led_to_it() -> None:
    joiner = _joiner()
    joiner.observe(
        [
            _impression("r1", ["i1", "i2"], at=0, x=0.0),
            _click("i1", at=1, request_id="r1"),
            _rating("i1", 0.5, at=2),  # clicked, then rated the lowest: reward -1
            _click("i2", at=3, request_id="r1"),
            _rating("i2", 5.0, at=4),
            _click("i2", at=5, request_id="r1"),  # a click after the rating does not undo it
        ]
    )
    assert [t.reward for t in joiner.flush()] == [-1.0, 1.0]


def test_feedback_outside_the_window_or_the_slate_earns_nothing() -> None:
    joiner = _joiner()
    joiner.observe(
        [
            _impression("r1", ["i1", "i2"], at=0, x=0.0),
            _click("i5", at=1, request_id="r1"),  # not shown in r1
            _click("i1", at=2, request_id="r1", user="intruder"),  # not r1's user
            _rating("i2", 5.0, at=-1),  # before the slate was served
        ]
    )
    closed = joiner.observe([_tick(at=WINDOW + 1)])
    assert [t.reward for t in closed] == [0.0, 0.0]
    joiner.observe([_click("i1", at=WINDOW + 2, request_id="r1")])  # its slate has closed
    joiner.observe([_tick(at=3 * WINDOW)])
    # The 4 above, and the first tick (a click no slate showed), once its window passed.
    assert joiner.skipped["feedback_without_slate"] == 5


def test_waiting_feedback_expires_by_user_oldest_first_and_when_its_user_adds_more() -> None:
    joiner = _joiner()
    joiner.observe([_click("i1", at=0, user="a"), _click("i1", at=1, user="b")])
    # a's next click drops a's expired one (the head of its list) as it is added.
    joiner.observe([_click("i2", at=WINDOW + 0.5, user="a")])
    assert joiner.skipped["feedback_without_slate"] == 1
    # The scan from the least recently added user (b) stops at a, whose click is fresh.
    joiner.observe([_click("i3", at=WINDOW + 2, user="c")])
    assert joiner.skipped["feedback_without_slate"] == 2
    # a's fresh click still finds its slate: waiting feedback older than the window never does.
    joiner.observe([_impression("r1", ["i2"], at=WINDOW, x=0.0, user="a")])
    assert [t.reward for t in joiner.flush()] == [1.0]


def test_slates_without_a_usable_policy_log_are_skipped_with_a_reason() -> None:
    joiner = _joiner()
    plain = ImpressionEvent(user_id="u", request_id="p", item_ids=["i1"], model="mf", ts=T0)
    joiner.observe(
        [
            plain,
            _impression("v2", ["i1"], at=0, x=0.0, content_version=2),
            _impression("big", ["i1"], at=0, x=0.0, state=[0.0] * 4),
            _impression("none", [NO_VECTOR], at=0, x=0.0),
            _impression("ok", ["i1", NO_VECTOR, "i2"], at=0, x=0.0),
            _impression("ok", ["i1", NO_VECTOR, "i2"], at=0, x=0.0),  # redelivered
        ]
    )
    assert dict(joiner.skipped) == {
        "no_policy_log": 1,
        "other_content_version": 1,
        "bad_state_size": 1,
        "no_content_vectors": 1,
        "duplicate_request_id": 1,
    }
    # The item without a vector is no candidate: the slate is (i1, i2).
    assert [list(t.candidates) for t in joiner.flush()] == [[11, 12], [11, 12]]


def test_open_slates_and_waiting_feedback_are_bounded() -> None:
    joiner = _joiner(max_open=3)
    closed: list[Transition] = []
    for n in range(10):
        closed += joiner.observe([_impression(f"r{n}", ["i1"], at=n * 0.1, x=0.0, user=f"u{n}")])
        assert joiner.open_slates <= 3
    joiner.observe([_click("i1", at=1, user=f"stray{n}") for n in range(10)])
    assert joiner.skipped["closed_early"] == 7
    assert joiner.skipped["feedback_without_slate"] == 7  # 10 waiting clicks, 3 kept
    # Slates closed early by the bound are not lost: their transitions come out at once.
    assert len(closed) == 7 and len(joiner.flush()) == 3


# -- the learner, against the real registry -----------------------------------------------------
def _learner(runtime: Any, **config: Any) -> OnlineLearner:
    registry = _registry(runtime)
    active = ActiveModels(registry, check_every_s=0.0)
    defaults: dict[str, Any] = {"window_s": WINDOW, "train_every": 1, "snapshot_every_updates": 5}
    return OnlineLearner(
        active, registry, runtime.services.ids, LearnerConfig(**(defaults | config))
    )


def _real_slates(n: int, items: list[str]) -> list[Event]:
    """n slates of ``items`` to one user, each with a click on the first item."""
    events: list[Event] = []
    for s in range(n):
        events.append(_impression(f"s{s}", items, at=s, x=0.0, user="u1", state=[0.0] * S))
        events.append(_click(items[0], at=s + 0.5, request_id=f"s{s}", user="u1"))
    return events


async def test_without_doc2vec_the_learner_waits_and_keeps_nothing(
    edge: tuple[Any, httpx.AsyncClient],  # noqa: F811
) -> None:
    runtime, _ = edge
    learner = _learner(runtime)
    assert learner.observe(_real_slates(3, ["m0", "m1"])) == 0
    assert learner.joiner is None and learner.train_due() == 0


async def test_learner_trains_off_the_stream_and_its_snapshot_is_served_next_request(
    edge: tuple[Any, httpx.AsyncClient],  # noqa: F811
) -> None:
    runtime, client = edge
    registry = _registry(runtime)
    registry.register("doc2vec", _doc2vec(runtime), activate=True)
    learner = _learner(runtime, replay_capacity=64, train_every=4, snapshot_every_updates=5)
    items = ["m0", "m1", "m2", "m3"]
    assert learner.observe(_real_slates(20, items)) == 0  # all still in their window
    assert learner.flush() == 80
    assert len(learner.buffer) == 64  # type: ignore[arg-type]  (bounded ring)
    learner.schedule_training()
    await learner.wait_idle()
    assert learner.learner is not None and learner.learner.steps == 20  # 80 transitions / 4
    assert learner.snapshots == [1, 2, 3, 4]  # every 5 updates
    assert registry.active("dqn").version == 4  # type: ignore[union-attr]

    response = await client.post("/v1/rank", json={"user_id": "u1", "item_ids": items})
    assert response.status_code == 200, response.text
    assert response.json()["version"] == 4  # the newest snapshot, no restart


async def test_training_rests_between_steps_within_its_share(
    edge: tuple[Any, httpx.AsyncClient],  # noqa: F811
) -> None:
    """With ``train_share`` 0.25 the training thread rests 3x each step's time after it, so
    the groups sharing its process get the GIL; with 1 it never rests."""
    runtime, _ = edge
    registry = _registry(runtime)
    registry.register("doc2vec", _doc2vec(runtime), activate=True)
    for share, expected_rests in ((0.25, 20), (1.0, 0)):
        rests: list[float] = []
        config = LearnerConfig(window_s=WINDOW, train_every=4, train_share=share)
        learner = OnlineLearner(
            ActiveModels(registry, check_every_s=0.0),
            registry,
            runtime.services.ids,
            config,
            rest=rests.append,
        )
        learner.observe(_real_slates(20, ["m0", "m1", "m2", "m3"]))
        learner.flush()
        began = time.perf_counter()
        assert learner.train_due() == 20  # 80 transitions / 4
        took = time.perf_counter() - began
        assert len(rests) == expected_rests and all(r > 0 for r in rests)
        assert sum(rests) <= 3 * took  # 3x the time of the steps, which took part of it


async def test_only_the_newest_snapshots_are_kept(
    edge: tuple[Any, httpx.AsyncClient],  # noqa: F811
) -> None:
    runtime, _ = edge
    registry = _registry(runtime)
    registry.register("doc2vec", _doc2vec(runtime), activate=True)
    registry.register("dqn", _dqn(0))  # v1, trained elsewhere, inactive
    learner = _learner(runtime, train_every=4, snapshot_every_updates=5, keep_snapshots=2)
    learner.observe(_real_slates(20, ["m0", "m1", "m2", "m3"]))
    learner.flush()
    learner.train_due()  # 20 updates: snapshots v2..v5
    assert learner.snapshots == [2, 3, 4, 5]
    kept = {v.version: v.active for v in registry.list("dqn")}
    assert kept == {1: False, 4: False, 5: True}  # v1 is not the learner's; v5 is active
    assert not registry.version_dir("dqn", 2).exists()


async def test_learner_restarts_from_the_active_policy(
    edge: tuple[Any, httpx.AsyncClient],  # noqa: F811
) -> None:
    runtime, _ = edge
    registry = _registry(runtime)
    registry.register("doc2vec", _doc2vec(runtime), activate=True)
    first = _learner(runtime, train_every=7)
    first.observe(_real_slates(10, ["m0", "m1", "m2", "m3", "m4", "m5", "m6"]))
    first.flush()
    first.train_due()
    published = registry.load("dqn")
    second = _learner(runtime)
    second.observe([])
    assert second.learner is not None
    for mine, theirs in zip(
        second.learner.online.parameters(), published.parameters(), strict=True
    ):
        assert np.array_equal(mine.detach().numpy(), theirs.detach().numpy())
    ids = runtime.services.ids.lookup(IdKind.ITEM, ["m0"])
    assert ids  # the items the learner used are registered ones
