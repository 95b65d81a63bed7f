"""``streamrec replay``: stream a MovieLens folder or a synthetic stream into the topics."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from streamrec.core.addresses import kafka_bootstrap_for
from streamrec.core.errors import StreamrecError
from streamrec.core.settings import Settings

if TYPE_CHECKING:
    from streamrec.core.datasets import InteractionData
    from streamrec.producers.replay import ReplaySummary

console = Console()


def load_source(
    source: str, *, users: int = 1000, items: int = 500, events: int = 20_000, seed: int = 0
) -> InteractionData:
    """A MovieLens folder, or ``synthetic`` generated with the given sizes."""
    # numpy and the publisher load when a command replays, not when the CLI starts.
    from streamrec.core.datasets import load_movielens, synthetic

    if source == "synthetic":
        return synthetic(n_users=users, n_items=items, n_events=events, seed=seed)
    return load_movielens(Path(source).expanduser())


async def replay_with_progress(
    data: InteractionData,
    bootstrap: list[str],
    *,
    rate: float | None,
    limit: int | None,
    out: Console = console,
) -> ReplaySummary:
    from streamrec.producers.publisher import (
        EventPublisher,
    )  # aiokafka: only when a command replays
    from streamrec.producers.replay import replay, total_events

    columns = (
        TextColumn("[bold]replay[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=out, transient=False) as progress:
        task = progress.add_task(data.name, total=total_events(data, limit), rate="")
        started = asyncio.get_running_loop().time()

        def advance(n: int) -> None:
            done = progress.tasks[task].completed + n
            elapsed = asyncio.get_running_loop().time() - started
            speed = f"{done / elapsed:,.0f} ev/s" if elapsed > 0 else ""
            progress.update(task, advance=n, rate=speed)

        async with EventPublisher(bootstrap, client_id="streamrec-replay") as publisher:
            return await replay(data, publisher, rate=rate, limit=limit, on_progress=advance)


def print_summary(summary: ReplaySummary, out: Console = console) -> None:
    out.print(
        f"[green]replayed[/] {summary.events:,} events ({summary.items:,} items, "
        f"{summary.ratings:,} ratings) in {summary.seconds:.1f} s = "
        f"{summary.events_per_second:,.0f} events/s"
    )


def register(app: typer.Typer) -> None:
    @app.command("replay")
    def replay_command(
        source: Annotated[
            str,
            typer.Argument(
                help="A MovieLens folder (ratings.csv+movies.csv, u.data+u.item, or "
                "ratings.dat+movies.dat) or the word 'synthetic'."
            ),
        ],
        rate: Annotated[
            float | None,
            typer.Option(min=0.001, help="Events per second; default: as fast as Kafka takes."),
        ] = None,
        limit: Annotated[
            int | None, typer.Option(min=1, help="Replay only the first N ratings.")
        ] = None,
        users: Annotated[int, typer.Option(min=1, help="synthetic: number of users")] = 1000,
        items: Annotated[int, typer.Option(min=1, help="synthetic: number of items")] = 500,
        events: Annotated[int, typer.Option(min=1, help="synthetic: number of ratings")] = 20_000,
        seed: Annotated[int, typer.Option(help="synthetic: random seed")] = 0,
    ) -> None:
        """Publish the catalog, then every rating in event-time order, to the Kafka topics.

        With the default settings this feeds a running `streamrec up` (embedded broker);
        set STREAMREC_KAFKA_BOOTSTRAP to feed a real cluster.
        """
        try:
            data = load_source(source, users=users, items=items, events=events, seed=seed)
            bootstrap = kafka_bootstrap_for(Settings())
            summary = asyncio.run(replay_with_progress(data, bootstrap, rate=rate, limit=limit))
        except StreamrecError as exc:
            console.print(f"[red]error:[/] {exc}")
            raise typer.Exit(2) from exc
        print_summary(summary)
