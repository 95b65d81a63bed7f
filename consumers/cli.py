"""``streamrec consume`` (run consumer groups) and ``streamrec lag`` (print consumer lag)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import signal
import time
from enum import StrEnum
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live
from rich.progress import Progress, TaskID
from rich.table import Table
from sqlalchemy import Engine

from consumers.dlq import (
    ReplaySummary,
    Selection,
    StoredDeadLetter,
    read_dead_letters,
    replay_dead_letters,
)
from consumers.membership import GroupInUse, hold_groups
from core.db import create_db_engine
from core.errors import StreamrecError
from core.lag import LagReport, consumer_lag
from core.logs import configure_logging
from core.metrics import Metrics
from core.services import kafka_bootstrap_for, open_services
from core.settings import Settings
from schemas.topics import ConsumerGroup
from stores.dlq_replays import DlqReplayLog, SourceRecord
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
    async with contextlib.AsyncExitStack() as stack:
        if settings.embedded_kafka:
            # Refused here, before joining, when another process holds one of the groups.
            stack.enter_context(hold_groups(settings.var_dir, groups, "streamrec consume"))
        services = await stack.enter_async_context(open_services(settings, attach=True))
        await asyncio.to_thread(create_schema, services.engine)
        store = None
        if ConsumerGroup.VECTORS in groups:
            store = await asyncio.to_thread(open_vector_store, settings)
        from consumers.app import build_consumer_broker  # FastStream: only where it consumes

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
    register_dlq(app)

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
        except GroupInUse as exc:
            console.print(f"[red]error:[/] {exc}", soft_wrap=True)  # one line, whatever the width
            raise typer.Exit(2) from exc
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


# -- streamrec dlq ------------------------------------------------------------------------------

DLQ_KINDS = ("malformed_json", "invalid", "unknown_type", "wrong_topic", "empty")

AtOption = Annotated[
    list[str] | None,
    typer.Option(
        "--at", help="A dead letter by its DLQ coordinates PARTITION:OFFSET (repeatable)."
    ),
]
TopicOption = Annotated[
    list[str] | None,
    typer.Option("--topic", help="Source topic, e.g. ratings or streamrec.ratings (repeatable)."),
]
KindOption = Annotated[
    list[str] | None,
    typer.Option("--kind", help=f"Error kind: {', '.join(DLQ_KINDS)} (repeatable)."),
]
GroupOption = Annotated[
    list[GroupName] | None,
    typer.Option("--group", "-g", help="Consumer group that rejected it (repeatable)."),
]


def _selection(
    at: list[str] | None,
    topic: list[str] | None,
    kind: list[str] | None,
    group: list[GroupName] | None,
) -> Selection:
    coordinates = set()
    for text in at or []:
        partition, sep, offset = text.partition(":")
        if not sep or not partition.isdigit() or not offset.isdigit():
            raise typer.BadParameter(
                f"{text!r}: give PARTITION:OFFSET, e.g. 0:15", param_hint="--at"
            )
        coordinates.add((int(partition), int(offset)))
    unknown = sorted(set(kind or []) - set(DLQ_KINDS))
    if unknown:
        raise typer.BadParameter(
            f"{', '.join(unknown)}: the kinds are {', '.join(DLQ_KINDS)}", param_hint="--kind"
        )
    topics = {t if t.startswith("streamrec.") else f"streamrec.{t}" for t in topic or []}
    return Selection(
        at=frozenset(coordinates),
        topics=frozenset(topics),
        kinds=frozenset(kind or []),
        groups=frozenset(f"streamrec-{g.value}" for g in group or []),
    )


class _ProgressBar:
    """Rich progress for the two phases of a DLQ run, with their true totals."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._tasks: dict[str, TaskID] = {}

    def __call__(self, phase: str, done: int, total: int) -> None:
        if phase not in self._tasks:
            self._tasks[phase] = self._progress.add_task(phase, total=total)
        self._progress.update(self._tasks[phase], completed=done, total=total)


def _preview(raw: bytes | None, width: int = 40) -> str:
    if raw is None:
        return "null"
    text = repr(raw[:width])
    return text + (f"… ({len(raw):,} bytes)" if len(raw) > width else "")


def _dlq_table(letters: list[StoredDeadLetter], replayed: dict) -> Table:
    table = Table(title="dead letters", caption=f"{len(letters):,} shown")
    for column in (
        "dlq",
        "failed at",
        "group",
        "source",
        "kind",
        "error",
        "key",
        "value",
        "replay",
    ):
        table.add_column(column, overflow="fold")
    for stored in letters:
        letter = stored.letter
        done = replayed.get(stored.source)
        status = "-" if done is None else ("replayed" if done.published else "claimed")
        table.add_row(
            f"{stored.dlq_partition}:{stored.dlq_offset}",
            letter.failed_at.strftime("%Y-%m-%d %H:%M:%S"),
            letter.consumer_group.removeprefix("streamrec-"),
            f"{letter.source_topic.removeprefix('streamrec.')}[{letter.source_partition}]"
            f"@{letter.source_offset}",
            stored.kind,
            letter.error,
            _preview(letter.source_key, 20),
            _preview(letter.payload),
            status,
        )
    return table


def _dlq_engine(settings: Settings) -> Engine:
    engine = create_db_engine(settings.database_url)
    create_schema(engine)
    return engine


def register_dlq(app: typer.Typer) -> None:
    dlq_app = typer.Typer(
        help="Dead letters (`streamrec.dlq`): list them; after a fix, replay chosen ones.",
        no_args_is_help=True,
    )

    @dlq_app.command("list")
    def dlq_list(
        at: AtOption = None,
        topic: TopicOption = None,
        kind: KindOption = None,
        group: GroupOption = None,
        limit: Annotated[int, typer.Option(min=1, help="Show at most this many (newest).")] = 50,
        as_json: Annotated[
            bool, typer.Option("--json", help="One JSON object per line; bytes in base64.")
        ] = False,
    ) -> None:
        """List dead letters: where each came from, which group rejected it and why, its key
        and value (the original bytes), and whether it was replayed. Filters combine (AND)."""
        selection = _selection(at, topic, kind, group)
        settings = Settings()
        configure_logging(settings.log_level)
        try:
            bootstrap = kafka_bootstrap_for(settings)
            letters = [s for s in asyncio.run(read_dead_letters(bootstrap)) if selection.matches(s)]
            engine = _dlq_engine(settings)
            try:
                replayed = DlqReplayLog(engine).replayed({s.source for s in letters})
            finally:
                engine.dispose()
        except StreamrecError as exc:
            console.print(f"[red]error:[/] {exc}", soft_wrap=True)
            raise typer.Exit(2) from exc
        shown = letters[-limit:]
        if not as_json:
            console.print(_dlq_table(shown, replayed))
            return
        for stored in shown:
            row = json.loads(stored.letter.model_dump_json())
            done = replayed.get(stored.source)
            row |= {
                "dlq_partition": stored.dlq_partition,
                "dlq_offset": stored.dlq_offset,
                "kind": stored.kind,
                "replayed": None if done is None else done.published,
            }
            typer.echo(json.dumps(row))

    @dlq_app.command("replay")
    def dlq_replay(
        at: AtOption = None,
        topic: TopicOption = None,
        kind: KindOption = None,
        group: GroupOption = None,
        replay_all: Annotated[
            bool, typer.Option("--all", help="Every dead letter (no filter given).")
        ] = False,
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="Say what would be published; publish nothing.")
        ] = False,
    ) -> None:
        """Publish chosen dead letters again to their source topic, after a fix.

        Choose them with filters (--at PARTITION:OFFSET, --topic, --kind, --group; they
        combine) or --all. Each goes back exactly as it came (same key, same bytes), so the
        consumers read it like any new record: run this once the code or rule that rejected
        it is fixed, or the records land in the DLQ again (as new dead letters).

        A record that several groups rejected is one record: it is published once. Each is
        published at most once, ever: it is recorded in SQL (table dlq_replays) before it is
        sent, and a later replay skips it and says so. A record recorded but not acknowledged
        by Kafka (a crash, Kafka down) is not retried: it is reported as unconfirmed.
        """
        selection = _selection(at, topic, kind, group)
        if selection.empty and not replay_all:
            raise typer.BadParameter(
                "choose dead letters with --at, --topic, --kind or --group, or pass --all",
                param_hint="filters",
            )
        settings = Settings()
        configure_logging(settings.log_level)
        try:
            bootstrap = kafka_bootstrap_for(settings)
            engine = _dlq_engine(settings)
            try:
                with Progress(console=console, transient=True) as progress:
                    summary = asyncio.run(
                        replay_dead_letters(
                            bootstrap,
                            engine,
                            selection,
                            dry_run=dry_run,
                            on_progress=_ProgressBar(progress),
                        )
                    )
            finally:
                engine.dispose()
        except StreamrecError as exc:
            console.print(f"[red]error:[/] {exc}", soft_wrap=True)
            raise typer.Exit(2) from exc
        _print_replay(summary)
        if summary.unconfirmed:
            raise typer.Exit(1)

    app.add_typer(dlq_app, name="dlq")


def _coordinates(records: list[SourceRecord], at_most: int = 5) -> str:
    shown = ", ".join(f"{r.topic}[{r.partition}]@{r.offset}" for r in records[:at_most])
    return shown + (f" and {len(records) - at_most} more" if len(records) > at_most else "")


def _print_replay(summary: ReplaySummary) -> None:
    fresh = summary.records - len(summary.already) - len(summary.empty)
    console.print(
        f"{summary.letters:,} dead letters selected: {summary.records:,} source records",
        soft_wrap=True,
    )
    if summary.dry_run:
        console.print(f"dry run: would publish {fresh:,}; published nothing", soft_wrap=True)
    else:
        console.print(f"published {summary.published:,} to their source topics", soft_wrap=True)
    if summary.already:
        console.print(
            f"skipped {len(summary.already):,} already replayed: {_coordinates(summary.already)}",
            soft_wrap=True,
        )
    if summary.empty:
        console.print(
            f"skipped {len(summary.empty):,} with a null value (no event to replay): "
            f"{_coordinates(summary.empty)}",
            soft_wrap=True,
        )
    if summary.unconfirmed:
        console.print(
            f"[red]{len(summary.unconfirmed):,} recorded but not acknowledged by Kafka[/] "
            f"(not retried; check the source topic): {_coordinates(summary.unconfirmed)}",
            soft_wrap=True,
        )
