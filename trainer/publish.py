"""Publishing a model version's item vectors for serving (``streamrec vectors publish``).

A version's item vectors go into a NEW versioned collection ``items_<model>__v<N>`` (N = the
model registry version), streamed in resumable batches, indexed, and only then made live by
swapping the alias ``items_<model>``; the previous version stays for rollback. Doc2Vec is
served as ``content``: its vectors go to ``items_content`` (alias) → ``items_content__v<N>``.

Point id = id-registry item index; the payload carries ``item_id`` (the external id, so the
edge needs no reverse lookup), title, genres, year and popularity (interactions in the SQL
archive) for filtering and display.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from sqlalchemy import Engine, func, select

from core.errors import InvalidInput, NotFound, StreamrecError
from core.ids import IdKind, IdRegistry
from stores.catalog import InteractionRow, ItemRow
from stores.model_registry import ModelRegistry, ModelVersion
from stores.vectors import (
    Distance,
    VectorBatch,
    VectorStore,
    bulk_upsert,
    item_version_name,
    items_alias,
)

log = logging.getLogger(__name__)

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
    points: int
    previous: str | None  # the alias target before the swap (kept for rollback)
    seconds: float


def _version(models: ModelRegistry, name: str, version: int | None) -> ModelVersion:
    if version is not None:
        return models.get(name, version)
    found = models.active(name)
    if found is None:
        raise NotFound(f"model {name} has no active version: train one or pass --version")
    return found


def _rows(matrix: np.ndarray, registered: int) -> np.ndarray:
    """Indices worth publishing: registered items with a non-zero vector (Doc2Vec leaves rows
    of items without text at zero, which would be everyone's neighbour under dot product)."""
    rows = np.arange(min(len(matrix), registered))
    return rows[np.any(matrix[rows] != 0.0, axis=1)]


def _batches(
    matrix: np.ndarray, rows: np.ndarray, external: list[str], payloads: PayloadSource, chunk: int
) -> Callable[[int], Iterator[VectorBatch]]:
    """A resumable source: payloads are read per chunk, so memory stays bounded."""

    def source(start: int) -> Iterator[VectorBatch]:
        for lo in range(start, len(rows), chunk):
            idx = rows[lo : lo + chunk]
            ids = [external[i] for i in idx]
            found = payloads(ids)
            pays = [{"item_id": e, **found.get(e, {})} for e in ids]
            yield idx.tolist(), matrix[idx], pays

    return source


def publish_item_vectors(
    models: ModelRegistry,
    vectors: VectorStore,
    ids: IdRegistry,
    payloads: PayloadSource,
    model: str,
    version: int | None = None,
    *,
    checkpoint_dir: Path | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    chunk: int = 2000,
) -> Published:
    """Write a version's item vectors into ``items_<model>__v<N>`` and make it live.

    ``model`` is a serving name (mf, ncf, wide_deep, sasrec, content). Resumable: a rerun after
    an interruption continues from the checkpoint in ``checkpoint_dir``. ``on_progress`` gets
    (points done, points total).
    """
    import time

    started = time.perf_counter()
    found = _version(models, registry_name(model), version)
    matrix = item_matrix(models.load(found.name, found.version))
    external = ids.external_ids(IdKind.ITEM)
    rows = _rows(matrix, len(external))
    if len(rows) == 0:
        raise InvalidInput(f"{found.name} v{found.version} has no item vectors for known items")
    collection = item_version_name(model, found.version)
    if not vectors.collection_exists(collection):
        vectors.create_item_version(model, matrix.shape[1], distance_of(model), found.version)
    checkpoint = (checkpoint_dir / f"{collection}.json") if checkpoint_dir else None
    total = len(rows)
    result = bulk_upsert(
        vectors,
        collection,
        _batches(matrix, rows, external, payloads, chunk),
        checkpoint_path=checkpoint,
        batch_size=chunk,
        on_progress=(lambda done: on_progress(done, total)) if on_progress else None,
    )  # bulk_upsert optimizes (Edge index build) before we swap
    alias = items_alias(model)
    previous = vectors.swap_alias(alias, collection)
    log.info(
        "published %s v%d: %d points in %s (was %s)",
        model,
        found.version,
        total,
        collection,
        previous,
    )
    return Published(
        model,
        found.version,
        collection,
        alias,
        result.points,
        previous,
        time.perf_counter() - started,
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
    """Publish a model version's item vectors and swap the `items_<model>` alias to them."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from core.db import create_db_engine
    from core.settings import Settings
    from stores.schema import create_schema
    from stores.vectors import open_vector_store

    console = Console()
    try:
        registry_name(model)
        settings = Settings(var_dir=var_dir) if var_dir is not None else Settings()
        engine = create_db_engine(settings.database_url)
        create_schema(engine)
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with open_vector_store(settings) as store, Progress(*columns, console=console) as bar:
            task = bar.add_task(f"publishing {model}", total=None)
            done = publish_item_vectors(
                ModelRegistry(engine, settings.var_dir / "models"),
                store,
                IdRegistry(engine),
                sql_payloads(engine),
                model,
                version,
                checkpoint_dir=settings.var_dir / "publish",
                on_progress=lambda n, total: bar.update(task, completed=n, total=total),
            )
        engine.dispose()
    except (StreamrecError, OSError) as error:
        console.print(f"[red]error:[/] {error}")
        raise typer.Exit(2) from None
    console.print(
        f"{done.alias} → {done.collection}: {done.points} items in {done.seconds:.1f}s"
        + (f" (previous: {done.previous}, kept for rollback)" if done.previous else "")
    )


def register(app: typer.Typer) -> None:
    """Add ``streamrec vectors publish`` to the streamrec CLI."""
    vectors_app = typer.Typer(help="Serving vectors: publish model versions to Qdrant.")
    vectors_app.command("publish")(publish_cmd)
    app.add_typer(vectors_app, name="vectors")
