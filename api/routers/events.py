"""POST /v1/events: one event or a list, validated and published to Kafka."""

from __future__ import annotations

import json
from collections import Counter
from typing import Annotated

from fastapi import APIRouter, Body, Depends, HTTPException, Request, status
from pydantic import Field

from streamrec.api.deps import IngestKey, PublisherDep, RuntimeDep
from streamrec.api.responses import error_responses
from streamrec.schemas.api import EventsAccepted
from streamrec.schemas.events import Event

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
    responses=error_responses(
        described={
            401: "Missing or wrong X-API-Key (the ingest or admin key)",
            413: "More events than STREAMREC_MAX_EVENTS_PER_REQUEST, or a body larger than "
            "STREAMREC_MAX_REQUEST_BYTES",
            422: "An event breaks a rule (field and rule named), an empty list, or not JSON",
            503: "Kafka did not take the events",
        }
    ),
)
async def publish_events(
    events: Annotated[
        Event | Annotated[list[Event], Field(min_length=1)],
        Body(description="One event or a non-empty list of events"),
    ],
    publisher: PublisherDep,
) -> EventsAccepted:
    """Validate and publish events; 202 once Kafka has acknowledged every one of them.

    All or nothing on validation: one invalid event rejects the request, naming the field.
    """
    batch = events if isinstance(events, list) else [events]
    accepted = await publisher.publish_many(batch)
    return EventsAccepted(accepted=accepted, by_topic=dict(Counter(e.topic.value for e in batch)))
