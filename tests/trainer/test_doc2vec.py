from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamrec.core.datasets import Item
from streamrec.core.errors import InvalidInput
from streamrec.core.ids import IdKind, IdRegistry
from streamrec.trainer.doc2vec import Doc2VecConfig, Doc2VecModel

FAST = Doc2VecConfig(vector_size=16, epochs=30)
TOPICS = ("space ship alien planet", "love wedding romance kiss", "ghost blood scream night")


def _items(n: int = 30) -> dict[str, Item]:
    return {
        f"m{i}": Item(
            f"m{i}",
            f"Film {i}",
            (("Sci-Fi", "Romance", "Horror")[i % 3],),
            text=f"{TOPICS[i % 3]} story {i}",
        )
        for i in range(n)
    }


@pytest.fixture
def fitted(registry: IdRegistry) -> Doc2VecModel:
    return Doc2VecModel(FAST).fit(_items(), registry)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-9))


def test_item_vectors_follow_the_registry(fitted: Doc2VecModel, registry: IdRegistry) -> None:
    index = registry.lookup(IdKind.ITEM, ["m0", "m3", "m1"])
    vectors = fitted.item_vectors()
    assert vectors.shape == (30, 16)
    # same topic closer than a different topic
    assert _cos(vectors[index["m0"]], vectors[index["m3"]]) > _cos(
        vectors[index["m0"]], vectors[index["m1"]]
    )


def test_infer_is_deterministic_and_bulk_matches(fitted: Doc2VecModel) -> None:
    a = fitted.infer("alien planet")
    assert np.array_equal(a, fitted.infer("alien planet"))
    bulk = fitted.infer_many(["alien planet", "romance kiss"])
    assert bulk.shape == (2, 16)
    assert np.array_equal(bulk[0], a)
    assert np.array_equal(bulk[1], fitted.infer("romance kiss"))


def test_save_load_round_trip(fitted: Doc2VecModel, tmp_path: Path) -> None:
    fitted.save_artifacts(tmp_path)
    assert not list(tmp_path.glob("*.pkl"))
    loaded = Doc2VecModel.load_artifacts(tmp_path)
    assert np.array_equal(loaded.item_vectors(), fitted.item_vectors())
    for text in ("alien planet", "ghost in the night", "unknown words only"):
        assert np.array_equal(loaded.infer(text), fitted.infer(text))


def test_untrained_and_empty_are_refused(registry: IdRegistry) -> None:
    with pytest.raises(InvalidInput):
        Doc2VecModel(FAST).infer("x")
    with pytest.raises(InvalidInput):
        Doc2VecModel(FAST).fit({"a": Item("a", "", ())}, registry)
