"""The OpenAPI document is the behaviour: a bounded, seeded schemathesis run against the app,
in-process (ASGI), with active dqn and doc2vec versions so that it reaches the DQN endpoints.

It runs schemathesis' engine (what ``schemathesis run`` runs) rather than its pytest plugin,
whose lazy-fixture loader reads a private pytest attribute that pytest 9 removed.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import events
from schemathesis.hooks import GLOBAL_HOOK_DISPATCHER
from schemathesis.python.asgi import shutdown_lifespans

from streamrec.api.app import create_app
from streamrec.api.routers import training
from streamrec.api.runtime import Runtime
from streamrec.api.training_jobs import TrainingJobs
from streamrec.core.settings import Settings
from streamrec.schemas.api import MAX_BATCH
from streamrec.schemas.events import EVENT_TIME_BOUNDS
from streamrec.schemas.models import RECOMMENDERS, TRAINABLE, VECTOR_MODELS
from tests.api.test_rl import _deploy
from tests.conftest import ADMIN_KEY

pytestmark = pytest.mark.kafka

SEED = 20261121
MAX_EXAMPLES = 25  # fuzzed cases per operation, beside the coverage phase's deterministic ones


async def _deploy_models(runtime: Runtime) -> None:
    await asyncio.to_thread(_deploy, runtime)


def _event_time_accepted(value: str) -> bool:
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        return True  # not a date-time: a broken rule the schema states, left as generated
    ts = ts if ts.tzinfo else ts.replace(tzinfo=UTC)
    bounds = EVENT_TIME_BOUNDS
    return bounds.floor <= ts and ts.timestamp() <= bounds.clock() + bounds.max_future_seconds


def _rules_a_schema_cannot_state(context: Any, case: Any, _kwargs: dict[str, Any]) -> None:
    """Make generated events meet the two rules of ``/v1/events`` that JSON Schema cannot
    state (their fields' descriptions do): event times within STREAMREC_EVENT_TIME_FLOOR and
    now + STREAMREC_EVENT_MAX_FUTURE_SECONDS (a bound that moves with the clock), and one
    propensity per shown item in an impression's policy log. Only values that are otherwise
    valid are changed, so every rule the schema states is still tested as generated (and
    schemathesis re-judges each edited case as valid or not)."""
    if context.operation is None or context.operation.path != "/v1/events":
        return
    body = case.body
    for event in body if isinstance(body, list) else [body]:
        if not isinstance(event, dict):
            continue
        ts = event.get("ts")
        if isinstance(ts, str) and not _event_time_accepted(ts):
            event["ts"] = datetime.now(UTC).isoformat()
        items, policy = event.get("item_ids"), event.get("policy")
        propensities = policy.get("propensities") if isinstance(policy, dict) else None
        if (
            isinstance(items, list)
            and isinstance(propensities, list)
            and 0 < len(items) <= MAX_BATCH
            and 0 < len(propensities) <= MAX_BATCH
        ):
            policy["propensities"] = (propensities * len(items))[: len(items)]


def _config() -> SchemathesisConfig:
    return SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "headers": {"X-API-Key": ADMIN_KEY},  # the admin key also opens the ingest routes
            "generation": {
                "mode": "all",  # valid and invalid data
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "database": "none",  # no replay of earlier runs' examples: repeatable
            },
            "phases": {"stateful": {"enabled": False}},
            "checks": {"enabled": True},  # every check, not only the CLI's default
            "operations": [
                {
                    # Which bodies are valid depends on the active model (vector sizes) and
                    # the catalog (items with a content vector), which a static schema cannot
                    # say: a schema-valid body can get the documented 422 that names the rule.
                    "include-path-regex": "^/v1/(predict/q-values|rank)$",
                    "checks": {"positive_data_acceptance": {"enabled": False}},
                }
            ],
        }
    )


@pytest.fixture
def api_schema(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setattr(
        training,
        "TrainingJobs",
        # Fuzzed job requests are valid: no worker runs in this app, so each is recorded and
        # waits; a limit this high refuses none (a full queue is a 503 by design). Running jobs
        # is tested in tests/api/test_training_jobs.py and tests/apps/test_training_jobs.py.
        functools.partial(TrainingJobs, max_queued=10**6),
    )
    app = create_app(settings, on_started=_deploy_models)
    # Loading the schema starts the app's lifespan on schemathesis' own event-loop thread,
    # where every request of the run is then served.
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=_config())
    # before_call sees every case of every phase (map_body misses the coverage phase's); it
    # can only be registered globally, so it is removed again below.
    schemathesis.hook("before_call")(_rules_a_schema_cannot_state)
    try:
        yield schema
    finally:
        GLOBAL_HOOK_DISPATCHER.unregister(_rules_a_schema_cannot_state)
        shutdown_lifespans()


def _run(schema: Any) -> tuple[list[str], int]:
    """Every failed check (one per operation, check and title) and every error of one run,
    each with the response and a curl line; and the number of cases sent."""
    failures: dict[str, str] = {}
    cases = 0
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            cases += len(recorder.cases)
            for case_id, checks in recorder.checks.items():
                for check in checks:
                    if check.failure_info is None:
                        continue
                    failure = check.failure_info.failure
                    key = f"{recorder.label}: {check.name}: {failure.title}"
                    interaction = recorder.interactions.get(case_id)
                    response = interaction.response if interaction is not None else None
                    answer = (
                        f"{response.status_code} {response.content[:500]!r}" if response else "-"
                    )
                    failures.setdefault(
                        key,
                        f"{key}\n{failure.message}\nanswer: {answer}\n"
                        f"{check.failure_info.code_sample[:1500]}",
                    )
        elif isinstance(event, events.NonFatalError | events.FatalError):
            failures.setdefault(
                f"{event.label}: {event.info.title}", f"{event.label}: {event.info}"
            )
    return list(failures.values()), cases


def test_api_conforms_to_its_openapi_document(api_schema: Any) -> None:
    started = time.perf_counter()
    failures, cases = _run(api_schema)
    assert not failures, "\n\n".join(failures)
    assert cases > 300, f"only {cases} cases ran"  # the run reached every operation
    assert time.perf_counter() - started < 60


# -- regressions: each conformance failure the run found, pinned -------------------------------
@pytest.fixture
async def edge(settings: Settings) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    """The API alone with dqn and doc2vec active; yields (openapi document, client)."""
    app = create_app(settings, on_started=_deploy_models)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://streamrec") as client:
            yield app.openapi(), client


def _parameter(document: dict[str, Any], path: str, name: str) -> dict[str, Any]:
    found = [p for p in document["paths"][path]["get"]["parameters"] if p["name"] == name]
    return found[0]["schema"]


RATING = {"type": "rating", "user_id": "u1", "item_id": "i1", "rating": 4.0}
INGEST = {"X-API-Key": ADMIN_KEY}


async def test_similar_offers_only_models_with_item_vectors(
    edge: tuple[dict[str, Any], httpx.AsyncClient],
) -> None:
    document, client = edge
    enum = _parameter(document, "/v1/items/{item_id}/similar", "model")["enum"]
    assert "popular" not in enum and {"bpr", "doc2vec"} <= set(enum)
    response = await client.get("/v1/items/i1/similar", params={"model": "popular"})
    assert response.status_code == 422 and "'doc2vec'" in response.json()["message"]


async def test_model_enums_are_the_models_table(
    edge: tuple[dict[str, Any], httpx.AsyncClient],
) -> None:
    """Every surface lists the names of schemas.models: what it takes on input (with the
    former name content), what it answers with (names alone)."""
    document, _client = edge
    recommend = _parameter(document, "/v1/users/{user_id}/recommendations", "model")
    assert recommend["enum"] == [n.value for n in RECOMMENDERS] + ["content"]
    similar = _parameter(document, "/v1/items/{item_id}/similar", "model")
    assert similar["enum"] == [n.value for n in VECTOR_MODELS] + ["content"]
    schemas = document["components"]["schemas"]
    job = schemas.get("TrainingJobRequest-Input", schemas.get("TrainingJobRequest"))
    assert job["properties"]["model"]["enum"] == [n.value for n in TRAINABLE] + ["content"]
    served = schemas.get("Recommendations-Output", schemas.get("Recommendations"))
    assert served["properties"]["model"]["enum"] == [n.value for n in RECOMMENDERS]
    assert "dqn" not in recommend["enum"]  # a re-ranker: rerank=dqn


async def test_events_schema_matches_what_is_accepted(
    edge: tuple[dict[str, Any], httpx.AsyncClient],
) -> None:
    document, client = edge
    body = document["paths"]["/v1/events"]["post"]["requestBody"]["content"]["application/json"]
    lists = [s for s in body["schema"]["anyOf"] if s.get("type") == "array"]
    assert lists and lists[0]["minItems"] == 1  # [] is a 422: the schema says so
    rating = document["components"]["schemas"]["RatingEvent"]
    assert "type" in rating["required"]  # the union's tag: an event without it is a 422
    kinds = {branch["type"] for branch in rating["properties"]["item_id"]["anyOf"]}
    assert kinds == {"string", "integer"}  # MovieLens numbers are taken as strings

    ok = await client.post(
        "/v1/events", json=[{**RATING, "user_id": 7.0, "item_id": 42}], headers=INGEST
    )
    assert ok.status_code == 202, ok.text
    for bad, words in (
        ({**RATING, "item_id": 2**53}, "2^53"),
        ({**RATING, "ts": 1_700_000_000}, "RFC 3339"),
        ({**RATING, "rating": True}, "not a boolean"),
        ({key: v for key, v in RATING.items() if key != "type"}, "type"),
    ):
        response = await client.post("/v1/events", json=bad, headers=INGEST)
        assert response.status_code == 422, (bad, response.text)
        assert words in response.json()["message"], response.json()["message"]


async def test_genres_with_control_characters_are_422(
    edge: tuple[dict[str, Any], httpx.AsyncClient],
) -> None:
    document, client = edge
    genres = _parameter(document, "/v1/users/{user_id}/recommendations", "genres")
    assert "pattern" in str(genres)
    response = await client.get("/v1/users/u1/recommendations", params={"genres": "Dra\x10ma"})
    assert response.status_code == 422 and "genres" in response.json()["message"]
    ok = await client.get("/v1/users/u1/recommendations", params={"genres": "Drama,Film-Noir"})
    assert ok.status_code == 200, ok.text


async def test_rerank_without_candidates_is_an_empty_list_not_a_500(
    edge: tuple[dict[str, Any], httpx.AsyncClient],
) -> None:
    _, client = edge
    response = await client.get("/v1/users/nobody/recommendations", params={"rerank": "dqn"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["items"] == [] and body["rerank_fallback"] and body["rerank_note"]


async def test_training_request_booleans_and_numbers_are_strict(
    edge: tuple[dict[str, Any], httpx.AsyncClient],
) -> None:
    _, client = edge
    for bad in ({"activate": 0}, {"exclude_seen": "yes"}, {"seed": False}):
        response = await client.post(
            "/v1/training/jobs", json={"model": "mf", "data": "synthetic", **bad}, headers=INGEST
        )
        assert response.status_code == 422, (bad, response.text)


async def test_routes_document_the_errors_they_answer(
    edge: tuple[dict[str, Any], httpx.AsyncClient],
) -> None:
    document, _ = edge
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            codes = set(operation["responses"])
            where = f"{method.upper()} {path}"
            if "requestBody" in operation:
                assert {"413", "422"} <= codes, where
            if operation.get("security"):
                assert "401" in codes, where
            if operation.get("parameters") or "requestBody" in operation:
                assert "422" in codes, where
                schema = operation["responses"]["422"]["content"]["application/json"]["schema"]
                assert schema["$ref"].endswith("/ErrorBody"), where  # not FastAPI's default
            if path.startswith("/v1/") and not path.startswith(("/v1/ops/stats", "/v1/training")):
                assert "503" in codes, where
    # Bounds appear as JSON Schema keywords (a validator ignores pydantic's "ge"/"le").
    assert '"ge":' not in json.dumps(document) and '"le":' not in json.dumps(document)


# -- the document's names: readable operation ids and described tags (issue 15, item 6) --------
# Each operation's id is its route function's name: what a generated client calls the method.
# Renaming one changes the API's contract for such clients, so this list pins them.
OPERATION_IDS = {
    ("post", "/v1/events"): "publish_events",
    ("get", "/v1/users/{user_id}/recommendations"): "recommend",
    ("get", "/v1/users/{user_id}/history"): "history",
    ("get", "/v1/items/{item_id}/similar"): "similar",
    ("post", "/v1/predict/q-values"): "q_values",
    ("post", "/v1/rank"): "rank",
    ("post", "/v1/embeddings/doc2vec"): "embed",
    ("post", "/v1/embeddings/doc2vec/bulk"): "embed_bulk",
    ("get", "/v1/ops/lag"): "lag",
    ("get", "/healthz"): "healthz",
    ("get", "/readyz"): "readyz",
    ("get", "/v1/models"): "list_models",
    ("get", "/v1/models/{name}"): "get_model",
    ("post", "/v1/models/{name}/versions/{version}/activate"): "activate_version",
    ("delete", "/v1/models/{name}/versions/{version}"): "delete_version",
    ("get", "/v1/training/jobs"): "list_jobs",
    ("post", "/v1/training/jobs"): "start_job",
    ("get", "/v1/training/jobs/{job_id}"): "get_job",
    ("get", "/v1/experiments"): "list_experiments",
    ("get", "/v1/experiments/{name}"): "get_experiment",
}


def _operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method, path): operation
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    }


def test_operation_ids_are_the_route_names_and_unique(tmp_path: Path) -> None:
    document = create_app(Settings(_env_file=None, var_dir=tmp_path)).openapi()
    operations = _operations(document)
    ids = {key: operation["operationId"] for key, operation in operations.items()}
    assert {key: ids.get(key) for key in OPERATION_IDS} == OPERATION_IDS
    assert len(set(ids.values())) == len(ids), ids  # unique: each names one operation
    for key, operation_id in ids.items():  # routes added later follow the same rule
        assert re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", operation_id), key
        assert not operation_id.endswith(("_get", "_post", "_delete")), key  # not generated


def test_every_tag_is_described_and_doc2vec_has_its_own(tmp_path: Path) -> None:
    document = create_app(Settings(_env_file=None, var_dir=tmp_path)).openapi()
    described = {tag["name"]: tag.get("description", "") for tag in document["tags"]}
    operations = _operations(document)
    used = {tag for operation in operations.values() for tag in operation["tags"]}
    assert used <= set(described), used - set(described)
    assert all(len(text) > 20 for text in described.values()), described
    for path in ("/v1/embeddings/doc2vec", "/v1/embeddings/doc2vec/bulk"):
        assert operations[("post", path)]["tags"] == ["doc2vec"]
    for path in ("/v1/predict/q-values", "/v1/rank"):
        assert operations[("post", path)]["tags"] == ["dqn"]
