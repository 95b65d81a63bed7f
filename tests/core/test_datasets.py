"""MovieLens readers (all three layouts) and the synthetic generator."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamrec.core.datasets import detect_movielens_layout, load_movielens, synthetic
from streamrec.core.errors import InvalidInput


def _write(path: Path, text: str, encoding: str = "utf-8") -> None:
    path.write_text(text, encoding=encoding)


def test_csv_layout(tmp_path: Path) -> None:
    _write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,10,4,200\n2,10,3.5,100\n")
    _write(tmp_path / "movies.csv", "movieId,title,genres\n10,Heat (1995),Action|Crime\n")
    data = load_movielens(tmp_path)
    assert [(r.user_id, r.ts) for r in data.ratings] == [("2", 100), ("1", 200)]  # time order
    assert data.items["10"].genres == ("Action", "Crime") and data.items["10"].year == 1995


def test_ml100k_layout(tmp_path: Path) -> None:
    _write(tmp_path / "u.data", "1\t10\t4\t200\n2\t11\t5\t100\n")
    flags = ["0"] * 19
    flags[1] = flags[6] = "1"  # Action, Crime
    _write(
        tmp_path / "u.item",
        "10|Heat (1995)|01-Jan-1995||http://x|" + "|".join(flags) + "\n",
        encoding="latin-1",
    )
    data = load_movielens(tmp_path)
    assert detect_movielens_layout(tmp_path) == "ml-100k"
    assert [r.item_id for r in data.ratings] == ["11", "10"]
    assert data.items["10"].genres == ("Action", "Crime")


def test_ml1m_layout(tmp_path: Path) -> None:
    _write(tmp_path / "ratings.dat", "1::10::4::200\n")
    _write(tmp_path / "movies.dat", "10::Café (2001)::Comedy|Romance\n", encoding="latin-1")
    data = load_movielens(tmp_path)
    assert data.ratings[0].rating == 4.0
    assert data.items["10"].title == "Café (2001)" and data.items["10"].year == 2001


def test_a_folder_without_ratings_is_explained(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"expected ratings\.csv"):
        load_movielens(tmp_path)
    with pytest.raises(InvalidInput, match="does not exist"):
        load_movielens(tmp_path / "missing")


def test_synthetic_is_reproducible_time_ordered_and_clustered() -> None:
    a = synthetic(n_users=50, n_items=40, n_events=2000, seed=1)
    b = synthetic(n_users=50, n_items=40, n_events=2000, seed=1)
    assert a.ratings == b.ratings
    assert [r.ts for r in a.ratings] == sorted(r.ts for r in a.ratings)
    # users prefer one genre: most of a heavy user's items share the top genre
    heavy = max(
        {r.user_id for r in a.ratings}, key=lambda u: sum(r.user_id == u for r in a.ratings)
    )
    genres = [a.items[r.item_id].genres[0] for r in a.ratings if r.user_id == heavy]
    top = max(set(genres), key=genres.count)
    assert genres.count(top) / len(genres) > 0.6


@pytest.mark.movielens
def test_shared_ml100k_loads(ml100k: Path) -> None:
    data = load_movielens(ml100k)
    assert len(data) == 100_000 and len(data.items) == 1682
    assert len({r.user_id for r in data.ratings}) == 943
