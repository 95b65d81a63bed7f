"""``import streamrec``: the SDK's names, typed (``py.typed`` shipped), and light (nothing of the
server is imported: an app feeding streamrec does not load torch or FastAPI)."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import streamrec
from streamrec.client import AsyncStreamrecClient, StreamrecClient
from streamrec.core.errors import PublishError, ServiceUnavailable, StreamrecError
from streamrec.errors import InvalidRequestError, ServiceUnavailableError, StreamrecClientError
from streamrec.producers.publisher import EventPublisher, SyncEventPublisher
from streamrec.schemas.api import Recommendations, SimilarItems, UserHistory
from streamrec.schemas.events import ClickEvent, ImpressionEvent, ItemEvent, RatingEvent

ROOT = Path(__file__).resolve().parents[2]
# Modules of the server side an app must not pay for (seconds of start-up, hundreds of MB).
HEAVY = (
    "torch",
    "gensim",
    "numpy",
    "fastapi",
    "starlette",
    "uvicorn",
    "faststream",
    "sqlalchemy",
    "redis",
    "qdrant_client",
    "qdrant_edge",
    "confluent_kafka",
    "typer",
    "streamrec.core.settings",
    "streamrec.stores",
    "streamrec.consumers",
    "streamrec.trainer",
    "streamrec.api",
    "streamrec.apps",
)
# The repository's top-level folders: installed as streamrec.<folder>, never under their own name.
FOLDERS = ("schemas", "core", "stores", "producers", "consumers", "trainer", "api", "apps")


def test_import_streamrec_exposes_the_publishers_the_clients_the_models_and_the_errors() -> None:
    assert streamrec.EventPublisher is EventPublisher
    assert streamrec.SyncEventPublisher is SyncEventPublisher
    assert streamrec.StreamrecClient is StreamrecClient
    assert streamrec.AsyncStreamrecClient is AsyncStreamrecClient
    events = (
        streamrec.RatingEvent,
        streamrec.ClickEvent,
        streamrec.ImpressionEvent,
        streamrec.ItemEvent,
    )
    assert events == (RatingEvent, ClickEvent, ImpressionEvent, ItemEvent)
    answers = (streamrec.Recommendations, streamrec.SimilarItems, streamrec.UserHistory)
    assert answers == (Recommendations, SimilarItems, UserHistory)
    errors = (streamrec.PublishError, streamrec.ServiceUnavailable, streamrec.StreamrecError)
    assert errors == (PublishError, ServiceUnavailable, StreamrecError)
    assert all(hasattr(streamrec, name) for name in streamrec.__all__)


def test_the_client_errors_fit_into_the_domain_error_tree() -> None:
    assert issubclass(StreamrecClientError, StreamrecError)
    assert issubclass(ServiceUnavailableError, ServiceUnavailable)
    assert issubclass(streamrec.APIConnectionError, ServiceUnavailable)
    assert issubclass(InvalidRequestError, streamrec.APIStatusError)
    assert not issubclass(InvalidRequestError, ServiceUnavailable)


def test_import_streamrec_loads_nothing_of_the_server() -> None:
    """Every SDK name is read (they load on first use), and still nothing of the server."""
    probe = (
        "import json, sys, streamrec; "
        "[getattr(streamrec, name) for name in streamrec.__all__]; "
        f"heavy = {HEAVY!r}; "
        "print(json.dumps(sorted(m for m in sys.modules "
        "if any(m == h or m.startswith(h + '.') for h in heavy))))"
    )
    assert _printed_by(probe, ROOT) == []


def _printed_by(probe: str, cwd: Path) -> Any:
    """The JSON that ``probe`` prints, run by a fresh interpreter in ``cwd``."""
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=cwd, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)


def test_py_typed_is_in_the_package_and_shipped_with_it() -> None:
    assert resources.files("streamrec").joinpath("py.typed").is_file()
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "py.typed" in setuptools["package-data"]["streamrec"]
    assert "streamrec*" in setuptools["packages"]["find"]["include"]


def test_the_folders_install_under_streamrec_and_not_as_top_level_modules(tmp_path: Path) -> None:
    """Outside the repository (so the current directory does not count), ``import core`` finds
    nothing of ours, while ``streamrec.core`` is the repository's core/ folder."""
    probe = (
        "import importlib.util, json; "
        f"folders = {FOLDERS!r}; "
        "print(json.dumps({name: [getattr(importlib.util.find_spec(name), 'origin', None), "
        "importlib.util.find_spec('streamrec.' + name).origin] for name in folders}))"
    )
    for name, (bare, ours) in _printed_by(probe, tmp_path).items():
        assert bare is None or not Path(bare).resolve().is_relative_to(ROOT), name
        assert Path(ours).resolve() == ROOT / name / "__init__.py"
