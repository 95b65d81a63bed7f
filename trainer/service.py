"""The training service: load data, train, evaluate, register. What ``streamrec train`` and
``streamrec eval`` run (``trainer.cli``) and what the API's training jobs run
(``api.training_jobs``): one path, domain errors (``core.errors``), typed returns, no CLI."""

from __future__ import annotations

from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import Engine

from core.datasets import InteractionData, load_movielens, synthetic
from core.errors import InvalidInput, NotFound
from core.ids import IdRegistry
from stores.model_registry import ModelRegistry, ModelVersion
from trainer.data import build, from_archive
from trainer.doc2vec import Doc2VecConfig, Doc2VecModel
from trainer.evaluate import evaluate, make_validator, protocol_split
from trainer.loop import fit
from trainer.models import build_model, train_config

DOC2VEC = "doc2vec"


def load_data(source: str, engine: Engine, seed: int) -> InteractionData:
    """``synthetic``, ``archive`` (the SQL interactions) or a MovieLens folder."""
    if source == "synthetic":
        return synthetic(seed=seed)
    if source == "archive":
        return from_archive(engine)
    return load_movielens(source)


def train_model(
    name: str,
    raw: InteractionData,
    ids: IdRegistry,
    models: ModelRegistry,
    protocol: str,
    opts: dict[str, Any],
    exclude_seen: bool = True,
    activate: bool = True,
    show_progress: bool = False,
) -> ModelVersion:
    """Train model ``name`` on ``raw`` and register it: what ``streamrec train`` and the API's
    training jobs both run. ``opts``: epochs, batch_size, lr, patience, seed, threads (None
    keeps the model's default); ``show_progress`` draws a progress bar on the console."""
    if name == DOC2VEC:
        return _train_doc2vec(raw, ids, models, opts.get("seed") or 0, activate)
    return _train_torch(
        name, raw, ids, models, protocol, opts, exclude_seen, activate, show_progress
    )


def _train_doc2vec(
    raw: InteractionData, ids: IdRegistry, models: ModelRegistry, seed: int, activate: bool
) -> ModelVersion:
    if not raw.items:
        raise InvalidInput("this dataset has no item catalog to learn text vectors from")
    d2v = Doc2VecModel(Doc2VecConfig(seed=seed)).fit(raw.items, ids)
    return models.register(
        "doc2vec", d2v, {"items": len(raw.items)}, n_items=d2v.config.n_items, activate=activate
    )


def _train_torch(
    name: str,
    raw: InteractionData,
    ids: IdRegistry,
    models: ModelRegistry,
    protocol: str,
    opts: dict[str, Any],
    exclude_seen: bool,
    activate: bool,
    show_progress: bool,
) -> ModelVersion:
    inter = build(raw, ids)
    split = protocol_split(inter, protocol, seed=opts["seed"], click=name == "wide_deep")
    net = build_model(name, inter, seed=opts["seed"])
    config = train_config(name, **opts)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    validate = make_validator(net, inter, split, protocol, exclude_seen=exclude_seen)
    with Progress(*columns, transient=True, disable=not show_progress) as bar:
        history = fit(net, inter.subset(split.train), validate, config, bar)
    test = evaluate(net, inter, split, protocol, exclude_seen=exclude_seen)
    metrics = {
        "protocol": protocol,
        "dataset": raw.name,
        "exclude_seen": exclude_seen,
        "test": test,
        **history.as_dict(),
    }
    window = {"start_ts": inter.window[0], "end_ts": inter.window[1], "events": len(inter)}
    return models.register(name, net, metrics, inter.n_users, inter.n_items, window, activate)


def evaluate_version(
    engine: Engine,
    models: ModelRegistry,
    name: str,
    data: str,
    protocol: str,
    version: int | None,
    seed: int,
    exclude_seen: bool,
) -> tuple[dict[str, float], ModelVersion]:
    """A registered version's test metrics on a protocol's split (default: the active one)."""
    if name == DOC2VEC:
        raise InvalidInput("doc2vec has no ranking evaluation; it gives content vectors")
    net = models.load(name, version)
    found = models.get(name, version) if version is not None else models.active(name)
    if found is None:  # activation moved on, or the version was deleted, since the load
        raise NotFound(f"no {name} version {version or '(active)'} is registered")
    inter = build(load_data(data, engine, seed), IdRegistry(engine))
    net.adapt(inter)  # ids registered after training get fresh rows
    split = protocol_split(inter, protocol, seed=seed, click=name == "wide_deep")
    return evaluate(net, inter, split, protocol, exclude_seen=exclude_seen), found
