"""The one interface every torch recommender implements.

A model is a small ``nn.Module`` built from a config dataclass (nanoGPT style). Rows of every
user and item table are id-registry indices, so ``grow`` only appends rows: index 17 means
the same item before and after a retrain that added new items.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

import torch
from torch import Tensor, nn

from streamrec.core.errors import InvalidInput
from streamrec.trainer.data import Batch, Interactions

WEIGHTS_FILE = "weights.pt"
CONFIG_FILE = "config.json"


@dataclass
class Query:
    """Who to score: user indices and, for sequential models, their recent items."""

    users: Tensor  # (B,) registry user indices
    seqs: Tensor | None = None  # (B, L) item index + 1, left-padded with 0


class Recommender(nn.Module):
    """Base class: subclasses set ``input_kind``, the table names and implement ``loss``,
    ``user_vectors`` and ``item_vectors``; ``full_scores`` defaults to their dot product."""

    input_kind: ClassVar[str]  # which batches trainer.data.iter_batches yields for it
    user_tables: ClassVar[tuple[str, ...]] = ()  # nn.Embedding attributes with a row per user
    item_tables: ClassVar[tuple[str, ...]] = ()  # ... with a row per item (plus any offset)
    init_std: ClassVar[float] = 0.05
    sequential: ClassVar[bool] = False
    # Config fields derived from the training data (a mean, a feature vocabulary): a warm start
    # keeps the previous version's values, as its weights were learned against them.
    data_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def config_from_data(cls, config_cls: type, inter: Interactions, **overrides: Any) -> Any:
        """A config sized for ``inter``; subclasses add data-derived fields."""
        return config_cls(**{"n_users": inter.n_users, "n_items": inter.n_items, **overrides})

    def adapt(self, inter: Interactions) -> None:
        """Prepare for (re)training on ``inter``: grow to its registry sizes."""
        self.grow(inter.n_users, inter.n_items)

    @property
    def n_users(self) -> int:
        return int(self.config.n_users)

    @property
    def n_items(self) -> int:
        return int(self.config.n_items)

    # -- the interface ------------------------------------------------------------------------
    def loss(self, batch: Batch) -> Tensor:
        raise NotImplementedError

    def user_vectors(self, query: Query) -> Tensor:
        """(B, d) query vectors: retrieval is the dot product with ``item_vectors``."""
        raise NotImplementedError

    def item_vectors(self) -> Tensor:
        """(n_items, d), row = registry item index."""
        raise NotImplementedError

    def full_scores(self, query: Query) -> Tensor:
        """(B, n_items) scores of every item for every query (higher = better)."""
        return self.user_vectors(query) @ self.item_vectors().T

    def score(self, query: Query, items: Tensor) -> Tensor:
        """(B, C) scores of candidate ``items`` (B, C); consistent with ``full_scores``."""
        return self.full_scores(query).gather(1, items)

    # -- growth -------------------------------------------------------------------------------
    def grow(self, n_users: int, n_items: int) -> None:
        """Append rows for new ids; existing rows (and everything else) are kept as they are."""
        if n_users < self.n_users or n_items < self.n_items:
            raise InvalidInput(
                f"cannot shrink a model from {self.n_users}x{self.n_items} "
                f"to {n_users}x{n_items}: the id registry is append-only"
            )
        for name in self.user_tables:
            self._grow_table(name, n_users - self.n_users)
        for name in self.item_tables:
            self._grow_table(name, n_items - self.n_items)
        self.config = replace(self.config, n_users=n_users, n_items=n_items)

    def _grow_table(self, name: str, extra: int) -> None:
        old: nn.Embedding = getattr(self, name)
        if extra <= 0:
            return
        new = nn.Embedding(
            old.num_embeddings + extra, old.embedding_dim, padding_idx=old.padding_idx
        ).to(old.weight.device)
        with torch.no_grad():
            self.init_new_rows(name, new.weight[old.num_embeddings :])
            new.weight[: old.num_embeddings] = old.weight
        setattr(self, name, new)

    def init_new_rows(self, table: str, rows: Tensor) -> None:
        """How rows of a new id start; zero for bias/cross tables, small noise otherwise."""
        if table.endswith(("_bias", "cross")):
            rows.zero_()
        else:
            rows.normal_(0.0, self.init_std)

    # -- warm start ---------------------------------------------------------------------------
    def warm_start_from(self, previous: Recommender) -> CarriedOver:
        """Copy ``previous``'s learned weights into this model, in place.

        Rows of the user and item tables are registry indices and the registry only grows, so
        row ``i`` of ``previous`` is the same id here: its rows are copied over the first rows
        of each table, and rows past them (ids registered since) keep what this model was
        initialised with. Every other parameter is copied when its shape matches and left as
        initialised otherwise (reported in ``skipped``). Buffers (genres, demographics) are not
        learned: they keep what ``adapt`` filled from this model's data.
        """
        if type(previous) is not type(self):
            raise InvalidInput(
                f"cannot warm-start a {type(self).__name__} from a {type(previous).__name__}"
            )
        if previous.n_users > self.n_users or previous.n_items > self.n_items:
            raise InvalidInput(
                f"cannot warm-start a {self.n_users}x{self.n_items} model from a larger "
                f"{previous.n_users}x{previous.n_items} one: the id registry is append-only, "
                "so the previous version comes from another registry"
            )
        tables = {f"{name}.weight" for name in (*self.user_tables, *self.item_tables)}
        mine = dict(self.named_parameters())
        carried: dict[str, int] = {}
        copied: list[str] = []
        skipped: list[str] = []
        with torch.no_grad():
            for name, old in previous.named_parameters():
                new = mine.get(name)
                if new is not None and name in tables and _rows_fit(old, new):
                    new[: old.shape[0]] = old
                    carried[name.removesuffix(".weight")] = old.shape[0]
                elif new is not None and new.shape == old.shape:
                    new.copy_(old)
                    copied.append(name)
                else:
                    skipped.append(name)
        return CarriedOver(carried, copied, skipped)

    # -- artifacts ----------------------------------------------------------------------------
    def save_artifacts(self, directory: Path) -> dict[str, Any]:
        """Write weights (a plain state dict) and the config; return the config as a dict."""
        return save_checkpoint(self, self.config, directory)

    @classmethod
    def load_artifacts(cls, directory: Path) -> Self:
        """Rebuild from ``config.json`` and ``weights.pt`` alone (weights_only: no pickle)."""
        from streamrec.trainer.models import config_class  # the registry maps class → config class

        return load_checkpoint(cls, config_class(cls), directory)


@dataclass(frozen=True)
class CarriedOver:
    """What ``Recommender.warm_start_from`` copied."""

    tables: dict[str, int]  # table name -> rows carried over (the rest are new ids)
    copied: list[str]  # other parameters copied whole
    skipped: list[str]  # parameters of the previous model left out (no match here)


def _rows_fit(old: Tensor, new: Tensor) -> bool:
    return old.shape[0] <= new.shape[0] and old.shape[1:] == new.shape[1:]


M = TypeVar("M", bound=nn.Module)


def save_checkpoint(module: nn.Module, config: Any, directory: Path) -> dict[str, Any]:
    """The self-describing checkpoint every model writes: ``weights.pt`` (a plain state dict)
    and ``config.json`` (its config dataclass). Returns the config as a dict."""
    as_dict = _jsonable(asdict(config))
    torch.save(module.state_dict(), directory / WEIGHTS_FILE)
    (directory / CONFIG_FILE).write_text(json.dumps(as_dict, indent=2, sort_keys=True))
    return as_dict


def load_checkpoint(cls: type[M], config_cls: type, directory: Path) -> M:
    """Rebuild ``cls(config)`` from a checkpoint alone, in eval mode (weights_only: no pickle).
    Config keys the dataclass no longer has are ignored, so older checkpoints still load."""
    raw = json.loads((directory / CONFIG_FILE).read_text())
    known = {f.name for f in fields(config_cls)}
    model = cls(config_cls(**{k: _tuples(v) for k, v in raw.items() if k in known}))
    state = torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    return model


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _tuples(value: Any) -> Any:
    # JSON has no tuples; configs use tuples so they stay hashable and immutable.
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def mlp(sizes: tuple[int, ...], dropout: float) -> nn.Sequential:
    """Linear → ReLU → Dropout for each consecutive pair of sizes."""
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)
