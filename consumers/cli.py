"""``streamrec consume`` (run consumer groups) and ``streamrec lag`` (print consumer lag)."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from enum import StrEnum
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from consumers.app import build_consumer_broker
from consumers.lag import LagReport, consumer_lag
from core.errors import StreamrecError
from core.logs import configure_logging
from core.metrics import Metrics
from core.services import kafka_bootstrap_for, open_services
from core.settings import Settings
from schemas.topics import ConsumerGroup
from stores.schema import create_schema
from stores.vectors import open_vector_store

console = Console()
log = logging.getLogger("streamrec.consumers")


class GroupName(StrEnum):
    FEATURES = "features"
    ARCHIVE = "archive"
    VECTORS = "vectors"
    ONLINE_RL = "online-rl"


def lag_table(report: LagReport) -> Table:
    table = Table(title="consumer lag", caption=f"total lag: {report.total_lag:,} messages")
    for column in ("group", "topic", "partition", "end", "committed", "lag", "lag s"):
        table.add_column(column, justify="left" if column in ("group", "topic") else "right")
    for group in report.groups:
        for p in group.partitions:
            table.add_row(
                group.group.removeprefix("streamrec-"),
                p.topic.removeprefix("streamrec."),
                str(p.partition),
                f"{p.end_offset:,}",
                "-" if p.committed_offset is None else f"{p.committed_offset:,}",
                f"[red]{p.lag:,}[/]" if p.lag else "0",
                "-" if p.lag_seconds is None else f"{p.lag_seconds:.1f}",
            )
    return table


async def _consume(settings: Settings, groups: list[ConsumerGroup]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with open_services(settings, attach=True) as services:
        await asyncio.to_thread(create_schema, services.engine)
        store = None
        if ConsumerGroup.VECTORS in groups:
            store = await asyncio.to_thread(open_vector_store, settings)
        broker = build_consumer_broker(services, Metrics(), groups, store)
        await broker.start()
        gc.freeze()  # start-up objects live as long as the process: keep them out of full GCs
        log.info("consuming as %s; Ctrl-C to stop", ", ".join(g.value for g in groups))
        try:
            await stop.wait()
        finally:
            await broker.stop()
            if store is not None:
                store.close()


def register(app: typer.Typer) -> None:
    @app.command()
    def consume(
        group: Annotated[
            list[GroupName] | None,
            typer.Option("--group", "-g", help="Consumer group to run (repeatable)."),
        ] = None,
    ) -> None:
        """Run consumer groups until Ctrl-C (production: one process per group or several).

        Default: every group. With embedded settings this joins a running `streamrec up`.
        """
        settings = Settings()
        configure_logging(settings.log_level)
        chosen = [ConsumerGroup(f"streamrec-{g.value}") for g in (group or list(GroupName))]
        try:
            asyncio.run(_consume(settings, chosen))
        except StreamrecError as exc:
            console.print(f"[red]error:[/] {exc}")
            raise typer.Exit(2) from exc

    @app.command()
    def lag(
        watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh until Ctrl-C.")] = False,
        interval: Annotated[float, typer.Option(min=0.2, help="Seconds between refreshes.")] = 2.0,
    ) -> None:
        """Print consumer lag per group, topic and partition."""
        try:
            bootstrap = kafka_bootstrap_for(Settings())
            if not watch:
                console.print(lag_table(asyncio.run(consumer_lag(bootstrap))))
                return
            with Live(console=console, auto_refresh=False) as live:
                while True:
                    live.update(lag_table(asyncio.run(consumer_lag(bootstrap))), refresh=True)
                    time.sleep(interval)
        except StreamrecError as exc:
            console.print(f"[red]error:[/] {exc}")
            raise typer.Exit(2) from exc
        except KeyboardInterrupt:
            return
