"""``streamrec rebuild``: the Redis feature state rebuilt from the SQL archive (stores.rebuild)."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from streamrec.core.addresses import EmbeddedAddresses
from streamrec.core.errors import StateConflict, StreamrecError
from streamrec.core.logs import configure_logging
from streamrec.core.settings import Settings
from streamrec.schemas.topics import ConsumerGroup

if TYPE_CHECKING:
    from streamrec.stores.rebuild import RebuildReport

console = Console()
GROUP = ConsumerGroup.FEATURES.value


async def refuse_if_consumed(settings: Settings, bootstrap: list[str] | None = None) -> None:
    """Raise StateConflict when a features consumer may be writing the state to rebuild: a
    running embedded `up` on this var dir (it runs the group), or, on real Kafka, any member
    of the features group (DescribeGroups, which the embedded broker does not serve)."""
    if settings.embedded_kafka or settings.embedded_redis:
        running = EmbeddedAddresses.read(settings.var_dir)
        if running is not None:
            raise StateConflict(
                f"`streamrec up` (pid {running.pid}) is running on {settings.var_dir} and "
                "consumes into this feature state: stop it, then run `streamrec rebuild`"
            )
    if not settings.embedded_kafka and bootstrap is not None:
        from streamrec.core.kafka_log import group_members  # aiokafka: only when Kafka is asked

        members = await group_members(bootstrap, GROUP)
        if members:
            raise StateConflict(
                f"the {GROUP} group has {members} running member(s): stop every "
                "`streamrec consume`/`up` that runs it, then run `streamrec rebuild`"
            )


async def _rebuild(settings: Settings, wipe: bool, chunk: int) -> RebuildReport:
    await refuse_if_consumed(settings)
    # SQLAlchemy, Redis, Qdrant: only where it runs, not when the CLI starts.
    from streamrec.stores.factory import open_stores
    from streamrec.stores.rebuild import rebuild_features

    async with open_stores(settings) as stores:
        services = stores.services
        await refuse_if_consumed(settings, services.kafka_bootstrap)
        keys = await services.redis.dbsize()
        if keys and not wipe:
            raise StateConflict(
                f"Redis at {services.redis_url} holds {keys:,} keys: the rebuild starts from an "
                "empty feature state; pass --wipe to empty that database (FLUSHDB) first"
            )
        if keys:
            await services.redis.flushdb()
        archive = stores.archive
        total = await asyncio.to_thread(archive.count_items) + await asyncio.to_thread(
            archive.count_interactions
        )
        columns = (
            TextColumn("[bold]rebuild[/] features"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("features", total=total, rate="")
            started = time.perf_counter()

            def advance(n: int) -> None:
                done = progress.tasks[task].completed + n
                speed = done / max(time.perf_counter() - started, 1e-9)
                progress.update(task, advance=n, rate=f"{speed:,.0f} ev/s")

            return await rebuild_features(
                stores.features,
                archive,
                GROUP,
                services.kafka_log_id,
                chunk=chunk,
                on_progress=advance,
            )


def register(app: typer.Typer) -> None:
    @app.command()
    def rebuild(
        wipe: Annotated[
            bool,
            typer.Option(
                "--wipe",
                help="Empty the feature Redis database (FLUSHDB) first. It must hold "
                "streamrec's features only, as STREAMREC_REDIS_URL's database does.",
            ),
        ] = False,
        chunk: Annotated[
            int, typer.Option(min=1, max=100_000, help="Events applied per batch.")
        ] = 5000,
    ) -> None:
        """Rebuild the Redis feature state from the SQL archive, the durable record.

        Replays the archived catalog, then every archived rating, click and impression in
        event-time order, through the apply step the features consumer uses: user and item
        counters, rating sums, genre affinities, recent and seen items, popularity and variant
        counters come back count for count. Then the features group's offsets are set to the
        newest archived position of each partition of the current Kafka log, so a features
        consumer started afterwards applies only newer events.

        Use it after Redis was lost or wiped, or when `streamrec up` says the feature state is
        older than the archive. It needs an empty feature state (or --wipe) and refuses while a
        features consumer runs on it: stop `streamrec up` / `streamrec consume` first.
        """
        settings = Settings()
        configure_logging(settings.log_level, settings.log_format)
        try:
            report = asyncio.run(_rebuild(settings, wipe, chunk))
        except StreamrecError as exc:
            console.print(f"[red]error:[/] {exc}")
            raise typer.Exit(2) from exc
        events = report.items + report.interactions
        console.print(
            f"rebuilt from the archive: {report.items:,} items, {report.interactions:,} "
            f"interactions in {report.seconds:.1f} s "
            f"({events / max(report.seconds, 1e-9):,.0f} events/s); features offsets set for "
            f"{len(report.positions)} partition(s) of the current Kafka log"
        )
