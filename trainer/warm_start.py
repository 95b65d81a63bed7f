"""Warm starts: a new version of an embedding model that begins where the previous one ended.

The id registry only grows, so index ``i`` names the same user or item in the previous version
and in the new one. A warm-started model is built as a cold start would be (same seed, sized
to the registry now), then ``Recommender.warm_start_from`` copies the previous version's rows
over the first rows of every user and item table and every other learned weight whose shape
matches. Rows of ids registered since keep exactly the values a cold start would have given
them. The previous version's data-derived config (``Recommender.data_fields``: MF's global
mean, Wide & Deep's genre and feature vocabularies) is kept, because its weights were learned
against it; Wide & Deep maps the new data onto the old vocabularies, so a genre or feature
that appeared since is ignored until a cold start.

When the configs differ otherwise (the model's defaults changed in code, or the previous
version was trained with other settings: another dimension, loss, depth, ``repeat_score``…),
the previous weights may not mean the same thing in the new model, so the run **falls back to
a cold start**: it logs a warning and records the differing fields in ``WarmStart.reason``
(and so in the version's metrics), and training goes on. That keeps an automatic retrain loop
running across a config change. Asking for something that cannot be meant is refused with
``InvalidInput`` instead: a previous model of another class, or one with more rows than the
registry has (it comes from another id registry).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from streamrec.core.errors import InvalidInput
from streamrec.trainer.data import Interactions
from streamrec.trainer.models import MODELS, build_model
from streamrec.trainer.models.base import Recommender

log = logging.getLogger(__name__)

SIZE_FIELDS = ("n_users", "n_items")


@dataclass(frozen=True)
class WarmStart:
    """How a version began: warm from a previous version, or cold (and why)."""

    from_version: int | None  # the registry version started from, when known
    warm: bool  # False: fell back to a cold start, see ``reason``
    reason: str | None = None
    carried_users: int = 0  # rows of known users copied from the previous version
    carried_items: int = 0
    new_users: int = 0  # rows appended for ids registered since, initialised as fresh
    new_items: int = 0
    skipped: list[str] = field(default_factory=list)  # previous weights not carried over

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def config_differences(
    name: str, previous: Recommender, inter: Interactions
) -> dict[str, tuple[Any, Any]]:
    """Config fields (sizes and data-derived ones left out) where ``previous`` differs from the
    config a cold start of ``name`` on ``inter`` would use: field -> (previous, cold start)."""
    spec = MODELS[name]
    cold = asdict(spec.module_cls.config_from_data(spec.config_cls, inter, **spec.defaults))
    before = asdict(previous.config)
    ignored = {*SIZE_FIELDS, *previous.data_fields}
    return {
        key: (before.get(key), value)
        for key, value in cold.items()
        if key not in ignored and before.get(key) != value
    }


def warm_start_model(
    name: str,
    previous: Recommender,
    inter: Interactions,
    seed: int = 0,
    from_version: int | None = None,
) -> tuple[Recommender, WarmStart]:
    """A new model ``name`` sized for ``inter``, warm-started from ``previous`` (or cold, when
    the configs differ: see the module docstring), and how it began."""
    if name not in MODELS:
        raise InvalidInput(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    expected = MODELS[name].module_cls
    if not isinstance(previous, expected):
        raise InvalidInput(
            f"cannot warm-start {name} from a {type(previous).__name__}: "
            f"it needs a previous {expected.__name__}"
        )
    differences = config_differences(name, previous, inter)
    if differences:
        reason = "config changed since the previous version: " + ", ".join(
            f"{key} {old!r} -> {new!r}" for key, (old, new) in sorted(differences.items())
        )
        log.warning("%s: cold start instead of a warm start (%s)", name, reason)
        return build_model(name, inter, seed=seed), WarmStart(from_version, False, reason)
    kept = {k: v for k, v in asdict(previous.config).items() if k not in SIZE_FIELDS}
    net = build_model(name, inter, seed=seed, **kept)
    carried = net.warm_start_from(previous)
    if carried.skipped:
        log.warning("%s warm start left out %s", name, ", ".join(carried.skipped))
    start = WarmStart(
        from_version,
        True,
        carried_users=previous.n_users,
        carried_items=previous.n_items,
        new_users=net.n_users - previous.n_users,
        new_items=net.n_items - previous.n_items,
        skipped=carried.skipped,
    )
    log.info(
        "%s warm-started from %s: %d users and %d items carried over, %d and %d new",
        name,
        f"v{from_version}" if from_version is not None else "a previous model",
        start.carried_users,
        start.carried_items,
        start.new_users,
        start.new_items,
    )
    return net, start
