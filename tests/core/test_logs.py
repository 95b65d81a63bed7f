"""Logs for machines and people (issue 15, item 4): one line per record with an ISO-8601 UTC
timestamp, never wrapped; JSON lines when asked; third-party INFO chatter (gensim's training,
alembic's migrations) kept out."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from gensim.models.doc2vec import Doc2Vec, TaggedDocument
from pydantic import ValidationError

from streamrec.core.db import create_db_engine
from streamrec.core.logs import _QUIET, configure_logging
from streamrec.core.settings import Settings
from streamrec.stores.schema import create_schema

ISO_UTC = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """Where configure_logging writes; the logging set-up of the test run is restored after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    quiet = {name: logging.getLogger(name).level for name in _QUIET}
    yield io.StringIO()
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, saved in quiet.items():
        logging.getLogger(name).setLevel(saved)


def _raise() -> None:
    raise ValueError("bad\nvalue")


def test_text_is_one_unwrapped_line_with_an_iso_timestamp(stream: io.StringIO) -> None:
    configure_logging("INFO", "text", stream=stream)
    message = "x" * 300  # far past any terminal's 80 columns
    logging.getLogger("streamrec.test").warning("lag %s", message)
    line = stream.getvalue()
    assert line.count("\n") == 1, line
    assert re.fullmatch(rf"{ISO_UTC} WARNING streamrec\.test: lag x{{300}}\n", line), line


def test_text_keeps_a_traceback_after_its_line(stream: io.StringIO) -> None:
    configure_logging("INFO", "text", stream=stream)
    try:
        _raise()
    except ValueError:
        logging.getLogger("streamrec.test").exception("it failed")
    first, *rest = stream.getvalue().splitlines()
    assert re.fullmatch(rf"{ISO_UTC} ERROR   streamrec\.test: it failed", first), first
    assert rest[0] == "Traceback (most recent call last):" and rest[-1] == "value"


def test_json_is_one_object_per_line(stream: io.StringIO) -> None:
    configure_logging("DEBUG", "json", stream=stream)
    log = logging.getLogger("streamrec.test")
    log.debug("first\nline")  # a newline inside a message stays inside the record
    try:
        _raise()
    except ValueError:
        log.exception("it failed")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, lines
    first, failed = (json.loads(line) for line in lines)
    assert set(first) == {"ts", "level", "logger", "message"}
    assert re.fullmatch(ISO_UTC, first["ts"]) and datetime.fromisoformat(first["ts"])
    assert (first["level"], first["logger"], first["message"]) == (
        "DEBUG",
        "streamrec.test",
        "first\nline",
    )
    assert failed["level"] == "ERROR" and failed["message"] == "it failed"
    assert failed["exception"].startswith("Traceback") and "ValueError: bad" in failed["exception"]


def test_the_format_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings(_env_file=None).log_format == "text"
    monkeypatch.setenv("STREAMREC_LOG_FORMAT", "json")
    assert Settings(_env_file=None).log_format == "json"
    monkeypatch.setenv("STREAMREC_LOG_FORMAT", "xml")
    with pytest.raises(ValidationError, match="log_format"):
        Settings(_env_file=None)


def test_library_chatter_is_quiet_but_its_warnings_are_not(
    stream: io.StringIO, tmp_path: Path
) -> None:
    """What flooded the logs at INFO: gensim (about 65 lines per Doc2Vec training, measured)
    and alembic (15 per start-up)."""
    configure_logging("INFO", "text", stream=stream)
    docs = [TaggedDocument(f"movie {i} drama comedy".split(), [i]) for i in range(50)]
    model = Doc2Vec(vector_size=8, min_count=1, epochs=2, workers=1, seed=0)
    model.build_vocab(docs)
    model.train(docs, total_examples=len(docs), epochs=model.epochs)
    create_schema(create_db_engine(f"sqlite:///{tmp_path / 'logs.db'}"))
    assert stream.getvalue() == ""
    logging.getLogger("gensim.models.word2vec").warning("a real problem")
    logging.getLogger("streamrec.test").info("ours")
    assert [line.split(maxsplit=2)[2] for line in stream.getvalue().splitlines()] == [
        "gensim.models.word2vec: a real problem",
        "streamrec.test: ours",
    ]
