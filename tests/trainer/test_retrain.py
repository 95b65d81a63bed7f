"""When the loop retrains (``RetrainTrigger``), how it is configured, and what retention drops."""

from __future__ import annotations

import pytest

from streamrec.core.errors import ConfigurationError
from streamrec.core.settings import Settings
from streamrec.stores.candidates import Ranked, candidates_key, neighbours_key
from streamrec.stores.factory import Stores
from streamrec.trainer.publish import LiveVersion, drop_version_collections, serving_versions
from streamrec.trainer.retrain import (
    RetrainConfig,
    RetrainTrigger,
    parse_every_events,
    parse_models,
)
from tests.conftest import FakeClock


def config(**overrides: object) -> RetrainConfig:
    values: dict = dict(
        models=("mf", "sasrec"),
        every_events=100,
        every_seconds=60.0,
        min_events=10,
        epochs=2,
        holdout_events=20,
        threads=1,
        nice=0,
        tolerance=0.02,
        keep_versions=3,
    )
    return RetrainConfig(**{**values, **overrides})


def test_fires_on_the_count_and_not_before(clock: FakeClock) -> None:
    trigger = RetrainTrigger(config(), clock)
    trigger.observe(99)
    assert trigger.due() == []
    trigger.observe(1)
    assert trigger.due() == ["mf", "sasrec"]
    trigger.started(["mf"])
    assert trigger.due() == ["sasrec"]  # mf's count starts again from its round
    assert trigger.new("mf") == 0


def test_a_model_with_its_own_count_fires_on_it_and_the_others_on_the_default(
    clock: FakeClock,
) -> None:
    trigger = RetrainTrigger(config(every_events_by_model={"sasrec": 300}), clock)
    trigger.observe(100)
    assert trigger.due() == ["mf"]
    trigger.started(["mf"])
    trigger.observe(199)
    assert trigger.due() == ["mf"]  # sasrec: 299 of its 300
    trigger.started(["mf"])
    trigger.observe(1)
    assert trigger.due() == ["sasrec"]


def test_per_model_counts_parse_from_settings_and_bad_ones_are_refused() -> None:
    settings = Settings(
        retrain_every_events=1000, retrain_every_events_by_model=" sasrec=6000, ncf=2000 "
    )
    parsed = RetrainConfig.from_settings(settings)
    assert parsed.every_events_by_model == {"sasrec": 6000, "ncf": 2000}
    assert parsed.threshold("sasrec") == 6000 and parsed.threshold("mf") == 1000
    for bad in ("sasrec", "sasrec=0", "sasrec=x", "dqn=10"):
        with pytest.raises(ConfigurationError, match="EVERY_EVENTS_BY_MODEL"):
            parse_every_events(bad)


def test_fires_on_the_time_with_enough_new_events_only(clock: FakeClock) -> None:
    trigger = RetrainTrigger(config(), clock)
    trigger.observe(9)
    clock.advance(59.9)
    assert trigger.due() == []
    clock.advance(0.2)
    assert trigger.due() == []  # time has passed, but 9 < min_events
    trigger.observe(1)
    assert trigger.due() == ["mf", "sasrec"]


def test_the_time_counts_from_the_last_round(clock: FakeClock) -> None:
    trigger = RetrainTrigger(config(), clock)
    clock.advance(50)
    trigger.observe(100)
    trigger.started(["mf", "sasrec"])
    trigger.observe(10)
    clock.advance(59)
    assert trigger.due() == []
    clock.advance(1)
    assert trigger.due() == ["mf", "sasrec"]


def test_a_restart_is_seeded_with_what_arrived_beyond_the_live_version(clock: FakeClock) -> None:
    trigger = RetrainTrigger(config(), clock)
    trigger.seed("mf", 150)
    assert trigger.due() == ["mf"]


def test_models_setting_is_checked() -> None:
    assert parse_models(" mf, sasrec ,mf,") == ("mf", "sasrec")
    assert parse_models("") == ()
    with pytest.raises(ConfigurationError, match="doc2vec"):
        parse_models("mf,doc2vec")


async def test_retention_drops_a_retired_versions_hashes_never_the_live_ones(
    stores: Stores,
) -> None:
    """``drop_version_collections`` (what ``retire_old`` calls per retired version) removes
    its candidate and neighbour hashes with its collections; the live version's stay."""
    candidates = stores.candidates
    for version in (1, 2):
        candidates.write_candidates("mf", version, {"u1": Ranked(["a"], [1.0], 1)})
        candidates.write_neighbours("mf", version, {"a": Ranked(["b"], [1.0])})
    candidates.set_live("mf", 2)

    assert serving_versions(stores.vectors, "mf", candidates) == {2}  # nothing published
    drop_version_collections(stores.vectors, "mf", 1, candidates)
    with pytest.raises(LiveVersion, match="mf v2 serves requests"):
        drop_version_collections(stores.vectors, "mf", 2, candidates)  # the live one

    redis = stores.services.redis
    assert await redis.exists(candidates_key("mf", 1), neighbours_key("mf", 1)) == 0
    assert await redis.exists(candidates_key("mf", 2), neighbours_key("mf", 2)) == 2
    assert (await candidates.user_candidates("mf", 2, "u1"))[0] is not None
