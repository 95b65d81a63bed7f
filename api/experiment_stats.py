"""Experiments from the per-variant counters the features consumer keeps in Redis.

``stores.features`` counts, in the hash ``sr:variants``, one field per serving model, variant
label and kind: ``"{model}|{variant}|impressions"`` (one per impression event, i.e. per list
served) and ``"{model}|{variant}|clicks"`` (click events that name a ``model``; a click without
a variant counts for ``default``).

Variants are free labels sent with ``GET /v1/users/{id}/recommendations?variant=``. An
experiment is a naming convention over them: the label ``<experiment>:<arm>`` belongs to
experiment ``<experiment>``; a label without a colon is an experiment of its own with one arm
(so ``default`` is the experiment of every unlabelled request).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from streamrec.core.errors import NotFound
from streamrec.schemas.api import Experiment, ExperimentList, ModelClickStats, VariantStats
from streamrec.stores.features import VARIANTS

EXPERIMENT_SEPARATOR = ":"
Z_95 = 1.959963984540054  # two-sided 95% normal quantile
_KINDS = ("impressions", "clicks")


@dataclass
class _Counts:
    impressions: int = 0
    clicks: int = 0

    def add(self, other: _Counts) -> None:
        self.impressions += other.impressions
        self.clicks += other.clicks


@dataclass
class _Variant:
    by_model: dict[str, _Counts] = field(default_factory=lambda: defaultdict(_Counts))

    def total(self) -> _Counts:
        total = _Counts()
        for counts in self.by_model.values():
            total.add(counts)
        return total


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion; None without trials. More successes than
    trials (several clicks on one list) are capped at the number of trials."""
    if trials <= 0:
        return None
    p = min(successes, trials) / trials
    z2n = z * z / trials
    centre = (p + z2n / 2) / (1 + z2n)
    half = z * math.sqrt(p * (1 - p) / trials + z2n / (4 * trials)) / (1 + z2n)
    return max(0.0, centre - half), min(1.0, centre + half)


def experiment_of(variant: str) -> str:
    return variant.split(EXPERIMENT_SEPARATOR, 1)[0]


def parse_counters(fields: dict[str, str]) -> dict[str, _Variant]:
    """``sr:variants`` fields grouped by variant label, then by model. Fields that do not
    follow the layout are skipped (the model is everything before the first ``|``)."""
    variants: dict[str, _Variant] = defaultdict(_Variant)
    for key, value in fields.items():
        model, _, rest = key.partition("|")
        variant, _, kind = rest.rpartition("|")
        if not model or not variant or kind not in _KINDS:
            continue
        counts = variants[variant].by_model[model]
        if kind == "impressions":
            counts.impressions += int(value)
        else:
            counts.clicks += int(value)
    return variants


def _stats(counts: _Counts) -> dict[str, int | float | None]:
    interval = wilson_interval(counts.clicks, counts.impressions)
    return {
        "impressions": counts.impressions,
        "clicks": counts.clicks,
        "ctr": counts.clicks / counts.impressions if counts.impressions else None,
        "ctr_low": interval[0] if interval else None,
        "ctr_high": interval[1] if interval else None,
    }


def _variant_stats(label: str, variant: _Variant) -> VariantStats:
    models = [
        ModelClickStats(model=model, **_stats(counts))
        for model, counts in sorted(variant.by_model.items())
    ]
    return VariantStats(variant=label, models=models, **_stats(variant.total()))


def _experiment(name: str, variants: dict[str, _Variant]) -> Experiment:
    total = _Counts()
    for variant in variants.values():
        total.add(variant.total())
    rows = [_variant_stats(label, variants[label]) for label in sorted(variants)]
    return Experiment(name=name, variants=rows, **_stats(total))


def build_experiments(variants: dict[str, _Variant]) -> ExperimentList:
    grouped: dict[str, dict[str, _Variant]] = defaultdict(dict)
    for label, variant in variants.items():
        grouped[experiment_of(label)][label] = variant
    return ExperimentList(
        experiments=[_experiment(name, grouped[name]) for name in sorted(grouped)]
    )


async def read_experiments(redis: aioredis.Redis) -> ExperimentList:
    """Every experiment with counters, by name."""
    return build_experiments(parse_counters(await redis.hgetall(VARIANTS)))


async def read_experiment(redis: aioredis.Redis, name: str) -> Experiment:
    """One experiment; NotFound when no variant label belongs to it."""
    variants = parse_counters(await redis.hgetall(VARIANTS))
    mine = {label: v for label, v in variants.items() if experiment_of(label) == name}
    if not mine:
        raise NotFound(
            f"no experiment {name!r}: no impressions or clicks carry a variant label "
            f"{name!r} or '{name}{EXPERIMENT_SEPARATOR}<arm>' yet"
        )
    return _experiment(name, mine)
