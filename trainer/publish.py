"""Publishing model versions: which models publish, item payloads and ``publish_version``
(its command, ``streamrec vectors publish``, is in ``trainer.cli``).

Publishing a version writes its item vectors into a new collection ``items_<model>__v<N>``,
then the vector of every user with state into ``users_<model>__v<N>``, and only then swaps the
alias ``items_<model>``: going live means every user is served by the new version (the steps:
``trainer.live``). Every model that trains publishes (``schemas.models.VECTOR_MODELS``), under
its one name; doc2vec's collections keep their former key, ``content`` (``items_content`` →
``items_content__v<N>``), and ``content`` is accepted as its name.

Retiring a version (retention's ``retire_old`` and ``DELETE /v1/models/{name}/versions/{n}``)
drops what publishing wrote, through one function: ``drop_version_collections``.

This module stays light (no PyTorch, no gensim): ``publish_version`` loads ``trainer.live`` on
its first call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import Engine, func, select

from streamrec.core.errors import InvalidInput
from streamrec.schemas.models import MODELS, VECTOR_MODELS, ModelKind, resolve
from streamrec.stores.catalog import InteractionRow, ItemRow
from streamrec.stores.vectors import (
    item_version_name,
    items_alias,
    parse_version,
    user_version_name,
)

if TYPE_CHECKING:
    from streamrec.core.ids import IdRegistry
    from streamrec.stores.candidates import CandidateStore
    from streamrec.stores.model_registry import ModelRegistry
    from streamrec.stores.vectors import VectorStore

# (stage: "items" or "users", done, total)
PublishProgress = Callable[[str, int, int], None]
DEFAULT_HISTORY = 50  # recent items a fold-in averages (trainer.user_vectors)
PayloadSource = Callable[[Sequence[str]], dict[str, dict[str, Any]]]


def vector_model(name: str, where: str = "--model") -> ModelKind:
    """The model ``name`` (or a former name: content) when it publishes vectors; InvalidInput
    saying what to use instead otherwise (dqn: rerank=dqn; popular: nothing to publish)."""
    try:
        return MODELS[resolve(name, VECTOR_MODELS, where)]
    except ValueError as error:
        raise InvalidInput(str(error)) from None


def published_kind(name: str) -> ModelKind | None:
    """The kind of registry model ``name`` when its versions are published (go live through
    ``publish_version``); None for models served without vectors (dqn)."""
    kind = next((k for k in MODELS.values() if k.name.value == name), None)
    return kind if kind is not None and kind.vectors else None


class LiveVersion(InvalidInput):
    """The version serves requests (the alias or the live pointer names it): not retired."""


def serving_versions(
    vectors: VectorStore, name: str, candidates: CandidateStore | None = None
) -> set[int]:
    """The versions of registry model ``name`` that serve requests: the one the alias
    ``items_<model>`` points at and the one the request path's live pointer names (they
    differ for a few seconds after a swap made without Redis). Empty for models without
    vectors."""
    kind = published_kind(name)
    if kind is None:
        return set()
    target = vectors.resolve_alias(items_alias(kind.collection))
    parsed = parse_version(target) if target else None
    found = {parsed[1]} if parsed else set()
    pointer = candidates.live_version_sync(kind.collection) if candidates is not None else None
    return found | ({pointer} if pointer is not None else set())


def drop_version_collections(
    vectors: VectorStore, name: str, version: int, candidates: CandidateStore | None = None
) -> None:
    """Retire what publishing ``version`` of ``name`` wrote: its item and user collections and
    (with ``candidates``) its candidate and neighbour hashes in Redis. What retention
    (``ModelRegistry.retire_old``) and ``DELETE /v1/models/...`` call before the registry row
    goes. Refused with ``LiveVersion`` for a version that serves (``serving_versions``);
    nothing to do for models without vectors. Idempotent: what is already gone is skipped."""
    kind = published_kind(name)
    if kind is None:
        return
    if version in serving_versions(vectors, name, candidates):
        raise LiveVersion(
            f"{name} v{version} serves requests (the alias items_{kind.collection} or the live "
            "pointer names it): publish or activate another version first"
        )
    key = kind.collection
    if candidates is not None:
        candidates.drop_version(key, version)
    for collection in (item_version_name(key, version), user_version_name(key, version)):
        if vectors.collection_exists(collection):
            vectors.delete_collection(collection)


def item_matrix(model: Any) -> np.ndarray:
    """(n_items, d) float32 item vectors of a loaded torch model or Doc2Vec model."""
    vectors = model.item_vectors()
    if hasattr(vectors, "detach"):
        vectors = vectors.detach().cpu().numpy()
    return np.ascontiguousarray(vectors, dtype=np.float32)


def sql_payloads(engine: Engine) -> PayloadSource:
    """Payloads from the SQL catalog (``items``) and the interactions archive (popularity)."""

    def payloads(item_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        wanted = list(item_ids)
        with engine.connect() as conn:
            rows = conn.execute(select(ItemRow).where(ItemRow.item_id.in_(wanted))).all()
            counts = conn.execute(
                select(InteractionRow.item_id, func.count())
                .where(InteractionRow.item_id.in_(wanted))
                .group_by(InteractionRow.item_id)
            ).all()
        popularity = {item: float(n) for item, n in counts}
        found = {
            r.item_id: {"title": r.title or "", "genres": list(r.genres or []), "year": r.year}
            for r in rows
        }
        return {
            item: {
                **found.get(item, {"title": "", "genres": []}),
                "popularity": popularity.get(item, 0.0),
            }
            for item in wanted
        }

    return payloads


@dataclass(frozen=True)
class Published:
    model: str  # the model's name (doc2vec for content)
    version: int
    collection: str
    alias: str
    points: int  # item vectors in the collection's stream
    previous: str | None  # the alias target before the swap (kept for rollback)
    seconds: float
    users: int = 0  # user vectors written into users_collection before the swap
    users_collection: str = ""
    user_seconds: float = 0.0  # of ``seconds``, the time spent on user vectors
    inferred: int = 0  # content: catalog items newer than the Doc2Vec version, inferred


def publish_version(
    models: ModelRegistry,
    vectors: VectorStore,
    ids: IdRegistry,
    engine: Engine,
    model: str,
    version: int | None = None,
    *,
    checkpoint_dir: Path | None = None,
    on_progress: PublishProgress | None = None,
    chunk: int = 2000,
    history: int = DEFAULT_HISTORY,
    candidates: CandidateStore | None = None,
) -> Published:
    """Make a version live: its item vectors, then every user's vector, then the alias swap.

    ``model`` is the name of a model with vectors (``schemas.models.VECTOR_MODELS``: every
    model that trains; ``content`` is taken for doc2vec); ``version`` defaults to the
    registry's active one. ``engine`` holds the catalog and the interactions archive (item
    payloads, user histories). Item vectors are resumable: a rerun after an interruption
    continues from the checkpoint in ``checkpoint_dir``. User vectors are always recomputed,
    so publishing a version again (a rollback) refreshes them. ``on_progress`` gets (stage,
    done, total) with stage ``items`` (points) then ``users`` (users processed). The alias
    moves only once both collections are complete; the registry's active version is left
    as it is (the caller activates or promotes). With ``candidates`` (Redis), every user's
    candidates and every item's neighbours are written before the swap and the live pointer
    right after it (the request path, ``stores.candidates``); without (the CLI when Redis
    is embedded or unreachable), the vectors group writes them all from the stored vectors
    when it sees the alias move, and only then sets the live pointer.
    Blocking: call it from a thread in async code.
    """
    from streamrec.trainer import (
        live,
    )  # PyTorch and gensim: on the first publish, not at CLI start-up

    return live.publish_version(
        models,
        vectors,
        ids,
        engine,
        model,
        version,
        checkpoint_dir=checkpoint_dir,
        on_progress=on_progress,
        chunk=chunk,
        history=history,
        candidates=candidates,
    )
