"""The training service raises domain errors (no CLI types below the CLI) and returns the
registered version."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine

from core.datasets import InteractionData
from core.errors import InvalidInput
from core.ids import IdRegistry
from stores.model_registry import ModelRegistry, ModelVersion
from trainer.service import evaluate_version, train_model


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
