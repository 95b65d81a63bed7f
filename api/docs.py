"""The API's documentation: Swagger UI at ``/docs`` and ReDoc at ``/redoc``, working offline,
with described tags and readable operation ids.

FastAPI's default pages load their JavaScript, CSS, favicon and (ReDoc) fonts from CDNs, so
they are blank without the internet. Here, as FastAPI's "Custom Docs UI Static Assets
(Self-Hosting)" describes, the pages point at files this server serves itself under
``/docs/assets``: those of the ``fastapi-offline`` package (a dependency), which ships Swagger
UI's bundle and CSS, ReDoc's standalone bundle and a favicon, so nothing is vendored here.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs/assets"
ASSETS_PACKAGE = ("fastapi_offline", "static")  # the package's folder of Swagger UI/ReDoc files

# In the order the pages list them. Each route's tag is set by its router (api/routers/).
OPENAPI_TAGS: list[dict[str, Any]] = [
    {
        "name": "events",
        "description": "Ratings, clicks, impressions and catalog items, published to Kafka "
        "(one event or up to a batch; ingest key). The consumer groups turn them into the "
        "state the other endpoints read.",
    },
    {
        "name": "users",
        "description": "Recommendations for a user (popular items for one without history; "
        "optionally re-ranked by the Dueling DQN) and the user's recent history.",
    },
    {"name": "items", "description": "Items similar to an item, by an embedding model."},
    {
        "name": "dqn",
        "description": "The online Dueling DQN of the active version: Q-values of raw "
        "vectors, and candidates ranked for a user's current state.",
    },
    {
        "name": "doc2vec",
        "description": "Text embeddings from the active Doc2Vec version (the content vectors "
        "of items, cold start and DQN action features).",
    },
    {
        "name": "models",
        "description": "The model registry: versions with their metrics and data windows; "
        "activate or delete a version (admin key).",
    },
    {
        "name": "training",
        "description": "Training jobs on the live archive or a dataset: start one (admin "
        "key), follow its status.",
    },
    {
        "name": "experiments",
        "description": "Impressions, clicks and CTR with an interval per variant.",
    },
    {
        "name": "ops",
        "description": "Consumer lag with a status per group, health and readiness, "
        "throughput and freshness, dead letters. `/metrics` (Prometheus) and the `/ops` "
        "page are outside this document.",
    },
]


def operation_id(route: APIRoute) -> str:
    """The route function's name (``recommend``, ``list_models``): readable, and stable as
    long as the function keeps its name. Unique across the app (tests/api/test_docs.py)."""
    return route.name


def install_docs(app: FastAPI) -> None:
    """Serve ``/docs`` and ``/redoc`` from local files (create the app with ``docs_url=None,
    redoc_url=None`` so FastAPI's CDN-backed pages are not added)."""
    app.mount(ASSETS_URL, StaticFiles(packages=[ASSETS_PACKAGE]), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")  # behind a proxy that strips a prefix
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,  # fonts from Google are a CDN too
        )
