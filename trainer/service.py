"""The training service: load data, train, evaluate, register. What ``streamrec train`` and
``streamrec eval`` run (``trainer.cli``) and what the API's training jobs run
(``api.training_jobs``): one path, domain errors (``core.errors``), typed returns, no CLI.

**Live and offline.** Only the archive (``data="archive"``) is live data: its ids are the live
id registry's and a version trained on it goes to the live model registry, from where it can
serve. Every other source (``synthetic``, a MovieLens folder) is offline: it is trained in a
workspace of its own, ``<var_dir>/offline/<run>/`` (its own SQLite database with its own id
registry and model registry, and its own ``models/``), so an experiment never registers ids
in the live registry and its versions cannot be activated for live serving. ``workspace``
picks the right one; the CLI and the API's training jobs both go through it.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import Engine

from streamrec.core.datasets import InteractionData, load_movielens, synthetic
from streamrec.core.errors import InvalidInput, NotFound
from streamrec.core.ids import IdRegistry
from streamrec.core.settings import Settings
from streamrec.stores.catalog import Watermark
from streamrec.stores.factory import open_offline_stores
from streamrec.stores.model_registry import ModelRegistry, ModelVersion
from streamrec.trainer.data import DataWindow, Interactions, Split, build, read_archive
from streamrec.trainer.doc2vec import Doc2VecConfig, Doc2VecModel
from streamrec.trainer.evaluate import evaluate, make_validator, protocol_split
from streamrec.trainer.loop import History, Validator, fit
from streamrec.trainer.models import build_model, train_config
from streamrec.trainer.models.base import Recommender
from streamrec.trainer.warm_start import WarmStart, warm_start_model

log = logging.getLogger(__name__)

DOC2VEC = "doc2vec"
ARCHIVE = "archive"  # the live data: the SQL interactions archive
SYNTHETIC = "synthetic"
OFFLINE_DIR = "offline"  # under the var dir, beside the live registry's models/
# A training "protocol" with no split: every interaction given is trained on, for the configured
# epochs (the one with the lowest training loss kept, as ``fit`` does without validation), with
# no validation or test: the caller judges the version (the learning loop's warm rounds, whose
# guard scores it on held-out newest events).
ALL_DATA = "all"

WarmFrom = ModelVersion | Recommender


# -- where a run maps ids and registers its version -------------------------------------------
def is_offline(source: str) -> bool:
    """Every source but the live archive is offline."""
    return source != ARCHIVE


def offline_run_dir(var_dir: Path, source: str) -> Path:
    """``<var_dir>/offline/<run>``: ``synthetic`` for generated data; for a folder its name
    and a hash of its absolute path (two folders of the same name stay apart). Training on
    the same source again uses the same run, so its ids stay stable between runs."""
    if source == SYNTHETIC:
        run = SYNTHETIC
    else:
        path = Path(source).expanduser().resolve()
        digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
        run = f"{re.sub(r'[^A-Za-z0-9._-]+', '_', path.name) or 'data'}-{digest}"
    return Path(var_dir).resolve() / OFFLINE_DIR / run


@dataclass(frozen=True)
class Workspace:
    """The id registry and model registry a training run uses, and whether they are live."""

    engine: Engine
    ids: IdRegistry
    models: ModelRegistry
    offline: bool

    @property
    def location(self) -> Path:
        """The offline run's directory, or the live registry's model directory."""
        return self.models.root.parent if self.offline else self.models.root


@contextmanager
def offline_workspace(var_dir: Path, source: str) -> Iterator[Workspace]:
    """The offline run of ``source`` under ``var_dir`` (created on first use), closed on exit."""
    settings = Settings(var_dir=var_dir)
    with open_offline_stores(settings, offline_run_dir(var_dir, source)) as run:
        yield Workspace(run.engine, run.ids, run.models, offline=True)


@contextmanager
def workspace(source: str, var_dir: Path, live: Workspace) -> Iterator[Workspace]:
    """``live`` for the archive, the offline run of ``source`` for anything else."""
    if not is_offline(source):
        yield live
        return
    with offline_workspace(var_dir, source) as run:
        log.info(
            "offline data %r: working in %s, apart from the live registries", source, run.location
        )
        yield run


# -- data -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainingData:
    """Interactions to train on and what they are (``DataWindow``: counts, time span, archive
    watermark), which the registered version records."""

    raw: InteractionData
    window: DataWindow


def load_data(
    source: str,
    engine: Engine,
    seed: int,
    *,
    until: Watermark | None = None,
    since: Watermark | None = None,
) -> TrainingData:
    """``synthetic``, ``archive`` (the SQL interactions in ``engine``) or a MovieLens folder.

    For the archive, ``until`` and ``since`` bound the rows read by log position (inclusive
    and exclusive; ``stores.catalog.Watermark``: ``Archive.watermark()`` now, or a version's
    ``DataWindow.watermark``), and the window records the offsets of the rows actually read
    (first and last per log, topic and partition): a retrain "up to the watermark" is one call
    with ``until``.
    """
    if source == ARCHIVE:
        read = read_archive(engine, until=until, since=since)
        return TrainingData(read.data, DataWindow.of(read.data, ARCHIVE, read.offsets, since))
    if until is not None or since is not None:
        raise InvalidInput(f"until and since bound the archive's log positions, not {source!r}")
    raw = synthetic(seed=seed) if source == SYNTHETIC else load_movielens(source)
    return TrainingData(raw, DataWindow.of(raw, raw.name))


def _as_training_data(data: TrainingData | InteractionData) -> TrainingData:
    if isinstance(data, TrainingData):
        return data
    return TrainingData(data, DataWindow.of(data, data.name))


# -- training ---------------------------------------------------------------------------------
def train_model(
    name: str,
    data: TrainingData | InteractionData,
    ids: IdRegistry,
    models: ModelRegistry,
    protocol: str,
    opts: dict[str, Any],
    exclude_seen: bool = True,
    activate: bool = True,
    show_progress: bool = False,
    warm_start: WarmFrom | None = None,
) -> ModelVersion:
    """Train model ``name`` on ``data`` and register it in ``models``, recording its data
    window: what ``streamrec train`` and the API's training jobs both run.

    ``ids`` and ``models`` must belong together (``workspace``). ``opts``: epochs, batch_size,
    lr, patience, seed, threads (None keeps the model's default); ``show_progress`` draws a
    progress bar on the console. ``warm_start``: a previous version of ``name`` (in ``models``)
    or model to start from (``trainer.warm_start``: known rows carried over, new ids
    appended); usually with fewer epochs. The version's metrics say how it began.
    """
    given = _as_training_data(data)
    if name == DOC2VEC:
        if warm_start is not None:
            raise InvalidInput("doc2vec has no warm start: it is retrained from the catalog")
        return _train_doc2vec(given, ids, models, opts.get("seed") or 0, activate)
    return _train_torch(
        name, given, ids, models, protocol, opts, exclude_seen, activate, show_progress, warm_start
    )


def _train_doc2vec(
    data: TrainingData, ids: IdRegistry, models: ModelRegistry, seed: int, activate: bool
) -> ModelVersion:
    if not data.raw.items:
        raise InvalidInput("this dataset has no item catalog to learn text vectors from")
    d2v = Doc2VecModel(Doc2VecConfig(seed=seed)).fit(data.raw.items, ids)
    return models.register(
        "doc2vec",
        d2v,
        {"items": len(data.raw.items)},
        n_items=d2v.config.n_items,
        data_window=data.window.as_dict(),
        activate=activate,
    )


def _initial_model(
    name: str, inter: Interactions, models: ModelRegistry, seed: int, previous: WarmFrom | None
) -> tuple[Recommender, WarmStart | None]:
    """A fresh model, or one warm-started from ``previous``."""
    if previous is None:
        return build_model(name, inter, seed=seed), None
    if isinstance(previous, ModelVersion):
        if previous.name != name:
            raise InvalidInput(f"cannot warm-start {name} from {previous.name} v{previous.version}")
        loaded = models.load(previous.name, previous.version)
        return warm_start_model(name, loaded, inter, seed=seed, from_version=previous.version)
    return warm_start_model(name, previous, inter, seed=seed)


def _train_torch(
    name: str,
    data: TrainingData,
    ids: IdRegistry,
    models: ModelRegistry,
    protocol: str,
    opts: dict[str, Any],
    exclude_seen: bool,
    activate: bool,
    show_progress: bool,
    previous: WarmFrom | None,
) -> ModelVersion:
    inter = build(data.raw, ids)
    net, began = _initial_model(name, inter, models, opts["seed"], previous)
    config = train_config(name, **opts)
    split, validate = _split_and_validator(name, net, inter, protocol, opts["seed"], exclude_seen)
    if began is not None and began.warm and validate is not None:
        config = replace(config, validate_start=True)  # never end below the carried-over weights
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, transient=True, disable=not show_progress) as bar:
        history = fit(net, inter.subset(split.train), validate, config, bar)
    test = (
        evaluate(net, inter, split, protocol, exclude_seen=exclude_seen)
        if validate is not None
        else {}
    )
    metrics: dict[str, Any] = {
        "protocol": protocol,
        "dataset": data.raw.name,
        "exclude_seen": exclude_seen,
        "test": test,
        **history.as_dict(),
    }
    if began is not None:  # the validation before training (epoch 0) shows what was carried
        metrics["warm_start"] = {**began.as_dict(), "start": _start_scores(history)}
    window = data.window.as_dict()
    return models.register(name, net, metrics, inter.n_users, inter.n_items, window, activate)


def _split_and_validator(
    name: str, net: Recommender, inter: Interactions, protocol: str, seed: int, exclude_seen: bool
) -> tuple[Split, Validator | None]:
    """The protocol's split and per-epoch validator; ``ALL_DATA``: everything, none."""
    if protocol == ALL_DATA:
        nothing = np.zeros(0, dtype=np.int64)
        return Split(train=np.arange(len(inter), dtype=np.int64), valid=nothing, test=nothing), None
    split = protocol_split(inter, protocol, seed=seed, click=name == "wide_deep")
    return split, make_validator(net, inter, split, protocol, exclude_seen=exclude_seen)


def _start_scores(history: History) -> dict[str, float] | None:
    first = history.epochs[0] if history.epochs else {}
    if first.get("epoch") != 0:
        return None
    return {k: v for k, v in first.items() if k not in ("epoch", "seconds")}


# -- evaluation -------------------------------------------------------------------------------
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
    """A registered version's test metrics on a protocol's split (default: the active one).

    ``engine`` and ``models`` are the live ones. Offline data (``is_offline``) is judged in
    its own offline run, beside ``models`` (``<var_dir>/offline/<run>`` next to
    ``<var_dir>/models``): the version is that run's, and the live registries stay untouched.
    """
    if name == DOC2VEC:
        raise InvalidInput("doc2vec has no ranking evaluation; it gives content vectors")
    live = Workspace(engine, IdRegistry(engine), models, offline=False)
    with workspace(data, models.root.parent, live) as ws:
        return _evaluate_in(ws, name, data, protocol, version, seed, exclude_seen)


def _evaluate_in(
    ws: Workspace,
    name: str,
    data: str,
    protocol: str,
    version: int | None,
    seed: int,
    exclude_seen: bool,
) -> tuple[dict[str, float], ModelVersion]:
    net = ws.models.load(name, version)
    found = ws.models.get(name, version) if version is not None else ws.models.active(name)
    if found is None:  # activation moved on, or the version was deleted, since the load
        raise NotFound(f"no {name} version {version or '(active)'} is registered")
    inter = build(load_data(data, ws.engine, seed).raw, ws.ids)
    net.adapt(inter)  # ids registered after training get fresh rows
    split = protocol_split(inter, protocol, seed=seed, click=name == "wide_deep")
    return evaluate(net, inter, split, protocol, exclude_seen=exclude_seen), found
