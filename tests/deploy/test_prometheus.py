"""deploy/prometheus.yml and its alert rules, checked by Prometheus' own ``promtool``: the
config (which loads the rules), the rules, and the rules' unit tests (alerts_test.yml: an alert
fires when it should and not before). Skipped where promtool is not installed (Debian: the
``prometheus`` package)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (apt-get install prometheus)"
)


def promtool(*args: str, cwd: Path = DEPLOY) -> str:
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


@needs_promtool
def test_the_config_is_valid_and_loads_the_alert_rules() -> None:
    output = promtool("check", "config", "prometheus.yml")
    assert "SUCCESS: 1 rule files found" in output


@needs_promtool
def test_the_alert_rules_are_valid() -> None:
    output = promtool("check", "rules", "prometheus/alerts.yml")
    assert re.search(r"SUCCESS: \d+ rules found", output), output


@needs_promtool
def test_the_alerts_fire_on_their_unit_test_series() -> None:
    assert "SUCCESS" in promtool("test", "rules", "alerts_test.yml", cwd=DEPLOY / "prometheus")


def test_every_metric_an_alert_reads_is_one_streamrec_exports() -> None:
    """A renamed metric must not leave an alert that can never fire (no promtool needed)."""
    groups = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
    exprs = " ".join(rule["expr"] for group in groups for rule in group["rules"])
    used = set(re.findall(r"\b(streamrec_[a-z_]+)", exprs))
    exported = {
        "streamrec_consumer_group_status",
        "streamrec_consumer_group_members",
        "streamrec_consumer_lag_read_timestamp_seconds",
        "streamrec_dead_letters_total",
        "streamrec_event_to_state_seconds_bucket",
    }
    assert used == exported
    source = (DEPLOY.parent / "core" / "metrics.py").read_text()
    for name in exported:
        base = re.sub(r"_(total|bucket)$", "", name)
        assert f'"{base}"' in source, f"{base} is not defined in core/metrics.py"
