"""The streamrec command: help, and clear errors instead of tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from streamrec.core.cli import _register_plugins, app

runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def commands() -> None:
    _register_plugins()


def test_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in (
        "up",
        "serve",
        "consume",
        "lag",
        "replay",
        "simulate",
        "train",
        "vectors",
        "rebuild",
    ):
        assert command in result.output


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("streamrec 0.")


def test_registering_every_command_imports_no_heavy_library() -> None:
    """`streamrec --help` and the light commands start at once: PyTorch, gensim, FastAPI,
    FastStream and the clients (SQLAlchemy, redis, aiokafka, httpx, numpy, uvicorn) load only
    in the commands that use them (how fast is not asserted: a fresh interpreter is asked what
    it imported; README's CLI section has the measured time)."""
    heavy = (
        "torch",
        "gensim",
        "fastapi",
        "faststream",
        "sqlalchemy",
        "redis",
        "aiokafka",
        "httpx",
        "numpy",
        "uvicorn",
        "prometheus_client",
    )
    probe = (
        "import sys; from core.cli import _register_plugins; _register_plugins(); "
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_replay_without_a_running_system_explains_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMREC_VAR_DIR", str(tmp_path))
    monkeypatch.delenv("STREAMREC_KAFKA_BOOTSTRAP", raising=False)
    result = runner.invoke(app, ["replay", "synthetic", "--events", "10"])
    assert result.exit_code == 2
    assert "streamrec up" in result.output and "Traceback" not in result.output


def test_replay_of_a_missing_folder_is_a_clear_error() -> None:
    result = runner.invoke(app, ["replay", "/no/such/folder"])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_serve_refuses_embedded_services(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STREAMREC_KAFKA_BOOTSTRAP", raising=False)
    result = runner.invoke(app, ["serve"])
    assert result.exit_code == 2 and "streamrec up" in result.output
