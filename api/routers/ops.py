"""Operations: consumer lag, Prometheus metrics, liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streamrec.api.deps import RuntimeDep
from streamrec.api.readiness import OK, Readiness
from streamrec.api.responses import error_responses
from streamrec.core.lag import LagReader, LagReport
from streamrec.schemas.api import Health

router = APIRouter(tags=["ops"])


@router.get("/v1/ops/lag", responses=error_responses(described={503: "Kafka is unavailable"}))
async def lag(request: Request) -> LagReport:
    """Per consumer group, topic and partition: end offset, committed offset, lag, the age in
    seconds of the oldest unconsumed event where it can be read, and a Burrow-style status
    (OK, UNKNOWN, WARN, STALL, STOP, ERR) over a sliding window; with totals. Read from the
    process's lag reader: at most STREAMREC_LAG_REFRESH_SECONDS old (``measured_at``)."""
    reader: LagReader = request.app.state.lag
    return await reader.report()


@router.get("/metrics", include_in_schema=False)
async def metrics(runtime: RuntimeDep) -> Response:
    return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz")
async def healthz() -> Health:
    """Liveness: the process answers."""
    return Health(status="ok")


@router.get("/readyz", responses={503: {"model": Health}})
async def readyz(request: Request) -> Response:
    """Readiness: Redis answers PING, SQL ``SELECT 1``, a Kafka broker a metadata request and
    Qdrant its collection list, each within STREAMREC_READINESS_TIMEOUT_SECONDS; the result
    is reused for STREAMREC_READINESS_CACHE_SECONDS. 503 names what is down."""
    readiness: Readiness = request.app.state.readiness
    checks = await readiness.report()
    ready = all(v == OK for v in checks.values())
    return JSONResponse(
        Health(status="ready" if ready else "not ready", checks=checks).model_dump(),
        status_code=200 if ready else 503,
    )
