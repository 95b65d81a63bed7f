"""The DQN edge: bulk Q-values, rank, Doc2Vec embeddings, their errors and the hot swap of a
newly activated version without a restart."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from streamrec.api.app import create_app
from streamrec.core.datasets import Item
from streamrec.core.ids import IdKind
from streamrec.core.settings import Settings
from streamrec.schemas.events import RatingEvent, SourcedEvent
from streamrec.stores.model_registry import ModelRegistry
from streamrec.trainer.doc2vec import Doc2VecConfig, Doc2VecModel
from streamrec.trainer.models.dueling_dqn import DuelingDQN, DuelingDQNConfig
from streamrec.trainer.policy import ActiveModels, RLServer
from streamrec.trainer.rl import Exploration, state_dim, user_state
from tests.conftest import FakeClock

DIM = 8
S = state_dim(DIM)  # 13
RELOAD_S = 0.3
TOPICS = ("space ship alien planet", "love wedding romance kiss", "ghost blood scream night")
ITEMS = {
    f"m{i}": Item(f"m{i}", f"Film {i}", ("Genre",), text=f"{TOPICS[i % 3]} story {i}")
    for i in range(9)
} | {"blank": Item("blank", "", ())}  # no text: Doc2Vec never sees it, its row stays 0


@pytest.fixture
async def edge(
    settings: Settings, clock: FakeClock
) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    """The API alone, its DQN inference reading the active versions through a clock the test
    moves (``clock.advance``); yields (runtime, client)."""
    settings.model_reload_seconds = RELOAD_S
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        runtime = app.state.runtime
        active = ActiveModels(_registry(runtime), RELOAD_S, clock=clock)
        exploration = Exploration(
            settings.rl_exploration, settings.rl_epsilon, settings.rl_temperature
        )
        runtime.rl = RLServer(active, runtime.services.ids, exploration)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://streamrec") as client:
            yield runtime, client


def _registry(runtime: Any) -> ModelRegistry:
    return ModelRegistry(runtime.services.engine, runtime.settings.var_dir / "models")


def _dqn(seed: int) -> DuelingDQN:
    torch.manual_seed(seed)
    return DuelingDQN(
        DuelingDQNConfig(state_dim=S, item_dim=DIM, hidden=(16, 8), adv_hidden=(8,))
    ).eval()


def _doc2vec(runtime: Any) -> Doc2VecModel:
    return Doc2VecModel(Doc2VecConfig(vector_size=DIM, epochs=10)).fit(ITEMS, runtime.services.ids)


def _deploy(runtime: Any, dqn_seed: int = 0) -> tuple[DuelingDQN, Doc2VecModel]:
    dqn, d2v = _dqn(dqn_seed), _doc2vec(runtime)
    models = _registry(runtime)
    models.register("doc2vec", d2v, activate=True)
    models.register("dqn", dqn, activate=True)
    return dqn, d2v


def _vectors(rows: int, cols: int, seed: int = 1) -> list[list[float]]:
    return np.random.default_rng(seed).normal(size=(rows, cols)).round(4).tolist()


def _error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] and body["message"]
    return body["message"]


async def test_q_values_match_the_model(edge: tuple[Any, httpx.AsyncClient]) -> None:
    runtime, client = edge
    dqn, _ = _deploy(runtime)
    user, items = _vectors(1, S)[0], _vectors(5, DIM, seed=2)
    response = await client.post(
        "/v1/predict/q-values", json={"user_embedding": user, "item_embeddings": items}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model"], body["version"]) == ("dqn", 1)
    np.testing.assert_allclose(body["q_values"], dqn.q_values(user, items), rtol=1e-5)


async def test_rank_orders_candidates_by_q_value_of_the_user_state(
    edge: tuple[Any, httpx.AsyncClient],
) -> None:
    runtime, client = edge
    dqn, d2v = _deploy(runtime)
    ratings = [
        RatingEvent(user_id="u1", item_id=i, rating=r)
        for i, r in (("m0", 5.0), ("m3", 4.0), ("m1", 1.0))
    ]
    sourced = [SourcedEvent(e, "streamrec.ratings", 0, n) for n, e in enumerate(ratings)]
    await runtime.features.apply_batch("test", sourced)

    candidates = ["m2", "m4", "m5", "m6", "m7", "m8", "m4"]  # m4 twice: ranked once
    response = await client.post("/v1/rank", json={"user_id": "u1", "item_ids": candidates})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["version"], body["doc2vec_version"]) == (1, 1)
    got = [(i["item_id"], i["q_value"]) for i in body["items"]]
    assert [q for _, q in got] == sorted((q for _, q in got), reverse=True)

    index = runtime.services.ids.lookup(IdKind.ITEM, list(ITEMS))
    table = d2v.item_vectors()
    recent = await runtime.features.recent_items("u1")
    assert sorted(recent) == ["m0", "m1", "m3"]  # the state is not the empty user's
    state = user_state(
        table[[index[i] for i in recent]], await runtime.features.user_stats("u1"), DIM
    )
    unique = list(dict.fromkeys(candidates))
    q = dqn.q_values(state, table[[index[i] for i in unique]])
    expected = sorted(zip(unique, q.tolist(), strict=True), key=lambda p: -p[1])
    assert [i for i, _ in got] == [i for i, _ in expected] != unique
    np.testing.assert_allclose([v for _, v in got], [v for _, v in expected], rtol=1e-5)


async def test_doc2vec_single_and_bulk(edge: tuple[Any, httpx.AsyncClient]) -> None:
    runtime, client = edge
    _, d2v = _deploy(runtime)
    texts = ["alien planet", "a ghost at night", "kiss"]
    bulk = await client.post("/v1/embeddings/doc2vec/bulk", json={"texts": texts})
    assert bulk.status_code == 200, bulk.text
    assert bulk.json()["version"] == 1 and len(bulk.json()["vectors"]) == len(texts)
    for text, vector in zip(texts, bulk.json()["vectors"], strict=True):
        single = await client.post("/v1/embeddings/doc2vec", json={"text": text})
        assert single.status_code == 200, single.text
        assert single.json()["version"] == 1 and len(single.json()["vector"]) == DIM
        assert single.json()["vector"] == vector
        np.testing.assert_allclose(vector, d2v.infer(text), rtol=1e-5)


async def test_bad_inputs_get_422_with_the_expected_shape(
    edge: tuple[Any, httpx.AsyncClient],
) -> None:
    runtime, client = edge
    _deploy(runtime)
    post = client.post
    user, items = _vectors(1, S)[0], _vectors(3, DIM)
    message = _error(
        await post(
            "/v1/predict/q-values", json={"user_embedding": user[:5], "item_embeddings": items}
        ),
        422,
    )
    assert f"user_embedding must have {S} values (the active dqn v1 state size)" in message
    message = _error(
        await post(
            "/v1/predict/q-values",
            json={"user_embedding": user, "item_embeddings": [*items, [1.0, 2.0]]},
        ),
        422,
    )
    assert f"{DIM} values" in message and "item_embeddings[3] has 2" in message
    message = _error(
        await post("/v1/predict/q-values", json={"user_embedding": user, "item_embeddings": []}),
        422,
    )
    assert "item_embeddings" in message and "at least 1" in message
    message = _error(
        await post(
            "/v1/predict/q-values",
            json={"user_embedding": user, "item_embeddings": [[0.0] * DIM] * 1001},
        ),
        422,
    )
    assert "item_embeddings" in message and "at most 1000" in message

    message = _error(await post("/v1/rank", json={"user_id": "u", "item_ids": []}), 422)
    assert "item_ids" in message and "at least 1" in message
    many = [f"m{i}" for i in range(1001)]
    message = _error(await post("/v1/rank", json={"user_id": "u", "item_ids": many}), 422)
    assert "item_ids" in message and "at most 1000" in message
    message = _error(
        await post("/v1/rank", json={"user_id": "u", "item_ids": ["m1", "blank", "nope"]}), 422
    )
    assert "'blank', 'nope'" in message and "'m1'" not in message

    message = _error(await post("/v1/embeddings/doc2vec/bulk", json={"texts": []}), 422)
    assert "texts" in message and "at least 1" in message
    message = _error(await post("/v1/embeddings/doc2vec/bulk", json={"texts": ["a"] * 1001}), 422)
    assert "texts" in message and "at most 1000" in message
    message = _error(await post("/v1/embeddings/doc2vec", json={"text": ""}), 422)
    assert "text" in message


async def test_no_active_model_is_404(edge: tuple[Any, httpx.AsyncClient]) -> None:
    _, client = edge
    calls = [
        ("/v1/predict/q-values", {"user_embedding": [0.0], "item_embeddings": [[0.0]]}, "dqn"),
        ("/v1/rank", {"user_id": "u", "item_ids": ["m1"]}, "dqn"),
        ("/v1/embeddings/doc2vec", {"text": "alien"}, "doc2vec"),
        ("/v1/embeddings/doc2vec/bulk", {"texts": ["alien"]}, "doc2vec"),
    ]
    for path, body, model in calls:
        message = _error(await client.post(path, json=body), 404)
        assert f"no {model} version is active" in message


async def test_new_dqn_version_is_served_after_the_reload_interval(
    edge: tuple[Any, httpx.AsyncClient], clock: FakeClock
) -> None:
    runtime, client = edge
    first, _ = _deploy(runtime, dqn_seed=0)
    body = {"user_embedding": _vectors(1, S)[0], "item_embeddings": _vectors(4, DIM)}

    async def served() -> dict[str, Any]:
        response = await client.post("/v1/predict/q-values", json=body)
        assert response.status_code == 200, response.text
        return response.json()

    assert (await served())["version"] == 1
    second = _dqn(seed=7)
    _registry(runtime).register("dqn", second, activate=True)
    assert (await served())["version"] == 1  # cached until the next check
    clock.advance(RELOAD_S * 0.9)
    assert (await served())["version"] == 1
    clock.advance(RELOAD_S * 0.2)  # past the interval
    now = await served()
    assert now["version"] == 2
    want = second.q_values(body["user_embedding"], body["item_embeddings"])
    np.testing.assert_allclose(now["q_values"], want, rtol=1e-5)
    assert not np.allclose(want, first.q_values(body["user_embedding"], body["item_embeddings"]))
