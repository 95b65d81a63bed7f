"""Neural collaborative filtering (He et al. 2017): GMF and MLP towers fused as NeuMF.

Trained pointwise with binary cross-entropy on observed pairs and sampled negatives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from streamrec.trainer.data import Batch
from streamrec.trainer.models.base import Query, Recommender, mlp


@dataclass(frozen=True)
class NCFConfig:
    n_users: int = 0
    n_items: int = 0
    gmf_dim: int = 64
    mlp_dim: int = 64
    hidden: tuple[int, ...] = (128, 64)
    dropout: float = 0.1
    neg: int = 1  # sampled negatives per positive (RecBole: 1; the paper: 4)


class NCF(Recommender):
    input_kind = "pointwise"
    user_tables = ("user_gmf", "user_mlp")
    item_tables = ("item_gmf", "item_mlp")
    init_std = 0.01

    def __init__(self, config: NCFConfig) -> None:
        super().__init__(config)
        self.user_gmf = nn.Embedding(config.n_users, config.gmf_dim)
        self.item_gmf = nn.Embedding(config.n_items, config.gmf_dim)
        self.user_mlp = nn.Embedding(config.n_users, config.mlp_dim)
        self.item_mlp = nn.Embedding(config.n_items, config.mlp_dim)
        for emb in (self.user_gmf, self.item_gmf, self.user_mlp, self.item_mlp):
            nn.init.normal_(emb.weight, 0.0, self.init_std)
        self.mlp = mlp((2 * config.mlp_dim, *config.hidden), config.dropout)
        self.out = nn.Linear(config.gmf_dim + config.hidden[-1], 1)

    def logits(self, users: Tensor, items: Tensor) -> Tensor:
        """(N,) NeuMF logits of N (user, item) pairs."""
        gmf = self.user_gmf(users) * self.item_gmf(items)  # (N, gmf_dim)
        deep = self.mlp(torch.cat([self.user_mlp(users), self.item_mlp(items)], dim=1))  # (N, h)
        return self.out(torch.cat([gmf, deep], dim=1))[:, 0]

    def loss(self, batch: Batch) -> Tensor:
        return F.binary_cross_entropy_with_logits(
            self.logits(batch["users"], batch["items"]), batch["labels"]
        )

    def user_vectors(self, query: Query) -> Tensor:
        # The GMF half is an exact dot product: h·(p_u ⊙ q_i) = (h ⊙ p_u)·q_i. Retrieval by it
        # gives candidates; full_scores adds the MLP half for the final order.
        h = self.out.weight[0, : self.config.gmf_dim]  # (gmf_dim,)
        return self.user_gmf(query.users) * h  # (B, gmf_dim)

    def item_vectors(self) -> Tensor:
        return self.item_gmf.weight  # (n_items, gmf_dim)

    def full_scores(self, query: Query) -> Tensor:
        # Same function as logits() on every (user, item) pair, but the first MLP layer is split
        # into its user and item halves, computed once per user and once per item.
        users, d = query.users, self.config.mlp_dim
        first = cast(nn.Linear, self.mlp[0])
        a = self.user_mlp(users) @ first.weight[:, :d].T + first.bias  # (B, h1)
        c = self.item_mlp.weight @ first.weight[:, d:].T  # (n_items, h1)
        h_gmf, h_mlp = (
            self.out.weight[0, : self.config.gmf_dim],
            self.out.weight[0, self.config.gmf_dim :],
        )
        gmf = (self.user_gmf(users) * h_gmf) @ self.item_gmf.weight.T  # (B, n_items)
        rows = []
        for start in range(0, len(users), 32):  # bounds the (chunk, n_items, h1) activations
            x = self.mlp[1:](a[start : start + 32, None, :] + c[None, :, :])  # (b, n_items, h)
            rows.append(x @ h_mlp)  # (b, n_items)
        deep = torch.cat(rows) if rows else torch.zeros_like(gmf)
        return gmf + deep + self.out.bias

    def score(self, query: Query, items: Tensor) -> Tensor:
        b, c = items.shape
        return self.logits(query.users.repeat_interleave(c), items.reshape(-1)).view(b, c)
