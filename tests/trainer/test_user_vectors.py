"""User query vectors: history merge, per model kind, and the bulk pass over the archive."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
import torch
from sqlalchemy import Engine

from streamrec.core.datasets import synthetic
from streamrec.core.errors import InvalidInput
from streamrec.core.ids import IdKind, IdRegistry
from streamrec.schemas.events import ClickEvent, ImpressionEvent, RatingEvent, SourcedEvent
from streamrec.stores.catalog import Archive
from streamrec.trainer.data import Interactions, build
from streamrec.trainer.models import Query, build_model
from streamrec.trainer.publish import item_matrix
from streamrec.trainer.user_vectors import (
    LoadedModel,
    all_user_vectors,
    merge_history,
    model_histories,
    query_vectors,
)


@pytest.fixture
def ids(engine: Engine) -> IdRegistry:
    """The id registry on SQLite and, when configured, PostgreSQL (the archive is read in one
    streamed query: both drivers must stream it)."""
    return IdRegistry(engine)


@pytest.fixture
def inter(ids: IdRegistry) -> Interactions:
    data = synthetic(n_users=10, n_items=12, n_events=80, n_genres=2, seed=4)
    return build(data, ids)


def _loaded(name: str, inter: Interactions, **config: object) -> LoadedModel:
    net = build_model(name, inter, **config).eval()
    return LoadedModel(name, 1, net, item_matrix(net), f"users_{name}__v1")


def test_merge_history_appends_the_batch_and_moves_repeats_to_the_end() -> None:
    assert merge_history(["c", "b", "a"], ["d", "b"]) == ["a", "c", "d", "b"]
    assert merge_history([], ["x", "x"]) == ["x"]


def test_mf_uses_trained_rows_and_folds_in_new_users(inter: Interactions) -> None:
    model = _loaded("mf", inter, dim=4)
    new = inter.n_users + 5  # registered after training
    keep, vecs = query_vectors(model, [0, new, new + 1], [[1], [2, 3], []])
    assert keep == [0, 1]  # the new user without history gets no vector
    with torch.no_grad():
        trained = model.net.user_vectors(Query(torch.tensor([0])))
    np.testing.assert_allclose(vecs[0], trained[0].numpy(), rtol=1e-6)
    np.testing.assert_allclose(vecs[1], model.items[[2, 3]].mean(0), rtol=1e-6)


def test_sasrec_reads_the_sequence_and_skips_empty_histories(inter: Interactions) -> None:
    model = _loaded("sasrec", inter, dim=8, max_len=5, n_heads=2, inner=16)
    keep, vecs = query_vectors(model, [0, 1, 2], [[1, 2, 3], [], [3]])
    assert keep == [0, 2]
    assert vecs.shape == (2, 8) and np.isfinite(vecs).all()
    _, again = query_vectors(model, [7], [[1, 2, 3]])  # the user index plays no part
    np.testing.assert_allclose(again[0], vecs[0], rtol=1e-5)


def test_model_histories_keep_the_model_items_and_the_newest(inter: Interactions) -> None:
    model = _loaded("mf", inter, dim=4)
    index = {"a": 0, "b": 1, "c": 2, "late": inter.n_items + 3}  # late: newer than the model
    assert model_histories(model, [["a", "late", "b", "c"], ["gone"]], index, 2) == [[1, 2], []]


# -- the bulk pass -------------------------------------------------------------------------------


def _at(second: int) -> datetime:
    return datetime.fromtimestamp(1_700_000_000 + second, UTC)


def _archive(engine: Engine, events: list[RatingEvent | ClickEvent | ImpressionEvent]) -> None:
    Archive(engine).write_batch(
        [SourcedEvent(e, e.topic.value, 0, n) for n, e in enumerate(events)]
    )


def _newcomer_events(items: list[str]) -> list[RatingEvent | ClickEvent | ImpressionEvent]:
    """Written out of event-time order: by time c, a, b, a again (a moves to the end)."""
    c, a, b = items[:3]
    return [
        RatingEvent(user_id="newcomer", item_id=a, rating=4, ts=_at(400)),
        ClickEvent(user_id="newcomer", item_id=c, ts=_at(100)),
        RatingEvent(user_id="newcomer", item_id=b, rating=3, ts=_at(300)),
        RatingEvent(user_id="newcomer", item_id=a, rating=5, ts=_at(200)),
        # Impressions are not history: nothing the user chose.
        ImpressionEvent(user_id="newcomer", request_id="r", item_ids=[c], model="mf", ts=_at(500)),
    ]


def _collect(plan_batches: object) -> dict[int, np.ndarray]:
    found: dict[int, np.ndarray] = {}
    for ids, vectors, payloads in plan_batches:  # type: ignore[attr-defined]
        assert payloads is not None and len(payloads) == len(ids)
        for point, vector in zip(ids, np.asarray(vectors), strict=True):
            assert point not in found  # every user once
            found[int(point)] = vector
    return found


def test_every_user_gets_a_vector_trained_or_folded_in(
    inter: Interactions, ids: IdRegistry, engine: Engine
) -> None:
    model = _loaded("mf", inter, dim=4)
    items = ids.external_ids(IdKind.ITEM)
    trained_user = ids.external_ids(IdKind.USER)[0]
    late_item = "late-item"  # registered after training: no row in the model
    events = _newcomer_events(items)
    events += [
        RatingEvent(user_id=trained_user, item_id=items[5], rating=4, ts=_at(50)),
        RatingEvent(user_id="only-late", item_id=late_item, rating=4, ts=_at(60)),
    ]
    ids.assign(IdKind.ITEM, [late_item])  # as the archive group does, before it writes
    _archive(engine, events)  # "newcomer" and "only-late" are not registered yet
    progress: list[tuple[int, int]] = []

    plan = all_user_vectors(
        model,
        engine,
        ids,
        history=2,
        chunk=3,
        on_progress=lambda *p: progress.append(p),
    )
    # Three users with history, and the trained users without any.
    assert plan.total == 3 + (inter.n_users - 1)
    found = _collect(plan.batches)

    users = ids.lookup(IdKind.USER, ["newcomer", "only-late", trained_user])
    assert users["newcomer"] >= inter.n_users  # registered by the pass, beyond the model
    # Every trained user (trained row) and the newcomer (fold-in); not the user whose only
    # item is unknown to the model.
    assert set(found) == set(range(inter.n_users)) | {users["newcomer"]}
    with torch.no_grad():
        rows = model.net.user_vectors(Query(torch.arange(inter.n_users))).numpy()
    for user in range(inter.n_users):
        np.testing.assert_allclose(found[user], rows[user], rtol=1e-6)
    # Its two newest distinct items by event time are b then a: a mean of their vectors.
    _, a, b = (ids.lookup(IdKind.ITEM, [i])[i] for i in items[:3])
    np.testing.assert_allclose(found[users["newcomer"]], model.items[[b, a]].mean(0), rtol=1e-6)
    assert progress[-1] == (plan.total, plan.total)
    assert [d for d, _ in progress] == sorted(d for d, _ in progress)


def test_sasrec_reads_each_users_last_max_len_items_from_the_archive(
    inter: Interactions, ids: IdRegistry, engine: Engine
) -> None:
    model = _loaded("sasrec", inter, dim=8, max_len=2, n_heads=2, inner=16)
    items = ids.external_ids(IdKind.ITEM)
    _archive(engine, _newcomer_events(items))

    plan = all_user_vectors(model, engine, ids, history=50)
    assert plan.total == 1  # a sequence is needed: trained users without history get none
    found = _collect(plan.batches)

    newcomer = ids.lookup(IdKind.USER, ["newcomer"])["newcomer"]
    c, a, b = (ids.lookup(IdKind.ITEM, [i])[i] for i in items[:3])
    _, expected = query_vectors(model, [newcomer], [[b, a]])  # max_len 2 of c, b, a
    np.testing.assert_allclose(found[newcomer], expected[0], rtol=1e-5)
    _, other = query_vectors(model, [newcomer], [[c, a]])
    assert not np.allclose(found[newcomer], other[0])  # the order and the cut matter


def test_bulk_arguments_are_checked(inter: Interactions, ids: IdRegistry, engine: Engine) -> None:
    with pytest.raises(InvalidInput, match="history and chunk"):
        all_user_vectors(_loaded("mf", inter, dim=4), engine, ids, chunk=0)
