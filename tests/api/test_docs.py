"""``/docs`` (Swagger UI) and ``/redoc`` work offline: their pages reference only this server's
own files (issue 15, item 6: Swagger UI was blank offline, its CSS and JS came from a CDN),
and the server serves those files. No lifespan: the pages need no backing service."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from streamrec.api.app import create_app
from streamrec.api.docs import ASSETS_URL
from streamrec.core.settings import Settings

# What each referenced file must be: its content type, and a word its content holds.
ASSETS = {
    "swagger-ui-bundle.js": ("javascript", "SwaggerUIBundle"),
    "swagger-ui.css": ("text/css", ".swagger-ui"),
    "redoc.standalone.js": ("javascript", "Redoc"),
    "favicon.png": ("image/png", "PNG"),
}
_REFERENCE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")


def _client(tmp_path: Path, root_path: str = "") -> httpx.AsyncClient:
    app = create_app(Settings(_env_file=None, var_dir=tmp_path))
    transport = httpx.ASGITransport(app=app, root_path=root_path)
    return httpx.AsyncClient(transport=transport, base_url="http://streamrec")


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(tmp_path) as opened:
        yield opened


@pytest.mark.parametrize(
    ("page", "expected"),
    [
        ("/docs", {"swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"}),
        ("/redoc", {"redoc.standalone.js", "favicon.png"}),
    ],
)
async def test_doc_pages_load_only_files_this_server_serves(
    client: httpx.AsyncClient, page: str, expected: set[str]
) -> None:
    response = await client.get(page)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    assert "//" not in html, html  # no CDN, no fonts from Google: no URL of another host
    references = _REFERENCE.findall(html)
    assert {url.rsplit("/", 1)[-1] for url in references} == expected, references
    for url in references:
        assert url.startswith(f"{ASSETS_URL}/"), url
        asset = await client.get(url)
        content_type, word = ASSETS[url.rsplit("/", 1)[-1]]
        assert asset.status_code == 200, url
        assert content_type in asset.headers["content-type"], (url, asset.headers)
        assert word.encode() in asset.content[:2_000_000], url
    assert "/openapi.json" in html  # and the document they render is this server's too


async def test_an_unknown_asset_is_404(client: httpx.AsyncClient) -> None:
    assert (await client.get(f"{ASSETS_URL}/nothing.js")).status_code == 404


async def test_behind_a_path_prefix_the_pages_point_under_it(tmp_path: Path) -> None:
    async with _client(tmp_path, root_path="/streamrec") as client:
        html = (await client.get("/docs")).text
    references = _REFERENCE.findall(html)
    assert references and all(u.startswith(f"/streamrec{ASSETS_URL}/") for u in references)
    assert "'/streamrec/openapi.json'" in html
