"""``import streamrec``: the SDK's names, typed (``py.typed`` shipped), and light (nothing of the
server is imported: an app feeding streamrec does not load torch or FastAPI)."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from importlib import resources
from pathlib import Path

import streamrec
from core.errors import PublishError, ServiceUnavailable, StreamrecError
from producers.publisher import EventPublisher, SyncEventPublisher
from schemas.api import Recommendations, SimilarItems, UserHistory
from schemas.events import ClickEvent, ImpressionEvent, ItemEvent, RatingEvent
from streamrec.client import AsyncStreamrecClient, StreamrecClient
from streamrec.errors import InvalidRequestError, ServiceUnavailableError, StreamrecClientError

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
    "core.settings",
    "stores",
    "consumers",
    "trainer",
    "api",
    "apps",
)


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
    probe = (
        "import json, sys, streamrec; "
        f"heavy = {HEAVY!r}; "
        "print(json.dumps(sorted(m for m in sys.modules "
        "if any(m == h or m.startswith(h + '.') for h in heavy))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert json.loads(done.stdout) == []


def test_py_typed_is_in_the_package_and_shipped_with_it() -> None:
    assert resources.files("streamrec").joinpath("py.typed").is_file()
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "py.typed" in setuptools["package-data"]["streamrec"]
    assert "streamrec*" in setuptools["packages"]["find"]["include"]
