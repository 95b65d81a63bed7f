"""The models by name: one table that every surface derives its names from.

A model has one name everywhere: ``streamrec train --model``, ``streamrec vectors publish
--model``, the API's ``model=`` (recommendations, similar items), the training jobs, the model
registry and ``/v1/models``, the retrain loop (``STREAMREC_RETRAIN_MODELS``) and the vectors
consumer. The enums and mappings of those surfaces are derived from ``MODELS`` below, so a
model that can be trained can be served, and a new model is one new row.

``content`` was doc2vec's serving name before the names were unified: it is still accepted on
input (an alias), and it remains the key of Doc2Vec's vector collections (``items_content``,
``users_content__v<N>``), so collections published before keep serving.

This module is the bottom of the import graph (no streamrec import): schemas, core, stores,
trainer, consumers and api all read it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal


class ModelName(StrEnum):
    """Every model streamrec knows, by its one name."""

    POPULAR = "popular"
    MF = "mf"
    BPR = "bpr"
    NCF = "ncf"
    WIDE_DEEP = "wide_deep"
    SASREC = "sasrec"
    DOC2VEC = "doc2vec"
    DQN = "dqn"


@dataclass(frozen=True)
class ModelKind:
    """What a model is and which surfaces take its name."""

    name: ModelName
    trained: bool  # by `streamrec train`, training jobs and `eval`
    retrained: bool  # by the retrain loop (warm-started over the archive)
    vectors: bool  # publishes item and user vectors: `vectors publish`, model=, similar items
    recommends: bool  # served by model= (popular from Redis counts; the rest from vectors)
    collection: str = ""  # key of its vector collections: items_<key>, users_<key>__v<N>
    distance: Literal["dot", "cosine"] = "dot"  # of its item vectors
    aliases: tuple[str, ...] = ()  # former names, still accepted on input
    instead: str = ""  # why the name is refused where it is not served, and what to use


def _vector_model(name: ModelName, *, retrained: bool = True) -> ModelKind:
    # Torch models retrieve by dot product: their scores are dot products.
    return ModelKind(name, True, retrained, True, True, collection=name.value)


MODELS: Mapping[ModelName, ModelKind] = {
    ModelName.POPULAR: ModelKind(
        ModelName.POPULAR,
        trained=False,
        retrained=False,
        vectors=False,
        recommends=True,
        instead="popular is served from the live counts in Redis: it has no versions and no "
        "vectors",
    ),
    ModelName.MF: _vector_model(ModelName.MF),
    ModelName.BPR: _vector_model(ModelName.BPR),
    ModelName.NCF: _vector_model(ModelName.NCF),
    ModelName.WIDE_DEEP: _vector_model(ModelName.WIDE_DEEP),
    ModelName.SASREC: _vector_model(ModelName.SASREC),
    # Trained from the catalog's text (not retrained from interactions); cosine, as Doc2Vec
    # similarities are. Its collections keep their former key.
    ModelName.DOC2VEC: ModelKind(
        ModelName.DOC2VEC,
        trained=True,
        retrained=False,
        vectors=True,
        recommends=True,
        collection="content",
        distance="cosine",
        aliases=("content",),
        instead="doc2vec learns from the catalog's text, not from interactions: train it with "
        "`streamrec train --model doc2vec --data archive`",
    ),
    ModelName.DQN: ModelKind(
        ModelName.DQN,
        trained=False,
        retrained=False,
        vectors=False,
        recommends=False,
        instead="dqn is a re-ranker, learned online by the online-rl group from served slates "
        "and their clicks: use rerank=dqn",
    ),
}

ALIASES: Mapping[str, ModelName] = {
    alias: kind.name for kind in MODELS.values() for alias in kind.aliases
}

# The names each surface takes, in table order.
TRAINABLE = tuple(n for n, k in MODELS.items() if k.trained)
RETRAINABLE = tuple(n for n, k in MODELS.items() if k.retrained)
VECTOR_MODELS = tuple(n for n, k in MODELS.items() if k.vectors)
RECOMMENDERS = tuple(n for n, k in MODELS.items() if k.recommends)


def canonical(name: str) -> str:
    """``name`` with a former name replaced by the model's name (content -> doc2vec); any other
    string unchanged (registry names are free)."""
    found = ALIASES.get(name)
    return found.value if found is not None else name


def choices(names: Iterable[ModelName]) -> str:
    """``'mf', 'bpr', …, 'doc2vec' (also 'content')``: the names a surface takes, quoted, its
    accepted former names in brackets."""
    wanted = list(names)
    quoted = ", ".join(f"'{n.value}'" for n in wanted)
    former = [f"'{a}' for '{n.value}'" for n in wanted for a in MODELS[n].aliases]
    return quoted + (f" (also {', '.join(former)})" if former else "")


def resolve(value: str, allowed: Iterable[ModelName], where: str) -> ModelName:
    """The model named ``value`` (its name or a former one) when ``where`` takes it; else
    ValueError saying what to use instead (``where``: e.g. "model=", "--model")."""
    names = tuple(allowed)
    try:
        found = ALIASES.get(value) or ModelName(value)
    except ValueError:
        raise ValueError(f"unknown model {value!r}: {where} takes {choices(names)}") from None
    if found not in names:
        reason = MODELS[found].instead or f"{where} does not take {found.value}"
        raise ValueError(f"{reason}; {where} takes {choices(names)}")
    return found


def resolve_numbers(value: str, allowed: Iterable[ModelName], where: str) -> dict[ModelName, int]:
    """``"sasrec=6000,ncf=2000"``: models (as ``resolve`` takes them) each with a positive
    integer, comma-separated; ValueError naming ``where`` and the entry that is not."""
    found: dict[ModelName, int] = {}
    for entry in (e.strip() for e in value.split(",") if e.strip()):
        name, _, number = entry.partition("=")
        model = resolve(name.strip(), allowed, where)
        if not number.strip().isdigit() or int(number) < 1:
            raise ValueError(
                f"{where}: {entry!r} is not model=number with a number of at least 1 "
                "(for example sasrec=6000)"
            )
        found[model] = int(number)
    return found
