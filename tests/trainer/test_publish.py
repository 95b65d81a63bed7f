"""Publishing: versioned item collections, payloads, rollback, which models publish (every
model that trains, by its one name), the CLI (the user vectors written before the swap:
tests/trainer/test_live.py)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import typer
from typer.testing import CliRunner

from streamrec.core.db import create_db_engine
from streamrec.core.errors import InvalidInput
from streamrec.core.ids import IdKind
from streamrec.schemas.events import RatingEvent
from streamrec.schemas.models import TRAINABLE, ModelName
from streamrec.stores.candidates import Ranked, candidates_key, live_key, neighbours_key
from streamrec.stores.model_registry import ModelRegistry
from streamrec.stores.schema import create_schema
from streamrec.stores.vectors import EdgeVectorStore
from streamrec.trainer.cli import register
from streamrec.trainer.data import build
from streamrec.trainer.doc2vec import Doc2VecConfig, Doc2VecModel
from streamrec.trainer.live import publish_version
from streamrec.trainer.models import build_model
from streamrec.trainer.publish import item_matrix, published_kind, vector_model
from tests.trainer.conftest import fill_archive, small_data

ONE_RATING = [RatingEvent(user_id="u0", item_id="i0", rating=4)]  # item i0's popularity


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict[str, Any]]:
    engine = create_db_engine(f"sqlite:///{tmp_path}/t.db")
    create_schema(engine)
    data = small_data()
    ids = fill_archive(engine, data, ONE_RATING)
    store = EdgeVectorStore(tmp_path / "qdrant")
    yield {
        "engine": engine,
        "ids": ids,
        "data": data,
        "store": store,
        "models": ModelRegistry(engine, tmp_path / "models"),
        "tmp": tmp_path,
    }
    store.close()
    engine.dispose()


def _publish(world: dict[str, Any], model: str, **kwargs: Any):  # type: ignore[no-untyped-def]
    return publish_version(
        world["models"], world["store"], world["ids"], world["engine"], model, **kwargs
    )


def test_publish_swaps_alias_and_keeps_the_previous_version(world: dict[str, Any]) -> None:
    ids, store, models = world["ids"], world["store"], world["models"]
    inter = build(world["data"], ids)
    first = build_model("mf", inter, dim=4)
    models.register("mf", first, activate=True)
    progress: list[tuple[str, int, int]] = []
    done = _publish(
        world,
        "mf",
        checkpoint_dir=world["tmp"] / "ckpt",
        on_progress=lambda *p: progress.append(p),
    )
    assert (done.collection, done.alias, done.previous) == ("items_mf__v1", "items_mf", None)
    assert done.points == store.count("items_mf__v1") == 30
    assert ("items", 30, 30) in progress and progress[-1] == ("users", 20, 20)
    assert (world["tmp"] / "ckpt" / "items_mf__v1.json").is_file()

    i0 = ids.lookup(IdKind.ITEM, ["i0"])["i0"]
    record = store.retrieve("items_mf", [i0])[0]
    item = world["data"].items["i0"]
    assert record.payload == {
        "item_id": "i0",
        "title": item.title,
        "genres": list(item.genres),
        "year": item.year,
        "popularity": 1.0,
    }
    np.testing.assert_allclose(record.vector, item_matrix(first)[i0], rtol=1e-5)

    models.register("mf", build_model("mf", inter, dim=4, seed=1), activate=True)
    second = _publish(world, "mf")
    assert (second.collection, second.previous) == ("items_mf__v2", "items_mf__v1")
    assert store.resolve_alias("items_mf") == "items_mf__v2"
    assert store.rollback_alias("items_mf") == "items_mf__v1"  # v1 was kept
    assert _publish(world, "mf", version=2).previous == "items_mf__v1"  # an explicit version


def test_bpr_publishes_like_mf(world: dict[str, Any]) -> None:
    """bpr trains, so it serves: its item vectors, every user's vector, its own alias."""
    inter = build(world["data"], world["ids"])
    world["models"].register("bpr", build_model("bpr", inter, dim=4), activate=True)
    done = _publish(world, "bpr")
    assert (done.model, done.alias, done.collection) == ("bpr", "items_bpr", "items_bpr__v1")
    assert (done.users, done.users_collection) == (20, "users_bpr__v1")
    assert world["store"].count("items_bpr") == 30


@pytest.mark.parametrize("name", ["doc2vec", "content"])
def test_doc2vec_publishes_its_rows_of_registered_items_only(
    world: dict[str, Any], name: str
) -> None:
    ids, store = world["ids"], world["store"]
    d2v = Doc2VecModel(Doc2VecConfig(vector_size=8, epochs=2)).fit(world["data"].items, ids)
    world["models"].register("doc2vec", d2v, activate=True)
    ids.assign(IdKind.ITEM, ["newer-than-the-model"])  # no row in the model: left out
    done = _publish(world, name)  # its name, or its former one
    assert done.model == "doc2vec"
    # Its collections keep their former key, so versions published before still serve.
    assert (done.alias, done.collection) == ("items_content", "items_content__v1")
    assert store.count("items_content") == len(world["data"].items)
    hits = store.query("items_content", d2v.item_vectors()[0], 3)
    assert hits[0].payload["item_id"] == ids.external_ids(IdKind.ITEM)[0]


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # type: ignore[no-untyped-def]
    monkeypatch.delenv("STREAMREC_DATABASE_URL", raising=False)
    monkeypatch.delenv("STREAMREC_QDRANT_URL", raising=False)
    monkeypatch.delenv("STREAMREC_REDIS_URL", raising=False)  # embedded unless a test sets it
    monkeypatch.chdir(tmp_path)  # no stray .env from the repo
    app = typer.Typer()
    register(app)
    runner = CliRunner()

    def invoke(*args: str):  # type: ignore[no-untyped-def]
        return runner.invoke(app, ["vectors", "publish", *args, "--var-dir", str(tmp_path / "var")])

    return invoke


def test_cli_publishes_with_clear_errors(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for args, message in [
        (("--model", "nope"), "unknown model 'nope'"),
        (("--model", "mf"), "no active version"),
        (("--model", "mf", "--version", "3"), "has no version 3"),
    ]:
        result = cli(*args)
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output
    var = tmp_path / "var"
    var.mkdir(exist_ok=True)
    engine = create_db_engine(f"sqlite:///{var}/streamrec.db")
    create_schema(engine)
    ids = fill_archive(engine, small_data(), ONE_RATING)
    inter = build(small_data(), ids)
    ModelRegistry(engine, var / "models").register(
        "mf", build_model("mf", inter, dim=4), activate=True
    )
    engine.dispose()
    result = cli("--model", "mf")
    assert result.exit_code == 0, result.output
    assert "items_mf → items_mf__v1: 30 items, 20 user vectors in users_mf__v1" in result.output
    said = " ".join(result.output.split())
    assert "candidates left to the vectors group (STREAMREC_REDIS_URL is 'embedded')" in said


def _registered_mf(var: Path) -> None:
    var.mkdir(exist_ok=True)
    engine = create_db_engine(f"sqlite:///{var}/streamrec.db")
    create_schema(engine)
    ids = fill_archive(engine, small_data(), ONE_RATING)
    ModelRegistry(engine, var / "models").register(
        "mf", build_model("mf", build(small_data(), ids), dim=4), activate=True
    )
    engine.dispose()


def test_cli_with_a_redis_server_writes_the_candidates_itself(  # type: ignore[no-untyped-def]
    cli, tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if redis_url == "embedded":
        pytest.skip("needs a Redis server: set STREAMREC_TEST_REDIS_URL")
    _registered_mf(tmp_path / "var")
    monkeypatch.setenv("STREAMREC_REDIS_URL", redis_url)

    result = cli("--model", "mf")

    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "candidates of every user and neighbours of every item written to Redis" in said
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert client.get(live_key("mf")) == "1"
        entries = client.hgetall(candidates_key("mf", 1))
        assert len(entries) == 20  # every user with state
        assert len(client.hgetall(neighbours_key("mf", 1))) == 30  # every published item
        assert all(Ranked.decode(raw).items for raw in entries.values())
    finally:
        client.close()


def test_cli_with_redis_down_leaves_the_candidates_to_the_vectors_group(  # type: ignore[no-untyped-def]
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _registered_mf(tmp_path / "var")
    with socket.socket() as reserved:  # a port nobody listens on
        reserved.bind(("127.0.0.1", 0))
        port = reserved.getsockname()[1]
    monkeypatch.setenv("STREAMREC_REDIS_URL", f"redis://127.0.0.1:{port}/0")

    result = cli("--model", "mf")

    assert result.exit_code == 0, result.output  # the publish itself needs no Redis
    said = " ".join(result.output.split())
    assert "candidates left to the vectors group (Redis did not answer" in said


@pytest.mark.parametrize("name", [n.value for n in TRAINABLE])
def test_every_model_that_trains_publishes(name: str) -> None:
    assert vector_model(name).name == name
    kind = published_kind(name)
    assert kind is not None and kind.name == name


def test_models_without_vectors_say_what_to_use_instead() -> None:
    assert vector_model("content").name is ModelName.DOC2VEC
    assert published_kind("dqn") is None and published_kind("popular") is None
    with pytest.raises(InvalidInput, match=r"dqn is a re-ranker.*use rerank=dqn"):
        vector_model("dqn")
    with pytest.raises(InvalidInput, match="popular is served from the live counts"):
        vector_model("popular")


def test_cli_names_what_to_use_instead(cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("--model", "dqn")
    assert result.exit_code == 2 and "use rerank=dqn" in " ".join(result.output.split())
    result = cli("--model", "content")  # the former name: taken, and said
    said = " ".join(result.output.split())
    assert "content is the former name of doc2vec: publishing doc2vec" in said
    assert result.exit_code == 2 and "model doc2vec has no active version" in said
