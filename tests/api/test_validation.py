"""422 messages name the field as the client sent it, not pydantic's union internals."""

from __future__ import annotations

from typing import Any

import pytest

from streamrec.api.validation import field_name
from tests.conftest import INGEST_KEY

HEADERS = {"X-API-Key": INGEST_KEY}
RATING = {"type": "rating", "user_id": "u", "item_id": "i", "rating": 4}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({**RATING, "rating": 7}, "rating: Input should be less than or equal to 5, got 7"),
        ({"type": "rating", "user_id": "u", "item_id": "i"}, "rating: Field required"),
        ([RATING, {**RATING, "item_id": None}, RATING], "events[1].item_id: Input should be a"),
        ([RATING, {"type": "rating", "user_id": "u", "rating": 4}], "events[1].item_id: Field"),
        ({**RATING, "user_id": "a b"}, "user_id: ids may not contain whitespace or control"),
        ({"type": "purchase", "user_id": "u"}, "type: Input tag 'purchase' found using 'type'"),
    ],
)
async def test_event_errors_name_the_field_as_sent(
    api_client: Any, body: object, message: str
) -> None:
    response = await api_client.post("/v1/events", json=body, headers=HEADERS)
    assert response.status_code == 422
    got = response.json()["message"]
    assert got.startswith(message), got
    assert "tagged-union" not in got and "valid list" not in got and "body." not in got


async def test_query_errors_name_the_parameter(api_client: Any) -> None:
    response = await api_client.get("/v1/users/u/recommendations", params={"k": 0})
    assert response.status_code == 422
    assert response.json()["message"] == "k: Input should be greater than or equal to 1, got 0"


def test_field_names_drop_pydantic_internals() -> None:
    union = "tagged-union[RatingEvent,ClickEvent,ImpressionEvent,ItemEvent]"
    assert field_name(("body", union, "rating", "rating")) == "rating"
    assert field_name(("body", f"list[{union}]", 3, "click", "item_id")) == "events[3].item_id"
    assert field_name(("body", "policy", "propensities", 2)) == "policy.propensities[2]"
    assert field_name(("query", "k")) == "k"
    assert field_name(("body", "path")) == "path"  # a body field named like a location
    assert field_name(("body",)) == "body"
