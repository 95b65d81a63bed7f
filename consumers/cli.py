"""``streamrec consume`` (run consumer groups) and ``streamrec lag`` (print consumer lag)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.live import Live
from rich.progress import Progress, TaskID
from rich.table import Table

from streamrec.consumers.membership import GroupHold, GroupInUse, hold_groups, start_as_holder
from streamrec.core.addresses import kafka_bootstrap_for
from streamrec.core.errors import ServiceUnavailable, StreamrecError
from streamrec.core.logs import configure_logging
from streamrec.core.settings import Settings
from streamrec.core.threads import at_least_niceness
from streamrec.schemas.api import LagReport, LagStatus
from streamrec.schemas.topics import ConsumerGroup

if TYPE_CHECKING:
    from streamrec.consumers.dlq import ReplaySummary, Selection, StoredDeadLetter
    from streamrec.stores.dlq_replays import SourceRecord

console = Console()
log = logging.getLogger("streamrec.consumers")


class GroupName(StrEnum):
    FEATURES = "features"
    ARCHIVE = "archive"
    VECTORS = "vectors"
    ONLINE_RL = "online-rl"
    RETRAIN = "retrain"


_STATUS_STYLE = {
    LagStatus.OK: "green",
    LagStatus.UNKNOWN: "dim",
    LagStatus.WARN: "yellow",
    LagStatus.STALL: "red",
    LagStatus.STOP: "bold red",
    LagStatus.ERR: "bold magenta",
}


def _status(status: LagStatus) -> str:
    return f"[{_STATUS_STYLE[status]}]{status.value}[/]"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def lag_table(report: LagReport) -> Table:
    """One row per group (its totals and status), then its partitions."""
    read_at = time.strftime("%H:%M:%S", time.localtime(report.measured_at))
    table = Table(
        title="consumer lag",
        caption=f"total lag: {report.total_lag:,} messages; read at {read_at}",
    )
    columns = ("group", "topic", "partition", "end", "committed", "lag", "lag s", "status")
    for column in columns:
        table.add_column(column, justify="left" if column in ("group", "topic") else "right")
    for group in report.groups:
        members = "" if group.members is None else f" ({group.members} members)"
        table.add_row(
            f"[bold]{group.group.removeprefix('streamrec-')}[/]{members}",
            *("", "", "", ""),
            f"[bold]{group.total_lag:,}[/]",
            _seconds(group.max_lag_seconds),
            _status(group.status),
        )
        for i, p in enumerate(group.partitions):
            table.add_row(
                "",
                p.topic.removeprefix("streamrec."),
                str(p.partition),
                f"{p.end_offset:,}",
                "-" if p.committed_offset is None else f"{p.committed_offset:,}",
                f"[red]{p.lag:,}[/]" if p.lag else "0",
                _seconds(p.lag_seconds),
                _status(p.status),
                end_section=i == len(group.partitions) - 1,
            )
    return table


def _api_lag(url: str) -> Callable[[], Awaitable[LagReport]]:
    """Read a running API's ``/v1/ops/lag``: its statuses, judged over its window."""
    endpoint = url.rstrip("/") + "/v1/ops/lag"

    async def read() -> LagReport:
        import httpx  # only the commands that call an API pay for it (CLI start-up)

        try:
            async with httpx.AsyncClient(timeout=10) as client:
                response = await client.get(endpoint)
        except httpx.HTTPError as exc:
            raise ServiceUnavailable(f"the API at {endpoint} did not answer: {exc}") from exc
        if response.status_code != 200:
            raise ServiceUnavailable(f"the API at {endpoint} answered {response.text.strip()}")
        return LagReport.model_validate_json(response.content)

    return read


async def _show_lag(read: Callable[[], Awaitable[LagReport]], watch: bool, interval: float) -> None:
    if not watch:
        console.print(lag_table(await read()))
        return
    with Live(console=console, auto_refresh=False) as live:
        while True:
            live.update(lag_table(await read()), refresh=True)
            await asyncio.sleep(interval)


async def _lag_from_kafka(settings: Settings, watch: bool, interval: float) -> None:
    from streamrec.core.lag import LagReader  # aiokafka: only where lag is read (CLI start-up)

    reader = LagReader.for_settings(kafka_bootstrap_for(settings), settings)
    async with reader:
        await _show_lag(reader.refresh, watch, interval)


async def _consume(settings: Settings, groups: list[ConsumerGroup]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    at_least_niceness(settings.consumers_nice)  # API workers on the same cores come first
    async with contextlib.AsyncExitStack() as stack:
        hold: GroupHold | None = None
        if settings.embedded_kafka:
            # Refused here, before joining, when another process holds one of the groups.
            hold = stack.enter_context(hold_groups(settings.var_dir, groups, "streamrec consume"))
        from streamrec.stores.factory import (
            open_stores,
        )  # SQLAlchemy, Qdrant: only where it consumes

        stores = await stack.enter_async_context(open_stores(settings, attach=True))
        from streamrec.consumers.app import (
            build_consumer_broker,
        )  # FastStream: only where it consumes
        from streamrec.core.lag import LagReader
        from streamrec.core.metrics import Metrics, serving_metrics
        from streamrec.stores.ops_stats import publishing_ops_stats

        metrics = Metrics()
        # Its counters in Redis, summed by any API worker's /v1/ops/stats (stores/ops_stats.py).
        await stack.enter_async_context(publishing_ops_stats(stores.services.redis, metrics))
        broker = build_consumer_broker(stores, metrics, groups)
        # This process's groups' lag, beside their counters, at its own /metrics.
        lag = LagReader.for_settings(stores.services.kafka_bootstrap, settings, groups)
        stack.push_async_callback(lag.close)
        lag.start_background()
        metrics.export_lag(lambda: lag.latest)
        stack.enter_context(
            serving_metrics(metrics.registry, settings.metrics_host, settings.metrics_port)
        )
        # A member a killed holder left in the group is removed first (consumers.membership).
        await start_as_holder(broker, hold, stores.services.kafka_bootstrap)
        gc.freeze()  # start-up objects live as long as the process: keep them out of full GCs
        log.info("consuming as %s; Ctrl-C to stop", ", ".join(g.value for g in groups))
        try:
            await stop.wait()
        finally:
            await broker.stop()


def register(app: typer.Typer) -> None:
    register_dlq(app)

    @app.command()
    def consume(
        group: Annotated[
            list[GroupName] | None,
            typer.Option("--group", "-g", help="Consumer group to run (repeatable)."),
        ] = None,
        metrics_port: Annotated[
            int | None,
            typer.Option(
                min=0,
                max=65535,
                help="Serve Prometheus /metrics on this port (0: off; default "
                "STREAMREC_METRICS_PORT, 9108, on STREAMREC_METRICS_HOST).",
            ),
        ] = None,
    ) -> None:
        """Run consumer groups until Ctrl-C (production: one process per group or several).

        Default: every group. With embedded settings this joins a running `streamrec up`.
        Serves its groups' counters and lag at http://STREAMREC_METRICS_HOST:PORT/metrics.
        """
        settings = Settings()
        if metrics_port is not None:
            settings.metrics_port = metrics_port
        configure_logging(settings.log_level, settings.log_format)
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
        api: Annotated[
            str | None,
            typer.Option(
                help="Show what a running API reports (its /v1/ops/lag), e.g. "
                "http://127.0.0.1:8000: statuses judged over its window."
            ),
        ] = None,
    ) -> None:
        """Print consumer lag per group, topic and partition, with a status for each
        (OK, UNKNOWN, WARN, STALL, STOP, ERR: rules in the README).

        A status is judged over STREAMREC_LAG_WINDOW_SECONDS of readings: read here once, a
        lagging partition is UNKNOWN; --watch builds the window, --api shows the API's.
        """
        settings = Settings()
        try:
            if api:
                asyncio.run(_show_lag(_api_lag(api), watch, interval))
            else:
                asyncio.run(_lag_from_kafka(settings, watch, interval))
        except StreamrecError as exc:
            console.print(f"[red]error:[/] {exc}", soft_wrap=True)
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
    from streamrec.consumers.dlq import (
        Selection,
    )  # aiokafka and the decoders: only where it is used

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
        from streamrec.consumers.dlq import read_dead_letters  # heavy: only where it runs
        from streamrec.stores.factory import open_sql_stores

        selection = _selection(at, topic, kind, group)
        settings = Settings()
        configure_logging(settings.log_level, settings.log_format)
        try:
            bootstrap = kafka_bootstrap_for(settings)
            letters = [s for s in asyncio.run(read_dead_letters(bootstrap)) if selection.matches(s)]
            with open_sql_stores(settings) as sql:
                replayed = sql.dlq_replays.replayed({s.source for s in letters})
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
        from streamrec.consumers.dlq import replay_dead_letters  # heavy: only where it runs
        from streamrec.stores.factory import open_sql_stores

        selection = _selection(at, topic, kind, group)
        if selection.empty and not replay_all:
            raise typer.BadParameter(
                "choose dead letters with --at, --topic, --kind or --group, or pass --all",
                param_hint="filters",
            )
        settings = Settings()
        configure_logging(settings.log_level, settings.log_format)
        try:
            bootstrap = kafka_bootstrap_for(settings)
            with (
                open_sql_stores(settings) as sql,
                Progress(console=console, transient=True) as progress,
            ):
                summary = asyncio.run(
                    replay_dead_letters(
                        bootstrap,
                        sql.dlq_replays,
                        selection,
                        dry_run=dry_run,
                        on_progress=_ProgressBar(progress),
                    )
                )
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
