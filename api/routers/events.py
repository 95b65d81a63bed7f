"""POST /v1/events: one event or a list, validated and published to Kafka."""

from __future__ import annotations

import json
from collections import Counter
from typing import Annotated

from fastapi import APIRouter, Body, Depends, HTTPException, Request, status

from api.deps import IngestKey, PublisherDep, RuntimeDep
from schemas.api import ErrorBody, EventsAccepted
from schemas.events import Event

router = APIRouter(prefix="/v1/events", tags=["events"])


async def reject_oversized_batch(request: Request, runtime: RuntimeDep) -> None:
    """Answer 413 before validating a list longer than the limit."""
    limit = runtime.settings.max_events_per_request
    try:
        payload = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return  # body validation reports malformed JSON with a 422
    if isinstance(payload, list) and len(payload) > limit:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE,
            f"{len(payload)} events in one request; the limit is {limit}: split the batch",
        )


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[IngestKey, Depends(reject_oversized_batch)],
    responses={
        401: {"model": ErrorBody, "description": "Missing or wrong X-API-Key"},
        413: {"model": ErrorBody, "description": "More events than the per-request limit"},
        422: {"model": ErrorBody, "description": "An event breaks a rule (field and rule named)"},
        503: {"model": ErrorBody, "description": "Kafka did not take the events"},
    },
)
async def publish_events(
    events: Annotated[Event | list[Event], Body(description="One event or a list of events")],
    publisher: PublisherDep,
) -> EventsAccepted:
    """Validate and publish events; 202 once Kafka has acknowledged every one of them.

    All or nothing on validation: one invalid event rejects the request, naming the field.
    """
    batch = events if isinstance(events, list) else [events]
    if not batch:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "the list of events is empty")
    accepted = await publisher.publish_many(batch)
    return EventsAccepted(accepted=accepted, by_topic=dict(Counter(e.topic.value for e in batch)))
