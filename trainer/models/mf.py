"""Matrix factorisation: explicit ratings with biases (MSE), or implicit feedback (BPR).

Both variants are the same module; ``MFConfig.loss`` picks the objective and the batches
(rating triples, or (user, positive, sampled negative) triples for BPR).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from streamrec.core.errors import InvalidInput
from streamrec.trainer.data import Batch, Interactions
from streamrec.trainer.models.base import Query, Recommender


@dataclass(frozen=True)
class MFConfig:
    n_users: int = 0
    n_items: int = 0
    dim: int = 64
    loss: str = "mse"  # "mse": explicit ratings; "bpr": implicit, one sampled negative
    use_bias: bool = True
    global_mean: float = 0.0  # mean training rating (mse only)


class MF(Recommender):
    user_tables = ("user_emb", "user_bias")
    item_tables = ("item_emb", "item_bias")
    init_std = 0.01  # xavier-sized start: larger noise generalised worse on ml-100k
    data_fields = ("global_mean",)  # the biases were learned around it

    def __init__(self, config: MFConfig) -> None:
        if config.loss not in ("mse", "bpr"):
            raise InvalidInput(f"MF loss must be 'mse' or 'bpr', not {config.loss!r}")
        super().__init__(config)
        self.user_emb = nn.Embedding(config.n_users, config.dim)
        self.item_emb = nn.Embedding(config.n_items, config.dim)
        self.user_bias = nn.Embedding(config.n_users, 1)
        self.item_bias = nn.Embedding(config.n_items, 1)
        nn.init.normal_(self.user_emb.weight, 0.0, self.init_std)
        nn.init.normal_(self.item_emb.weight, 0.0, self.init_std)
        nn.init.zeros_(self.user_bias.weight)
        nn.init.zeros_(self.item_bias.weight)

    @property
    def input_kind(self) -> str:  # type: ignore[override]
        return "ratings" if self.config.loss == "mse" else "pairwise"

    @classmethod
    def config_from_data(cls, config_cls: type, inter: Interactions, **overrides: Any) -> Any:
        loss = overrides.get("loss", "mse")
        mean = float(np.mean(inter.ratings)) if loss == "mse" and len(inter) else 0.0
        defaults = {"global_mean": mean, "use_bias": loss == "mse"}
        return super().config_from_data(config_cls, inter, **{**defaults, **overrides})

    def predict(self, users: Tensor, items: Tensor) -> Tensor:
        """(N,) predicted rating (mse) or preference score (bpr) of N (user, item) pairs."""
        dot = (self.user_emb(users) * self.item_emb(items)).sum(-1)
        if not self.config.use_bias:
            return dot
        biases = self.user_bias(users)[:, 0] + self.item_bias(items)[:, 0]
        return dot + biases + self.config.global_mean

    def loss(self, batch: Batch) -> Tensor:
        if self.config.loss == "mse":
            return F.mse_loss(self.predict(batch["users"], batch["items"]), batch["ratings"])
        pos = self.predict(batch["users"], batch["pos"])  # (B,)
        neg = self.predict(batch["users"], batch["neg"])  # (B,)
        return -F.logsigmoid(pos - neg).mean()

    def user_vectors(self, query: Query) -> Tensor:
        u = self.user_emb(query.users)  # (B, d)
        if not self.config.use_bias:
            return u
        # [u, 1] · [v, b_i] = u·v + b_i; the user bias and mean do not change a user's ranking.
        return torch.cat([u, torch.ones_like(u[:, :1])], dim=1)  # (B, d+1)

    def item_vectors(self) -> Tensor:
        v = self.item_emb.weight  # (n_items, d)
        if not self.config.use_bias:
            return v
        return torch.cat([v, self.item_bias.weight], dim=1)  # (n_items, d+1)

    def full_scores(self, query: Query) -> Tensor:
        scores = super().full_scores(query)  # (B, n_items)
        if self.config.use_bias:  # exact predicted ratings, so score() matches predict()
            scores = scores + self.user_bias(query.users) + self.config.global_mean
        return scores
