"""The /ops page: self-contained HTML whose script polls JSON endpoints that answer, and
/v1/ops/stats, the in-process throughput and freshness it shows."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from api.routers.ops_page import POLL_MS, histogram_quantile
from stores.model_registry import ModelRegistry
from tests.conftest import INGEST_KEY, wait_until
from trainer.models.dueling_dqn import DuelingDQN, DuelingDQNConfig

pytestmark = pytest.mark.kafka

RATINGS = [
    {"type": "rating", "user_id": f"u{i % 3}", "item_id": f"i{i}", "rating": 4.0} for i in range(12)
]
IMPRESSION = {
    "type": "impression",
    "user_id": "u0",
    "request_id": "r1",
    "item_ids": ["i1"],
    "model": "mf",
    "variant": "exp:a",
}
SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)
POLLED = re.compile(r'"(/v1/[a-z/]+)"')


async def _fed(client: Any) -> None:
    """Events in; wait until the features group applied them."""
    response = await client.post(
        "/v1/events", json=[*RATINGS, IMPRESSION], headers={"X-API-Key": INGEST_KEY}
    )
    assert response.status_code == 202, response.text

    async def applied() -> bool:
        groups = (await client.get("/v1/ops/stats")).json()["groups"]
        return any(g["group"] == "streamrec-features" and g["events"] >= 13 for g in groups)

    await wait_until(applied)


async def test_stats_show_throughput_and_freshness(app_client) -> None:  # type: ignore[no-untyped-def]
    _, client = app_client
    await _fed(client)
    stats = (await client.get("/v1/ops/stats")).json()
    assert stats["published"]["streamrec.ratings"] == 12
    features = next(g for g in stats["groups"] if g["group"] == "streamrec-features")
    assert features["freshness_samples"] >= 13
    assert 0 < features["freshness_p50_seconds"] <= features["freshness_p99_seconds"] < 30


async def test_page_is_self_contained_and_polls_every_two_seconds(app_client) -> None:  # type: ignore[no-untyped-def]
    _, client = app_client
    response = await client.get("/ops")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert not re.search(r"(src|href)\s*=|https?://|@import", page)  # nothing external
    assert POLL_MS == 2000 and "setTimeout(refresh, POLL_MS)" in page
    for table in ("groups", "lag", "models", "variants"):
        assert f'<tbody id="{table}">' in page
    polled = POLLED.findall(SCRIPT.search(page).group(1))  # type: ignore[union-attr]
    assert sorted(polled) == ["/v1/experiments", "/v1/models", "/v1/ops/lag", "/v1/ops/stats"]
    for path in polled:
        answer = await client.get(path)
        assert answer.status_code == 200, (path, answer.text)
        assert isinstance(answer.json(), dict)


NODE_HARNESS = """
const fs = require("fs");
const {script, responses} = JSON.parse(fs.readFileSync(0, "utf8"));
const tables = {};
const cell = () => ({children: [], textContent: "", append(c) { this.children.push(c); }});
globalThis.document = {
  createElement: cell,
  getElementById: id => ({
    set textContent(v) { tables[id] = v; },
    replaceChildren: (...rows) => {
      tables[id] = rows.map(r => r.children.map(c => c.textContent));
    },
  }),
};
globalThis.fetch = async path => ({ok: true, json: async () => responses[path]});
let polls = 0;
globalThis.setTimeout = (fn, ms) => {
  polls += 1;
  if (polls === 1) { setImmediate(fn); return; }
  process.stdout.write(JSON.stringify({tables, ms}));
};
eval(script);
"""


def _register_dqn(runtime: Any) -> None:
    registry = ModelRegistry(runtime.services.engine, runtime.settings.var_dir / "models")
    config = DuelingDQNConfig(state_dim=3, item_dim=2, hidden=(4,), adv_hidden=(2,))
    registry.register("dqn", DuelingDQN(config).eval(), activate=True)


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
async def test_page_script_renders_the_endpoints(app_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Run the page's own script in node against what the endpoints answer (DOM stubbed)."""
    app, client = app_client
    _register_dqn(app.state.runtime)
    await _fed(client)
    page = (await client.get("/ops")).text
    responses = {p: (await client.get(p)).json() for p in POLLED.findall(page)}
    harness = tmp_path / "harness.js"
    harness.write_text(NODE_HARNESS)
    payload = json.dumps({"script": SCRIPT.search(page).group(1), "responses": responses})  # type: ignore[union-attr]
    done = subprocess.run(
        ["node", str(harness)], input=payload, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    rendered = json.loads(done.stdout)
    tables = rendered["tables"]
    assert rendered["ms"] == POLL_MS and tables["status"].startswith("updated"), tables
    assert {row[0] for row in tables["groups"]} >= {"streamrec-features", "streamrec-archive"}
    assert any(row[:3] == ["streamrec-features", "streamrec.ratings", "0"] for row in tables["lag"])
    assert tables["variants"] == [["exp", "exp:a", "1", "0", "0", "0.0\u201379.3%"]]
    assert [row[:3] for row in tables["models"]] == [["dqn", "1", "1"]]


def test_histogram_quantile_interpolates_inside_the_bucket() -> None:
    buckets = [(0.01, 0.0), (0.1, 50.0), (1.0, 100.0), (float("inf"), 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.055)
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.982)
    assert histogram_quantile(0.5, [(0.1, 0.0), (float("inf"), 0.0)]) is None
    assert histogram_quantile(0.99, [(0.1, 1.0), (float("inf"), 10.0)]) == pytest.approx(0.1)
