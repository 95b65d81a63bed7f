"""The trainer's commands: ``streamrec train`` (a model into the registry), ``streamrec eval``
(judge a version) and ``streamrec vectors publish`` (make a version live).

They read the database URL and the var dir from ``core.settings.Settings`` (``--var-dir``
overrides the latter) and run the training service (``trainer.service``) or the publisher
(``trainer.publish``), imported when a command runs (PyTorch loads then, not for ``--help``).
Models are named as everywhere else (``schemas.models``): a name a command does not take is
refused with what to use instead. Failures end with a one-line message and exit code 2, never a
traceback.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from streamrec.core.addresses import through_running_vector_host
from streamrec.core.errors import InvalidInput, StreamrecError
from streamrec.core.settings import Settings
from streamrec.schemas.models import TRAINABLE, VECTOR_MODELS, choices, resolve

if TYPE_CHECKING:
    from streamrec.stores.candidates import CandidateStore
    from streamrec.stores.factory import SqlStores
    from streamrec.stores.model_registry import ModelVersion

log = logging.getLogger(__name__)
console = Console()


class Protocol(StrEnum):
    loo_full = "loo-full"
    loo_sampled = "loo-sampled"
    random_split = "random-split"


MODEL_OPT = typer.Option("--model", "-m", help=f"Which model: {choices(TRAINABLE)}.")
DATA_OPT = typer.Option(
    "--data",
    "-d",
    help="A MovieLens folder (ratings.csv, u.data or ratings.dat layout), 'synthetic' "
    "(generated, seeded) or 'archive' (the SQL interactions archive).",
)
VAR_OPT = typer.Option("--var-dir", help="State directory (default: STREAMREC_VAR_DIR or var).")
SEEN_OPT = typer.Option(
    "--exclude-seen/--keep-seen",
    help="Hide items the user already interacted with from the ranking (RecBole hides them "
    "for general models, not for SASRec).",
)
PROTOCOL_OPT = typer.Option(
    "--protocol",
    "-p",
    help="loo-full: time-ordered leave-one-out over all items; loo-sampled: the same against "
    "100 sampled negatives; random-split: RecBole's per-user 80/10/10.",
)


@contextmanager
def _live_stores(var_dir: Path | None) -> Iterator[SqlStores]:
    """The live SQL stores (``stores.factory``), from the settings and ``--var-dir``."""
    from streamrec.stores.factory import open_sql_stores  # SQLAlchemy: only when a command runs

    settings = Settings(var_dir=var_dir) if var_dir is not None else Settings()
    with open_sql_stores(settings) as stores:
        yield stores


def _fail(error: Exception) -> typer.BadParameter:
    return typer.BadParameter(str(error))


def _trainable(value: str) -> str:
    """``--model`` of train and eval: the name of a model that trains (a former name taken)."""
    try:
        return resolve(value, TRAINABLE, "--model").value
    except ValueError as error:
        raise _fail(error) from None


def train(
    model: Annotated[str, MODEL_OPT],
    data: Annotated[str, DATA_OPT],
    epochs: Annotated[
        int | None, typer.Option(min=1, help="Most epochs (early stopping may end sooner).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for splits, sampling and initial weights.")] = 0,
    protocol: Annotated[Protocol, PROTOCOL_OPT] = Protocol.loo_full,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Training batch size.")] = None,
    lr: Annotated[float | None, typer.Option(min=0.0, help="Adam learning rate.")] = None,
    patience: Annotated[int | None, typer.Option(min=1, help="Epochs without improvement.")] = None,
    threads: Annotated[int, typer.Option(min=0, help="CPU threads (0: half the cores).")] = 0,
    exclude_seen: Annotated[bool, SEEN_OPT] = True,
    activate: Annotated[bool, typer.Option(help="Make the new version the active one.")] = True,
    warm_start: Annotated[
        bool,
        typer.Option(
            help="Start from the active version (rows of known users and items kept, new ids "
            "appended); usually with fewer --epochs."
        ),
    ] = False,
    var_dir: Annotated[Path | None, VAR_OPT] = None,
) -> None:
    """Train a model on a dataset and register it as a new version (`var/models/<name>/vN`).

    Only `--data archive` is live: any other data trains in an offline run of its own
    (`var/offline/<run>/`: its own id and model registry), which the live system never serves.
    """
    name = _trainable(model)
    try:
        from streamrec.trainer import service  # PyTorch: only when it trains

        settings = Settings(var_dir=var_dir) if var_dir is not None else Settings()
        with ExitStack() as stack:
            if service.is_offline(data):  # the live database is not even opened
                ws = stack.enter_context(service.offline_workspace(settings.var_dir, data))
            else:
                live = stack.enter_context(_live_stores(var_dir))
                ws = service.Workspace(live.engine, live.ids, live.models, offline=False)
            previous = ws.models.active(name) if warm_start else None
            if warm_start and previous is None:
                raise InvalidInput(
                    f"--warm-start: {name} has no active version to start from "
                    f"{'in this offline run ' if ws.offline else ''}(train one first)"
                )
            loaded = service.load_data(data, ws.engine, seed)
            opts = {
                "epochs": epochs,
                "batch_size": batch_size,
                "lr": lr,
                "patience": patience,
                "seed": seed,
                "threads": threads,
            }
            version = service.train_model(
                name,
                loaded,
                ws.ids,
                ws.models,
                protocol.value,
                opts,
                exclude_seen,
                activate,
                show_progress=True,
                warm_start=previous,
            )
            where, offline = ws.location, ws.offline
    except (StreamrecError, OSError, ValueError) as error:
        raise _fail(error) from None
    _print_trained(version, where, offline)


def _print_trained(version: ModelVersion, where: Path, offline: bool) -> None:
    label = f"{version.name} v{version.version}"
    if offline:
        console.print(
            f"offline run: registered [bold]{label}[/]"
            f"{' (active in this run)' if version.active else ''} at {version.path}\n"
            f"offline data keeps its own id and model registry in {where}: the live registries "
            "are untouched and this version cannot serve live traffic"
        )
    else:
        console.print(
            f"registered [bold]{label}[/]{' (active)' if version.active else ''} at {version.path}"
        )
    began = version.metrics.get("warm_start")
    if isinstance(began, dict):
        console.print(_warm_start_line(began))
    test = version.metrics.get("test", {})
    if test:
        console.print(_metric_table({label: test}))


def _warm_start_line(began: dict[str, Any]) -> str:
    source = f"v{began.get('from_version')}"
    if not began.get("warm"):
        return f"cold start instead of a warm start from {source}: {began.get('reason')}"
    return (
        f"warm-started from {source}: {began.get('carried_users')} users and "
        f"{began.get('carried_items')} items carried over, {began.get('new_users')} and "
        f"{began.get('new_items')} new"
    )


def evaluate_cmd(
    model: Annotated[str, MODEL_OPT],
    data: Annotated[str, DATA_OPT],
    protocol: Annotated[Protocol, PROTOCOL_OPT] = Protocol.loo_full,
    version: Annotated[int | None, typer.Option(min=1, help="Version (default: active).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split and sampled negatives.")] = 0,
    exclude_seen: Annotated[bool, SEEN_OPT] = True,
    report: Annotated[Path | None, typer.Option(help="Write an HTML report here.")] = None,
    var_dir: Annotated[Path | None, VAR_OPT] = None,
) -> None:
    """Evaluate a registered version on the test part of a protocol's split.

    Use the same data, protocol and seed as ``train`` to judge a model on data it did not see.
    """
    name = _trainable(model)
    try:
        from streamrec.trainer.service import evaluate_version  # PyTorch: only when it evaluates

        with _live_stores(var_dir) as live:
            metrics, found = evaluate_version(
                live.engine, live.models, name, data, protocol.value, version, seed, exclude_seen
            )
    except (StreamrecError, OSError, ValueError) as error:
        raise _fail(error) from None
    label = f"{found.name} v{found.version}"
    console.print(_metric_table({label: metrics}))
    if report is not None:
        report.write_text(_html_report(label, protocol.value, metrics, found.metrics))
        console.print(f"report written to {report}")


def _metric_table(rows: dict[str, dict[str, float]]) -> Table:
    keys = sorted({k for values in rows.values() for k in values})
    table = Table("model", *keys)
    for label, values in rows.items():
        table.add_row(label, *(f"{values[k]:.4f}" if k in values else "" for k in keys))
    return table


def _svg_curve(title: str, values: list[float], width: int = 360, height: int = 180) -> str:
    """A line chart as inline SVG (no plotting dependency)."""
    if not values:
        return ""
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    step = (width - 40) / max(len(values) - 1, 1)
    points = " ".join(
        f"{30 + i * step:.1f},{height - 25 - (v - lo) / span * (height - 50):.1f}"
        for i, v in enumerate(values)
    )
    return (
        f'<figure><svg width="{width}" height="{height}" role="img">'
        f'<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{points}"/>'
        f'<text x="30" y="15">{html.escape(title)}: {lo:.4f} … {hi:.4f}</text>'
        f'<text x="30" y="{height - 5}">epoch 1 … {len(values)}</text></svg></figure>'
    )


def _html_report(
    label: str, protocol: str, metrics: dict[str, float], trained: dict[str, Any]
) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v:.4f}</td></tr>" for k, v in sorted(metrics.items())
    )
    epochs = trained.get("epochs", [])
    curves = "".join(
        _svg_curve(key, [float(e[key]) for e in epochs if key in e])
        for key in ("loss", "ndcg@10", "hr@10", "auc")
    )
    return (
        "<!doctype html><meta charset='utf-8'><title>streamrec evaluation</title>"
        f"<h1>{html.escape(label)}</h1><p>protocol: {html.escape(protocol)}</p>"
        f"<table border='1'><tr><th>metric</th><th>value</th></tr>{rows}</table>"
        f"<h2>training curves (validation)</h2>{curves or '<p>no training history</p>'}"
    )


PUBLISH_MODEL_OPT = typer.Option(
    "--model", "-m", help=f"Which model's vectors: {choices(VECTOR_MODELS)}."
)


@contextmanager
def _candidate_writer(settings: Settings) -> Iterator[tuple[CandidateStore | None, str]]:
    """The Redis candidate store a publish writes the request path's lists into, or None
    and why not: embedded Redis lives inside ``streamrec up`` (not reachable from here), or
    the server did not answer. The vectors group then writes them before pointing requests
    at the version."""
    import redis

    from streamrec.stores.candidates import CandidateStore, sync_client

    if settings.embedded_redis:
        yield None, "STREAMREC_REDIS_URL is 'embedded'"
        return
    client = sync_client(settings.redis_url, settings)
    try:
        unreachable = ""
        try:
            client.ping()
        except redis.RedisError as error:
            unreachable = f"Redis did not answer: {error}"
        yield (None if unreachable else CandidateStore.writer(client, settings)), unreachable
    finally:
        client.close()


def publish_cmd(
    model: Annotated[str, PUBLISH_MODEL_OPT],
    version: Annotated[int | None, typer.Option(min=1, help="Version (default: active).")] = None,
    var_dir: Annotated[Path | None, VAR_OPT] = None,
) -> None:
    """Publish a model version: its item vectors, every user's vector, then swap the
    `items_<model>` alias to it. With Redis reachable (STREAMREC_REDIS_URL a server), every
    user's candidates and every item's neighbours too, and the live pointer after the swap;
    otherwise the vectors group writes those before it points requests at the version."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from streamrec.stores.factory import open_sql_stores, open_vectors
    from streamrec.trainer.publish import publish_version, vector_model

    try:
        kind = vector_model(model)
        if model != kind.name:
            console.print(f"{model} is the former name of {kind.name}: publishing {kind.name}")
        configured = Settings(var_dir=var_dir) if var_dir is not None else Settings()
        # Beside a running `streamrec up` (embedded Qdrant), its consumers own the Edge shards.
        settings = through_running_vector_host(configured)
        if settings is not configured:
            console.print(f"writing through the running streamrec up ({settings.vector_host_url})")
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with (
            open_sql_stores(settings) as sql,
            open_vectors(settings) as store,
            _candidate_writer(settings) as (candidates, why_not),
            Progress(*columns, console=console) as bar,
        ):
            tasks = {
                "items": bar.add_task(f"{kind.name}: item vectors", total=None),
                "users": bar.add_task(f"{kind.name}: user vectors", total=None),
            }
            done = publish_version(
                sql.models,
                store,
                sql.ids,
                sql.engine,
                kind.name,
                version,
                checkpoint_dir=settings.var_dir / "publish",
                on_progress=lambda stage, n, total: bar.update(
                    tasks[stage], completed=n, total=total
                ),
                candidates=candidates,
            )
    except (StreamrecError, OSError) as error:
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(2) from None
    inferred = f" ({done.inferred} inferred from their text)" if done.inferred else ""
    console.print(
        f"{done.model} v{done.version}: {done.alias} → {done.collection}: {done.points} items"
        f"{inferred}, {done.users} user vectors in {done.users_collection}, in "
        f"{done.seconds:.1f}s ({done.user_seconds:.1f}s for users)"
        + (f" (previous: {done.previous}, kept for rollback)" if done.previous else "")
    )
    if candidates is not None:
        console.print(
            f"candidates of every user and neighbours of every item written to Redis; "
            f"requests read them now (sr:live:{done.alias.removeprefix('items_')} = "
            f"{done.version})"
        )
    else:
        console.print(
            f"candidates left to the vectors group ({why_not}): it writes every user's "
            "candidates and every item's neighbours when it sees the alias move (or starts), "
            "then points requests at this version; until then they take the vector query"
        )


def register(app: typer.Typer) -> None:
    """Add this package's commands to the streamrec CLI: train, eval, vectors publish."""
    app.command("train")(train)
    app.command("eval")(evaluate_cmd)
    vectors_app = typer.Typer(help="Serving vectors: publish model versions to Qdrant.")
    vectors_app.command("publish")(publish_cmd)
    app.add_typer(vectors_app, name="vectors")
