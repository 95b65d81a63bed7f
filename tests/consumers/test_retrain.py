"""The learning loop: when it fires, what a round does, and that it runs off the event loop."""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import psutil
import pytest

from streamrec.consumers.retrain import ProcessRounds, RetrainLoop, TrainingProcessDied
from streamrec.core.datasets import InteractionData, synthetic
from streamrec.core.ids import IdKind
from streamrec.schemas.api import VersionStatus
from streamrec.schemas.events import ItemEvent, RatingEvent, SourcedEvent
from streamrec.schemas.topics import Topic
from streamrec.stores.factory import Stores
from streamrec.stores.model_registry import ModelVersion
from streamrec.stores.vectors import item_version_name, items_alias, user_version_name
from streamrec.trainer.promotion import HoldoutScores
from streamrec.trainer.retrain import (
    Candidate,
    RetrainConfig,
    RetrainTrigger,
    RoundReport,
    conclude_round,
    new_since_live,
    train_candidate,
)
from streamrec.trainer.service import train_model
from tests.conftest import FakeClock, wait_until

CONFIG = RetrainConfig(
    models=("mf",),
    every_events=100,
    every_seconds=60.0,
    min_events=10,
    epochs=2,
    holdout_events=100,
    threads=1,
    nice=0,
    tolerance=0.02,
    keep_versions=3,
)


def _rating(sourced_offset: int) -> SourcedEvent:
    event = RatingEvent(user_id=f"u{sourced_offset}", item_id="i", rating=4)
    return SourcedEvent(event, Topic.RATINGS.value, 0, sourced_offset)


class FakeRounds:
    """Records the rounds asked for; each waits until the test lets it finish."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.release = asyncio.Event()

    async def __call__(self, model: str) -> RoundReport:
        self.started.append(model)
        await self.release.wait()
        raise OSError("not a real round")  # the loop logs it and goes on


async def test_the_loop_fires_on_the_count_runs_one_round_at_a_time(clock: FakeClock) -> None:
    rounds = FakeRounds()
    loop = RetrainLoop(RetrainTrigger(CONFIG, clock), rounds)
    loop.observe([_rating(n) for n in range(99)])
    await asyncio.sleep(0)
    assert rounds.started == [] and not loop.running
    loop.observe([_rating(99)])
    await asyncio.sleep(0)
    assert rounds.started == ["mf"] and loop.running
    loop.observe([_rating(n) for n in range(100, 300)])  # due again, but a round is running
    await asyncio.sleep(0)
    assert rounds.started == ["mf"]
    rounds.release.set()
    await loop.wait_idle()
    assert loop.maybe_start() == ["mf"]  # the 200 that arrived meanwhile start the next one
    await loop.stop()


async def test_the_loop_fires_on_time_with_enough_events(clock: FakeClock) -> None:
    rounds = FakeRounds()
    rounds.release.set()
    loop = RetrainLoop(RetrainTrigger(CONFIG, clock), rounds)
    loop.observe([_rating(n) for n in range(10)])
    clock.advance(59)
    assert loop.maybe_start() == []
    clock.advance(1)
    assert loop.maybe_start() == ["mf"]
    await loop.wait_idle()
    assert rounds.started == ["mf"]
    await loop.stop()


def _archive(stores: Stores, data: InteractionData, first_offset: int = 0) -> None:
    events = [
        SourcedEvent(ItemEvent(item_id=i.item_id, title=i.title, genres=list(i.genres)), "i", 0, n)
        for n, i in enumerate(data.items.values())
    ]
    events += [
        SourcedEvent(
            RatingEvent(
                user_id=r.user_id,
                item_id=r.item_id,
                rating=r.rating,
                ts=datetime.fromtimestamp(r.ts, UTC),
            ),
            Topic.RATINGS.value,
            0,
            first_offset + n,
        )
        for n, r in enumerate(data.ratings)
    ]
    stores.archive.write_batch(events)


def _data(seed: int, n_users: int = 40, n_events: int = 900) -> InteractionData:
    return synthetic(n_users=n_users, n_items=30, n_events=n_events, n_genres=3, seed=seed)


@pytest.mark.kafka
async def test_a_round_goes_live_for_every_user_and_the_next_is_warm_started(
    stores: Stores,
) -> None:
    data = _data(seed=1)
    await asyncio.to_thread(_archive, stores, data)
    assert await asyncio.to_thread(new_since_live, stores, "mf") == len(data.ratings)

    first = await asyncio.to_thread(train_candidate, stores.settings, "mf", CONFIG)
    assert (first.version, first.warm_from, first.scores.live) == (1, None, None)
    report = await asyncio.to_thread(conclude_round, stores, first, CONFIG)
    assert report.promotion.promoted and report.published_seconds > 0
    live = stores.models.get("mf", 1)
    assert live.status == VersionStatus.LIVE
    # The version says what it saw: the ratings partition's offsets up to the watermark.
    (covered,) = [o for o in live.data_window["offsets"] if o["topic"] == Topic.RATINGS.value]
    assert (covered["first"], covered["last"]) == (0, len(data.ratings) - 1)
    assert live.data_window["events"] == len(data.ratings)
    # Every user with history has a vector of the new version: no fallback after the swap.
    assert stores.vectors.resolve_alias(items_alias("mf")) == item_version_name("mf", 1)
    users = {r.user_id for r in data.ratings}
    assert stores.vectors.count(user_version_name("mf", 1)) == len(users)
    assert await asyncio.to_thread(new_since_live, stores, "mf") == 0

    more = _data(seed=2, n_users=60, n_events=400)  # new users and events beyond the watermark
    await asyncio.to_thread(_archive, stores, more, len(data.ratings))
    assert await asyncio.to_thread(new_since_live, stores, "mf") == len(more.ratings)
    second = await asyncio.to_thread(train_candidate, stores.settings, "mf", CONFIG)
    assert (second.version, second.warm_from, second.scores.live_version) == (2, 1, 1)
    metrics = stores.models.get("mf", 2).metrics
    assert metrics["warm_start"]["warm"]
    # A warm round trains on every rating but the held-out slice (no per-user validation
    # hides each user's newest ones), for exactly the round's epochs; the guard judges it.
    assert metrics["protocol"] == "all" and len(metrics["epochs"]) == CONFIG.epochs
    assert metrics["test"] == {}  # nothing held out of it but the guard's slice
    assert stores.models.get("mf", 1).metrics["protocol"] == "loo-full"  # the first version


@pytest.mark.kafka
async def test_a_worse_candidate_is_rejected_and_old_versions_are_retired(
    stores: Stores,
) -> None:
    data = _data(seed=3)
    await asyncio.to_thread(_archive, stores, data)
    first = await asyncio.to_thread(train_candidate, stores.settings, "mf", CONFIG)
    await asyncio.to_thread(conclude_round, stores, first, CONFIG)
    keep_none = replace(CONFIG, keep_versions=0)
    for _ in range(2):
        trained = await asyncio.to_thread(train_candidate, stores.settings, "mf", keep_none)
        worse = Candidate(
            "mf",
            trained.version,
            HoldoutScores("ndcg@10", candidate=0.10, live=0.50, live_version=1, events=100),
            trained.train_seconds,
            trained.warm_from,
        )
        report = await asyncio.to_thread(conclude_round, stores, worse, keep_none)
        assert report.promotion.decision == "reject"
        assert "keeps serving" in report.promotion.reason
        assert stores.vectors.resolve_alias(items_alias("mf")) == item_version_name("mf", 1)
    # keep_versions=0: each rejected version is gone (row and files); the live one stays.
    assert [v.version for v in stores.models.list("mf")] == [1]
    assert not stores.models.version_dir("mf", 2).exists()
    assert stores.models.active("mf") is not None


@pytest.mark.kafka
async def test_a_round_trains_in_a_child_process(stores: Stores) -> None:
    await asyncio.to_thread(_archive, stores, _data(seed=4))
    rounds = ProcessRounds(stores, CONFIG)
    try:
        report = await rounds("mf")
    finally:
        rounds.close()
    assert report.candidate.version == 1 and report.promotion.promoted
    assert stores.models.active("mf") is not None


@pytest.mark.kafka
async def test_a_killed_training_loses_only_that_attempt(stores: Stores) -> None:
    await asyncio.to_thread(_archive, stores, _data(seed=5))
    rounds = ProcessRounds(stores, CONFIG)
    attempt = asyncio.create_task(rounds("mf"))

    async def child_started() -> bool:
        return rounds.training

    await wait_until(child_started)
    rounds.close()  # what stopping the group does: the child is terminated
    with pytest.raises(TrainingProcessDied, match="ended without an answer"):
        await attempt
    assert stores.models.list("mf") == []  # nothing half-registered
    try:
        report = await rounds("mf")  # the next attempt starts again, and succeeds
    finally:
        rounds.close()
    assert report.candidate.version == 1 and report.promotion.promoted


@pytest.mark.kafka
async def test_one_training_child_serves_the_rounds_and_a_dead_one_is_replaced(
    stores: Stores,
) -> None:
    """The child lives across rounds (no spawn and no PyTorch import per round); one that died
    between rounds is replaced by the next round, which succeeds."""
    await asyncio.to_thread(_archive, stores, _data(seed=6))
    rounds = ProcessRounds(stores, CONFIG)
    try:
        first = await rounds("mf")
        pid = rounds.child_pid
        assert pid is not None
        second = await rounds("mf")
        assert rounds.child_pid == pid  # the same process trained both
        os.kill(pid, signal.SIGKILL)

        async def child_gone() -> bool:
            return rounds.child_pid is None  # reaped by the check itself

        await wait_until(child_gone)
        third = await rounds("mf")
        assert rounds.child_pid not in (None, pid)
    finally:
        rounds.close()
    assert [r.candidate.version for r in (first, second, third)] == [1, 2, 3]
    assert not psutil.pid_exists(pid)


@pytest.mark.kafka
async def test_ids_registered_while_a_candidate_trains_do_not_break_its_scoring(
    stores: Stores, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The archive group keeps registering ids during a round: the candidate is sized to the
    # registry when it is built, so scoring it against a smaller, earlier build must not fail
    # ("cannot shrink a model"), as it did on the ml-100k replay.
    data = _data(seed=4)
    await asyncio.to_thread(_archive, stores, data)

    def train_model_while_a_user_arrives(*args: Any, **kwargs: Any) -> ModelVersion:
        stores.ids.assign(IdKind.USER, ["arrived-during-training"])
        return train_model(*args, **kwargs)

    monkeypatch.setattr("streamrec.trainer.retrain.train_model", train_model_while_a_user_arrives)
    candidate = await asyncio.to_thread(train_candidate, stores.settings, "mf", CONFIG)
    assert candidate.scores.candidate is not None
    assert stores.models.get("mf", candidate.version).n_users == stores.ids.size(IdKind.USER)
