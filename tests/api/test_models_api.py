"""The model registry over HTTP: list, get, activate, delete; admin key for writes; names and
versions from a request never reach a file outside the registry."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from streamrec.api.app import create_app
from streamrec.core.datasets import synthetic
from streamrec.core.db import create_db_engine
from streamrec.core.ids import IdRegistry
from streamrec.core.settings import Settings
from streamrec.stores.model_registry import ModelRegistry, Promotion
from streamrec.trainer.data import build
from streamrec.trainer.doc2vec import Doc2VecConfig, Doc2VecModel
from streamrec.trainer.models import build_model
from streamrec.trainer.models.dueling_dqn import DuelingDQN, DuelingDQNConfig
from streamrec.trainer.publish import publish_version
from tests.conftest import ADMIN_KEY, INGEST_KEY

pytestmark = pytest.mark.kafka

ADMIN = {"X-API-Key": ADMIN_KEY}


@pytest.fixture
async def edge(settings: Settings) -> AsyncIterator[tuple[ModelRegistry, httpx.AsyncClient]]:
    """The API alone; yields the registry it serves and a client."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        registry = ModelRegistry(app.state.runtime.services.engine, settings.var_dir / "models")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://streamrec") as client:
            yield registry, client


def _dqn(seed: int) -> DuelingDQN:
    torch.manual_seed(seed)
    config = DuelingDQNConfig(state_dim=5, item_dim=4, hidden=(8,), adv_hidden=(4,))
    return DuelingDQN(config).eval()


def _register_two(registry: ModelRegistry) -> None:
    """dqn v1 (active) and v2; metrics with a per-epoch history the list leaves out."""
    metrics = {"reward": 0.5, "test": {"ctr": 0.25}, "epochs": [{"epoch": 1, "loss": 0.3}]}
    registry.register("dqn", _dqn(0), metrics, activate=True)
    registry.register("dqn", _dqn(1), {"reward": 0.7})


def assert_error(response: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] and body["message"]
    for word in words:
        assert word in body["message"], body["message"]
    assert "Traceback" not in response.text
    return body


async def test_list_shows_versions_active_metrics_and_config(edge) -> None:  # type: ignore[no-untyped-def]
    registry, client = edge
    _register_two(registry)
    response = await client.get("/v1/models")  # a read: no key
    assert response.status_code == 200, response.text
    (model,) = response.json()["models"]
    assert model["name"] == "dqn" and model["active_version"] == 1
    first, second = model["versions"]
    assert (first["version"], first["active"], second["version"], second["active"]) == (
        1,
        True,
        2,
        False,
    )
    assert first["metrics"] == {"reward": 0.5, "test": {"ctr": 0.25}}  # no epoch history
    assert first["config"]["state_dim"] == 5 and first["config"]["item_dim"] == 4
    assert "hidden" not in first["config"]  # a list, not a scalar: left out of the summary
    assert first["artifact_class"].startswith("streamrec.trainer.") and first["created_at"]


WINDOW = {
    "source": "archive",
    "events": 1200,
    "users": 40,
    "items": 90,
    "start_ts": 880_000_000,
    "end_ts": 880_086_400,
    "offsets": [
        {"topic": "streamrec.ratings", "partition": 0, "first": 0, "last": 599, "log_id": "L1"}
    ],
}


def _decided(decision: str, live_version: int, candidate: float) -> Promotion:
    return Promotion(
        metric="ndcg@10",
        candidate_score=candidate,
        live_score=0.07,
        live_version=live_version,
        tolerance=0.02,
        decision=decision,  # type: ignore[arg-type]
        reason=f"{decision}: the test says so",
        heldout_events=300,
    )


async def test_list_shows_status_data_window_and_promotion(edge) -> None:  # type: ignore[no-untyped-def]
    registry, client = edge
    registry.register("dqn", _dqn(0), data_window=WINDOW, activate=True)  # v1 live
    registry.register("dqn", _dqn(1))  # v2: scored worse, rejected
    registry.record_promotion("dqn", 2, _decided("reject", 1, 0.05))
    registry.register("dqn", _dqn(2))  # v3: promoted, v1 retired
    registry.record_promotion("dqn", 3, _decided("promote", 1, 0.08))

    response = await client.get("/v1/models")
    assert response.status_code == 200, response.text
    (model,) = response.json()["models"]
    assert model["active_version"] == 3
    first, rejected, live = model["versions"]
    assert [(v["status"], v["active"]) for v in (first, rejected, live)] == [
        ("retired", False),
        ("rejected", False),
        ("live", True),
    ]
    assert first["data_window"] == WINDOW  # what it saw: counts, span, offsets
    assert first["promotion"] is None and first["activated_at"] is not None
    assert rejected["activated_at"] is None and live["activated_at"] is not None
    promotion = rejected["promotion"]
    assert promotion.pop("decided_at")
    assert promotion == {
        "metric": "ndcg@10",
        "candidate_score": 0.05,
        "live_score": 0.07,
        "live_version": 1,
        "tolerance": 0.02,
        "decision": "reject",
        "reason": "reject: the test says so",
        "heldout_events": 300,
        "difference_se": None,
        "confidence": 0.0,
    }
    assert live["promotion"]["decision"] == "promote"

    # An admin rolls back to v1 by hand: it goes live, v3 retires; v2 stays rejected.
    rollback = await client.post("/v1/models/dqn/versions/1/activate", headers=ADMIN)
    assert rollback.status_code == 200, rollback.text
    assert (rollback.json()["status"], rollback.json()["active"]) == ("live", True)
    versions = (await client.get("/v1/models/dqn")).json()["versions"]
    assert [v["status"] for v in versions] == ["live", "rejected", "retired"]


async def test_get_one_model_and_unknown_model(edge) -> None:  # type: ignore[no-untyped-def]
    registry, client = edge
    _register_two(registry)
    response = await client.get("/v1/models/dqn")
    assert response.status_code == 200, response.text
    assert [v["version"] for v in response.json()["versions"]] == [1, 2]
    assert_error(await client.get("/v1/models/sasrec"), 404, "sasrec")


async def test_a_former_name_names_its_model(edge, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    registry, client = edge
    engine = create_db_engine(settings.database_url)
    items = synthetic(n_users=3, n_items=6, n_events=10, seed=1).items
    registry.register(
        "doc2vec",
        Doc2VecModel(Doc2VecConfig(vector_size=4, epochs=1)).fit(items, IdRegistry(engine)),
    )
    engine.dispose()
    response = await client.get("/v1/models/content")  # doc2vec's former serving name
    assert response.status_code == 200, response.text
    assert response.json()["name"] == "doc2vec"
    assert [v["version"] for v in response.json()["versions"]] == [1]


async def test_activate_needs_the_admin_key(edge) -> None:  # type: ignore[no-untyped-def]
    registry, client = edge
    _register_two(registry)
    path = "/v1/models/dqn/versions/2/activate"
    assert_error(await client.post(path), 401, "admin key")
    assert_error(await client.post(path, headers={"X-API-Key": INGEST_KEY}), 401, "admin key")
    assert registry.active("dqn").version == 1  # type: ignore[union-attr]
    response = await client.post(path, headers=ADMIN)
    assert response.status_code == 200, response.text
    assert response.json()["version"] == 2 and response.json()["active"] is True
    assert registry.active("dqn").version == 2  # type: ignore[union-attr]
    assert_error(await client.post("/v1/models/dqn/versions/9/activate", headers=ADMIN), 404)


async def test_delete_refuses_the_active_version_with_409(edge) -> None:  # type: ignore[no-untyped-def]
    registry, client = edge
    _register_two(registry)
    response = await client.delete("/v1/models/dqn/versions/1", headers=ADMIN)
    assert_error(response, 409, "active version", "activate another")
    assert registry.version_dir("dqn", 1).is_dir()
    assert [v.version for v in registry.list("dqn")] == [1, 2]


async def test_delete_removes_an_inactive_version_and_its_files(edge) -> None:  # type: ignore[no-untyped-def]
    registry, client = edge
    _register_two(registry)
    assert_error(await client.delete("/v1/models/dqn/versions/2"), 401)
    assert registry.version_dir("dqn", 2).is_dir()
    response = await client.delete("/v1/models/dqn/versions/2", headers=ADMIN)
    assert response.status_code == 200, response.text
    assert response.json() == {"name": "dqn", "version": 2, "deleted": True}
    assert not registry.version_dir("dqn", 2).exists()
    assert [v.version for v in registry.list("dqn")] == [1]
    assert_error(await client.delete("/v1/models/dqn/versions/2", headers=ADMIN), 404)


async def test_delete_retires_a_vector_version_as_retention_does(settings: Settings) -> None:
    """A published mf version's collections and Redis lists go with its row; the active
    version and one that still serves (alias and live pointer) are refused with 409."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        runtime = app.state.runtime
        registry, vectors, lists = runtime.stores.models, runtime.vectors, runtime.stores.candidates
        inter = build(synthetic(n_users=6, n_items=10, n_events=60, seed=3), runtime.services.ids)
        for seed in (0, 1, 2):
            registry.register("mf", build_model("mf", inter, dim=4, seed=seed))
        registry.activate("mf", 3)
        for version in (1, 3, 2):  # v2 last, by hand: it serves, though v3 is active
            await asyncio.to_thread(
                publish_version,
                registry,
                vectors,
                runtime.services.ids,
                runtime.services.engine,
                "mf",
                version,
                candidates=lists,
            )
        assert all(lists.has_version("mf", v) for v in (1, 2, 3))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://streamrec") as client:
            response = await client.delete("/v1/models/mf/versions/1", headers=ADMIN)
            assert response.status_code == 200, response.text

            assert not vectors.collection_exists("items_mf__v1")
            assert not vectors.collection_exists("users_mf__v1")
            assert not lists.has_version("mf", 1)
            assert not registry.version_dir("mf", 1).exists()
            assert [v.version for v in registry.list("mf")] == [2, 3]

            active = await client.delete("/v1/models/mf/versions/3", headers=ADMIN)
            assert_error(active, 409, "active version", "activate another")
            serving = await client.delete("/v1/models/mf/versions/2", headers=ADMIN)
            assert_error(serving, 409, "mf v2 serves requests")
        for version in (2, 3):  # both refused: nothing of theirs went
            assert vectors.collection_exists(f"items_mf__v{version}")
            assert vectors.collection_exists(f"users_mf__v{version}")
            assert lists.has_version("mf", version)
        assert [v.version for v in registry.list("mf")] == [2, 3]


HOSTILE_PATHS = [
    "/v1/models/..%2F..%2Fsecret/versions/1",
    "/v1/models/..%2Fsecret/versions/1",
    "/v1/models/%2E%2E/versions/1",
    "/v1/models/..%5Csecret/versions/1",
    "/v1/models/dqn/versions/..%2F..%2Fsecret",
    "/v1/models/dqn/versions/1%2F..%2F..",
    "/v1/models/DQN/versions/1",
    "/v1/models/dq.n/versions/1",
    "/v1/models/dqn%00/versions/1",
    "/v1/models/dqn%20/versions/1",
    "/v1/models/" + "d" * 65 + "/versions/1",
    "/v1/models/dqn/versions/0",
    "/v1/models/dqn/versions/-1",
    "/v1/models/dqn/versions/1.5",
    "/v1/models/dqn/versions/99999999999999999999",
    "/v1/models/dqn/versions/%2E%2E",
]


@pytest.mark.parametrize("path", HOSTILE_PATHS)
async def test_hostile_names_and_versions_touch_nothing(edge, path: str) -> None:  # type: ignore[no-untyped-def]
    registry, client = edge
    _register_two(registry)
    registry.activate("dqn", 2)  # v1 becomes deletable: a wrong mapping to it would show
    secret = Path(registry.root).parent / "secret" / "v1"
    secret.mkdir(parents=True)
    (secret / "keep.txt").write_text("must survive")
    for method, suffix in (("DELETE", ""), ("POST", "/activate")):
        response = await client.request(method, path + suffix, headers=ADMIN)
        assert response.status_code in (404, 405, 422), (method, path, response.text)
        assert_error(response, response.status_code)
    assert (secret / "keep.txt").read_text() == "must survive"
    assert [(v.version, v.active) for v in registry.list("dqn")] == [(1, False), (2, True)]
    assert registry.version_dir("dqn", 1).is_dir()
