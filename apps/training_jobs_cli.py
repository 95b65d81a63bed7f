"""``streamrec training-worker``: the command line of the training-jobs worker
(``apps/training_jobs.py``).

Kept apart from the worker so that registering the command imports no PyTorch: the CLI starts at
once, and the trainer loads when the command runs.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.console import Console

from streamrec.core.errors import StreamrecError
from streamrec.core.logs import configure_logging
from streamrec.core.settings import Settings

console = Console()


def register(app: typer.Typer) -> None:
    """Add ``streamrec training-worker`` to the streamrec CLI."""

    @app.command("training-worker")
    def training_worker(
        poll_seconds: Annotated[
            float, typer.Option(min=0.05, help="Seconds between looks for queued jobs when idle.")
        ] = 1.0,
    ) -> None:
        """Run the training jobs submitted over HTTP (POST /v1/training/jobs) until Ctrl-C.

        One job at a time, through the code of `streamrec train`, on the SQL database of
        STREAMREC_DATABASE_URL (jobs are recorded there by any API process). `streamrec up`
        runs one in its process already; run this one beside a `streamrec serve` (production),
        several if you like: each job runs once.
        """
        settings = Settings()
        configure_logging(settings.log_level, settings.log_format)
        from streamrec.apps.training_jobs import (
            WorkerConfig,
            run_worker,
        )  # PyTorch: only where it runs

        try:
            asyncio.run(run_worker(settings, WorkerConfig(poll_seconds=poll_seconds)))
        except StreamrecError as exc:
            console.print(f"[red]error:[/] {exc}")
            raise typer.Exit(2) from exc
