"""``streamrec serve``: the API alone, against real services (``streamrec up``, the embedded
all-in-one, is a program of its own: ``apps/up.py``).

The app (FastAPI, PyTorch for the DQN endpoints) is imported by the command that runs it, not
when the CLI registers it: every other ``streamrec`` command starts without it.
"""

from __future__ import annotations

import math
from typing import Annotated

import typer
import uvicorn
from rich.console import Console

from core.errors import StreamrecError
from core.logs import configure_logging
from core.settings import Settings

console = Console()


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
        port: Annotated[int, typer.Option(min=1, max=65535, help="HTTP port.")] = 8000,
        workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    ) -> None:
        """Run the API alone against real services (production; consumers run elsewhere).

        Needs STREAMREC_KAFKA_BOOTSTRAP and STREAMREC_REDIS_URL pointing at real servers and
        both API keys set. For the all-in-one embedded system use `streamrec up`.
        """
        settings = Settings()
        configure_logging(settings.log_level)
        if settings.embedded_kafka or settings.embedded_redis:
            console.print(
                "[red]error:[/] `streamrec serve` runs the API against real Kafka and Redis; "
                "set STREAMREC_KAFKA_BOOTSTRAP and STREAMREC_REDIS_URL, or use `streamrec up` "
                "for the embedded all-in-one system"
            )
            raise typer.Exit(2)
        if workers > 1 and settings.embedded_qdrant:
            console.print(
                "[red]error:[/] Qdrant Edge opens its shards in one process only: set "
                "STREAMREC_QDRANT_URL to a Qdrant server to run several workers"
            )
            raise typer.Exit(2)
        try:
            settings.require_api_keys()
        except StreamrecError as exc:
            console.print(f"[red]error:[/] {exc}")
            raise typer.Exit(2) from exc
        if workers == 1:
            from api.app import create_app  # the app's imports cost seconds: only where it runs

            uvicorn.run(
                create_app(settings),
                host=host,
                port=port,
                log_level="warning",
                timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_seconds),
            )
        else:
            # Each worker process builds its own app (and connections) from the environment.
            uvicorn.run(
                "api.app:create_app",
                factory=True,
                host=host,
                port=port,
                workers=workers,
                log_level="warning",
                timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_seconds),
            )
