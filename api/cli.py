"""``streamrec serve``: the API alone, against real services (``streamrec up``, the embedded
all-in-one, is a program of its own: ``apps/up.py``).

The app (FastAPI, PyTorch for the DQN endpoints) is imported by the command that runs it, not
when the CLI registers it: every other ``streamrec`` command starts without it.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from streamrec.core.errors import StreamrecError
from streamrec.core.logs import configure_logging
from streamrec.core.settings import Settings

if TYPE_CHECKING:
    from starlette.types import ASGIApp

log = logging.getLogger(__name__)
# Errors on stderr, each on one line whatever the terminal's width (or none, in a container).
errors = Console(stderr=True, soft_wrap=True)


def worker_app() -> ASGIApp:
    """The app of one worker process (``--workers`` > 1): its settings and logging from the
    environment, like the parent's; its responses name the worker (``X-Streamrec-Worker``)."""
    from streamrec.api.app import create_app  # the app's imports cost seconds: only where it runs
    from streamrec.api.server import WorkerPidHeader

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    return WorkerPidHeader(create_app(settings))


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
        port: Annotated[int, typer.Option(min=1, max=65535, help="HTTP port.")] = 8000,
        workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    ) -> None:
        """Run the API alone against real services (production; consumers run elsewhere).

        Needs STREAMREC_KAFKA_BOOTSTRAP and STREAMREC_REDIS_URL pointing at real servers and
        both API keys set. For the all-in-one embedded system use `streamrec up`. A service
        that does not answer at start-up stops it with one line naming it (exit status 1).
        """
        settings = Settings()
        configure_logging(settings.log_level, settings.log_format)
        if settings.embedded_kafka or settings.embedded_redis:
            errors.print(
                "[red]error:[/] `streamrec serve` runs the API against real Kafka and Redis; "
                "set STREAMREC_KAFKA_BOOTSTRAP and STREAMREC_REDIS_URL, or use `streamrec up` "
                "for the embedded all-in-one system"
            )
            raise typer.Exit(2)
        if workers > 1 and settings.embedded_qdrant:
            errors.print(
                "[red]error:[/] Qdrant Edge opens its shards in one process only: set "
                "STREAMREC_QDRANT_URL to a Qdrant server to run several workers"
            )
            raise typer.Exit(2)
        try:
            settings.require_api_keys()
        except StreamrecError as exc:
            errors.print(f"[red]error:[/] {exc}")
            raise typer.Exit(2) from exc
        # The app's imports cost seconds: only where it runs.
        from streamrec.api.server import StartupFailed, check_services, run

        try:
            if workers == 1:
                from streamrec.api.app import create_app

                run(create_app(settings), settings, host=host, port=port)
                return
            # Each worker starts the app on its own and would report a service that is down
            # with a traceback of its own: one check here first says it once, in one line.
            check_services(settings)
        except StartupFailed as exc:
            log.error("streamrec serve did not start: %s", exc)
            raise typer.Exit(1) from exc
        import uvicorn  # only where it serves (CLI start-up)

        uvicorn.run(
            "streamrec.api.cli:worker_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_config=None,  # each worker configures core.logs (worker_app)
            log_level="warning",
            timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_seconds),
        )
