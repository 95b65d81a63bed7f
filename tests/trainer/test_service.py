"""The training service raises domain errors (no CLI types below the CLI) and returns the
registered version; offline data never touches the live registries; the archive is read up to
a watermark and the version records what it saw."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from streamrec.core.datasets import InteractionData
from streamrec.core.errors import InvalidInput
from streamrec.core.ids import IdKind, IdMapping, IdRegistry
from streamrec.schemas.events import RatingEvent, SourcedEvent
from streamrec.stores.catalog import Archive, Watermark
from streamrec.stores.model_registry import ModelRegistry, ModelVersion
from streamrec.trainer.data import recorded_watermark
from streamrec.trainer.service import (
    Workspace,
    evaluate_version,
    is_offline,
    load_data,
    offline_run_dir,
    train_model,
    workspace,
)


def test_doc2vec_without_a_catalog_is_invalid_input(
    sqlite_engine: Engine, registry: IdRegistry, tiny_raw: InteractionData, tmp_path: Path
) -> None:
    models = ModelRegistry(sqlite_engine, tmp_path / "models")
    no_catalog = InteractionData(tiny_raw.name, tiny_raw.ratings, {})
    with pytest.raises(InvalidInput, match="no item catalog"):
        train_model("doc2vec", no_catalog, registry, models, "loo-full", {"seed": 0})


def test_doc2vec_has_no_ranking_evaluation(sqlite_engine: Engine, tmp_path: Path) -> None:
    models = ModelRegistry(sqlite_engine, tmp_path / "models")
    with pytest.raises(InvalidInput, match="no ranking evaluation"):
        evaluate_version(sqlite_engine, models, "doc2vec", "synthetic", "loo-full", None, 0, True)


def test_training_registers_and_returns_the_version(
    sqlite_engine: Engine, registry: IdRegistry, tiny_raw: InteractionData, tmp_path: Path
) -> None:
    models = ModelRegistry(sqlite_engine, tmp_path / "models")
    opts = {"epochs": 1, "batch_size": 512, "lr": 1e-2, "patience": 1, "seed": 0, "threads": 1}
    version = train_model("mf", tiny_raw, registry, models, "loo-full", opts)
    assert isinstance(version, ModelVersion) and version.active and version.version == 1
    assert set(version.metrics["test"]) >= {"ndcg@10", "hr@10"}


# -- offline runs never touch live state ------------------------------------------------------
def _id_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(IdMapping)).scalar_one()


def test_synthetic_training_leaves_the_live_registries_untouched(
    engine: Engine, tmp_path: Path
) -> None:
    var_dir = tmp_path / "var"
    live_ids = IdRegistry(engine)
    live_ids.assign(IdKind.ITEM, ["live-item"])
    live_ids.assign(IdKind.USER, ["live-user"])
    live_models = ModelRegistry(engine, var_dir / "models")
    live = Workspace(engine, live_ids, live_models, offline=False)
    opts = {"epochs": 1, "batch_size": 2048, "seed": 0, "threads": 1}
    with workspace("synthetic", var_dir, live) as ws:
        assert ws.offline and ws.location == offline_run_dir(var_dir, "synthetic")
        data = load_data("synthetic", ws.engine, 0)
        version = train_model("mf", data, ws.ids, ws.models, "loo-full", opts)
        doc2vec = train_model("doc2vec", data, ws.ids, ws.models, "loo-full", opts)
        assert [v.version for v in ws.models.list()] == [1, 1]
        assert ws.ids.size(IdKind.ITEM) == version.n_items == 500  # i0..i499, its own rows
    assert version.path.is_relative_to(var_dir.resolve() / "offline" / "synthetic")
    assert doc2vec.path.is_relative_to(var_dir.resolve() / "offline" / "synthetic")
    assert _id_rows(engine) == 2 and live_ids.size(IdKind.ITEM) == 1
    assert live_models.list() == [] and live_models.active("mf") is None
    assert not (var_dir / "models").exists()
    metrics, judged = evaluate_version(
        engine, live_models, "mf", "synthetic", "loo-full", None, 0, True
    )
    assert judged.version == 1 and "ndcg@10" in metrics  # the offline run's version
    assert _id_rows(engine) == 2 and live_models.list() == []


def test_a_folder_trains_in_an_offline_run_of_its_own(engine: Engine, tmp_path: Path) -> None:
    one, two = tmp_path / "a" / "ml", tmp_path / "b" / "ml"
    assert offline_run_dir(tmp_path, str(one)) != offline_run_dir(tmp_path, str(two))
    assert offline_run_dir(tmp_path, str(one)).name.startswith("ml-")
    live = Workspace(engine, IdRegistry(engine), ModelRegistry(engine, tmp_path / "m"), False)
    with workspace("archive", tmp_path, live) as ws:
        assert ws is live
    assert is_offline("synthetic") and is_offline(str(one)) and not is_offline("archive")


# -- the archive up to a watermark ------------------------------------------------------------
def _ratings(
    users: range, items: range, log: str | None, partition: int, first_offset: int
) -> tuple[str | None, list[SourcedEvent]]:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    events = []
    for n, (u, i) in enumerate((u, i) for u in users for i in items):
        event = RatingEvent(
            user_id=f"u{u}",
            item_id=f"m{i}",
            rating=float(1 + (u + i) % 5),
            ts=start + timedelta(minutes=first_offset + n),
        )
        events.append(SourcedEvent(event, "streamrec.ratings", partition, first_offset + n))
    return log, events


def test_training_on_the_archive_respects_the_watermark(engine: Engine, tmp_path: Path) -> None:
    batches = [
        _ratings(range(0, 3), range(0, 4), None, 0, 0),  # written without a log id
        _ratings(range(3, 6), range(4, 9), "log-a", 0, 0),
        _ratings(range(6, 9), range(8, 12), "log-a", 1, 0),
    ]
    later = [
        _ratings(range(0, 3), range(12, 14), None, 0, 12),
        _ratings(range(9, 11), range(14, 17), "log-a", 1, 12),
        _ratings(range(3, 5), range(17, 18), "log-b", 0, 0),  # a new log: above any watermark
    ]
    for log, events in batches:
        Archive(engine, log_id=log).write_batch(events)
    archive = Archive(engine)
    mark = archive.watermark(types=["rating"])
    assert mark.offsets == {
        (None, "streamrec.ratings", 0): 11,
        ("log-a", "streamrec.ratings", 0): 14,
        ("log-a", "streamrec.ratings", 1): 11,
    }
    for log, events in later:
        Archive(engine, log_id=log).write_batch(events)
    assert archive.count_between(until=mark) == 12 + 15 + 12
    assert archive.count_between(since=mark) == 6 + 6 + 2
    ids = IdRegistry(engine)
    models = ModelRegistry(engine, tmp_path / "models")

    upto = load_data("archive", engine, 0, until=mark)
    assert upto.window.events == 39 and upto.window.users == 9 and upto.window.items == 12
    assert upto.window.watermark == mark
    assert {r.user_id for r in upto.raw.ratings} == {f"u{u}" for u in range(9)}
    opts = {"epochs": 1, "batch_size": 64, "seed": 0, "threads": 1}
    version = train_model("mf", upto, ids, models, "loo-full", opts)
    window = version.data_window
    assert window["source"] == "archive" and window["events"] == 39 and window["users"] == 9
    assert window["offsets"] == [
        {"topic": "streamrec.ratings", "partition": 0, "first": 0, "last": 11, "log_id": None},
        {"topic": "streamrec.ratings", "partition": 0, "first": 0, "last": 14, "log_id": "log-a"},
        {"topic": "streamrec.ratings", "partition": 1, "first": 0, "last": 11, "log_id": "log-a"},
    ]
    assert recorded_watermark(window) == mark and recorded_watermark({"events": 3}) is None
    assert window["start_ts"] == min(r.ts for r in upto.raw.ratings)
    assert window["end_ts"] == max(r.ts for r in upto.raw.ratings)

    after = load_data("archive", engine, 0, since=upto.window.watermark)
    assert after.window.events == 14 and after.window.since == mark
    assert after.window.watermark == Watermark(
        {
            (None, "streamrec.ratings", 0): 17,
            ("log-a", "streamrec.ratings", 1): 17,
            ("log-b", "streamrec.ratings", 0): 1,
        }
    )
    assert load_data("archive", engine, 0).window.events == 39 + 14
    with pytest.raises(InvalidInput, match="bound the archive"):
        load_data("synthetic", engine, 0, until=mark)
