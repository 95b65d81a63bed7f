"""Publishing model versions: serving names, item payloads, ``publish_version`` and
``streamrec vectors publish``.

Publishing a version writes its item vectors into a new collection ``items_<model>__v<N>``,
then the vector of every user with state into ``users_<model>__v<N>``, and only then swaps the
alias ``items_<model>``: going live means every user is served by the new version (the steps:
``trainer.live``). Doc2Vec is served as ``content`` (``items_content`` →
``items_content__v<N>``).

This module stays light (no PyTorch, no gensim): the ``streamrec`` CLI imports it at start-up
to register the command, so ``publish_version`` loads ``trainer.live`` on its first call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import typer
from sqlalchemy import Engine, func, select

from core.errors import InvalidInput, StreamrecError
from stores.catalog import InteractionRow, ItemRow
from stores.vectors import Distance

if TYPE_CHECKING:
    from core.ids import IdRegistry
    from stores.model_registry import ModelRegistry
    from stores.vectors import VectorStore

# (stage: "items" or "users", done, total)
PublishProgress = Callable[[str, int, int], None]
DEFAULT_HISTORY = 50  # recent items a fold-in averages (trainer.user_vectors)

# Serving name (API ``model=``, collection suffix) -> model registry name.
SERVING_MODELS: Mapping[str, str] = {
    "mf": "mf",
    "ncf": "ncf",
    "wide_deep": "wide_deep",
    "sasrec": "sasrec",
    "content": "doc2vec",
}
PayloadSource = Callable[[Sequence[str]], dict[str, dict[str, Any]]]


def registry_name(serving: str) -> str:
    if serving not in SERVING_MODELS:
        raise InvalidInput(f"unknown model {serving!r}; choose one of {', '.join(SERVING_MODELS)}")
    return SERVING_MODELS[serving]


def serving_name(registry: str) -> str | None:
    """The serving name of registry model ``registry`` (doc2vec -> content); None for models
    that serve no vectors (dqn) or are not served (bpr)."""
    return next((s for s, r in SERVING_MODELS.items() if r == registry), None)


def distance_of(serving: str) -> Distance:
    # Torch models retrieve by dot product (their scores are dot products); Doc2Vec by cosine.
    return "cosine" if serving == "content" else "dot"


def item_matrix(model: Any) -> np.ndarray:
    """(n_items, d) float32 item vectors of a loaded torch model or Doc2Vec model."""
    vectors = model.item_vectors()
    if hasattr(vectors, "detach"):
        vectors = vectors.detach().cpu().numpy()
    return np.ascontiguousarray(vectors, dtype=np.float32)


def sql_payloads(engine: Engine) -> PayloadSource:
    """Payloads from the SQL catalog (``items``) and the interactions archive (popularity)."""

    def payloads(item_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        wanted = list(item_ids)
        with engine.connect() as conn:
            rows = conn.execute(select(ItemRow).where(ItemRow.item_id.in_(wanted))).all()
            counts = conn.execute(
                select(InteractionRow.item_id, func.count())
                .where(InteractionRow.item_id.in_(wanted))
                .group_by(InteractionRow.item_id)
            ).all()
        popularity = {item: float(n) for item, n in counts}
        found = {
            r.item_id: {"title": r.title or "", "genres": list(r.genres or []), "year": r.year}
            for r in rows
        }
        return {
            item: {
                **found.get(item, {"title": "", "genres": []}),
                "popularity": popularity.get(item, 0.0),
            }
            for item in wanted
        }

    return payloads


@dataclass(frozen=True)
class Published:
    model: str  # serving name
    version: int
    collection: str
    alias: str
    points: int  # item vectors in the collection's stream
    previous: str | None  # the alias target before the swap (kept for rollback)
    seconds: float
    users: int = 0  # user vectors written into users_collection before the swap
    users_collection: str = ""
    user_seconds: float = 0.0  # of ``seconds``, the time spent on user vectors
    inferred: int = 0  # content: catalog items newer than the Doc2Vec version, inferred


def publish_version(
    models: ModelRegistry,
    vectors: VectorStore,
    ids: IdRegistry,
    engine: Engine,
    model: str,
    version: int | None = None,
    *,
    checkpoint_dir: Path | None = None,
    on_progress: PublishProgress | None = None,
    chunk: int = 2000,
    history: int = DEFAULT_HISTORY,
) -> Published:
    """Make a version live: its item vectors, then every user's vector, then the alias swap.

    ``model`` is a serving name (mf, ncf, wide_deep, sasrec, content); ``version`` defaults to
    the registry's active one. ``engine`` holds the catalog and the interactions archive (item
    payloads, user histories). Item vectors are resumable: a rerun after an interruption
    continues from the checkpoint in ``checkpoint_dir``. User vectors are always recomputed,
    so publishing a version again (a rollback) refreshes them. ``on_progress`` gets (stage,
    done, total) with stage ``items`` (points) then ``users`` (users processed). The alias
    moves only once both collections are complete; the registry's active version is left
    as it is (the caller activates or promotes). Blocking: call it from a thread in async code.
    """
    from trainer import live  # PyTorch and gensim: on the first publish, not at CLI start-up

    return live.publish_version(
        models,
        vectors,
        ids,
        engine,
        model,
        version,
        checkpoint_dir=checkpoint_dir,
        on_progress=on_progress,
        chunk=chunk,
        history=history,
    )


# -- CLI ----------------------------------------------------------------------------------------


MODEL_HELP = "mf, ncf, wide_deep, sasrec or content (the doc2vec model)."


def publish_cmd(
    model: Annotated[str, typer.Option("--model", "-m", help=MODEL_HELP)],
    version: Annotated[int | None, typer.Option(min=1, help="Version (default: active).")] = None,
    var_dir: Annotated[Path | None, typer.Option(help="State directory (default: settings).")] = (
        None
    ),
) -> None:
    """Publish a model version: its item vectors, every user's vector, then swap the
    `items_<model>` alias to it."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from core.settings import Settings
    from stores.factory import open_sql_stores, open_vectors

    console = Console()
    try:
        registry_name(model)
        settings = Settings(var_dir=var_dir) if var_dir is not None else Settings()
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with (
            open_sql_stores(settings) as sql,
            open_vectors(settings) as store,
            Progress(*columns, console=console) as bar,
        ):
            tasks = {
                "items": bar.add_task(f"{model}: item vectors", total=None),
                "users": bar.add_task(f"{model}: user vectors", total=None),
            }
            done = publish_version(
                sql.models,
                store,
                sql.ids,
                sql.engine,
                model,
                version,
                checkpoint_dir=settings.var_dir / "publish",
                on_progress=lambda stage, n, total: bar.update(
                    tasks[stage], completed=n, total=total
                ),
            )
    except (StreamrecError, OSError) as error:
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(2) from None
    inferred = f" ({done.inferred} inferred from their text)" if done.inferred else ""
    console.print(
        f"{done.alias} → {done.collection}: {done.points} items{inferred}, {done.users} user "
        f"vectors in {done.users_collection}, in {done.seconds:.1f}s "
        f"({done.user_seconds:.1f}s for users)"
        + (f" (previous: {done.previous}, kept for rollback)" if done.previous else "")
    )


def register(app: typer.Typer) -> None:
    """Add ``streamrec vectors publish`` to the streamrec CLI."""
    vectors_app = typer.Typer(help="Serving vectors: publish model versions to Qdrant.")
    vectors_app.command("publish")(publish_cmd)
    app.add_typer(vectors_app, name="vectors")
