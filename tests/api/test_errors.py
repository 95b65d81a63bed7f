"""Every API error has its documented status and a JSON body with a clear message."""

from __future__ import annotations

import pytest

from tests.conftest import ADMIN_KEY, INGEST_KEY

pytestmark = pytest.mark.kafka

RATING = {"type": "rating", "user_id": "u1", "item_id": "i1", "rating": 4.0}


def assert_error(response, status: int, code: str, *words: str) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code
    for word in words:
        assert word in body["message"], body["message"]
    assert "Traceback" not in response.text
    return body


async def test_events_without_key_are_401(api_client) -> None:  # type: ignore[no-untyped-def]
    response = await api_client.post("/v1/events", json=RATING)
    assert_error(response, 401, "unauthorized", "X-API-Key")


async def test_events_with_wrong_key_are_401(api_client) -> None:  # type: ignore[no-untyped-def]
    response = await api_client.post("/v1/events", json=RATING, headers={"X-API-Key": "nope"})
    assert_error(response, 401, "unauthorized")


async def test_events_accept_ingest_and_admin_keys(api_client) -> None:  # type: ignore[no-untyped-def]
    for key in (INGEST_KEY, ADMIN_KEY):
        response = await api_client.post("/v1/events", json=RATING, headers={"X-API-Key": key})
        assert response.status_code == 202, response.text
        assert response.json() == {"accepted": 1, "by_topic": {"streamrec.ratings": 1}}


async def test_too_many_events_are_413(api_client) -> None:  # type: ignore[no-untyped-def]
    response = await api_client.post(
        "/v1/events", json=[RATING] * 1001, headers={"X-API-Key": INGEST_KEY}
    )
    assert_error(response, 413, "payload_too_large", "1001", "1000")


async def test_rating_out_of_range_is_422_naming_field_and_rule(api_client) -> None:  # type: ignore[no-untyped-def]
    response = await api_client.post(
        "/v1/events", json={**RATING, "rating": 9}, headers={"X-API-Key": INGEST_KEY}
    )
    assert_error(response, 422, "invalid_input", "rating", "less than or equal to 5")


async def test_unknown_event_type_is_422(api_client) -> None:  # type: ignore[no-untyped-def]
    response = await api_client.post(
        "/v1/events", json={**RATING, "type": "purchase"}, headers={"X-API-Key": INGEST_KEY}
    )
    assert_error(response, 422, "invalid_input", "purchase")


async def test_malformed_json_is_422(api_client) -> None:  # type: ignore[no-untyped-def]
    response = await api_client.post(
        "/v1/events",
        content=b'{"type": "rating",',
        headers={"X-API-Key": ADMIN_KEY, "content-type": "application/json"},
    )
    assert_error(response, 422, "invalid_input", "JSON")


async def test_empty_event_list_is_422(api_client) -> None:  # type: ignore[no-untyped-def]
    response = await api_client.post("/v1/events", json=[], headers={"X-API-Key": INGEST_KEY})
    assert_error(response, 422, "invalid_input", "at least 1 item")


async def test_history_of_unknown_user_is_404(api_client) -> None:  # type: ignore[no-untyped-def]
    response = await api_client.get("/v1/users/nobody/history")
    assert_error(response, 404, "not_found", "nobody")


async def test_unknown_model_is_422_listing_valid_ones(api_client) -> None:  # type: ignore[no-untyped-def]
    response = await api_client.get("/v1/users/u1/recommendations", params={"model": "gpt"})
    assert_error(response, 422, "invalid_input", "model", "popular")


async def test_k_out_of_range_is_422(api_client) -> None:  # type: ignore[no-untyped-def]
    response = await api_client.get("/v1/users/u1/recommendations", params={"k": 0})
    assert_error(response, 422, "invalid_input", "k")


async def test_unknown_route_is_json_404(api_client) -> None:  # type: ignore[no-untyped-def]
    response = await api_client.get("/v1/nothing-here")
    assert_error(response, 404, "not_found")


async def test_health_ready_and_metrics(api_client) -> None:  # type: ignore[no-untyped-def]
    assert (await api_client.get("/healthz")).json()["status"] == "ok"
    ready = await api_client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"redis": "ok", "sql": "ok", "kafka": "ok", "qdrant": "ok"}
    metrics = await api_client.get("/metrics")
    assert "streamrec_http_request_seconds" in metrics.text


BODY_ROUTES = (
    "/v1/embeddings/doc2vec",
    "/v1/embeddings/doc2vec/bulk",
    "/v1/predict/q-values",
    "/v1/rank",
    "/v1/events",
    "/v1/training/jobs",
)


@pytest.mark.parametrize("path", BODY_ROUTES)
async def test_body_that_is_not_utf8_json_is_422(api_client, path: str) -> None:  # type: ignore[no-untyped-def]
    # FastAPI answered a body it cannot decode with a bare 400, which no route documents.
    response = await api_client.post(
        path,
        content=b"\xff\xfe{]",
        headers={"X-API-Key": ADMIN_KEY, "content-type": "application/json"},
    )
    assert_error(response, 422, "invalid_input", "JSON")


async def test_wrong_method_lists_every_method_of_the_path(api_client) -> None:  # type: ignore[no-untyped-def]
    # GET and POST /v1/training/jobs are two routes; Starlette's Allow named the first only.
    response = await api_client.request("OPTIONS", "/v1/training/jobs")
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "GET, POST"
    response = await api_client.delete("/v1/events")
    assert response.status_code == 405 and response.headers["allow"] == "POST"
