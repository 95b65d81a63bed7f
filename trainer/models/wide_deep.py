"""Wide & Deep (Cheng et al. 2016) as a click model: P(rating >= threshold | user, item).

Wide: per-item and per-user biases, genre weights and userxgenre crosses (one weight per user
and genre, i.e. a linear model over the crossed one-hot features); with demographics (age
group, gender, occupation: ``Interactions.user_features``) also their weights and
demographicxgenre crosses. Deep: an MLP over user, item and genre embeddings, plus the
demographics' embedding when the data has them. Item features besides genres (release year and
decade: ``Interactions.item_features``, RecBole's ``release_year``) likewise get wide weights and
a deep embedding. Without demographics or item features the model is exactly the
ids-and-genres one (same parameters), so older checkpoints still load. A dot product of the
user and item embeddings is added to the logit so that the embeddings also work as retrieval
vectors (see ``user_vectors``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from streamrec.trainer.data import Batch, Interactions
from streamrec.trainer.models.base import Query, Recommender, mlp


@dataclass(frozen=True)
class WideDeepConfig:
    n_users: int = 0
    n_items: int = 0
    genres: tuple[str, ...] = ()  # genre vocabulary: the columns of item_genres
    user_features: tuple[str, ...] = ()  # demographic vocabulary: the columns of user_feats
    item_features: tuple[str, ...] = ()  # year/decade vocabulary: the columns of item_feats
    dim: int = 32
    hidden: tuple[int, ...] = (64, 32)
    dropout: float = 0.1
    label_threshold: float = 4.0  # label = rating >= threshold (RecBole's ml-100k setting)
    neg: int = 0  # sampled unobserved items per interaction, as label 0 (0: pure click model)


class WideDeep(Recommender):
    input_kind = "pointwise"
    user_tables = ("user_emb", "user_bias", "cross")
    item_tables = ("item_emb", "item_bias")
    # The vocabularies name the columns of the wide and deep feature weights: a warm start keeps
    # the previous ones (adapt maps the data onto them; features new since are ignored).
    data_fields = ("genres", "user_features", "item_features")

    def __init__(self, config: WideDeepConfig) -> None:
        super().__init__(config)
        n_genres = len(config.genres)
        # Genres per item live with the model so serving needs nothing but its files.
        self.register_buffer("item_genres", torch.zeros(config.n_items, n_genres))
        self.user_bias = nn.Embedding(config.n_users, 1)
        self.item_bias = nn.Embedding(config.n_items, 1)
        self.cross = nn.Embedding(config.n_users, n_genres)  # userxgenre weights
        self.genre_w = nn.Linear(n_genres, 1)
        for table in (self.user_bias, self.item_bias, self.cross):
            nn.init.zeros_(table.weight)
        self.user_emb = nn.Embedding(config.n_users, config.dim)
        self.item_emb = nn.Embedding(config.n_items, config.dim)
        nn.init.normal_(self.user_emb.weight, 0.0, self.init_std)
        nn.init.normal_(self.item_emb.weight, 0.0, self.init_std)
        self.genre_emb = nn.Linear(n_genres, config.dim, bias=False)
        n_feats = len(config.user_features)
        if n_feats:  # only with demographics, so a model without them keeps its old state dict
            self.register_buffer("user_feats", torch.zeros(config.n_users, n_feats))
            self.feat_w = nn.Linear(n_feats, 1, bias=False)
            self.feat_cross = nn.Parameter(torch.zeros(n_feats, n_genres))  # demographic x genre
            nn.init.zeros_(self.feat_w.weight)
            self.feat_emb = nn.Linear(n_feats, config.dim, bias=False)
        n_item_feats = len(config.item_features)
        if n_item_feats:
            self.register_buffer("item_feats", torch.zeros(config.n_items, n_item_feats))
            self.item_feat_w = nn.Linear(n_item_feats, 1, bias=False)
            nn.init.zeros_(self.item_feat_w.weight)
            self.item_feat_emb = nn.Linear(n_item_feats, config.dim, bias=False)
        n_parts = 3 + bool(n_feats) + bool(n_item_feats)
        self.deep = mlp((n_parts * config.dim, *config.hidden), config.dropout)
        self.deep_out = nn.Linear(config.hidden[-1], 1)

    @property
    def has_user_features(self) -> bool:
        return bool(self.config.user_features)

    @property
    def has_item_features(self) -> bool:
        return bool(self.config.item_features)

    @classmethod
    def config_from_data(cls, config_cls: type, inter: Interactions, **overrides: Any) -> Any:
        from_data = {
            "genres": inter.genres,
            "user_features": inter.user_feature_names,
            "item_features": inter.item_feature_names,
        }
        return super().config_from_data(config_cls, inter, **{**from_data, **overrides})

    def adapt(self, inter: Interactions) -> None:
        """Grow, then fill the feature tables from ``inter``, each mapped onto this model's own
        vocabulary: features the model does not know are ignored, rows without any stay zero."""
        super().adapt(inter)
        self.item_genres = _columns(
            self.config.genres, inter.genres, inter.item_genres, self.n_items
        )
        if self.has_user_features:
            self.user_feats = _columns(
                self.config.user_features,
                inter.user_feature_names,
                inter.user_features,
                self.n_users,
            )
        if self.has_item_features:
            self.item_feats = _columns(
                self.config.item_features,
                inter.item_feature_names,
                inter.item_features,
                self.n_items,
            )

    def grow(self, n_users: int, n_items: int) -> None:
        extra, extra_users = n_items - self.n_items, n_users - self.n_users
        super().grow(n_users, n_items)
        # Unknown genres / features until adapt() fills them from the new data.
        if extra > 0:
            self.item_genres = _pad_rows(self.item_genres, extra)
            if self.has_item_features:
                self.item_feats = _pad_rows(self.item_feats, extra)
        if extra_users > 0 and self.has_user_features:
            self.user_feats = _pad_rows(self.user_feats, extra_users)

    def _genre_weights(self, users: Tensor) -> Tensor:
        """(N, n_genres) per-user genre weights of the wide part: the user's own crosses plus,
        with demographics, the crosses of the user's age group, gender and occupation."""
        w = self.cross(users)
        if self.has_user_features:
            w = w + self.user_feats[users] @ self.feat_cross
        return w

    def logits(self, users: Tensor, items: Tensor) -> Tensor:
        """(N,) click logits of N (user, item) pairs."""
        g = self.item_genres[items]  # (N, n_genres)
        u, v = self.user_emb(users), self.item_emb(items)  # (N, dim) each
        wide = (
            self.user_bias(users)[:, 0]
            + self.item_bias(items)[:, 0]
            + self.genre_w(g)[:, 0]
            + (self._genre_weights(users) * g).sum(-1)
        )
        parts = [u, v, self.genre_emb(_mean(g))]  # mean over the item's genres
        if self.has_user_features:
            f = self.user_feats[users]  # (N, n_feats) multi-hot
            wide = wide + self.feat_w(f)[:, 0]
            parts.append(self.feat_emb(_mean(f)))
        if self.has_item_features:
            f = self.item_feats[items]  # (N, n_item_feats) multi-hot
            wide = wide + self.item_feat_w(f)[:, 0]
            parts.append(self.item_feat_emb(_mean(f)))
        deep = self.deep_out(self.deep(torch.cat(parts, dim=1)))[:, 0]
        return wide + deep + (u * v).sum(-1)

    def loss(self, batch: Batch) -> Tensor:
        return F.binary_cross_entropy_with_logits(
            self.logits(batch["users"], batch["items"]), batch["labels"]
        )

    def user_vectors(self, query: Query) -> Tensor:
        # [genre weights_u, u, 1] · [genres_i, v_i, wide_item_i] is the logit without the MLP
        # and the user-only terms (bias, demographic weights: they do not change a user's
        # ranking): exact for the wide part.
        u = self.user_emb(query.users)  # (B, dim)
        return torch.cat([self._genre_weights(query.users), u, torch.ones_like(u[:, :1])], dim=1)

    def item_vectors(self) -> Tensor:
        g = self.item_genres  # (n_items, n_genres)
        item_wide = self.item_bias.weight + self.genre_w(g)  # (n_items, 1)
        if self.has_item_features:
            item_wide = item_wide + self.item_feat_w(self.item_feats)
        return torch.cat([g, self.item_emb.weight, item_wide], dim=1)

    def full_scores(self, query: Query) -> Tensor:
        users = query.users
        n = self.n_items
        items = torch.arange(n, device=users.device)
        rows = []
        for start in range(0, len(users), 64):
            chunk = users[start : start + 64]
            rows.append(
                self.logits(chunk.repeat_interleave(n), items.repeat(len(chunk))).view(
                    len(chunk), n
                )
            )
        return torch.cat(rows) if rows else torch.zeros((0, n))

    def score(self, query: Query, items: Tensor) -> Tensor:
        b, c = items.shape
        return self.logits(query.users.repeat_interleave(c), items.reshape(-1)).view(b, c)


def _mean(multi_hot: Tensor) -> Tensor:
    """(N, F) multi-hot rows scaled to sum to 1 (all-zero rows stay zero)."""
    return multi_hot / multi_hot.sum(-1, keepdim=True).clamp(min=1.0)


def _pad_rows(table: Tensor, extra: int) -> Tensor:
    return torch.cat([table, torch.zeros(extra, table.shape[1])])


def _columns(
    vocab: tuple[str, ...], data_vocab: tuple[str, ...], data: np.ndarray, n_rows: int
) -> Tensor:
    """``data``'s columns rearranged into ``vocab``'s order as an (n_rows, len(vocab)) table:
    columns ``data`` lacks, and rows past its end, are zeros."""
    index = {name: j for j, name in enumerate(data_vocab)}
    matrix = np.zeros((n_rows, len(vocab)), dtype=np.float32)
    rows = min(n_rows, data.shape[0])
    for j, name in enumerate(vocab):
        if name in index:
            matrix[:rows, j] = data[:rows, index[name]]
    return torch.from_numpy(matrix)
