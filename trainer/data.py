"""Interaction data as index arrays through the one id registry, the splits evaluation uses,
and the training batches each kind of model consumes.

Every user and item index here comes from ``core.ids.IdRegistry``: a model trained today and
one retrained next week with more items agree on what row 17 is. Table sizes are the registry
sizes at build time, so rows may exist for items a given dataset never mentions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

import numpy as np
import torch
from sqlalchemy import Engine, select

from streamrec.core.datasets import InteractionData, Item, Rating, User
from streamrec.core.errors import InvalidInput
from streamrec.core.ids import IdKind, IdRegistry
from streamrec.stores.catalog import (
    InteractionRow,
    ItemRow,
    LogPosition,
    Watermark,
    between_watermarks,
)

Batch = dict[str, torch.Tensor]


@dataclass
class Interactions:
    """Parallel arrays, one row per interaction, in event-time order."""

    users: np.ndarray  # (N,) int64 registry user index
    items: np.ndarray  # (N,) int64 registry item index
    ratings: np.ndarray  # (N,) float32
    ts: np.ndarray  # (N,) int64 unix seconds
    n_users: int  # user registry size when built
    n_items: int  # item registry size when built
    genres: tuple[str, ...]  # genre vocabulary (sorted)
    item_genres: np.ndarray  # (n_items, n_genres) float32 multi-hot
    # Demographic features ("age=25-34", "gender=F", "occupation=writer"), empty when the data
    # has none; rows of user_features are registry user indices (zeros: unknown).
    user_feature_names: tuple[str, ...] = ()
    user_features: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    # Item features besides genres ("year=1995", "decade=1990s"), the same way round: rows are
    # registry item indices, empty when the catalog has no release years.
    item_feature_names: tuple[str, ...] = ()
    item_features: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))

    def __len__(self) -> int:
        return len(self.users)

    def subset(self, idx: np.ndarray) -> Interactions:
        """Rows ``idx`` (kept in time order) with the same sizes and catalog."""
        idx = np.sort(np.asarray(idx, dtype=np.int64))
        return replace(
            self,
            users=self.users[idx],
            items=self.items[idx],
            ratings=self.ratings[idx],
            ts=self.ts[idx],
        )

    @cached_property
    def known_keys(self) -> np.ndarray:
        """Sorted unique ``user * n_items + item`` of every row: the membership index negative
        sampling checks draws against. Cached because it is the same every epoch and building
        it (a sort of all rows) used to be most of a BPR epoch."""
        return np.unique(self.users * self.n_items + self.items)

    @property
    def window(self) -> tuple[int, int]:
        """First and last event time seen, recorded with every model version."""
        if len(self) == 0:
            return (0, 0)
        return (int(self.ts.min()), int(self.ts.max()))


def build(data: InteractionData, registry: IdRegistry) -> Interactions:
    """Map ``data`` through the id registry (registering new ids at the end)."""
    if not data.ratings:
        raise InvalidInput(f"dataset {data.name!r} has no interactions")
    # Catalog order first so unrated catalog items also get a row (cold-start content vectors).
    item_map = registry.assign(IdKind.ITEM, [*data.items, *(r.item_id for r in data.ratings)])
    user_map = registry.assign(IdKind.USER, (r.user_id for r in data.ratings))
    n_users, n_items = registry.size(IdKind.USER), registry.size(IdKind.ITEM)
    genres = tuple(sorted({g for item in data.items.values() for g in item.genres}))
    feature_names, features = user_feature_matrix(data.users, user_map, n_users)
    item_names, item_features = item_feature_matrix(data.items, item_map, n_items)
    return Interactions(
        users=np.fromiter((user_map[r.user_id] for r in data.ratings), np.int64, len(data)),
        items=np.fromiter((item_map[r.item_id] for r in data.ratings), np.int64, len(data)),
        ratings=np.fromiter((r.rating for r in data.ratings), np.float32, len(data)),
        ts=np.fromiter((r.ts for r in data.ratings), np.int64, len(data)),
        n_users=n_users,
        n_items=n_items,
        genres=genres,
        item_genres=item_genre_matrix(data.items, item_map, genres, n_items),
        user_feature_names=feature_names,
        user_features=features,
        item_feature_names=item_names,
        item_features=item_features,
    )


def item_genre_matrix(
    items: dict[str, Item], item_map: dict[str, int], genres: tuple[str, ...], n_items: int
) -> np.ndarray:
    """(n_items, n_genres) multi-hot; genres outside the vocabulary are ignored."""
    column = {g: j for j, g in enumerate(genres)}
    matrix = np.zeros((n_items, len(genres)), dtype=np.float32)
    for item_id, item in items.items():
        row = item_map.get(item_id)
        if row is None:
            continue
        for genre in item.genres:
            if genre in column:
                matrix[row, column[genre]] = 1.0
    return matrix


# MovieLens 1M's age groups; ml-1m stores the group's lower bound, ml-100k exact ages.
AGE_GROUPS = (
    (18, "<18"),
    (25, "18-24"),
    (35, "25-34"),
    (45, "35-44"),
    (50, "45-49"),
    (56, "50-55"),
)


def age_group(age: int) -> str:
    for upper, label in AGE_GROUPS:
        if age < upper:
            return label
    return "56+"


def user_feature_names(user: User) -> list[str]:
    """The one-hot features of one user: age group, gender, occupation (whichever are known)."""
    names = []
    if user.age is not None:
        names.append(f"age={age_group(user.age)}")
    if user.gender:
        names.append(f"gender={user.gender}")
    if user.occupation:
        names.append(f"occupation={user.occupation}")
    return names


def user_feature_matrix(
    users: dict[str, User], user_map: dict[str, int], n_users: int
) -> tuple[tuple[str, ...], np.ndarray]:
    """The feature vocabulary (sorted) and an (n_users, n_features) float32 multi-hot matrix
    of the users in ``user_map`` (others, and users without demographics, are all zeros)."""
    per_user = {user_map[u]: user_feature_names(user) for u, user in users.items() if u in user_map}
    return _multi_hot(per_user, n_users)


def item_feature_names(item: Item) -> list[str]:
    """The one-hot features of one item besides its genres: its release year, as a category
    (RecBole's ``release_year:token``), and its decade, which old and rare years share."""
    if item.year is None:
        return []
    return [f"year={item.year}", f"decade={item.year // 10 * 10}s"]


def item_feature_matrix(
    items: dict[str, Item], item_map: dict[str, int], n_items: int
) -> tuple[tuple[str, ...], np.ndarray]:
    """The item feature vocabulary (sorted) and an (n_items, n_features) multi-hot matrix,
    like ``user_feature_matrix``."""
    per_item = {item_map[i]: item_feature_names(item) for i, item in items.items() if i in item_map}
    return _multi_hot(per_item, n_items)


def _multi_hot(per_row: dict[int, list[str]], n_rows: int) -> tuple[tuple[str, ...], np.ndarray]:
    vocab = tuple(sorted({name for names in per_row.values() for name in names}))
    column = {name: j for j, name in enumerate(vocab)}
    matrix = np.zeros((n_rows, len(vocab)), dtype=np.float32)
    for row, names in per_row.items():
        matrix[row, [column[n] for n in names]] = 1.0
    return vocab, matrix


# First and last offset read per (Kafka log, topic, partition), both included.
OffsetRanges = Mapping[LogPosition, tuple[int, int]]


@dataclass(frozen=True)
class DataWindow:
    """What a training run saw, recorded with the version it registers (``as_dict`` is the
    registry's ``data_window``): the source, the counts, the event-time span and, for the
    archive, the Kafka offsets it covered per log, topic and partition (their ends are the
    watermark it read up to) and the watermark it started above, if any."""

    source: str  # "archive", "synthetic" or the dataset's name
    events: int  # interactions
    users: int  # distinct users in them
    items: int  # distinct items in them
    catalog_items: int  # items in the catalog read with them
    start_ts: int | None  # first and last event time (Unix seconds); None without events
    end_ts: int | None
    offsets: OffsetRanges | None = None  # archive only: the offsets of the rows read
    since: Watermark | None = None  # archive only: rows at or below it were left out

    @property
    def watermark(self) -> Watermark | None:
        """The newest offset read per position (archive only): the ``since`` of a later read
        that wants only what came after, or the ``until`` that reads the same rows again."""
        if self.offsets is None:
            return None
        return Watermark({position: last for position, (_, last) in self.offsets.items()})

    @classmethod
    def of(
        cls,
        data: InteractionData,
        source: str,
        offsets: OffsetRanges | None = None,
        since: Watermark | None = None,
    ) -> DataWindow:
        times = [r.ts for r in data.ratings]
        return cls(
            source=source,
            events=len(data.ratings),
            users=len({r.user_id for r in data.ratings}),
            items=len({r.item_id for r in data.ratings}),
            catalog_items=len(data.items),
            start_ts=min(times) if times else None,
            end_ts=max(times) if times else None,
            offsets=offsets,
            since=since,
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready; ``start_ts``/``end_ts``/``events`` keep the keys versions had before.
        ``offsets`` rows are ``{"topic", "partition", "first", "last", "log_id"}``."""
        out: dict[str, Any] = {
            "source": self.source,
            "events": self.events,
            "users": self.users,
            "items": self.items,
            "catalog_items": self.catalog_items,
            "start_ts": self.start_ts,
            "end_ts": self.end_ts,
        }
        if self.offsets is not None:
            out["offsets"] = [
                {"topic": t, "partition": p, "first": first, "last": last, "log_id": log_id}
                for (log_id, t, p), (first, last) in sorted(
                    self.offsets.items(), key=lambda kv: (kv[0][0] or "", kv[0][1], kv[0][2])
                )
            ]
        if self.since is not None:
            out["since"] = self.since.to_json()
        return out


def recorded_watermark(data_window: Mapping[str, Any]) -> Watermark | None:
    """The watermark a registered version read up to (the ends of its recorded ``offsets``),
    for instance the ``since`` of the next round; None when it was not trained on the archive
    or did not record offsets."""
    rows = data_window.get("offsets")
    if not isinstance(rows, list):
        return None
    return Watermark.from_json(
        {
            "log_id": r.get("log_id"),
            "topic": r["topic"],
            "partition": r["partition"],
            "offset": r["last"],
        }
        for r in rows
    )


@dataclass(frozen=True)
class ArchiveRead:
    """Interactions read from the archive and the offsets of exactly the rows read."""

    data: InteractionData
    offsets: dict[LogPosition, tuple[int, int]]

    @property
    def watermark(self) -> Watermark:
        return Watermark({position: last for position, (_, last) in self.offsets.items()})


def _offset_ranges(
    rows: Iterable[tuple[str | None, str, int, int]],
) -> dict[LogPosition, tuple[int, int]]:
    ranges: dict[LogPosition, tuple[int, int]] = {}
    for log_id, topic, partition, offset in rows:
        key = (log_id, topic, partition)
        first, last = ranges.get(key, (offset, offset))
        ranges[key] = (min(first, offset), max(last, offset))
    return ranges


def read_archive(
    engine: Engine,
    types: tuple[str, ...] = ("rating",),
    *,
    until: Watermark | None = None,
    since: Watermark | None = None,
) -> ArchiveRead:
    """The SQL interactions archive (and items catalog) as ``InteractionData``: rows above
    ``since`` and at or below ``until`` (``stores.catalog.Watermark``; None: no bound), and the
    offsets of the rows read, whose ends are its watermark (one SELECT, so it is exactly what
    was read even while the archive group keeps writing).

    Only rating events by default; clicks (``types=("rating", "click")``) count as a rating of
    5.0 so implicit models see them as positives. The catalog is read whole (it has no log
    positions): items newer than the watermark get a row and stay untrained.
    """
    t = InteractionRow.__table__.c
    query = (
        select(t.user_id, t.item_id, t.rating, t.ts, t.log_id, t.topic, t.partition, t.offset)
        .where(t.type.in_(types), t.item_id.is_not(None), *between_watermarks(since, until))
        .order_by(t.ts, t.offset)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
        catalog = conn.execute(select(ItemRow.__table__)).mappings().all()
    ratings = [
        # item_id IS NOT NULL above: every row names an item
        Rating(row.user_id, str(row.item_id), _rating(row.rating), _unix(row.ts))
        for row in rows
    ]
    items = {
        row["item_id"]: Item(
            row["item_id"],
            row["title"] or "",
            tuple(row["genres"] or ()),
            row["year"],
            row["text"] or "",
        )
        for row in catalog
    }
    offsets = _offset_ranges((r.log_id, r.topic, r.partition, r.offset) for r in rows)
    return ArchiveRead(InteractionData(name="archive", ratings=ratings, items=items), offsets)


def from_archive(
    engine: Engine,
    types: tuple[str, ...] = ("rating",),
    *,
    until: Watermark | None = None,
    since: Watermark | None = None,
) -> InteractionData:
    """``read_archive``'s data alone."""
    return read_archive(engine, types, until=until, since=since).data


def _rating(value: float | None) -> float:
    return float(value) if value is not None else 5.0  # a click: a positive


def _unix(ts: datetime) -> int:
    # SQLite hands back naive datetimes; the archive writes UTC.
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return int(ts.timestamp())


# --- splits -----------------------------------------------------------------------------------


@dataclass
class Split:
    """Row indices into one ``Interactions`` for each part."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray


def _user_groups(users: np.ndarray, order: np.ndarray) -> list[np.ndarray]:
    """Row indices per user, keeping the order given by ``order``."""
    ordered = order[np.argsort(users[order], kind="stable")]
    bounds = np.flatnonzero(np.diff(users[ordered])) + 1
    return np.split(ordered, bounds) if len(ordered) else []


def leave_one_out(inter: Interactions) -> Split:
    """Per user by time: last → test, second last → valid, the rest → train.

    Users with fewer than three interactions stay entirely in train.
    """
    train, valid, test = [], [], []
    for rows in _user_groups(inter.users, np.arange(len(inter))):
        if len(rows) < 3:
            train.append(rows)
            continue
        train.append(rows[:-2])
        valid.append(rows[-2:-1])
        test.append(rows[-1:])
    return Split(*(_concat(p) for p in (train, valid, test)))


def split_counts(total: int, ratios: tuple[float, ...]) -> list[int]:
    """RecBole's ``_calc_split_ids``: floor every part, give the rest to the first, then move one
    row to each small part whose share would have been a fraction of a row."""
    counts = [int(r * total) for r in ratios]
    counts[0] = total - sum(counts[1:])
    for i in range(1, len(ratios)):
        if counts[0] <= 1:
            break
        if 0 < ratios[-i] * total < 1:
            counts[-i] += 1
            counts[0] -= 1
    return counts


def random_split(
    inter: Interactions,
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 2020,
    by_user: bool = True,
) -> Split:
    """RecBole's random ordering split (RO): shuffle, then cut each user's rows (or all rows
    when ``by_user`` is false, as RecBole does for context-aware models) 80/10/10."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(inter))
    groups = _user_groups(inter.users, order) if by_user else [order]
    parts: list[list[np.ndarray]] = [[], [], []]
    for rows in groups:
        bounds = np.cumsum(split_counts(len(rows), ratios))[:-1]
        for part, chunk in zip(parts, np.split(rows, bounds), strict=True):
            part.append(chunk)
    return Split(*(_concat(p) for p in parts))


def _concat(chunks: list[np.ndarray]) -> np.ndarray:
    return np.sort(np.concatenate(chunks)) if chunks else np.zeros(0, dtype=np.int64)


@dataclass
class EvalSet:
    """The users judged on one part, their targets, what to hide and their history."""

    users: np.ndarray  # (U,)
    targets: list[np.ndarray]  # positives per user
    seen: list[np.ndarray]  # items to hide from the ranking (earlier parts)
    history: list[np.ndarray]  # time-ordered item indices before the target (sequential input)


def eval_set(inter: Interactions, split: Split, part: str) -> EvalSet:
    """``part`` is "valid" (history = train) or "test" (history = train + valid)."""
    if part not in ("valid", "test"):
        raise InvalidInput(f"part must be 'valid' or 'test', not {part!r}")
    target_rows = split.valid if part == "valid" else split.test
    before = split.train if part == "valid" else np.concatenate([split.train, split.valid])
    before_groups = {int(inter.users[g[0]]): g for g in _user_groups(inter.users, np.sort(before))}
    users, targets, seen, history = [], [], [], []
    for rows in _user_groups(inter.users, np.sort(target_rows)):
        user = int(inter.users[rows[0]])
        prior = before_groups.get(user, np.zeros(0, dtype=np.int64))
        users.append(user)
        targets.append(np.unique(inter.items[rows]))
        seen.append(np.unique(inter.items[prior]))
        history.append(inter.items[prior])  # rows are time-ordered
    return EvalSet(np.asarray(users, dtype=np.int64), targets, seen, history)


def sequences(inter: Interactions) -> dict[int, np.ndarray]:
    """Time-ordered item indices per user."""
    return {
        int(inter.users[g[0]]): inter.items[g]
        for g in _user_groups(inter.users, np.arange(len(inter)))
    }


def pad_sequences(seqs: list[np.ndarray], max_len: int) -> torch.Tensor:
    """(B, max_len) of item index + 1, left-padded with 0, keeping the most recent items."""
    out = torch.zeros((len(seqs), max_len), dtype=torch.long)
    for row, seq in enumerate(seqs):
        tail = seq[-max_len:]
        if len(tail):
            out[row, max_len - len(tail) :] = torch.as_tensor(tail + 1, dtype=torch.long)
    return out


# --- training batches -------------------------------------------------------------------------


def iter_batches(
    kind: str, train: Interactions, batch_size: int, rng: np.random.Generator, **opts: float
) -> Iterator[Batch]:
    """Shuffled mini-batches in the form a model's ``input_kind`` asks for."""
    if kind == "ratings":
        yield from _rating_batches(train, batch_size, rng)
    elif kind == "pairwise":
        yield from _pairwise_batches(train, batch_size, rng)
    elif kind == "pointwise":
        yield from _pointwise_batches(
            train, batch_size, rng, int(opts.get("neg", 0)), opts.get("label_threshold")
        )
    elif kind == "sequence":
        yield from _sequence_batches(
            train, batch_size, rng, int(opts["max_len"]), int(opts.get("stride", 0))
        )
    else:
        raise InvalidInput(f"unknown input kind {kind!r}")


def count_batches(kind: str, train: Interactions, batch_size: int, **opts: float) -> int:
    """How many batches ``iter_batches`` yields per epoch: a progress bar's true total."""
    if kind in ("ratings", "pairwise"):
        rows = len(train)
    elif kind == "pointwise":
        rows = len(train) * (1 + int(opts.get("neg", 0)))
    elif kind == "sequence":
        rows = len(sequence_windows(train, int(opts["max_len"]), int(opts.get("stride", 0)))[0])
    else:
        raise InvalidInput(f"unknown input kind {kind!r}")
    return math.ceil(rows / batch_size)


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def _rating_batches(train: Interactions, size: int, rng: np.random.Generator) -> Iterator[Batch]:
    order = rng.permutation(len(train))
    for start in range(0, len(order), size):
        rows = order[start : start + size]
        yield {
            "users": _tensor(train.users[rows]),
            "items": _tensor(train.items[rows]),
            "ratings": _tensor(train.ratings[rows]),
        }


def sample_negatives(
    train: Interactions, users: np.ndarray, n: int, rng: np.random.Generator
) -> np.ndarray:
    """(len(users), n) uniform items each user has not interacted with in ``train``.

    Rejection sampling against the sorted ``train.known_keys`` (binary search, not ``np.isin``,
    which re-sorts everything on every call); only clashing draws are redrawn, so rounds get
    cheap fast. A user who has seen every item keeps a clash.
    """
    known = train.known_keys
    neg = rng.integers(0, train.n_items, size=(len(users), n))
    if len(known) == 0:
        return neg
    todo = np.arange(neg.size)  # flat positions still to check
    flat_users = np.repeat(users, n)
    flat = neg.reshape(-1)
    for _ in range(100):
        keys = flat_users[todo] * train.n_items + flat[todo]
        pos = np.minimum(np.searchsorted(known, keys), len(known) - 1)
        todo = todo[known[pos] == keys]
        if len(todo) == 0:
            break
        flat[todo] = rng.integers(0, train.n_items, size=len(todo))
    return neg


def _pairwise_batches(train: Interactions, size: int, rng: np.random.Generator) -> Iterator[Batch]:
    order = rng.permutation(len(train))
    neg = sample_negatives(train, train.users[order], 1, rng)[:, 0]
    for start in range(0, len(order), size):
        rows = order[start : start + size]
        yield {
            "users": _tensor(train.users[rows]),
            "pos": _tensor(train.items[rows]),
            "neg": _tensor(neg[start : start + size]),
        }


def _pointwise_batches(
    train: Interactions, size: int, rng: np.random.Generator, neg: int, threshold: float | None
) -> Iterator[Batch]:
    """Observed pairs (label 1, or rating >= threshold) plus ``neg`` sampled negatives each."""
    labels = (
        np.ones(len(train), dtype=np.float32)
        if threshold is None
        else (train.ratings >= threshold).astype(np.float32)
    )
    users, items = train.users, train.items
    if neg > 0:
        sampled = sample_negatives(train, train.users, neg, rng)
        users = np.concatenate([users, np.repeat(train.users, neg)])
        items = np.concatenate([items, sampled.reshape(-1)])
        labels = np.concatenate([labels, np.zeros(len(train) * neg, dtype=np.float32)])
    order = rng.permutation(len(users))
    for start in range(0, len(order), size):
        rows = order[start : start + size]
        yield {
            "users": _tensor(users[rows]),
            "items": _tensor(items[rows]),
            "labels": _tensor(labels[rows]),
        }


def sequence_windows(
    inter: Interactions, max_len: int, stride: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Every user's sequence cut from the end into windows of max_len + 1 items, shifted into
    (inputs, targets) of item index + 1 with 0 padding on the left.

    Predicting every next item inside a window trains on all prefixes at once, which is what
    RecBole's per-prefix augmentation does at a fraction of the cost. A target whose input is
    padding (the first item, predicted from nothing) is masked to 0 as well. A ``stride``
    below max_len overlaps the windows so that every target is predicted from at least
    max_len - stride earlier items (or all of them, near the start): each target is kept once,
    in the window where its context is longest (a window's first max_len - stride targets are
    masked when the window before it already has them), as in RecBole's per-prefix training.
    """
    step = stride if 0 < stride < max_len else max_len
    inputs, targets = [], []
    for seq in sequences(inter).values():
        for end in range(len(seq), 1, -step):
            window = seq[max(0, end - max_len - 1) : end] + 1
            pad = max_len + 1 - len(window)
            window = np.concatenate([np.zeros(pad, dtype=np.int64), window])
            target = np.where(window[:-1] > 0, window[1:], 0)
            if end - step > 1:  # an earlier window predicts all but the last `step` targets
                target[: max_len - step] = 0
            inputs.append(window[:-1])
            targets.append(target)
    if not inputs:
        raise InvalidInput("no user has two or more interactions to learn a sequence from")
    return np.stack(inputs), np.stack(targets)


def _sequence_batches(
    train: Interactions, size: int, rng: np.random.Generator, max_len: int, stride: int
) -> Iterator[Batch]:
    inputs, targets = sequence_windows(train, max_len, stride)
    order = rng.permutation(len(inputs))
    for start in range(0, len(order), size):
        rows = order[start : start + size]
        yield {"seqs": _tensor(inputs[rows]), "targets": _tensor(targets[rows])}
