// The /ops page's script (served by api/routers/ops_page.py): polls this server's JSON
// endpoints and draws them. No library and no other server: it works offline.
"use strict";

const POLL_MS = __POLL_MS__;
const HISTORY_S = 600; // how far back the charts reach
const KEY_ITEM = "streamrec.ops.adminKey"; // sessionStorage: forgotten with the tab
const SVG_NS = "http://www.w3.org/2000/svg";
const DASH = "\u2013";
const WORST_FIRST = ["ERR", "STOP", "STALL", "WARN", "UNKNOWN", "OK"];

const data = {}; // the last answer per endpoint
const errors = {}; // the last error per endpoint (null once it answers again)
const history = new Map(); // group -> one sample per lag reading (distinct measured_at)
const unfolded = new Set(); // groups whose partitions are open
let polls = 0;

// -- formatting and DOM -------------------------------------------------------------------------
const $ = (id) => document.getElementById(id);
const missing = (v) => v === null || v === undefined;
const num = (v) => (missing(v) ? DASH : Math.round(v).toLocaleString("en-US"));
const secs = (v) =>
  missing(v) ? DASH : v < 1 ? Math.round(v * 1000) + " ms" : v.toFixed(v < 10 ? 1 : 0) + " s";
const perSec = (v) => (missing(v) ? DASH : (v < 10 ? v.toFixed(1) : num(v)) + "/s");
const pct = (v) => (missing(v) ? DASH : (100 * v).toFixed(1) + "%");
const when = (iso) => (missing(iso) ? DASH : new Date(iso).toLocaleString());
const day = (unix) => (missing(unix) ? "?" : new Date(unix * 1000).toISOString().slice(0, 10));

function h(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  node.append(...children.filter((c) => !missing(c)).map((c) => (c instanceof Node ? c : String(c))));
  return node;
}
function svg(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}
function fill(id, rows) {
  $(id).replaceChildren(...rows.map((cells) => h("tr", {}, ...cells.map(
    (c) => (c instanceof Node && c.tagName === "TD" ? c : h("td", {}, missing(c) ? DASH : c))))));
}
const textCell = (...children) => h("td", {class: "text"}, ...children);
const badge = (status) => h("span", {class: "badge s-" + status}, status);
const note = (id, name, text) => { $(id).textContent = errors[name] ? "error: " + errors[name] : text || ""; };

// -- charts: inline SVG polylines over the readings of the last HISTORY_S seconds -------------
const span = (seconds) => (seconds < 120 ? Math.round(seconds) + " s" : Math.round(seconds / 60) + " min");

function chart(caption, series, fmt, start, end) {
  const W = 300, H = 60, PAD = 3;
  const points = series.flatMap((s) => s.points);
  const top = Math.max(1, ...points.map((p) => p[1]));
  const width = Math.max(end - start, 1);
  const x = (t) => (PAD + ((W - 2 * PAD) * (t - start)) / width).toFixed(1);
  const y = (v) => (H - PAD - ((H - 2 * PAD) * v) / top).toFixed(1);
  const box = svg("svg", {class: "chart", viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none",
    "data-points": String(Math.max(0, ...series.map((s) => s.points.length))),
    "data-max": String(Math.max(0, ...points.map((p) => p[1])))});
  for (const {points: line, cls} of series) {
    if (!line.length) continue;
    box.append(svg("polyline", {class: cls, points: line.map(([t, v]) => x(t) + "," + y(v)).join(" ")}));
    const [t, v] = line[line.length - 1];
    box.append(svg("circle", {class: cls, cx: x(t), cy: y(v), r: 2}));
  }
  return h("figure", {}, h("figcaption", {}, `${caption}, last ${span(end - start)} (max ${fmt(top)})`), box);
}

// -- consumer groups --------------------------------------------------------------------------
function record(lag) {
  for (const g of lag.groups) {
    const rows = history.get(g.group) || [];
    // The lag reader refreshes less often than the page polls: one sample per reading.
    if (rows.length && rows[rows.length - 1].t === lag.measured_at) continue;
    const sum = (f) => g.partitions.reduce((n, p) => n + f(p), 0);
    rows.push({t: lag.measured_at, lag: g.total_lag, n: g.partitions.length,
      pos: sum((p) => p.end_offset - p.lag), end: sum((p) => p.end_offset)});
    while (rows[0].t < lag.measured_at - HISTORY_S) rows.shift();
    history.set(g.group, rows);
  }
}

function rates(rows) {
  const out = [];
  for (let i = 1; i < rows.length; i++) {
    const a = rows[i - 1], b = rows[i], dt = b.t - a.t;
    if (dt > 0 && a.n === b.n) {
      out.push({t: b.t, out: Math.max(0, (b.pos - a.pos) / dt), in: Math.max(0, (b.end - a.end) / dt)});
    }
  }
  return out;
}

function partitionTable(g) {
  const body = g.partitions.map((p) => h("tr", {}, h("td", {}, p.topic), h("td", {}, p.partition),
    h("td", {}, num(p.end_offset)), h("td", {}, num(p.committed_offset)), h("td", {}, num(p.lag)),
    h("td", {}, secs(p.lag_seconds)), h("td", {}, badge(p.status))));
  return h("table", {}, h("thead", {}, h("tr", {}, ...["topic", "partition", "end offset",
    "committed", "lag", "oldest unconsumed", "status"].map((c) => h("th", {}, c)))), h("tbody", {}, ...body));
}

function groupCard(g, fresh) {
  const rows = history.get(g.group) || [];
  const flow = rates(rows);
  const last = flow[flow.length - 1];
  const [start, end] = rows.length ? [rows[0].t, rows[rows.length - 1].t] : [0, 0];
  const fact = (key, label, value) =>
    h("div", {class: "fact", "data-fact": key}, h("span", {class: "k"}, label), h("span", {class: "v"}, value));
  const lagging = g.partitions.filter((p) => p.lag > 0).length;
  const details = h("details", {open: unfolded.has(g.group)},
    h("summary", {}, `${g.partitions.length} partitions, ${lagging} lagging`),
    h("div", {class: "scroll"}, partitionTable(g)));
  details.addEventListener("toggle", () => (details.open ? unfolded.add(g.group) : unfolded.delete(g.group)));
  const freshness = fresh && fresh.recent_freshness_samples
    ? secs(fresh.recent_freshness_p50_seconds) + " / " + secs(fresh.recent_freshness_p99_seconds) : DASH;
  return h("section", {class: "group s-" + g.status, id: "g-" + g.group, "data-group": g.group,
    "data-status": g.status},
  h("header", {}, badge(g.status), h("h3", {}, g.group)),
  h("div", {class: "facts"}, fact("lag", "lag (messages)", num(g.total_lag)),
    fact("lag-seconds", "oldest unconsumed", secs(g.max_lag_seconds)),
    fact("members", "members", missing(g.members) ? DASH : g.members),
    fact("consumed", "consumed", perSec(last && last.out)), fact("produced", "produced", perSec(last && last.in)),
    fact("freshness", "freshness p50 / p99", freshness)),
  h("div", {class: "charts"},
    chart("lag", [{points: rows.map((r) => [r.t, r.lag]), cls: "lag"}], num, start, end),
    h("div", {}, chart("throughput", [{points: flow.map((r) => [r.t, r.out]), cls: "out"},
      {points: flow.map((r) => [r.t, r.in]), cls: "in"}], perSec, start, end),
    h("span", {class: "key"}, h("i", {class: "out"}), "consumed", h("i", {class: "in"}), "produced"))),
  details);
}

function drawGroups() {
  const lag = data.lag;
  const age = lag ? Date.now() / 1000 - lag.measured_at : null;
  note("lag-note", "lag", lag ? `lag read ${secs(Math.max(age, 0))} ago, ${num(lag.total_lag)} messages behind in all` : "");
  if (!lag) return;
  const fresh = Object.fromEntries(((data.stats || {}).groups || []).map((g) => [g.group, g]));
  $("window").textContent = data.stats ? "last " + secs(data.stats.window_seconds) : DASH;
  $("groups").replaceChildren(...lag.groups.map((g) => groupCard(g, fresh[g.group])));
  $("overview").replaceChildren(...lag.groups.map((g) =>
    h("a", {class: "s-" + g.status, href: "#g-" + g.group, "data-group": g.group}, badge(g.status), g.group)));
  const worst = WORST_FIRST.find((s) => lag.groups.some((g) => g.status === s)) || "UNKNOWN";
  document.title = worst + " \u00b7 streamrec ops";
}

// -- dead letters, models, experiments -----------------------------------------------------------
function drawDeadLetters() {
  const c = data.dlq;
  $("dlq-total").textContent = errors.dlq ? "error: " + errors.dlq : !c ? DASH
    : `${num(c.total)} in streamrec.dlq` + (c.unread ? ` (${num(c.unread)} not read yet)` : "");
  if (c) fill("dlq-counts", c.counts.map((x) => [x.consumer_group, x.source_topic, num(x.count), when(x.newest_failed_at)]));
  const keyed = sessionStorage.getItem(KEY_ITEM) !== null;
  note("letters-note", "letters", keyed ? "The newest 20 (the admin key is kept for this tab only)."
    : "The newest letters need the admin key (payloads are user data).");
  const letters = keyed && data.letters ? data.letters.letters : [];
  fill("letters", letters.map((l) => [when(l.failed_at), l.consumer_group,
    `${l.source_topic}[${l.source_partition}]@${l.source_offset}`, textCell(l.reason), textCell(l.key),
    textCell(l.payload_bytes === null ? "(null)" : h("pre", {}, l.payload_excerpt)), `${l.dlq_partition}@${l.dlq_offset}`]));
}

function dataWindow(w) {
  if (!w || !w.source) return DASH;
  return `${w.source}: ${num(w.events)} events, ${num(w.users)} users \u00d7 ${num(w.items)} items, ${day(w.start_ts)} \u2192 ${day(w.end_ts)}`;
}

function drawModels() {
  note("models-note", "models");
  if (!data.models) return;
  fill("models", data.models.models.map((m) => {
    const live = m.versions.find((v) => v.active);
    return [m.name, live ? "v" + live.version : "none live", m.versions.length,
      textCell(dataWindow(live && live.data_window)), live ? when(live.activated_at || live.created_at) : DASH];
  }));
}

function interval(v, top) {
  if (missing(v.ctr_low)) return DASH;
  const x = (p) => (2 + (116 * p) / top).toFixed(1);
  const bar = svg("svg", {class: "ci", viewBox: "0 0 120 12"});
  bar.append(svg("line", {x1: x(v.ctr_low), x2: x(v.ctr_high), y1: 6, y2: 6}),
    svg("circle", {cx: x(v.ctr), cy: 6, r: 3}));
  return h("td", {}, bar);
}

function drawExperiments() {
  note("experiments-note", "experiments");
  if (!data.experiments) return;
  const variants = data.experiments.experiments.flatMap((e) => e.variants.map((v) => [e, v]));
  const top = Math.max(0.01, ...variants.map(([, v]) => v.ctr_high || 0));
  fill("variants", variants.map(([e, v]) => [e.name, v.variant, num(v.impressions), num(v.clicks), pct(v.ctr),
    missing(v.ctr_low) ? DASH : pct(v.ctr_low) + DASH + pct(v.ctr_high), interval(v, top)]));
}

// -- polling ----------------------------------------------------------------------------------
async function load(name, path, headers) {
  try {
    const r = await fetch(path, {headers: headers || {}, cache: "no-store"});
    const body = await r.json();
    if (!r.ok) throw new Error(`${r.status} ${body.message || ""}`);
    data[name] = body;
    errors[name] = null;
  } catch (err) {
    errors[name] = err.message;
  }
}

function loadLetters() {
  const key = sessionStorage.getItem(KEY_ITEM);
  return key === null ? null : load("letters", "/v1/ops/dead-letters/recent?limit=20", {"X-API-Key": key});
}

const SECTIONS = [[drawGroups, "lag-note"], [drawDeadLetters, "letters-note"],
  [drawModels, "models-note"], [drawExperiments, "experiments-note"]];

function draw() {
  for (const [section, noteId] of SECTIONS) {
    try {
      section();
    } catch (err) { // one broken section must not stop the others, nor hide why
      $(noteId).textContent = "error: could not draw: " + err.message;
      console.error(err);
    }
  }
}

async function refresh() {
  try {
    await Promise.all([load("lag", "/v1/ops/lag"), load("stats", "/v1/ops/stats"),
      load("dlq", "/v1/ops/dead-letters"), load("models", "/v1/models"),
      load("experiments", "/v1/experiments"), loadLetters()]);
    if (data.lag && !errors.lag) record(data.lag);
    polls += 1;
    draw();
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    $("updated").dataset.polls = String(polls);
  } finally {
    setTimeout(refresh, POLL_MS);
  }
}

$("key-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY_ITEM, $("admin-key").value);
  $("admin-key").value = "";
  await loadLetters();
  draw();
});
$("forget-key").addEventListener("click", () => {
  sessionStorage.removeItem(KEY_ITEM);
  delete data.letters;
  draw();
});
refresh();
