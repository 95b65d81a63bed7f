"""Vector serving end to end: trained MF and SASRec published, clicks through the real API,
Kafka and the vectors consumer, recommendations and similar items from the edge."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import torch

from streamrec.api.serving import CandidateServer, VectorAnswer
from streamrec.core.datasets import InteractionData, synthetic
from streamrec.core.db import create_db_engine
from streamrec.core.ids import IdKind, IdRegistry
from streamrec.schemas.events import ClickEvent, ItemEvent, RatingEvent, SourcedEvent
from streamrec.stores.candidates import Ranked
from streamrec.stores.catalog import Archive
from streamrec.stores.factory import Stores
from streamrec.stores.model_registry import ModelRegistry
from streamrec.stores.schema import create_schema
from streamrec.stores.vectors import Hit
from streamrec.trainer.data import build
from streamrec.trainer.doc2vec import Doc2VecConfig, Doc2VecModel
from streamrec.trainer.loop import TrainConfig, fit
from streamrec.trainer.models import build_model
from streamrec.trainer.publish import publish_version
from tests.conftest import ADMIN_KEY, INGEST_KEY, wait_until

pytestmark = pytest.mark.kafka
CLUSTER_SHARE = 0.8  # at least 8 of 10 recommended items from the clicked cluster


def cluster_data() -> InteractionData:
    """Four genre clusters, users staying inside their genre 97% of the time."""
    return synthetic(
        n_users=120, n_items=120, n_events=5000, n_genres=4, seed=3, cluster_affinity=0.97
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """MF and SASRec trained once per module (a few seconds); ids are assigned in a fixed
    order, so a fresh registry given the same data maps every row the same way."""
    torch.set_num_threads(1)
    data = cluster_data()
    engine = create_db_engine(f"sqlite:///{tmp_path_factory.mktemp('train')}/t.db")
    create_schema(engine)
    inter = build(data, IdRegistry(engine))
    # MF with the implicit (BPR) objective: clicks are implicit feedback, and with 97% of
    # ratings inside the user's cluster the explicit (MSE) objective sees almost no negative
    # signal and learns mostly biases (measured: 3 of 10 fold-in neighbours in the cluster).
    mf = build_model("mf", inter, dim=16, loss="bpr")
    fit(mf, inter, None, TrainConfig(epochs=20, batch_size=256, lr=1e-2, threads=1, patience=20))
    sasrec = build_model("sasrec", inter, dim=32, max_len=20, dropout=0.2, inner=64)
    fit(
        sasrec, inter, None, TrainConfig(epochs=15, batch_size=128, lr=1e-2, threads=1, patience=15)
    )
    engine.dispose()
    return {"data": data, "mf": mf, "sasrec": sasrec, "inter": inter}


async def _publish(
    runtime: Any, trained: dict[str, Any], names: tuple[str, ...], *, ratings: bool = False
) -> None:
    """Register the ids and write the catalog (and, with ``ratings``, every rating: the users'
    history) into the archive, the catalog into the features too (titles and genres of served
    items come from there, as the features group writes them from item events), then register
    and publish each model."""
    services = runtime.services
    data: InteractionData = trained["data"]
    await asyncio.to_thread(build, data, services.ids)
    events = [
        SourcedEvent(
            ItemEvent(item_id=i.item_id, title=i.title, genres=list(i.genres), year=i.year),
            "streamrec.items",
            0,
            n,
        )
        for n, i in enumerate(data.items.values())
    ]
    await runtime.features.apply_batch("catalog", events)
    if ratings:
        events += [
            SourcedEvent(
                RatingEvent(user_id=r.user_id, item_id=r.item_id, rating=r.rating),
                "streamrec.ratings",
                0,
                n,
            )
            for n, r in enumerate(data.ratings)
        ]
    await asyncio.to_thread(Archive(services.engine).write_batch, events)
    models = ModelRegistry(services.engine, runtime.settings.var_dir / "models")
    inter = trained["inter"]
    for name in names:
        models.register(name, trained[name], {}, inter.n_users, inter.n_items, activate=True)
        await asyncio.to_thread(_publish_one, runtime, models, name)


def _publish_one(
    runtime: Any, models: ModelRegistry, name: str, version: int | None = None
) -> None:
    services = runtime.services
    publish_version(
        models,
        runtime.vectors,
        services.ids,
        services.engine,
        name,
        version,
        checkpoint_dir=runtime.settings.var_dir / "publish",
        candidates=runtime.stores.candidates,
    )


def _genre_of(data: InteractionData) -> dict[str, str]:
    return {item_id: item.genres[0] for item_id, item in data.items.items()}


def _cluster_items(data: InteractionData, n: int) -> tuple[str, list[str]]:
    """The most popular genre and its n most rated items."""
    genre = _genre_of(data)
    counts = Counter(r.item_id for r in data.ratings)
    top_genre = Counter(genre[i] for i in counts.elements()).most_common(1)[0][0]
    return top_genre, [i for i, _ in counts.most_common() if genre[i] == top_genre][:n]


async def _click(client: Any, user: str, items: list[str]) -> None:
    events = [{"type": "click", "user_id": user, "item_id": i} for i in items]
    response = await client.post("/v1/events", json=events, headers={"X-API-Key": INGEST_KEY})
    assert response.status_code == 202, response.text


async def _recs(client: Any, user: str, model: str, **params: Any) -> dict[str, Any]:
    response = await client.get(
        f"/v1/users/{user}/recommendations", params={"model": model, "k": 10, **params}
    )
    assert response.status_code == 200, response.text
    return response.json()


async def _warm_up(client: Any, runtime: Any, data: InteractionData) -> None:
    """Consumer groups join asynchronously after start: wait until a vector is written."""
    await _click(client, "warm-up", [next(iter(data.items))])

    async def ready() -> bool:
        return (await _recs(client, "warm-up", "sasrec"))["fallback"] is False

    await wait_until(ready, timeout=60)


async def test_clicks_of_one_cluster_drive_sasrec_and_mf(
    app_client: Any, trained: dict[str, Any]
) -> None:
    app, client = app_client
    runtime = app.state.runtime
    data = trained["data"]
    await _publish(runtime, trained, ("mf", "sasrec"))
    await _warm_up(client, runtime, data)
    genre_of = _genre_of(data)
    genre, clicked = _cluster_items(data, 5)

    # How fast is measured by benchmarks/serving.py (freshness p50/p99), not asserted here.
    await _click(client, "newcomer", clicked)
    answers: dict[str, dict[str, Any]] = {}

    async def reflected() -> bool:
        # Two consumer groups: the vectors one writes the user vector, the features one the
        # seen set the edge excludes; recommendations reflect the clicks once both have.
        if not set(clicked) <= await runtime.features.seen_items("newcomer"):
            return False
        for model in ("sasrec", "mf"):
            body = await _recs(client, "newcomer", model)
            if body["fallback"] or len(body["items"]) < 10:
                return False
            answers[model] = body
        return True

    await wait_until(reflected, timeout=30.0, interval=0.02)
    for model, body in answers.items():
        got = [i["item_id"] for i in body["items"]]
        assert not set(got) & set(clicked), (model, got)
        share = sum(genre_of[i] == genre for i in got) / len(got)
        assert share >= CLUSTER_SHARE, (model, genre, [genre_of[i] for i in got])
        assert body["model"] == model and body["version"] == 1
        assert 0 <= body["state_age_ms"] < 5000
        assert all(i["genres"] == [genre_of[i["item_id"]]] for i in body["items"])

    # A genre filter keeps only that genre; a user with no vector falls back to popular.
    other = next(g for g in set(genre_of.values()) if g != genre)
    body = await _recs(client, "newcomer", "sasrec", genres=other)
    assert body["items"] and {i["genres"][0] for i in body["items"]} == {other}
    body = await _recs(client, "stranger", "sasrec")
    assert body["fallback"] is True and body["model"] == "popular"
    assert body["requested_model"] == "sasrec" and body["version"] is None

    similar = await client.get(
        f"/v1/items/{clicked[0]}/similar", params={"model": "sasrec", "k": 10}
    )
    assert similar.status_code == 200, similar.text
    got = [i["item_id"] for i in similar.json()["items"]]
    assert clicked[0] not in got and len(got) == 10
    assert sum(genre_of[i] == genre for i in got) / len(got) >= CLUSTER_SHARE, got


async def test_alias_swap_during_requests_fails_none(
    app_client: Any, trained: dict[str, Any]
) -> None:
    app, client = app_client
    runtime = app.state.runtime
    await _publish(runtime, trained, ("mf",))
    models = ModelRegistry(runtime.services.engine, runtime.settings.var_dir / "models")
    inter = trained["inter"]
    models.register("mf", trained["mf"], {}, inter.n_users, inter.n_items, activate=True)
    statuses: Counter[int] = Counter()
    versions: Counter[Any] = Counter()
    failures: list[str] = []
    swap = asyncio.create_task(asyncio.to_thread(_publish_one, runtime, models, "mf"))
    item = next(iter(trained["data"].items))
    while not swap.done() or sum(statuses.values()) < 40:
        rec, sim = await asyncio.gather(
            client.get("/v1/users/u1/recommendations", params={"model": "mf"}),
            client.get(f"/v1/items/{item}/similar", params={"model": "mf"}),
        )
        statuses.update([rec.status_code, sim.status_code])
        failures += [r.text for r in (rec, sim) if r.status_code != 200]
        versions[sim.json().get("version")] += 1
    await swap
    assert statuses == Counter({200: sum(statuses.values())}), (statuses, failures)
    final = await client.get(f"/v1/items/{item}/similar", params={"model": "mf"})
    assert final.json()["version"] == 2
    assert runtime.vectors.resolve_alias("items_mf") == "items_mf__v2"
    assert runtime.vectors.collection_exists("items_mf__v1")  # kept for rollback


async def test_unknown_model_and_items_without_vectors(
    app_client: Any, trained: dict[str, Any]
) -> None:
    app, client = app_client
    runtime = app.state.runtime
    response = await client.get("/v1/users/u1/recommendations", params={"model": "nope"})
    assert response.status_code == 422
    message = response.json()["message"]
    for name in ("popular", "mf", "bpr", "ncf", "wide_deep", "sasrec", "doc2vec", "content"):
        assert f"'{name}'" in message, message
    response = await client.get("/v1/users/u1/recommendations", params={"model": "dqn"})
    assert response.status_code == 422 and "use rerank=dqn" in response.json()["message"]

    response = await client.get("/v1/items/i1/similar", params={"model": "mf"})
    assert response.status_code == 404
    assert "streamrec vectors publish --model mf" in response.json()["message"]
    await _publish(runtime, trained, ("mf",))
    await asyncio.to_thread(runtime.services.ids.assign, IdKind.ITEM, ["brand-new"])
    response = await client.get("/v1/items/brand-new/similar", params={"model": "mf"})
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
    assert "has no vector in mf v1" in response.json()["message"]
    response = await client.get("/v1/items/never-seen/similar", params={"model": "mf"})
    assert response.status_code == 404 and "unknown" in response.json()["message"]
    response = await client.get("/v1/items/i1/similar", params={"model": "popular"})
    assert response.status_code == 422


async def test_every_model_that_trains_serves_by_its_one_name(
    app_client: Any, trained: dict[str, Any]
) -> None:
    """bpr and doc2vec, published under their names, serve model= and similar items; doc2vec's
    former name, content, still serves (and is answered as doc2vec)."""
    app, client = app_client
    runtime = app.state.runtime
    await _publish(runtime, trained, (), ratings=True)  # ids, catalog, every user's history
    models = ModelRegistry(runtime.services.engine, runtime.settings.var_dir / "models")
    inter = trained["inter"]
    models.register("bpr", trained["mf"], {}, inter.n_users, inter.n_items, activate=True)
    d2v = Doc2VecModel(Doc2VecConfig(vector_size=8, epochs=2)).fit(
        trained["data"].items, runtime.services.ids
    )
    models.register("doc2vec", d2v, activate=True)
    for name in ("bpr", "doc2vec"):
        await asyncio.to_thread(_publish_one, runtime, models, name)
    user, item = trained["data"].ratings[0].user_id, next(iter(trained["data"].items))
    for asked, served in (("bpr", "bpr"), ("doc2vec", "doc2vec"), ("content", "doc2vec")):
        body = await _recs(client, user, asked)
        assert (body["model"], body["requested_model"]) == (served, served), body
        assert (body["fallback"], body["version"], len(body["items"])) == (False, 1, 10)
        similar = await client.get(f"/v1/items/{item}/similar", params={"model": asked})
        assert similar.status_code == 200, similar.text
        assert (similar.json()["model"], similar.json()["version"]) == (served, 1)
    similar = await client.get(f"/v1/items/{item}/similar")  # the default: doc2vec
    assert similar.status_code == 200 and similar.json()["model"] == "doc2vec"


def test_module_data_has_clear_clusters(tmp_path: Path) -> None:
    data = cluster_data()
    genre = _genre_of(data)
    users: dict[str, Counter[str]] = {}
    for r in data.ratings:
        users.setdefault(r.user_id, Counter())[genre[r.item_id]] += 1
    purity = [c.most_common(1)[0][1] / sum(c.values()) for c in users.values()]
    assert sum(purity) / len(purity) > 0.9


async def test_item_metadata_is_cached_for_its_ttl_and_unknown_items_are_not(
    services: Any,
    stores: Stores,
) -> None:
    from streamrec.api.serving import ItemMetaCache

    store = stores.features

    async def catalog(offset: int, item: ItemEvent) -> None:
        await store.apply_batch("test", [SourcedEvent(item, "streamrec.items", 0, offset)])

    await catalog(0, ItemEvent(item_id="m1", title="Heat", genres=["Crime"]))
    cached, uncached = ItemMetaCache(store, ttl_s=60), ItemMetaCache(store, ttl_s=0)
    first = await cached.get(["m1", "m2"])
    assert (first["m1"]["title"], first["m1"]["genres"]) == ("Heat", "Crime")
    assert first["m2"] == {"title": "", "genres": "", "year": ""}  # not in the catalog yet

    await catalog(1, ItemEvent(item_id="m1", title="Heat (1995)", genres=["Crime"]))
    await catalog(2, ItemEvent(item_id="m2", title="Clueless", genres=["Comedy"]))
    again = await cached.get(["m1", "m2"])
    assert again["m1"]["title"] == "Heat"  # served from the cache within its TTL
    assert again["m2"]["title"] == "Clueless"  # an unknown item was not cached
    assert (await uncached.get(["m1"]))["m1"]["title"] == "Heat (1995)"


async def test_after_a_publish_every_user_with_history_is_served_without_a_new_event(
    app_client: Any, trained: dict[str, Any]
) -> None:
    app, client = app_client
    await _publish(app.state.runtime, trained, ("mf", "sasrec"), ratings=True)
    users = sorted({r.user_id for r in trained["data"].ratings})
    for model in ("mf", "sasrec"):
        for user in users:
            body = await _recs(client, user, model)
            assert (body["fallback"], body["fallback_reason"]) == (False, None), (model, user)
            assert body["version"] == 1 and len(body["items"]) == 10


async def test_every_fallback_says_why(app_client: Any, trained: dict[str, Any]) -> None:
    app, client = app_client
    runtime = app.state.runtime
    body = await _recs(client, "u1", "mf")
    assert (body["fallback"], body["fallback_reason"]) == (True, "no_version_published")
    assert body["model"] == "popular" and body["version"] is None

    await _publish(runtime, trained, ("mf",))
    body = await _recs(client, "u1", "mf")  # a trained user: its row was written at publish
    assert (body["fallback"], body["fallback_reason"], body["version"]) == (False, None, 1)
    body = await _recs(client, "stranger", "mf")
    assert (body["fallback"], body["fallback_reason"]) == (True, "no_history")
    # History in the features, but the vectors group has not seen it (no Kafka event here).
    rating = RatingEvent(user_id="fresh-face", item_id=next(iter(trained["data"].items)), rating=4)
    await runtime.features.apply_batch("test", [SourcedEvent(rating, "streamrec.ratings", 0, 0)])
    body = await _recs(client, "fresh-face", "mf")
    assert (body["fallback"], body["fallback_reason"]) == (True, "no_user_vector")
    assert body["known_user"] is True
    body = await _recs(client, "stranger", "popular")  # asked for popular: no fallback
    assert (body["fallback"], body["fallback_reason"]) == (False, None)


async def test_a_pinned_version_serves_instead_of_the_live_one(
    app_client: Any, trained: dict[str, Any]
) -> None:
    app, client = app_client
    runtime = app.state.runtime
    await _publish(runtime, trained, ("mf",))
    first = await _recs(client, "u1", "mf")
    models = ModelRegistry(runtime.services.engine, runtime.settings.var_dir / "models")
    inter = trained["inter"]
    other = build_model("mf", inter, dim=16, seed=7)  # untrained: other vectors
    models.register("mf", other, {}, inter.n_users, inter.n_items, activate=True)
    await asyncio.to_thread(_publish_one, runtime, models, "mf")

    live = await _recs(client, "u1", "mf")
    assert (live["version"], live["requested_version"]) == (2, None)
    pinned = await _recs(client, "u1", "mf", version=1)
    assert (pinned["version"], pinned["requested_version"], pinned["fallback"]) == (1, 1, False)
    assert pinned["items"] == first["items"]  # v1's collections, as when it was live
    assert live["items"] != first["items"]

    missing = await client.get("/v1/users/u1/recommendations", params={"model": "mf", "version": 3})
    assert missing.status_code == 404, missing.text
    assert missing.json()["error"] == "not_found"
    assert "mf v3 has no published vectors" in missing.json()["message"]
    popular = await client.get("/v1/users/u1/recommendations", params={"version": 1})
    assert popular.status_code == 404
    assert "popular has no versions" in popular.json()["message"]


async def test_activating_an_unpublished_version_publishes_it_for_every_user(
    app_client: Any, trained: dict[str, Any]
) -> None:
    app, client = app_client
    runtime = app.state.runtime
    await _publish(runtime, trained, ("mf",), ratings=True)
    models = ModelRegistry(runtime.services.engine, runtime.settings.var_dir / "models")
    inter = trained["inter"]
    models.register("mf", trained["mf"], {}, inter.n_users, inter.n_items)  # v2: a candidate
    assert not runtime.vectors.collection_exists("items_mf__v2")

    response = await client.post(
        "/v1/models/mf/versions/2/activate", headers={"X-API-Key": ADMIN_KEY}
    )
    assert response.status_code == 200, response.text
    assert (response.json()["version"], response.json()["status"]) == (2, "live")
    assert runtime.vectors.resolve_alias("items_mf") == "items_mf__v2"
    users = sorted({r.user_id for r in trained["data"].ratings})
    assert runtime.vectors.count("users_mf__v2") == len(users)
    body = await _recs(client, users[-1], "mf")  # no new event: served by v2 at once
    assert (body["version"], body["fallback"]) == (2, False)

    back = await client.post("/v1/models/mf/versions/1/activate", headers={"X-API-Key": ADMIN_KEY})
    assert back.status_code == 200, back.text
    assert runtime.vectors.resolve_alias("items_mf") == "items_mf__v1"  # a rollback swaps too


# -- the light request path: precomputed candidates and neighbours in Redis ----------------------

CANDIDATE_GENRES = {"c1": "Drama", "c2": "Comedy", "c3": "Drama", "c4": "Comedy", "c5": "Comedy"}
POPULAR_GENRES = {"p1": "Drama", "p2": "Comedy", "p3": "Drama"}


class CountingVectors:
    """The vector query, counted: a request served from candidates must not reach it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def arecommend(
        self,
        model: str,
        user_id: str,
        k: int,
        seen: Any = (),
        genres: Any = None,
        version: int | None = None,
    ) -> VectorAnswer:
        self.calls.append(("recommend", user_id))
        return VectorAnswer(version or 7, [Hit(0, 0.5, {"item_id": "from-vectors"})])

    def similar(self, model: str, item_id: str, k: int) -> VectorAnswer:
        self.calls.append(("similar", item_id))
        return VectorAnswer(7, [Hit(0, 0.5, {"item_id": "from-vectors"})])


@pytest.fixture
async def light(settings: Any) -> AsyncIterator[tuple[Any, Any, CountingVectors]]:
    """The API alone, its vector query counted; a catalog and popular items in the features,
    candidates of mf v3 (live) for user u, neighbours of c1."""
    import httpx

    from streamrec.api.app import create_app

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        runtime = app.state.runtime
        fake = CountingVectors()
        runtime.serving = fake
        genres = {**CANDIDATE_GENRES, **POPULAR_GENRES}
        events = [
            SourcedEvent(ItemEvent(item_id=i, title=i.upper(), genres=[g]), "streamrec.items", 0, n)
            for n, (i, g) in enumerate(genres.items())
        ]
        # Popular items: rated by others (p1 most), never by u.
        events += [
            SourcedEvent(
                RatingEvent(user_id=f"o{n}", item_id=i, rating=4), "streamrec.ratings", 0, n
            )
            for n, i in enumerate(["p1", "p1", "p1", "p2", "p2", "p3"])
        ]
        await runtime.features.apply_batch("test", events)
        store = runtime.stores.candidates
        scores = [5.0, 4.0, 3.0, 2.0, 1.0]
        updated = int(time.time() * 1000) - 60_000  # computed a minute ago
        store.write_candidates("mf", 3, {"u": Ranked(list(CANDIDATE_GENRES), scores, updated)})
        store.write_neighbours("mf", 3, {"c1": Ranked(["c3", "c2"], [0.9, 0.8])})
        store.set_live("mf", 3)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://streamrec") as client:
            yield runtime, client, fake


async def test_recommendations_from_candidates_never_query_vectors_nor_serve_seen_items(
    light: tuple[Any, Any, CountingVectors],
) -> None:
    runtime, client, fake = light
    body = await _recs(client, "u", "mf", k=3)
    assert [i["item_id"] for i in body["items"]] == ["c1", "c2", "c3"]
    assert (body["model"], body["version"], body["fallback"]) == ("mf", 3, False)
    first = body["items"][0]
    assert (first["score"], first["title"], first["genres"]) == (5.0, "C1", ["Drama"])
    assert 60_000 <= body["state_age_ms"] < 120_000  # the age of the user vector behind them
    assert fake.calls == []

    # A click applied after the candidates were computed: c2 is never served again.
    click = ClickEvent(user_id="u", item_id="c2")
    await runtime.features.apply_batch("test", [SourcedEvent(click, "streamrec.clicks", 0, 0)])
    body = await _recs(client, "u", "mf", k=3)
    assert [i["item_id"] for i in body["items"]] == ["c1", "c3", "c4"]
    assert fake.calls == []


async def test_a_fixed_vectors_list_is_as_old_as_the_user_state_it_is_filtered_with(
    light: tuple[Any, Any, CountingVectors],
) -> None:
    """A trained row's list, written long ago, filtered with a seen set just changed: what a
    recomputation would give now, so its age is the user state's, not the list's."""
    runtime, client, _ = light
    written = int(time.time() * 1000) - 600_000  # ten minutes ago
    entry = Ranked(list(CANDIDATE_GENRES), [5.0, 4.0, 3.0, 2.0, 1.0], written, vector_fixed=True)
    runtime.stores.candidates.write_candidates("mf", 3, {"u": entry})
    click = ClickEvent(user_id="u", item_id="c2")
    await runtime.features.apply_batch("test", [SourcedEvent(click, "streamrec.clicks", 0, 0)])
    body = await _recs(client, "u", "mf", k=3)
    assert [i["item_id"] for i in body["items"]] == ["c1", "c3", "c4"]
    assert 0 <= body["state_age_ms"] < 60_000  # the click's state, not the ten-minute-old list


async def test_a_genre_filter_leaving_fewer_than_k_is_filled_from_popular(
    light: tuple[Any, Any, CountingVectors],
) -> None:
    runtime, client, fake = light
    click = ClickEvent(user_id="u", item_id="p3")  # seen: excluded from the fill too
    await runtime.features.apply_batch("test", [SourcedEvent(click, "streamrec.clicks", 0, 0)])
    body = await _recs(client, "u", "mf", k=4, genres="Drama")
    got = [(i["item_id"], i["genres"]) for i in body["items"]]
    # The model's Drama items first (c1, c3), then popular Drama items not seen (p1).
    assert got == [("c1", ["Drama"]), ("c3", ["Drama"]), ("p1", ["Drama"])]
    assert (body["model"], body["fallback"], body["version"]) == ("mf", False, 3)
    assert fake.calls == []


async def test_without_candidates_the_vector_query_serves(
    light: tuple[Any, Any, CountingVectors],
) -> None:
    _, client, fake = light
    body = await _recs(client, "other", "mf")  # no entry for this user
    assert [i["item_id"] for i in body["items"]] == ["from-vectors"]
    body = await _recs(client, "u", "mf", version=2)  # a pinned version without candidates
    assert body["version"] == 2
    body = await _recs(client, "u", "mf", exclude_seen=False)  # candidates left seen items out
    assert body["version"] == 7
    body = await _recs(client, "u", "sasrec")  # nothing live for sasrec in Redis
    assert fake.calls == [("recommend", "other")] + [("recommend", "u")] * 3
    pinned = await _recs(client, "u", "mf", version=3, k=2)  # pinned with candidates: Redis
    assert [i["item_id"] for i in pinned["items"]] == ["c1", "c2"] and len(fake.calls) == 4
    assert body["version"] == 7


async def test_rerank_takes_its_base_from_the_candidates(
    light: tuple[Any, Any, CountingVectors],
) -> None:
    _, client, fake = light
    body = await _recs(client, "u", "mf", k=3, rerank="dqn")  # no dqn: the base order stands
    assert body["rerank_fallback"] is True
    assert [i["item_id"] for i in body["items"]] == ["c1", "c2", "c3"]
    assert fake.calls == []


async def test_similar_items_from_precomputed_neighbours(
    light: tuple[Any, Any, CountingVectors],
) -> None:
    runtime, client, fake = light
    response = await client.get("/v1/items/c1/similar", params={"model": "mf", "k": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [(i["item_id"], i["score"]) for i in body["items"]] == [("c3", 0.9), ("c2", 0.8)]
    assert body["version"] == 3 and fake.calls == []
    # Deeper than the K kept (a full list may have more behind it): the vector query.
    runtime.stores.candidates.neighbours = 2
    response = await client.get("/v1/items/c1/similar", params={"model": "mf", "k": 5})
    assert response.json()["version"] == 7 and fake.calls == [("similar", "c1")]
    response = await client.get("/v1/items/c2/similar", params={"model": "mf"})  # none stored
    assert response.json()["version"] == 7 and fake.calls[-1] == ("similar", "c2")


async def test_the_live_pointer_is_remembered_for_its_ttl_then_read_again(stores: Stores) -> None:
    """One round trip per request: the pointer comes from memory for ``pointer_ttl_s``, and
    a swap is seen once it has passed (clock injected)."""
    now = [100.0]
    server = CandidateServer(stores.candidates, pointer_ttl_s=1.0, clock=lambda: now[0])
    stores.candidates.write_candidates("mf", 1, {"u1": Ranked(["a"], [1.0], 1)})
    stores.candidates.write_candidates("mf", 2, {"u1": Ranked(["b"], [1.0], 2)})
    assert await server.live_version("mf") is None
    stores.candidates.set_live("mf", 1)
    now[0] += 1.0
    state, found = await server.request_state("u1", "mf")
    assert state.stats == {} and found is not None
    assert (found.version, found.ranked.items) == (1, ["a"])

    stores.candidates.set_live("mf", 2)
    now[0] += 0.5  # within the ttl: the version remembered still serves (its lists complete)
    assert (await server.request_state("u1", "mf"))[1].version == 1  # type: ignore[union-attr]
    now[0] += 0.5
    assert (await server.request_state("u1", "mf"))[1].version == 2  # type: ignore[union-attr]
    # A pinned version bypasses the pointer; none computed for the user: None.
    assert (await server.request_state("u1", "mf", 1))[1].version == 1  # type: ignore[union-attr]
    assert (await server.request_state("nobody", "mf"))[1] is None
