"""The learning loop's training side: when to retrain, and one round for one model.

The ``streamrec-retrain`` consumer group (``consumers.retrain``) counts the interactions it
reads and asks ``RetrainTrigger`` which models are due; a due model gets a round:

1. **candidate** (``train_candidate``, in a child process with a CPU budget, so serving is not
   starved and a crash loses only that attempt): read the archive up to its watermark now; hold
   out its newest ``holdout_events`` ratings; train on the rest, warm-started from the live
   version (known rows kept, new ids appended) or from scratch when there is none; register the
   candidate with the data it saw (watermark, offsets, span, counts); score it and the live
   version on the same held-out events (the metric of ``trainer.promotion``).
2. **decision** (``trainer.promotion``, in the consumer's process): promote when not worse than
   the live version by more than the tolerance, else keep it registered as rejected with both
   scores and the reason. Promotion publishes the candidate's item and user vectors (every
   user with history gets a vector before the alias swaps, ``trainer.publish``), then makes it
   the live version. Old versions are retired past ``retrain_keep_versions``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

import torch

from streamrec.core.errors import ConfigurationError, InvalidInput
from streamrec.core.settings import Settings
from streamrec.schemas.models import RETRAINABLE, resolve, resolve_numbers
from streamrec.stores.factory import Stores, open_sql_stores
from streamrec.stores.model_registry import Promotion
from streamrec.trainer.data import build, recorded_watermark
from streamrec.trainer.promotion import HoldoutScores, compare_on_holdout, decide, newest_split
from streamrec.trainer.publish import (
    drop_version_collections,
    publish_version,
    published_kind,
    serving_versions,
)
from streamrec.trainer.service import ALL_DATA, ARCHIVE, TrainingData, load_data, train_model


def parse_models(value: str) -> tuple[str, ...]:
    """``STREAMREC_RETRAIN_MODELS`` ("mf,ncf,sasrec") as names, checked, in order, no repeats.

    The loop retrains the embedding models over the archive (``schemas.models.RETRAINABLE``);
    a name it does not take is refused with what to use instead."""
    names = (n.strip() for n in value.split(",") if n.strip())
    try:
        checked = [resolve(n, RETRAINABLE, "STREAMREC_RETRAIN_MODELS").value for n in names]
    except ValueError as error:
        raise ConfigurationError(str(error)) from None
    return tuple(dict.fromkeys(checked))


def parse_every_events(value: str) -> dict[str, int]:
    """``STREAMREC_RETRAIN_EVERY_EVENTS_BY_MODEL`` ("sasrec=6000,ncf=2000") as {model: count}."""
    try:
        counts = resolve_numbers(value, RETRAINABLE, "STREAMREC_RETRAIN_EVERY_EVENTS_BY_MODEL")
    except ValueError as error:
        raise ConfigurationError(str(error)) from None
    return {model.value: count for model, count in counts.items()}


@dataclass(frozen=True)
class RetrainConfig:
    models: tuple[str, ...]
    every_events: int  # new interactions that make a model due
    every_seconds: float  # ... or this much time with at least min_events new ones
    min_events: int
    epochs: int  # of a warm-started round
    holdout_events: int
    threads: int  # torch threads in the training process
    nice: int  # its niceness (0: as the consumer's process)
    tolerance: float  # relative (trainer.promotion)
    keep_versions: int
    every_events_by_model: Mapping[str, int] = field(default_factory=dict)  # overrides
    confidence: float = 0.0  # standard errors of the paired difference (trainer.promotion)

    def threshold(self, model: str) -> int:
        """New interactions that make ``model`` due."""
        return self.every_events_by_model.get(model, self.every_events)

    @classmethod
    def from_settings(cls, settings: Settings) -> RetrainConfig:
        return cls(
            models=parse_models(settings.retrain_models),
            every_events=settings.retrain_every_events,
            every_seconds=settings.retrain_every_seconds,
            min_events=settings.retrain_min_events,
            epochs=settings.retrain_epochs,
            holdout_events=settings.retrain_holdout_events,
            threads=settings.retrain_threads,
            nice=settings.retrain_nice,
            tolerance=settings.retrain_promotion_tolerance,
            confidence=settings.retrain_promotion_confidence,
            keep_versions=settings.retrain_keep_versions,
            every_events_by_model=parse_every_events(settings.retrain_every_events_by_model),
        )


class RetrainTrigger:
    """Which models are due: per model, the interactions seen since its last round and when
    that round started. Pure (a clock is injected), so the thresholds are tested exactly.

    A model is due when ``every_events`` new interactions arrived (its own count if
    ``every_events_by_model`` names it), or when ``every_seconds``
    passed since its last round (or since the loop started) with at least ``min_events`` new
    ones: a quiet stream does not retrain on a handful of events, a busy one does not wait.
    """

    def __init__(self, config: RetrainConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._clock = clock
        self._new = dict.fromkeys(config.models, 0)
        self._since = dict.fromkeys(config.models, clock())

    def observe(self, interactions: int) -> None:
        """``interactions`` new training events (ratings) were read."""
        for model in self._new:
            self._new[model] += interactions

    def seed(self, model: str, interactions: int) -> None:
        """At start: interactions already archived beyond the live version's watermark (what
        a restarted loop would otherwise forget)."""
        self._new[model] = interactions

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(self._new)

    def new(self, model: str) -> int:
        return self._new[model]

    def due(self) -> list[str]:
        now = self._clock()
        config = self._config
        return [
            model
            for model, new in self._new.items()
            if new >= config.threshold(model)
            or (new >= config.min_events and now - self._since[model] >= config.every_seconds)
        ]

    def started(self, models: Iterable[str]) -> None:
        """A round for ``models`` started: interactions read from now on count for the next."""
        now = self._clock()
        for model in models:
            self._new[model] = 0
            self._since[model] = now


# -- one round ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    """What the training process hands back: the registered candidate and both scores."""

    name: str
    version: int
    scores: HoldoutScores
    train_seconds: float
    warm_from: int | None  # the live version it started from (None: from scratch)


@dataclass(frozen=True)
class RoundReport:
    candidate: Candidate
    promotion: Promotion
    published_seconds: float  # item and user vectors written before going live (0: rejected)
    retired: list[int]

    def summary(self) -> str:
        c = self.candidate
        start = f"warm from v{c.warm_from}" if c.warm_from else "from scratch"
        return (
            f"retrain {c.name} v{c.version} ({start}, {c.train_seconds:.1f}s): "
            f"{self.promotion.decision}: {self.promotion.reason}"
        )


def budget_process(threads: int, nice: int) -> None:
    """The training process's CPU budget (runs once when it starts): few torch threads and a
    lower priority, so a round takes spare CPU and the API and consumers keep theirs."""
    torch.set_num_threads(threads)
    if nice:
        os.nice(nice)


def new_since_live(stores: Stores, name: str) -> int:
    """Ratings archived beyond the watermark of ``name``'s live version (all of them when
    nothing is live): what a restarted loop has not trained on yet."""
    live = stores.models.active(name)
    since = recorded_watermark(live.data_window) if live is not None else None
    return stores.archive.count_between(since=since, types=["rating"])


def train_candidate(settings: Settings, name: str, config: RetrainConfig) -> Candidate:
    """Train, register and score a candidate of ``name`` (blocking: the child process runs it).

    Reads the archive up to its watermark now, holds out the newest ``holdout_events`` ratings,
    trains on the rest (warm-started from the live version when there is one), registers the
    candidate with its data window, and scores it and the live version on the held-out events.
    """
    started = time.perf_counter()
    with open_sql_stores(settings) as sql:
        data = load_data(ARCHIVE, sql.engine, seed=0, until=sql.archive.watermark(["rating"]))
        if len(data.raw) <= config.holdout_events:
            raise InvalidInput(
                f"{name}: {len(data.raw):,} archived ratings, not more than the "
                f"{config.holdout_events:,} held out (STREAMREC_RETRAIN_HOLDOUT_EVENTS)"
            )
        inter = build(data.raw, sql.ids)
        split = newest_split(inter, config.holdout_events)
        live = sql.models.active(name)
        training = TrainingData(
            replace(data.raw, ratings=[data.raw.ratings[i] for i in split.train]), data.window
        )
        # A warm round trains on every rating but the held-out slice, for config.epochs
        # (service.ALL_DATA): each user's newest ratings are the ones that matter most to a stream,
        # and the guard below judges the candidate on newer ones. A first version has nothing
        # to start from: its own epochs, early-stopped on each user's last rating (loo-full).
        opts = {"seed": 0, "epochs": config.epochs if live is not None else None}
        protocol = ALL_DATA if live is not None else "loo-full"
        version = train_model(
            name, training, sql.ids, sql.models, protocol, opts, activate=False, warm_start=live
        )
        candidate = sql.models.load(name, version.version)
        live_net = sql.models.load(name, live.version) if live is not None else None
        # The same rows, sized to the registry now: ids registered while it trained (the
        # archive group keeps registering) made the candidate bigger than the first build,
        # and scoring must not shrink it. The split's row indices stay valid.
        inter = build(data.raw, sql.ids)
        scores = compare_on_holdout(
            candidate, live_net, live.version if live else None, inter, split
        )
    return Candidate(
        name, version.version, scores, time.perf_counter() - started, live.version if live else None
    )


def conclude_round(stores: Stores, candidate: Candidate, config: RetrainConfig) -> RoundReport:
    """Decide on a candidate (in the process that owns the vector store): publish its vectors
    and make it live, or record it rejected; then retire old versions (files, collections)."""
    promotion = decide(candidate.scores, config.tolerance, config.confidence)
    published = 0.0
    if promotion.promoted and published_kind(candidate.name) is not None:
        published = publish_version(
            stores.models,
            stores.vectors,
            stores.ids,
            stores.engine,
            candidate.name,
            candidate.version,
            checkpoint_dir=stores.settings.var_dir / "publish",
            candidates=stores.candidates,
        ).seconds
    stores.models.record_promotion(candidate.name, candidate.version, promotion)
    retired = stores.models.retire_old(
        candidate.name,
        config.keep_versions,
        drop_collections=lambda name, version: drop_version_collections(
            stores.vectors, name, version, stores.candidates
        ),
        # A settled version may still serve (published by hand, or the live pointer not yet
        # moved): left for a later round rather than failing this one.
        protect=serving_versions(stores.vectors, candidate.name, stores.candidates),
    )
    return RoundReport(candidate, promotion, published, retired)
