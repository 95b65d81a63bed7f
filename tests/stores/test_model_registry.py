"""The model registry on SQLite (and PostgreSQL when configured): versions and their files,
statuses (candidate, live, rejected, retired) with one live version per name, activation by
hand (rollback included), promotion records, and retention of old versions (files and vector
collections) that never touches the live version or a candidate.

Artifacts are tiny Dueling DQNs: any ``trainer.`` class with ``save_artifacts`` will do; the
round trips of every recommender are in tests/trainer/test_model_registry.py.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import torch
from sqlalchemy import Engine

from streamrec.core.db import create_db_engine
from streamrec.core.errors import InvalidInput, NotFound, StateConflict
from streamrec.schemas.api import VersionStatus
from streamrec.stores.model_registry import ModelRegistry, Promotion
from streamrec.stores.schema import create_schema
from streamrec.trainer.models.dueling_dqn import DuelingDQN, DuelingDQNConfig
from tests.conftest import PG_TEST_URL, postgres_schema_engine

PG_SCHEMA = "test_model_registry"
START = datetime(2026, 12, 1, tzinfo=UTC)

CANDIDATE, LIVE = VersionStatus.CANDIDATE, VersionStatus.LIVE
REJECTED, RETIRED = VersionStatus.REJECTED, VersionStatus.RETIRED


class Ticks:
    """A clock for the registry's timestamps: one second later on every call."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> datetime:
        self.calls += 1
        return START + timedelta(seconds=self.calls)


@pytest.fixture(params=["sqlite", "postgresql"] if PG_TEST_URL else ["sqlite"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    eng = (
        create_db_engine(f"sqlite:///{tmp_path}/t.db")
        if request.param == "sqlite"
        else postgres_schema_engine(PG_SCHEMA)
    )
    create_schema(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def models(engine: Engine, tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(engine, tmp_path / "models", now=Ticks())


def _dqn(seed: int = 0) -> DuelingDQN:
    torch.manual_seed(seed)
    return DuelingDQN(DuelingDQNConfig(state_dim=3, item_dim=2, hidden=(4,), adv_hidden=(2,)))


def _statuses(models: ModelRegistry, name: str = "mf") -> list[tuple[int, VersionStatus, bool]]:
    return [(v.version, v.status, v.active) for v in models.list(name)]


def _promotion(decision: str, live_version: int | None, **fields: object) -> Promotion:
    values: dict[str, object] = {
        "metric": "ndcg@10",
        "candidate_score": 0.09,
        "live_score": 0.1 if live_version is not None else None,
        "live_version": live_version,
        "tolerance": 0.02,
        "decision": decision,
        "reason": f"{decision} for the test",
        "heldout_events": 500,
        **fields,
    }
    return Promotion(**values)  # type: ignore[arg-type]


# -- versions, files, names -------------------------------------------------------------------
def test_versions_list_activate_delete(models: ModelRegistry) -> None:
    v1 = models.register("mf", _dqn(), {"ndcg@10": 0.1}, 5, 7, {"start_ts": 1, "end_ts": 2})
    v2 = models.register("mf", _dqn(1), {"ndcg@10": 0.2}, activate=True)
    assert (v1.version, v2.version) == (1, 2)
    assert v1.path == models.root / "mf" / "v1"
    assert {p.name for p in v1.path.iterdir()} >= {"metrics.json", "meta.json"}
    meta = json.loads((v1.path / "meta.json").read_text())
    assert meta["n_items"] == 7 and meta["data_window"] == {"start_ts": 1, "end_ts": 2}
    assert models.get("mf", 1).metrics == {"ndcg@10": 0.1}
    assert models.active("mf").version == 2  # type: ignore[union-attr]
    models.activate("mf", 1)
    assert models.active("mf").version == 1  # type: ignore[union-attr]
    with pytest.raises(InvalidInput, match="active"):
        models.delete("mf", 1)
    models.delete("mf", 2)
    assert not (models.root / "mf" / "v2").exists()
    assert models.register("mf", _dqn()).version == 2  # numbers continue from the highest
    with pytest.raises(NotFound):
        models.get("mf", 9)
    with pytest.raises(NotFound):
        models.activate("mf", 9)
    assert models.active("nothing") is None
    with pytest.raises(NotFound):
        models.load("nothing")


@pytest.mark.parametrize("bad", ["../x", "A", "", "a/b", "a b", "x" * 65])
def test_names_cannot_escape_the_root(models: ModelRegistry, bad: str) -> None:
    with pytest.raises(InvalidInput):
        models.version_dir(bad, 1)


@pytest.mark.parametrize("bad", [0, -1, True, "1"])
def test_versions_are_positive_ints(models: ModelRegistry, bad: object) -> None:
    with pytest.raises(InvalidInput):
        models.get("mf", bad)  # type: ignore[arg-type]


def test_only_trainer_classes_load(models: ModelRegistry) -> None:
    version = models.register("dqn", _dqn())
    meta_path = version.path / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["artifact_class"] = "os:system"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(InvalidInput):
        models.load("dqn", 1)


def test_a_version_registered_before_the_streamrec_namespace_still_loads(
    models: ModelRegistry,
) -> None:
    """Its meta.json names ``trainer.models…`` (the packages were top-level then)."""
    version = models.register("dqn", _dqn())
    meta_path = version.path / "meta.json"
    meta = json.loads(meta_path.read_text())
    assert meta["artifact_class"].startswith("streamrec.trainer.")
    meta["artifact_class"] = meta["artifact_class"].removeprefix("streamrec.")
    meta_path.write_text(json.dumps(meta))
    assert type(models.load("dqn", 1)).__module__.startswith("streamrec.trainer.")
    meta["artifact_class"] = "core.settings:Settings"  # the old prefix of a non-trainer module
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(InvalidInput):
        models.load("dqn", 1)


# -- statuses and activation ------------------------------------------------------------------
def test_a_new_version_is_a_candidate_and_activation_keeps_one_live(
    models: ModelRegistry,
) -> None:
    first = models.register("mf", _dqn())
    assert (first.status, first.active, first.activated_at) == (CANDIDATE, False, None)
    assert models.get("mf", 1).created_at.utcoffset() is not None  # SQLite's naive, read as UTC
    assert models.active("mf") is None  # a candidate does not serve
    live = models.activate("mf", 1)
    assert (live.status, live.active) == (LIVE, True)
    assert live.activated_at is not None and live.activated_at > START
    models.register("mf", _dqn(), activate=True)
    models.register("other", _dqn(), activate=True)  # another name is not touched
    assert _statuses(models) == [(1, RETIRED, False), (2, LIVE, True)]
    assert _statuses(models, "other") == [(1, LIVE, True)]


def test_activating_the_live_version_again_changes_nothing(models: ModelRegistry) -> None:
    went_live = models.register("mf", _dqn(), activate=True).activated_at
    assert models.activate("mf", 1).activated_at == went_live


def test_admin_rolls_back_and_overrules_a_rejection(models: ModelRegistry) -> None:
    models.register("mf", _dqn(), activate=True)  # v1
    models.register("mf", _dqn(1), activate=True)  # v2; v1 retired
    models.register("mf", _dqn(2))  # v3
    models.record_promotion("mf", 3, _promotion("reject", live_version=2))
    assert _statuses(models) == [(1, RETIRED, False), (2, LIVE, True), (3, REJECTED, False)]

    models.activate("mf", 1)  # rollback to a retired version
    assert _statuses(models) == [(1, LIVE, True), (2, RETIRED, False), (3, REJECTED, False)]
    overruled = models.activate("mf", 3)  # a rejected one, by hand
    assert _statuses(models) == [(1, RETIRED, False), (2, RETIRED, False), (3, LIVE, True)]
    assert overruled.promotion is not None and overruled.promotion.decision == "reject"
    loaded = models.load("mf")
    assert isinstance(loaded, DuelingDQN)


# -- promotion records ------------------------------------------------------------------------
def test_a_promoted_candidate_goes_live_with_its_record(models: ModelRegistry) -> None:
    models.register("mf", _dqn(), activate=True)
    models.register("mf", _dqn(1))
    decided = models.record_promotion(
        "mf", 2, _promotion("promote", live_version=1, candidate_score=0.11)
    )
    assert (decided.status, decided.active) == (LIVE, True)
    assert models.active("mf").version == 2  # type: ignore[union-attr]
    assert _statuses(models) == [(1, RETIRED, False), (2, LIVE, True)]
    record = models.get("mf", 2).promotion  # read back from SQL
    assert record is not None and record.decided_at is not None and record.decided_at > START
    assert record == _promotion(
        "promote", live_version=1, candidate_score=0.11, decided_at=record.decided_at
    )


def test_a_rejected_candidate_stays_registered_and_the_live_one_serves(
    models: ModelRegistry,
) -> None:
    models.register("mf", _dqn(), activate=True)
    models.register("mf", _dqn(1))
    rejected = models.record_promotion(
        "mf", 2, _promotion("reject", live_version=1, difference_se=0.004, confidence=1.64)
    )
    assert (rejected.status, rejected.active) == (REJECTED, False)
    assert models.active("mf").version == 1  # type: ignore[union-attr]
    record = models.get("mf", 2).promotion
    assert record is not None
    assert (record.candidate_score, record.live_score, record.live_version) == (0.09, 0.1, 1)
    assert (record.metric, record.tolerance, record.heldout_events) == ("ndcg@10", 0.02, 500)
    assert record.reason == "reject for the test"
    assert (record.difference_se, record.confidence) == (0.004, 1.64)  # read back from SQL
    assert models.get("mf", 2).path.is_dir()


def test_the_first_candidate_is_promoted_without_a_live_version(models: ModelRegistry) -> None:
    models.register("mf", _dqn())
    decided = models.record_promotion("mf", 1, _promotion("promote", live_version=None))
    assert decided.status == LIVE
    assert decided.promotion is not None and decided.promotion.live_score is None


def test_only_a_candidate_is_decided_and_against_the_live_it_was_scored_on(
    models: ModelRegistry,
) -> None:
    models.register("mf", _dqn(), activate=True)  # v1 live
    models.register("mf", _dqn(1))  # v2 candidate
    with pytest.raises(InvalidInput, match="live, not a candidate"):
        models.record_promotion("mf", 1, _promotion("promote", live_version=1))
    models.register("mf", _dqn(2), activate=True)  # v3 live: v2's comparison is stale
    with pytest.raises(StateConflict, match="v1 but the live version is now v3"):
        models.record_promotion("mf", 2, _promotion("promote", live_version=1))
    assert _statuses(models) == [(1, RETIRED, False), (2, CANDIDATE, False), (3, LIVE, True)]
    assert models.get("mf", 2).promotion is None  # nothing written
    models.record_promotion("mf", 2, _promotion("reject", live_version=3))
    with pytest.raises(InvalidInput, match="rejected, not a candidate"):
        models.record_promotion("mf", 2, _promotion("promote", live_version=3))
    with pytest.raises(NotFound):
        models.record_promotion("mf", 9, _promotion("promote", live_version=3))


def test_a_score_that_is_not_a_number_is_recorded_as_none(models: ModelRegistry) -> None:
    models.register("mf", _dqn(), activate=True)
    models.register("mf", _dqn(1))
    record = _promotion("reject", live_version=1, candidate_score=math.nan)
    assert record.candidate_score is None
    models.record_promotion("mf", 2, record)
    stored = models.get("mf", 2).promotion
    assert stored is not None and stored.candidate_score is None and stored.live_score == 0.1


def test_a_promotion_decides_promote_or_reject_only() -> None:
    with pytest.raises(InvalidInput, match="promote or reject"):
        _promotion("maybe", live_version=1)


# -- retention --------------------------------------------------------------------------------
def _history(models: ModelRegistry) -> None:
    """mf: v1 retired, v2 rejected, v3 retired, v4 rejected, v5 live, v6 candidate."""
    models.register("mf", _dqn(), activate=True)
    for version in (2, 3, 4, 5):
        models.register("mf", _dqn(version))
        decision = "promote" if version in (3, 5) else "reject"
        live = models.active("mf")
        assert live is not None
        models.record_promotion("mf", version, _promotion(decision, live_version=live.version))
    models.register("mf", _dqn(6))


def test_retention_keeps_the_newest_settled_versions_and_never_live_or_candidates(
    models: ModelRegistry,
) -> None:
    _history(models)
    models.register("other", _dqn(), activate=True)
    models.register("other", _dqn(), activate=True)  # other v1 retired: another name
    dropped: list[tuple[str, int]] = []

    removed = models.retire_old("mf", keep=1, drop_collections=lambda n, v: dropped.append((n, v)))

    assert removed == [1, 2, 3] and dropped == [("mf", 1), ("mf", 2), ("mf", 3)]
    assert _statuses(models) == [(4, REJECTED, False), (5, LIVE, True), (6, CANDIDATE, False)]
    assert sorted(p.name for p in (models.root / "mf").iterdir()) == ["v4", "v5", "v6"]
    assert [v.version for v in models.list("other")] == [1, 2]
    assert models.retire_old("mf", keep=1) == []  # nothing more to do

    assert models.retire_old("mf", keep=0) == [4]  # only live and candidate are left
    assert _statuses(models) == [(5, LIVE, True), (6, CANDIDATE, False)]
    assert isinstance(models.load("mf"), DuelingDQN)


def test_retention_spares_protected_versions(models: ModelRegistry) -> None:
    _history(models)
    assert models.retire_old("mf", keep=0, protect={1}) == [2, 3, 4]
    assert [v.version for v in models.list("mf")] == [1, 5, 6]


def test_a_failed_collection_drop_leaves_the_version_registered(models: ModelRegistry) -> None:
    _history(models)

    def fail(name: str, version: int) -> None:
        raise ConnectionError(f"qdrant down while dropping {name} v{version}")

    with pytest.raises(ConnectionError, match="mf v1"):
        models.retire_old("mf", keep=0, drop_collections=fail)
    assert models.get("mf", 1).path.is_dir()  # row and files kept: the next call tries again
    assert models.retire_old("mf", keep=3) == [1]


@pytest.mark.parametrize("keep", [-1, True, 1.5])
def test_retention_needs_a_count(models: ModelRegistry, keep: object) -> None:
    with pytest.raises(InvalidInput, match="keep"):
        models.retire_old("mf", keep=keep)  # type: ignore[arg-type]
