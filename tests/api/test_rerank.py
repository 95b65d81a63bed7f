"""``rerank=dqn`` on the recommendations endpoint: the base model's candidates re-ordered by
the active DQN's Q-values, and the base order (flagged) when no policy is active."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
import numpy as np
import pytest

from streamrec.api.routers.users import rerank_depth
from streamrec.api.serving import VectorAnswer
from streamrec.core.ids import IdKind
from streamrec.schemas.events import Event, ImpressionEvent, RatingEvent, SourcedEvent
from streamrec.stores.vectors import Hit
from streamrec.trainer.rl import Exploration, user_state
from tests.api.test_rl import (  # noqa: F401  (edge: the app fixture)
    DIM,
    S,
    _deploy,
    _doc2vec,
    _registry,
    edge,
)

# The base model's order: scorable items, one without text ("blank", a zero Doc2Vec row) and
# one Doc2Vec never saw ("new1"), which must follow the scored ones in this order.
BASE = ["m4", "blank", "m0", "m7", "new1", "m2", "m5", "m8", "m1"]
BASE_VERSION = 3


class FakeVectors:
    """A base model with a fixed ranking, recording how deep it was asked to read."""

    def __init__(self) -> None:
        self.asked: list[int] = []

    def recommend(
        self,
        model: str,
        user_id: str,
        k: int,
        seen: Iterable[str] = (),
        genres: Sequence[str] | None = None,
    ) -> VectorAnswer:
        self.asked.append(k)
        hits = [Hit(n, 1.0 - n / 100, {"item_id": item}) for n, item in enumerate(BASE[:k])]
        return VectorAnswer(BASE_VERSION, hits)

    async def arecommend(
        self,
        model: str,
        user_id: str,
        k: int,
        seen: Iterable[str] = (),
        genres: Sequence[str] | None = None,
        version: int | None = None,
    ) -> VectorAnswer:
        return self.recommend(model, user_id, k, seen, genres)


@pytest.fixture
def served(edge: tuple[Any, httpx.AsyncClient]) -> tuple[Any, httpx.AsyncClient, FakeVectors]:  # noqa: F811
    runtime, client = edge
    fake = FakeVectors()
    runtime.serving = fake
    return runtime, client, fake


def _capture(runtime: Any, monkeypatch: pytest.MonkeyPatch) -> list[Event]:
    published: list[Event] = []

    monkeypatch.setattr(runtime.publisher, "publish_later", published.append)
    return published


def _expected_q(runtime: Any, dqn: Any, d2v: Any) -> list[tuple[str, float]]:
    """Q-values of the scorable base items for a user without events, best first."""
    index = runtime.services.ids.lookup(IdKind.ITEM, BASE)
    table = d2v.item_vectors()
    scorable = [i for i in BASE if i in index and np.any(table[index[i]])]
    state = user_state(np.zeros((0, DIM)), {}, DIM)
    q = dqn.q_values(state, table[[index[i] for i in scorable]])
    return sorted(zip(scorable, q.tolist(), strict=True), key=lambda p: -p[1])


async def _get(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    response = await client.get("/v1/users/u1/recommendations", params={"model": "mf", **params})
    assert response.status_code == 200, response.text
    return response.json()


async def test_rerank_orders_candidates_by_q_value(
    served: tuple[Any, httpx.AsyncClient, FakeVectors], monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime, client, fake = served
    dqn, d2v = _deploy(runtime)
    published = _capture(runtime, monkeypatch)
    body = await _get(client, k=len(BASE), rerank="dqn")

    assert fake.asked == [rerank_depth(len(BASE))] == [50]
    assert body["reranked_by"] == {"model": "dqn", "version": 1, "exploration": "greedy"}
    assert (body["model"], body["version"], body["rerank_fallback"]) == ("mf", BASE_VERSION, False)
    assert body["rerank_note"] is None
    expected = _expected_q(runtime, dqn, d2v)
    got = [(i["item_id"], i["q_value"]) for i in body["items"]]
    scored = got[: len(expected)]
    in_base_order = [i for i in BASE if i in dict(expected)]
    assert [i for i, _ in scored] == [i for i, _ in expected] != in_base_order  # re-ordered
    np.testing.assert_allclose([q for _, q in scored], [q for _, q in expected], rtol=1e-5)
    assert got[len(expected) :] == [("blank", None), ("new1", None)]  # base order, after

    (impression,) = published
    assert isinstance(impression, ImpressionEvent)
    assert impression.item_ids == [i for i, _ in got]
    assert (impression.model, impression.model_version) == ("mf+dqn", BASE_VERSION)
    log = impression.policy
    assert log is not None and (log.policy_version, log.content_version) == (1, 1)
    np.testing.assert_allclose(log.state, user_state(np.zeros((0, DIM)), {}, DIM), atol=1e-6)
    assert (log.exploration, log.propensities) == ("greedy", [1.0] * len(BASE))


async def test_rerank_returns_the_top_k_of_the_reranked_list(
    served: tuple[Any, httpx.AsyncClient, FakeVectors],
) -> None:
    runtime, client, _ = served
    dqn, d2v = _deploy(runtime)
    body = await _get(client, k=3, rerank="dqn")
    expected = _expected_q(runtime, dqn, d2v)[:3]
    assert [i["item_id"] for i in body["items"]] == [i for i, _ in expected]
    assert rerank_depth(100) == 200 and rerank_depth(200) == 200


async def test_the_policy_state_is_the_users_recent_items_and_counters(
    served: tuple[Any, httpx.AsyncClient, FakeVectors], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state read in the request's one Redis round trip: the newest items first."""
    runtime, client, _ = served
    _, d2v = _deploy(runtime)
    rated = ["m0", "m3", "m6"]  # rated in this order: the state reads m6, m3, m0
    events = [
        SourcedEvent(
            RatingEvent(
                user_id="u1", item_id=item, rating=4, ts=datetime(2026, 1, 1, n, tzinfo=UTC)
            ),
            "streamrec.ratings",
            0,
            n,
        )
        for n, item in enumerate(rated)
    ]
    await runtime.features.apply_batch("test", events)
    published = _capture(runtime, monkeypatch)
    await _get(client, k=3, rerank="dqn")

    index = runtime.services.ids.lookup(IdKind.ITEM, rated)
    history = d2v.item_vectors()[[index[i] for i in reversed(rated)]]  # newest first
    expected = user_state(history, await runtime.features.user_stats("u1"), DIM)
    log = published[0].policy  # type: ignore[union-attr]
    assert log is not None
    np.testing.assert_allclose(log.state, expected, atol=1e-5)
    assert not np.allclose(expected, user_state(np.zeros((0, DIM)), {}, DIM))  # not a blank


async def test_without_an_active_dqn_the_base_order_is_served(
    served: tuple[Any, httpx.AsyncClient, FakeVectors], monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime, client, _ = served
    published = _capture(runtime, monkeypatch)
    body = await _get(client, k=4, rerank="dqn")
    assert [i["item_id"] for i in body["items"]] == BASE[:4]
    assert all(i["q_value"] is None for i in body["items"])
    assert body["rerank_fallback"] is True and body["reranked_by"] is None
    assert "no doc2vec version is active" in body["rerank_note"]
    assert published[0].model == "mf"  # type: ignore[union-attr]
    assert published[0].policy is None  # type: ignore[union-attr]  (no content vectors: no state)


async def test_doc2vec_without_dqn_serves_the_base_order_and_logs_it_for_learning(
    served: tuple[Any, httpx.AsyncClient, FakeVectors], monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime, client, _ = served
    _registry(runtime).register("doc2vec", _doc2vec(runtime), activate=True)
    published = _capture(runtime, monkeypatch)
    body = await _get(client, k=4, rerank="dqn")
    assert [i["item_id"] for i in body["items"]] == BASE[:4]
    assert body["rerank_fallback"] is True and body["reranked_by"] is None
    assert "no dqn version is active" in body["rerank_note"]
    (impression,) = published
    assert impression.model == "mf"  # type: ignore[union-attr]
    log = impression.policy  # type: ignore[union-attr]
    assert log is not None and log.policy_version is None and log.content_version == 1
    assert log.propensities == [1.0] * 4 and len(log.state) == S


@pytest.mark.parametrize("method", ["epsilon_greedy", "softmax"])
async def test_exploration_is_recorded_with_its_propensities(
    served: tuple[Any, httpx.AsyncClient, FakeVectors],
    monkeypatch: pytest.MonkeyPatch,
    method: str,
) -> None:
    runtime, client, _ = served
    runtime.rl.exploration = Exploration(method, epsilon=1.0, temperature=1e6)  # type: ignore[arg-type]
    _deploy(runtime)
    published = _capture(runtime, monkeypatch)
    body = await _get(client, k=3, rerank="dqn")
    assert body["reranked_by"]["exploration"] == method
    log = published[0].policy  # type: ignore[union-attr]
    assert log is not None and log.exploration == method
    # Uniform draws (epsilon 1, or a huge temperature) over the 7 scorable candidates:
    # position p is drawn from the 7 - p left.
    np.testing.assert_allclose(log.propensities, [1 / 7, 1 / 6, 1 / 5], rtol=1e-4)
    assert (log.epsilon, log.temperature) == (
        (1.0, None) if method == "epsilon_greedy" else (None, 1e6)
    )


async def test_without_rerank_nothing_changes(
    served: tuple[Any, httpx.AsyncClient, FakeVectors],
) -> None:
    runtime, client, fake = served
    _deploy(runtime)
    body = await _get(client, k=4)
    assert fake.asked == [4]
    assert [i["item_id"] for i in body["items"]] == BASE[:4]
    assert body["reranked_by"] is None and body["rerank_fallback"] is False


async def test_unknown_rerank_is_422_naming_the_valid_value(
    served: tuple[Any, httpx.AsyncClient, FakeVectors],
) -> None:
    _, client, _ = served
    response = await client.get("/v1/users/u1/recommendations", params={"rerank": "xyz"})
    assert response.status_code == 422, response.text
    message = response.json()["message"]
    assert "rerank" in message and "'dqn'" in message
