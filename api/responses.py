"""The error responses routes document in the OpenAPI schema, one wording per status.

The schema is the behaviour (tests/api/test_openapi.py runs schemathesis against the app): a
route lists every error status it can answer, each with the ``ErrorBody`` that
``api.errors`` sends. Routes name their own case where it says more (``described``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from streamrec.schemas.api import ErrorBody

DESCRIPTIONS: dict[int, str] = {
    401: "Missing or wrong X-API-Key",
    404: "Not found",
    409: "Conflicts with the current state",
    413: "The request body is larger than STREAMREC_MAX_REQUEST_BYTES",
    422: "A parameter or the body breaks a rule, or is not valid JSON (the message names the "
    "field and the rule)",
    503: "A service the route needs (Redis, SQL, Kafka or Qdrant) is unavailable",
}

# What a route with a JSON body and a store behind it can always answer.
BODY_ERRORS = (413, 422, 503)


def error_responses(
    *codes: int, described: Mapping[int, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: ``codes`` with the common wording, ``described`` with its
    own (a code in ``described`` need not be repeated in ``codes``)."""
    own = dict(described or {})
    return {
        code: {"model": ErrorBody, "description": own.get(code) or DESCRIPTIONS[code]}
        for code in sorted({*codes, *own})
    }
