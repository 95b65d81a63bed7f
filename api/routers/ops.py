"""Operations: consumer lag, Prometheus metrics, liveness and readiness."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from api.deps import RuntimeDep
from consumers.lag import LagReport, consumer_lag
from core.errors import ServiceUnavailable
from schemas.api import Health

router = APIRouter(tags=["ops"])


@router.get("/v1/ops/lag")
async def lag(runtime: RuntimeDep) -> LagReport:
    """Per consumer group, topic and partition: end offset, committed offset, lag and, where
    it can be known, the age in seconds of the oldest unconsumed event; with totals."""
    return await consumer_lag(runtime.services.kafka_bootstrap)


@router.get("/metrics", include_in_schema=False)
async def metrics(runtime: RuntimeDep) -> Response:
    return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz")
async def healthz() -> Health:
    """Liveness: the process answers."""
    return Health(status="ok")


@router.get("/readyz", responses={503: {"model": Health}})
async def readyz(runtime: RuntimeDep) -> Response:
    """Readiness: Redis, SQL and Qdrant answer and the Kafka publisher is connected."""
    checks: dict[str, str] = {}
    try:
        await runtime.services.redis.ping()
        checks["redis"] = "ok"
    except (RedisError, OSError) as exc:
        checks["redis"] = f"down: {exc}"

    def sql_ping() -> None:
        with runtime.services.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    try:
        await asyncio.to_thread(sql_ping)
        checks["sql"] = "ok"
    except SQLAlchemyError as exc:
        checks["sql"] = f"down: {type(exc).__name__}"
    checks["kafka"] = "ok" if runtime.publisher.started else "down: publisher not started"
    try:
        await asyncio.to_thread(runtime.vectors.list_collections)
        checks["qdrant"] = "ok"
    except ServiceUnavailable as exc:
        checks["qdrant"] = f"down: {exc}"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        Health(status="ready" if ready else "not ready", checks=checks).model_dump(),
        status_code=200 if ready else 503,
    )
