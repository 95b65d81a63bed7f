"""``/ops``: a live page for operators, and ``/v1/ops/stats``, the in-process figures it shows.

The page is plain HTML with a few lines of inline JavaScript (no external script, style or
font) that polls JSON endpoints every 2 s: ``/v1/ops/lag`` (lag per group and partition; the
page derives throughput from how fast committed offsets move), ``/v1/ops/stats`` (freshness),
``/v1/models`` (active versions) and ``/v1/experiments`` (CTR per variant). Reads: no key.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict

from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from prometheus_client import Counter, Histogram

from api.deps import RuntimeDep
from schemas.api import GroupThroughput, OpsStats

router = APIRouter(tags=["ops"])

POLL_MS = 2000
Buckets = list[tuple[float, float]]  # (upper bound, cumulative count), ascending


def histogram_quantile(q: float, buckets: Buckets) -> float | None:
    """The q-quantile of a cumulative histogram, interpolated linearly inside its bucket (as
    Prometheus' ``histogram_quantile``); None when it is empty."""
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if math.isinf(upper):
                return lower  # beyond the last finite bound: report that bound
            return lower + (upper - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = upper, count
    return lower


def _sum_by(counter: Counter, label: str) -> dict[str, int]:
    totals: dict[str, int] = defaultdict(int)
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                totals[sample.labels[label]] += int(sample.value)
    return dict(totals)


def _buckets_by_group(histogram: Histogram) -> dict[str, Buckets]:
    found: dict[str, Buckets] = defaultdict(list)
    for metric in histogram.collect():
        for sample in metric.samples:
            if sample.name.endswith("_bucket"):
                found[sample.labels["group"]].append((float(sample.labels["le"]), sample.value))
    return {group: sorted(buckets) for group, buckets in found.items()}


@router.get("/v1/ops/stats")
async def ops_stats(runtime: RuntimeDep) -> OpsStats:
    """Events published and applied by this process, and event-to-state freshness (p50, p99
    since start) of the consumer groups running in it (``streamrec up``)."""
    metrics = runtime.metrics
    consumed = _sum_by(metrics.events_consumed, "group")
    freshness = _buckets_by_group(metrics.event_to_state_seconds)
    groups = [
        GroupThroughput(
            group=group,
            events=consumed.get(group, 0),
            freshness_samples=int(freshness[group][-1][1]) if freshness.get(group) else 0,
            freshness_p50_seconds=histogram_quantile(0.5, freshness.get(group, [])),
            freshness_p99_seconds=histogram_quantile(0.99, freshness.get(group, [])),
        )
        for group in sorted(consumed.keys() | freshness.keys())
    ]
    return OpsStats(
        measured_at=time.time(),
        published=_sum_by(metrics.events_published, "topic"),
        groups=groups,
    )


@router.get("/ops", response_class=HTMLResponse, include_in_schema=False)
async def ops_page() -> HTMLResponse:
    """The live operations page."""
    return HTMLResponse(OPS_PAGE)


OPS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>streamrec ops</title>
<style>
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin-bottom:1.5em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
#status{color:#666}
</style></head><body>
<h1>streamrec ops</h1><p id="status">loading…</p>
<h2>Consumer groups</h2>
<table><thead><tr><th>group</th><th>throughput (msg/s committed)</th><th>lag (msgs)</th>
<th>oldest unconsumed (s)</th><th>event→state p50 (s)</th><th>event→state p99 (s)</th>
</tr></thead><tbody id="groups"></tbody></table>
<h2>Lag per partition</h2>
<table><thead><tr><th>group</th><th>topic</th><th>partition</th><th>end offset</th>
<th>committed</th><th>lag</th><th>lag (s)</th></tr></thead><tbody id="lag"></tbody></table>
<h2>Active model versions</h2>
<table><thead><tr><th>model</th><th>active version</th><th>versions</th><th>created</th>
</tr></thead><tbody id="models"></tbody></table>
<h2>CTR per variant</h2>
<table><thead><tr><th>experiment</th><th>variant</th><th>impressions</th><th>clicks</th>
<th>CTR</th><th>95% interval</th></tr></thead><tbody id="variants"></tbody></table>
<script>
const POLL_MS = __POLL_MS__;
const DASH = "\\u2013";
const show = v => v === null || v === undefined ? DASH
  : typeof v === "number" && !Number.isInteger(v) ? v.toFixed(3) : String(v);
function fill(id, rows) {
  document.getElementById(id).replaceChildren(...rows.map(cells => {
    const tr = document.createElement("tr");
    for (const c of cells) {
      const td = document.createElement("td");
      td.textContent = show(c);
      tr.append(td);
    }
    return tr;
  }));
}
async function get(path) {
  const r = await fetch(path);
  if (!r.ok) throw new Error(path + " answered " + r.status);
  return r.json();
}
const pct = (lo, hi) => lo === null ? null
  : (100 * lo).toFixed(1) + DASH + (100 * hi).toFixed(1) + "%";
let before = null;
async function refresh() {
  try {
    const [lag, stats, models, exps] = await Promise.all(
      ["/v1/ops/lag", "/v1/ops/stats", "/v1/models", "/v1/experiments"].map(get));
    const committed = Object.fromEntries(lag.groups.map(g =>
      [g.group, g.partitions.reduce((n, p) => n + (p.committed_offset ?? 0), 0)]));
    const dt = before ? lag.measured_at - before.at : 0;
    const rate = g => dt > 0 && g in before.committed
      ? (committed[g] - before.committed[g]) / dt : null;
    const fresh = Object.fromEntries(stats.groups.map(g => [g.group, g]));
    fill("groups", lag.groups.map(g => [g.group, rate(g.group), g.total_lag, g.max_lag_seconds,
      fresh[g.group]?.freshness_p50_seconds, fresh[g.group]?.freshness_p99_seconds]));
    fill("lag", lag.groups.flatMap(g => g.partitions.map(p => [g.group, p.topic, p.partition,
      p.end_offset, p.committed_offset, p.lag, p.lag_seconds])));
    fill("models", models.models.map(m => [m.name, m.active_version, m.versions.length,
      (m.versions.find(v => v.active) || {}).created_at]));
    fill("variants", exps.experiments.flatMap(e => e.variants.map(v => [e.name, v.variant,
      v.impressions, v.clicks, v.ctr, pct(v.ctr_low, v.ctr_high)])));
    before = {committed, at: lag.measured_at};
    document.getElementById("status").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (err) {
    document.getElementById("status").textContent = "error: " + err.message;
  }
  setTimeout(refresh, POLL_MS);
}
refresh();
</script></body></html>
""".replace("__POLL_MS__", str(POLL_MS))
