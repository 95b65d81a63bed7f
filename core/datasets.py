"""Readers for interaction data that both the replay CLI and the trainer use.

``load_movielens(path)`` reads any MovieLens release a user downloads:

* the "latest" CSV layout (ml-latest, ml-25m, and ``../shared/data/ml-100k``):
  ``ratings.csv`` + ``movies.csv`` (+ optional ``users.csv``: userId,age,gender,occupation);
* ml-100k's original ``u.data`` (tab-separated) + ``u.item`` (pipe-separated, genre flags)
  (+ ``u.user``);
* ml-1m / ml-10m ``ratings.dat`` + ``movies.dat`` (``::``-separated) (+ ``users.dat``).

User demographics are optional everywhere: releases without them (ml-latest, ml-10m) give an
empty ``InteractionData.users`` and the models that use them fall back to ids alone.

``synthetic(...)`` generates a stream with power-law users and items, genre clusters and
time order, so everything but the MovieLens tests runs on data the project makes itself.
All ids come out as strings; ratings are sorted by event time (ties keep file order).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streamrec.core.errors import InvalidInput

_YEAR = re.compile(r"\((\d{4})\)\s*$")
# ml-100k's u.item genre flag columns, in file order.
ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)


@dataclass(frozen=True, slots=True)
class Rating:
    user_id: str
    item_id: str
    rating: float
    ts: int  # Unix seconds


@dataclass(frozen=True, slots=True)
class Item:
    item_id: str
    title: str
    genres: tuple[str, ...]
    year: int | None = None
    text: str = ""


@dataclass(frozen=True, slots=True)
class User:
    """Demographics where a dataset has them (ml-100k, ml-1m); any field may be unknown.
    ml-1m codes age and occupation as numbers; they are kept as the strings found."""

    user_id: str
    age: int | None = None
    gender: str | None = None
    occupation: str | None = None


@dataclass
class InteractionData:
    """Ratings in event-time order plus the catalog (and users, when known) they refer to."""

    name: str
    ratings: list[Rating]
    items: dict[str, Item] = field(default_factory=dict)
    users: dict[str, User] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ratings)


def _year(title: str) -> int | None:
    match = _YEAR.search(title)
    return int(match.group(1)) if match else None


def _item(item_id: str, title: str, genres: tuple[str, ...]) -> Item:
    genres = tuple(g for g in genres if g and g != "(no genres listed)")
    return Item(item_id=item_id, title=title.strip(), genres=genres, year=_year(title))


def _user(user_id: str, age: str, gender: str, occupation: str) -> User:
    age = age.strip()
    return User(
        user_id,
        int(age) if age.isdigit() else None,
        gender.strip() or None,
        occupation.strip() or None,
    )


def _read_users(path: Path, sep: str, columns: tuple[int, int, int]) -> dict[str, User]:
    """A ``sep``-separated users file with the user id first and age, gender, occupation at
    ``columns``; a missing file gives no users."""
    if not path.is_file():
        return {}
    users: dict[str, User] = {}
    with path.open(encoding="latin-1") as handle:
        for line in handle:
            fields = line.rstrip("\n").split(sep)
            if len(fields) > max(columns):
                age, gender, occupation = (fields[c] for c in columns)
                users[fields[0]] = _user(fields[0], age, gender, occupation)
    return users


def detect_movielens_layout(path: Path) -> str:
    """Name the layout of a MovieLens folder, or explain what was expected."""
    if (path / "ratings.csv").is_file():
        return "csv"
    if (path / "u.data").is_file():
        return "ml-100k"
    if (path / "ratings.dat").is_file():
        return "dat"
    raise InvalidInput(
        f"{path} is not a MovieLens folder: expected ratings.csv (+movies.csv), "
        "u.data (+u.item) or ratings.dat (+movies.dat)"
    )


Reader = tuple[list[Rating], dict[str, Item], dict[str, User]]


def _read_csv(path: Path) -> Reader:
    ratings: list[Rating] = []
    with (path / "ratings.csv").open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            ratings.append(
                Rating(row["userId"], row["movieId"], float(row["rating"]), int(row["timestamp"]))
            )
    items: dict[str, Item] = {}
    movies = path / "movies.csv"
    if movies.is_file():
        with movies.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                genres = tuple(row["genres"].split("|"))
                items[row["movieId"]] = _item(row["movieId"], row["title"], genres)
    users: dict[str, User] = {}
    people = path / "users.csv"
    if people.is_file():
        with people.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                fields = (row.get(c) or "" for c in ("age", "gender", "occupation"))
                users[row["userId"]] = _user(row["userId"], *fields)
    return ratings, items, users


def _read_ml100k(path: Path) -> Reader:
    ratings: list[Rating] = []
    with (path / "u.data").open(encoding="latin-1") as handle:
        for line in handle:
            if line.strip():
                user, item, rating, ts = line.split("\t")
                ratings.append(Rating(user, item, float(rating), int(ts)))
    items: dict[str, Item] = {}
    catalog = path / "u.item"
    if catalog.is_file():
        with catalog.open(encoding="latin-1") as handle:
            for line in handle:
                fields = line.rstrip("\n").split("|")
                if len(fields) < 5 + len(ML100K_GENRES):
                    continue
                flags = fields[5 : 5 + len(ML100K_GENRES)]
                genres = tuple(g for g, f in zip(ML100K_GENRES, flags, strict=True) if f == "1")
                items[fields[0]] = _item(fields[0], fields[1], genres)
    # u.user: user id | age | gender | occupation | zip code
    return ratings, items, _read_users(path / "u.user", "|", (1, 2, 3))


def _read_dat(path: Path) -> Reader:
    ratings: list[Rating] = []
    with (path / "ratings.dat").open(encoding="latin-1") as handle:
        for line in handle:
            if line.strip():
                user, item, rating, ts = line.strip().split("::")
                ratings.append(Rating(user, item, float(rating), int(ts)))
    items: dict[str, Item] = {}
    movies = path / "movies.dat"
    if movies.is_file():
        with movies.open(encoding="latin-1") as handle:
            for line in handle:
                if line.strip():
                    item, title, genres = line.rstrip("\n").split("::")
                    items[item] = _item(item, title, tuple(genres.split("|")))
    # users.dat: UserID::Gender::Age::Occupation::Zip-code (age and occupation are codes)
    return ratings, items, _read_users(path / "users.dat", "::", (2, 1, 3))


_READERS = {"csv": _read_csv, "ml-100k": _read_ml100k, "dat": _read_dat}


def load_movielens(path: str | Path) -> InteractionData:
    """Read a MovieLens folder in any of the supported layouts, ratings in event-time order."""
    folder = Path(path)
    if not folder.is_dir():
        raise InvalidInput(f"MovieLens folder {folder} does not exist")
    ratings, items, users = _READERS[detect_movielens_layout(folder)](folder)
    ratings.sort(key=lambda r: r.ts)  # stable: ties keep file order
    return InteractionData(name=folder.name, ratings=ratings, items=items, users=users)


SYNTHETIC_GENRES = (
    "Action",
    "Comedy",
    "Drama",
    "Horror",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "Documentary",
)


def synthetic(
    n_users: int = 1000,
    n_items: int = 500,
    n_events: int = 20_000,
    n_genres: int = 8,
    seed: int = 0,
    start_ts: int = 1_700_000_000,
    seconds_per_event: float = 1.0,
    cluster_affinity: float = 0.8,
) -> InteractionData:
    """A reproducible interaction stream with structure a model can learn.

    Users and items follow Zipf-like popularity (exponent ~1). Each item has one primary
    genre (its cluster); each user prefers one genre and picks from it with probability
    ``cluster_affinity``. Ratings are higher inside the user's preferred genre.
    """
    if min(n_users, n_items, n_events, n_genres) < 1:
        raise InvalidInput("synthetic data needs at least one user, item, event and genre")
    rng = np.random.default_rng(seed)
    genres = [
        SYNTHETIC_GENRES[g] if g < len(SYNTHETIC_GENRES) else f"Genre{g}" for g in range(n_genres)
    ]
    item_genre = rng.integers(0, n_genres, size=n_items)
    item_weight = 1.0 / np.arange(1, n_items + 1)
    rng.shuffle(item_weight)
    user_weight = 1.0 / np.arange(1, n_users + 1) ** 0.8
    user_genre = rng.integers(0, n_genres, size=n_users)

    by_genre = [np.flatnonzero(item_genre == g) for g in range(n_genres)]
    genre_probs = [
        item_weight[idx] / item_weight[idx].sum() if len(idx) else None for idx in by_genre
    ]
    all_probs = item_weight / item_weight.sum()

    users = rng.choice(n_users, size=n_events, p=user_weight / user_weight.sum())
    chosen = rng.choice(n_items, size=n_events, p=all_probs)
    inside = rng.random(n_events) < cluster_affinity
    for g in range(n_genres):  # vectorised per genre: one draw for all of its events
        mask = inside & (user_genre[users] == g)
        if genre_probs[g] is not None and mask.any():
            chosen[mask] = rng.choice(by_genre[g], size=int(mask.sum()), p=genre_probs[g])
    liked = item_genre[chosen] == user_genre[users]
    values = np.clip(rng.normal(np.where(liked, 4.3, 2.6), 0.7), 1, 5).round()
    ratings = [
        Rating(f"u{u}", f"i{i}", float(v), start_ts + int(t * seconds_per_event))
        for t, (u, i, v) in enumerate(
            zip(users.tolist(), chosen.tolist(), values.tolist(), strict=True)
        )
    ]
    items = {
        f"i{i}": Item(
            f"i{i}",
            f"Item {i}",
            (genres[item_genre[i]],),
            2000 + i % 25,
            f"an item about {genres[item_genre[i]].lower()}",
        )
        for i in range(n_items)
    }
    return InteractionData(name="synthetic", ratings=ratings, items=items)


def iter_rating_counts(data: InteractionData) -> Iterator[tuple[str, int]]:
    """(user_id, number of ratings) for every user, the ground truth replay tests check."""
    counts: dict[str, int] = {}
    for r in data.ratings:
        counts[r.user_id] = counts.get(r.user_id, 0) + 1
    yield from counts.items()
