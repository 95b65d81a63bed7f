"""An error response as the documented exception: chosen by status, with the API's error body
(and a proxy's non-JSON page) readable on it."""

from __future__ import annotations

import httpx
import pytest

from streamrec.errors import (
    APIStatusError,
    AuthError,
    FieldError,
    InvalidRequestError,
    NotFoundError,
    ServiceUnavailableError,
    error_for_response,
)


def _response(status: int, **kwargs: object) -> httpx.Response:
    request = httpx.Request("POST", "http://streamrec/v1/events")
    return httpx.Response(status, request=request, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (401, AuthError),
        (403, AuthError),
        (404, NotFoundError),
        (413, InvalidRequestError),
        (422, InvalidRequestError),
        (503, ServiceUnavailableError),
    ],
)
def test_each_documented_status_has_its_exception(status: int, kind: type) -> None:
    error = error_for_response(_response(status, json={"error": "code", "message": "why"}))
    assert type(error) is kind
    assert (error.status_code, error.code, error.message) == (status, "code", "why")
    assert str(error) == f"POST /v1/events: {status} code: why"


def test_other_statuses_are_a_plain_status_error_with_the_body() -> None:
    body = {"error": "conflict", "message": "dqn v2 is active: activate another first"}
    error = error_for_response(_response(409, json=body))
    assert type(error) is APIStatusError and error.body == body


def test_a_422_names_each_field_and_rule() -> None:
    details = [
        {"field": "events[0].rating", "msg": "Input should be <= 5, got 7", "type": "le"},
        {"field": "events[2].item_id", "msg": "Field required", "type": "missing"},
    ]
    body = {"error": "invalid_input", "message": "…", "details": details}
    error = error_for_response(_response(422, json=body))
    assert isinstance(error, InvalidRequestError)
    assert error.details == [
        FieldError("events[0].rating", "Input should be <= 5, got 7", "le"),
        FieldError("events[2].item_id", "Field required", "missing"),
    ]


def test_a_body_that_is_not_the_apis_json_still_reads() -> None:
    """A proxy in front of the API answers in HTML, or with nothing."""
    page = error_for_response(_response(503, text="<html>Service Temporarily Unavailable</html>"))
    assert isinstance(page, ServiceUnavailableError)
    assert page.code == "Service Unavailable" and "Temporarily" in page.message
    assert page.event_ids == [] and page.published is None
    empty = error_for_response(_response(500))
    assert (empty.code, empty.message) == ("Internal Server Error", "Internal Server Error")
