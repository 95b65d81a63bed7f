"""Logging set-up for the command-line entry points (libraries only create loggers)."""

from __future__ import annotations

import logging

from rich.logging import RichHandler

_QUIET = (
    "aiokafka",
    "alembic",  # "Running upgrade ..." on every start: only worth seeing when it fails
    "faststream",
    "streamrec.consumers.broker",
    "uvicorn.access",
    "httpx",
    "gensim",  # dozens of INFO lines per Doc2Vec load or training run
    "smart_open",
)


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level,
        format="%(name)s: %(message)s",
        datefmt="%H:%M:%S",
        handlers=[RichHandler(show_path=False, rich_tracebacks=False)],
        force=True,
    )
    for name in _QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level)))
