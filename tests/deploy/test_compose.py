"""The production stack, checked statically (no Docker engine here, so no ``docker compose
config``): the files parse; every service has a healthcheck; no secret has a default; every
`streamrec consume` service is scraped by Prometheus and checked through its /metrics; the
Grafana dashboard shows each consumer group's status, lag, lag seconds, throughput, freshness and
dead letters with metrics streamrec exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SECRET = re.compile(r"PASSWORD|API_KEY|SECRET|TOKEN")
VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)([^}]*)\}")


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def dashboard() -> dict[str, Any]:
    return json.loads((DEPLOY / "grafana" / "dashboards" / "streamrec.json").read_text())


def consume_services() -> list[str]:
    return [name for name, s in services().items() if s.get("command", [None])[0] == "consume"]


def test_the_stack_files_parse() -> None:
    assert services()
    for path in [*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")]:
        assert yaml.safe_load(path.read_text()) is not None, path
    assert dashboard()["panels"]


def test_every_service_has_a_healthcheck() -> None:
    everything = services()
    for name, service in everything.items():
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        if check.get("disable"):  # only a one-shot job, whose health is its exit code
            assert service.get("restart") == "no", name
            waiting = [
                other
                for other in everything.values()
                if other.get("depends_on", {}).get(name, {}).get("condition")
                == "service_completed_successfully"
            ]
            assert waiting, f"{name} disables its healthcheck but nothing waits for its exit"
        else:
            assert check["test"][0] in ("CMD", "CMD-SHELL"), name


def test_consumer_processes_are_checked_and_scraped_through_their_metrics() -> None:
    consumers = consume_services()
    assert {"consumers", "vectors", "online-rl", "retrain"} <= set(consumers)
    everything = services()
    for name in consumers:
        test = " ".join(everything[name]["healthcheck"]["test"])
        assert "/metrics" in test and "STREAMREC_METRICS_PORT" in test, name
    scrape = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"]
    found = {
        name
        for job in scrape
        for sd in job.get("dns_sd_configs", [])
        if sd.get("port") == 9108
        for name in sd["names"]
    }
    assert set(consumers) <= found, "a consume service Prometheus does not scrape"


def test_no_secret_has_a_default_and_each_is_left_to_set_in_env_example() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    secrets = {(name, rest) for name, rest in VARIABLE.findall(text) if SECRET.search(name)}
    names = {name for name, _ in secrets}
    assert {
        "POSTGRES_PASSWORD",
        "GRAFANA_ADMIN_PASSWORD",
        "STREAMREC_INGEST_API_KEY",
        "STREAMREC_ADMIN_API_KEY",
    } <= names
    for name, rest in secrets:
        assert rest.startswith(":?") and len(rest) > 2, f"${{{name}{rest}}}: required, with a hint"
    example = (ROOT / ".env.example").read_text()
    for name in names:
        assert re.search(rf"^# {name}=$", example, re.M), f"{name}: left to set in .env.example"
        assert not re.search(rf"^{name}=", example, re.M), f"{name} has a value in .env.example"


def _exported() -> set[str]:
    """Names streamrec's processes export (counters with _total; histograms with their parts)."""
    source = (ROOT / "core" / "metrics.py").read_text()
    names = set(re.findall(r'"(streamrec_[a-z_]+)"', source))
    counters = set(re.findall(r'Counter\(\s*"(streamrec_[a-z_]+)"', source))
    histograms = set(re.findall(r'Histogram\(\s*"(streamrec_[a-z_]+)"', source))
    return (
        names
        | {f"{n}_total" for n in counters}
        | {f"{n}_{part}" for n in histograms for part in ("bucket", "count", "sum")}
    )


def test_every_dashboard_query_reads_a_metric_streamrec_exports() -> None:
    exported = _exported()
    panels = [p for p in dashboard()["panels"] if p["type"] != "row"]
    for panel in panels:
        for target in panel["targets"]:
            used = set(re.findall(r"\b(streamrec_[a-z_]+)", target["expr"]))
            assert used and used <= exported, (panel["title"], used - exported)


def test_the_dashboard_shows_each_consumer_group() -> None:
    """Status, lag, lag seconds, throughput, freshness and dead letters, each per group."""
    panels = [p for p in dashboard()["panels"] if p["type"] != "row"]
    per_group = {
        metric
        for p in panels
        for t in p["targets"]
        if re.search(r"by \((\w+, )*group\b", t["expr"])
        for metric in re.findall(r"\b(streamrec_[a-z_]+)", t["expr"])
    }
    assert {
        "streamrec_consumer_group_status",
        "streamrec_consumer_lag_messages",
        "streamrec_consumer_lag_seconds",
        "streamrec_events_consumed_total",
        "streamrec_event_to_state_seconds_bucket",
        "streamrec_dead_letters_total",
    } <= per_group
    status = next(p for p in panels if p["type"] == "stat")
    words = {
        v["text"]
        for m in status["fieldConfig"]["defaults"]["mappings"]
        for v in m["options"].values()
    }
    assert words == {"OK", "UNKNOWN", "WARN", "STALL", "STOP", "ERR"}


def test_dashboard_panels_have_unique_ids_and_do_not_overlap() -> None:
    panels = dashboard()["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & mine, f"{panel['title']} overlaps another panel"
        cells |= mine
