"""The DQN edge's inference (``trainer.policy``): the re-ranker served from the versions held
without I/O, and the content rows it reads (the HTTP side is tests/api/test_rl.py and
tests/api/test_rerank.py)."""

from __future__ import annotations

from typing import Any, NoReturn

import numpy as np
import pytest

from streamrec.core.ids import IdKind
from streamrec.stores.factory import Stores
from streamrec.trainer.doc2vec import Doc2VecConfig, Doc2VecModel
from streamrec.trainer.policy import DOC2VEC, ActiveModels, ContentRows, Loaded, RLServer
from streamrec.trainer.rl import Exploration, user_state
from tests.api.test_rl import DIM, ITEMS, RELOAD_S, _dqn
from tests.conftest import FakeClock

CANDIDATES = ["m4", "blank", "m0", "m7", "new1", "m2", "m5", "m8", "m1"]
RECENT = ["m3", "m6", "blank", "gone"]
STATS = {"ratings": "3", "rating_sum": "11", "clicks": "2", "impressions": "9"}


def _doc2vec(stores: Stores, seed: int = 0) -> Doc2VecModel:
    config = Doc2VecConfig(vector_size=DIM, epochs=10, seed=seed)
    return Doc2VecModel(config).fit(ITEMS, stores.ids)


def _refuse(*_: Any, **__: Any) -> NoReturn:
    raise AssertionError("I/O on the request path")


def test_content_rows_hold_the_items_with_a_vector_by_registry_index(stores: Stores) -> None:
    """Left out: an item without text (an all-zero row), one registered after the version (no
    row) and one the registry does not know; the state is the mean of the recent rows found."""
    d2v = _doc2vec(stores)
    stores.ids.assign(IdKind.ITEM, ["new1"])  # registered after the version: no row
    rows = ContentRows.read(Loaded(DOC2VEC, 1, d2v), stores.ids)
    items, vectors = rows.vectors([*CANDIDATES, "unknown"])
    assert items == [i for i in CANDIDATES if i not in ("blank", "new1")]
    index = stores.ids.lookup(IdKind.ITEM, items)
    table = d2v.item_vectors()
    np.testing.assert_array_equal(vectors, table[[index[i] for i in items]])
    recent = stores.ids.lookup(IdKind.ITEM, ["m3", "m6"])  # RECENT's items with a vector
    mean = table[[recent["m3"], recent["m6"]]]
    np.testing.assert_array_equal(rows.state(RECENT, STATS), user_state(mean, STATS, DIM))


def test_rerank_held_serves_what_rerank_serves_without_io(
    stores: Stores, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = stores.models
    registry.register("doc2vec", _doc2vec(stores), activate=True)
    server = RLServer(ActiveModels(registry, RELOAD_S, clock=clock), stores.ids, Exploration())
    assert server.rerank_held(CANDIDATES, RECENT, STATS, 5) is None  # nothing held yet

    # doc2vec without a dqn: the base order, logged; then from what is held.
    base = server.rerank(CANDIDATES, RECENT, STATS, 5)
    assert base.dqn_version is None and [i for i, _ in base.items] == CANDIDATES[:5]
    held = server.rerank_held(CANDIDATES, RECENT, STATS, 5)
    assert held is not None and held.items == base.items

    registry.register("dqn", _dqn(seed=0), activate=True)
    clock.advance(2 * RELOAD_S)  # due for a check: the thread's path, which makes it
    assert server.rerank_held(CANDIDATES, RECENT, STATS, 5) is None
    full = server.rerank(CANDIDATES, RECENT, STATS, 5)
    assert full.dqn_version == 1
    with monkeypatch.context() as io:
        io.setattr(registry, "active", _refuse)
        io.setattr(registry, "load", _refuse)
        io.setattr(stores.ids, "lookup", _refuse)
        io.setattr(stores.ids, "external_ids", _refuse)
        held = server.rerank_held(CANDIDATES, RECENT, STATS, 5)
    assert held is not None
    assert (held.dqn_version, held.doc2vec_version, held.items) == (1, 1, full.items)
    np.testing.assert_array_equal(held.state, full.state)
    assert held.propensities == full.propensities

    # A new doc2vec version: its rows are read in the thread's path before the loop serves it.
    registry.register("doc2vec", _doc2vec(stores, seed=1), activate=True)
    clock.advance(2 * RELOAD_S)
    assert server.rerank_held(CANDIDATES, RECENT, STATS, 5) is None
    assert server.rerank(CANDIDATES, RECENT, STATS, 5).doc2vec_version == 2
    held = server.rerank_held(CANDIDATES, RECENT, STATS, 5)
    assert held is not None and held.doc2vec_version == 2
