"""The model registry over HTTP: list models and versions, activate a version, delete one.

Each version shows its status (candidate, live, rejected, retired), its ``data_window`` (what it
was trained on: source, counts, event-time span, Kafka offsets covered) and, once it was judged
against the live version, its promotion record (both scores, metric, tolerance, decision,
reason).

Reads are open, like the other reads; activating and deleting need the admin key. Names and
versions are validated here (the registry's own rules) and again by the registry, which builds
every path from a validated name and number under its root, so a request never reaches a file
outside ``<var_dir>/models``.

Activating a version hot-swaps what the registry serves (``dqn``, ``doc2vec``: within
``STREAMREC_MODEL_RELOAD_SECONDS``). A model served from vectors (every model that trains:
``schemas.models.VECTOR_MODELS``) is published first, in a worker thread
(``trainer.publish``): its item vectors (reused when already complete), every user's vector,
then the alias swap; only then does the registry make it live. So the call answers once the
version serves every user, which takes as long as the publish (seconds on ml-100k, see
README); if publishing fails, nothing changed. A former name in the path (``content``) names
its model (``doc2vec``).

Deleting a version retires it as retention does (``trainer.publish.drop_version_collections``):
its item and user collections and its candidate and neighbour hashes in Redis go first, then
its registry row and files. The active version is refused (409), and so is a version that
still serves requests (the alias or the live pointer names it).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, status
from pydantic import AfterValidator

from streamrec.api.deps import AdminKey, ModelRegistryDep, RuntimeDep
from streamrec.api.responses import error_responses
from streamrec.api.runtime import Runtime
from streamrec.core.errors import NotFound
from streamrec.schemas.api import (
    MAX_MODEL_NAME,
    MODEL_NAME_PATTERN,
    DeletedVersion,
    ModelInfo,
    ModelList,
    ModelVersionInfo,
    PromotionInfo,
)
from streamrec.schemas.models import canonical
from streamrec.stores.model_registry import ModelRegistry, ModelVersion, Promotion
from streamrec.trainer.publish import (
    LiveVersion,
    drop_version_collections,
    publish_version,
    published_kind,
)

router = APIRouter(prefix="/v1/models", tags=["models"])

ModelName = Annotated[
    str,
    Path(
        pattern=MODEL_NAME_PATTERN,
        max_length=MAX_MODEL_NAME,
        description="Lower-case letters, digits and _ ('content' is taken for doc2vec)",
    ),
    AfterValidator(canonical),  # a former name (content) names its model (doc2vec)
]
Version = Annotated[int, Path(ge=1, le=2**31 - 1, description="A registered version number")]

# Every route reads the registry (SQL): 503 while it is unavailable.
_LOOKUP = {404: "Unknown model or version", 422: "Invalid model name or version"}
_ADMIN = {401: "Missing or wrong admin X-API-Key"}


def _scalars(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is None or isinstance(v, str | int | float)}


def _version_info(found: ModelVersion) -> ModelVersionInfo:
    return ModelVersionInfo(
        name=found.name,
        version=found.version,
        active=found.active,
        status=found.status,
        activated_at=found.activated_at,
        created_at=found.created_at,
        artifact_class=found.artifact_class,
        n_users=found.n_users,
        n_items=found.n_items,
        data_window=found.data_window,
        metrics={k: v for k, v in found.metrics.items() if k != "epochs"},
        config=_scalars(found.config),
        promotion=_promotion_info(found.promotion) if found.promotion else None,
    )


def _promotion_info(promotion: Promotion) -> PromotionInfo:
    return PromotionInfo(
        metric=promotion.metric,
        candidate_score=promotion.candidate_score,
        live_score=promotion.live_score,
        live_version=promotion.live_version,
        tolerance=promotion.tolerance,
        decision=promotion.decision,
        reason=promotion.reason,
        difference_se=promotion.difference_se,
        confidence=promotion.confidence,
        heldout_events=promotion.heldout_events,
        decided_at=promotion.decided_at,
    )


def _model_infos(versions: list[ModelVersion]) -> list[ModelInfo]:
    names = sorted({v.name for v in versions})
    return [
        ModelInfo(
            name=name,
            active_version=next((v.version for v in versions if v.name == name and v.active), None),
            versions=[_version_info(v) for v in versions if v.name == name],
        )
        for name in names
    ]


@router.get("", responses=error_responses(503))
async def list_models(registry: ModelRegistryDep) -> ModelList:
    """Every registered model with its versions: status, what each was trained on, its
    promotion scores, metrics (without the per-epoch history)."""
    versions = await asyncio.to_thread(registry.list)
    return ModelList(models=_model_infos(versions))


@router.get("/{name}", responses=error_responses(503, described=_LOOKUP))
async def get_model(name: ModelName, registry: ModelRegistryDep) -> ModelInfo:
    """One model's versions and which one is active."""
    versions = await asyncio.to_thread(registry.list, name)
    if not versions:
        raise NotFound(f"no model {name!r} in the registry (GET /v1/models lists them)")
    return _model_infos(versions)[0]


@router.post(
    "/{name}/versions/{version}/activate",
    dependencies=[AdminKey],
    responses=error_responses(503, described={**_ADMIN, **_LOOKUP}),
)
async def activate_version(
    name: ModelName, version: Version, registry: ModelRegistryDep, runtime: RuntimeDep
) -> ModelVersionInfo:
    """Make ``version`` the live version of ``name``, whatever its status (rollback, or
    overruling a rejection); the version that was live becomes ``retired``. A vector model's
    version is published first (item vectors, every user's vector, alias swap), so the answer
    comes once it serves every user."""
    activated = await asyncio.to_thread(_publish_and_activate, runtime, registry, name, version)
    return _version_info(activated)


def _publish_and_activate(
    runtime: Runtime, registry: ModelRegistry, name: str, version: int
) -> ModelVersion:
    registry.get(name, version)  # an unknown version is a 404 before any work
    if published_kind(name) is not None:
        publish_version(
            registry,
            runtime.vectors,
            runtime.services.ids,
            runtime.services.engine,
            name,
            version,
            checkpoint_dir=runtime.settings.var_dir / "publish",
            candidates=runtime.stores.candidates,
        )
    return registry.activate(name, version)


@router.delete(
    "/{name}/versions/{version}",
    dependencies=[AdminKey],
    responses=error_responses(
        503,
        described={**_ADMIN, **_LOOKUP, 409: "The version is the active one, or still serves"},
    ),
)
async def delete_version(
    name: ModelName, version: Version, registry: ModelRegistryDep, runtime: RuntimeDep
) -> DeletedVersion:
    """Remove a version: its vector collections and precomputed lists (as retention does),
    then its registry row and files. The active version cannot be deleted: activate another
    one first."""
    await asyncio.to_thread(_delete_inactive, runtime, registry, name, version)
    return DeletedVersion(name=name, version=version)


def _delete_inactive(runtime: Runtime, registry: ModelRegistry, name: str, version: int) -> None:
    activate = f"POST /v1/models/{name}/versions/<n>/activate"
    if registry.get(name, version).active:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"{name} v{version} is the active version and cannot be deleted: activate another "
            f"version first ({activate})",
        )
    try:
        # Collections and hashes first, as retention: if this fails the row stays, to retry.
        drop_version_collections(runtime.vectors, name, version, runtime.stores.candidates)
    except LiveVersion as live:
        raise HTTPException(status.HTTP_409_CONFLICT, f"{live} ({activate})") from None
    registry.delete(name, version)
