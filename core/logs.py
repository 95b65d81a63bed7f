"""Logging set-up for the command-line entry points (libraries only create loggers).

Every record is one line on stderr, never wrapped at a terminal's width, with an ISO-8601 UTC
timestamp. ``text`` (the default) reads ``2026-01-31T12:00:00.123Z INFO    name: message``;
``json`` (``STREAMREC_LOG_FORMAT=json``) writes one JSON object per line with ``ts``,
``level``, ``logger`` and ``message``, and ``exception`` when the record carries one (its
traceback inside the string, so a record stays one line for a log shipper).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Literal

LogFormat = Literal["text", "json"]

# Libraries whose INFO lines are routine; their warnings and errors still show.
_QUIET = (
    "aiokafka",
    "alembic",  # "Running upgrade ..." on every start: only worth seeing when it fails
    "faststream",
    "streamrec.consumers.broker",
    "uvicorn.access",
    "httpx",
    "httpcore",
    "gensim",  # dozens of INFO lines per Doc2Vec load or training run
    "smart_open",
    "qdrant_client",
    "urllib3",
    "matplotlib",
    "torch",  # FakeTensor cache statistics at exit, among others
)


def timestamp(created: float) -> str:
    """``created`` (seconds since the epoch) as ISO 8601 in UTC, to the millisecond."""
    moment = datetime.fromtimestamp(created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TextFormatter(logging.Formatter):
    """``<ts> <LEVEL> <logger>: <message>``; a traceback, when there is one, follows it."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{timestamp(record.created)} {record.levelname:<7} {record.name}: "
        line += record.getMessage()
        details = _exception_text(self, record)
        return f"{line}\n{details}" if details else line


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside strings are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        details = _exception_text(self, record)
        if details:
            entry["exception"] = details
        return json.dumps(entry, ensure_ascii=False, default=str)


def _exception_text(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    parts = []
    if record.exc_info:
        # Cached on the record, as logging.Formatter does: every handler formats it once.
        record.exc_text = record.exc_text or formatter.formatException(record.exc_info)
    if record.exc_text:
        parts.append(record.exc_text)
    if record.stack_info:
        parts.append(formatter.formatStack(record.stack_info))
    return "\n".join(parts)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted, not when it was built:
    a test runner or a CLI harness that swaps stderr (and closes it after) never leaves this
    handler writing to a closed stream (as ``logging.lastResort`` does)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> IO[str]:
        return sys.stderr

    @stream.setter
    def stream(self, _value: IO[str]) -> None:
        pass  # always the current stderr


def configure_logging(
    level: str = "INFO", log_format: LogFormat = "text", stream: IO[str] | None = None
) -> None:
    """Route every logger to one handler on ``stream`` (stderr) in ``log_format``."""
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    quiet = max(logging.WARNING, logging.getLevelNamesMapping()[level])
    for name in _QUIET:
        logging.getLogger(name).setLevel(quiet)
