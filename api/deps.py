"""Dependencies of the routes, as ``Annotated`` aliases (one place to see what a route uses)."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import APIKeyHeader
from pydantic import SecretStr

from streamrec.api.runtime import Runtime
from streamrec.api.training_jobs import TrainingJobs
from streamrec.producers.publisher import EventPublisher
from streamrec.stores.features import FeatureStore
from streamrec.stores.model_registry import ModelRegistry

_api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="The ingest or admin key"
)


# Async on purpose: FastAPI runs a sync dependency in a worker thread, two hops per request.
async def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_features(runtime: RuntimeDep) -> FeatureStore:
    return runtime.features


async def get_publisher(runtime: RuntimeDep) -> EventPublisher:
    return runtime.publisher


FeaturesDep = Annotated[FeatureStore, Depends(get_features)]
PublisherDep = Annotated[EventPublisher, Depends(get_publisher)]


def _matches(given: str | None, *keys: SecretStr | None) -> bool:
    """Constant-time comparison against every configured key."""
    if not given:
        return False
    offered = given.encode()
    return any(
        key is not None and secrets.compare_digest(offered, key.get_secret_value().encode())
        for key in keys
    )


async def require_ingest_key(
    runtime: RuntimeDep, key: str | None = Security(_api_key_header)
) -> None:
    """Writes need the ingest key (the admin key also works)."""
    settings = runtime.settings
    if not _matches(key, settings.ingest_api_key, settings.admin_api_key):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or invalid API key: send the ingest key in the X-API-Key header",
        )


async def require_admin_key(
    runtime: RuntimeDep, key: str | None = Security(_api_key_header)
) -> None:
    if not _matches(key, runtime.settings.admin_api_key):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or invalid API key: send the admin key in the X-API-Key header",
        )


IngestKey = Depends(require_ingest_key)
AdminKey = Depends(require_admin_key)


# -- model registry and training jobs (api/routers/models.py, training.py) ----------------------
async def get_model_registry(runtime: RuntimeDep) -> ModelRegistry:
    return runtime.models


async def get_training_jobs(request: Request) -> TrainingJobs:
    """Created by the training router's lifespan (api/routers/training.py)."""
    return request.app.state.training_jobs


ModelRegistryDep = Annotated[ModelRegistry, Depends(get_model_registry)]
TrainingJobsDep = Annotated[TrainingJobs, Depends(get_training_jobs)]
