"""Dueling DQN over a user state and candidate item content vectors (Wang et al. 2016).

Q(s, a) = V(s) + A(s, a) - mean over the candidate set of A(s, ·). Actions are not a fixed
output layer but items described by their content (Doc2Vec) vectors, so the network scores
any candidate set, including items it has never seen. Centring the advantages over the set
actually offered makes V(s) the value of the slate and keeps Q identifiable.

This is not a retrieval ``Recommender`` (no user or item tables, nothing to grow); it keeps the
same artifact contract (``weights.pt`` state dict + ``config.json``, weights_only load), so
``stores.model_registry.ModelRegistry`` versions it like any other model. The training
hyper-parameters (gamma, tau, lr, ...) live in the config too: a snapshot records how it was
trained, and ``trainer.rl.DQNLearner`` reads them from there.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch
from torch import Tensor, nn

from streamrec.core.errors import InvalidInput
from streamrec.trainer.models.base import load_checkpoint, mlp, save_checkpoint


@dataclass(frozen=True)
class DuelingDQNConfig:
    state_dim: int = 69  # trainer.rl.user_state: item_dim + its counters
    item_dim: int = 64  # content (Doc2Vec) vector size
    hidden: tuple[int, ...] = (128, 64)  # state trunk; the last size is the joint width
    adv_hidden: tuple[int, ...] = (64,)  # advantage head over [state, item, state ⊙ item]
    dropout: float = 0.0  # off by default: dropout makes bootstrapped targets noisier
    # -- learning (read by trainer.rl.DQNLearner) --
    gamma: float = 0.9  # discount of the next slate's value
    lr: float = 1e-3
    weight_decay: float = 0.0
    tau: float = 0.01  # soft target update per step; 0 → hard sync every target_sync_every
    target_sync_every: int = 0  # steps between hard target syncs (only when tau == 0)
    huber_delta: float = 1.0
    grad_clip: float = 10.0  # max global grad norm
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.state_dim < 1 or self.item_dim < 1 or not self.hidden:
            raise InvalidInput("state_dim and item_dim must be ≥ 1 and hidden non-empty")
        if not 0.0 <= self.gamma < 1.0:
            raise InvalidInput(f"gamma must be in [0, 1), not {self.gamma}")
        if not 0.0 <= self.tau <= 1.0:
            raise InvalidInput(f"tau must be in [0, 1], not {self.tau}")
        if self.tau == 0.0 and self.target_sync_every < 1:
            raise InvalidInput("with tau = 0 the target needs target_sync_every ≥ 1")


class DuelingDQN(nn.Module):
    def __init__(self, config: DuelingDQNConfig) -> None:
        super().__init__()
        self.config = config
        width = config.hidden[-1]
        self.trunk = mlp((config.state_dim, *config.hidden), config.dropout)
        self.value = nn.Linear(width, 1)
        self.item_proj = nn.Linear(config.item_dim, width)
        # The product term lets a shallow head express state-item affinity directly.
        self.adv = nn.Sequential(
            mlp((3 * width, *config.adv_hidden), config.dropout),
            nn.Linear(config.adv_hidden[-1] if config.adv_hidden else 3 * width, 1),
        )

    def forward(self, states: Tensor, items: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B, C) Q-values of C candidates per state; masked (padding) candidates get -inf
        and are left out of the advantage mean. A row with no valid candidate is all -inf."""
        self._check_shapes(states, items, mask)
        h = self.trunk(states)  # (B, H)
        v = self.value(h)  # (B, 1)
        e = self.item_proj(items)  # (B, C, H)
        hs = h.unsqueeze(1).expand_as(e)  # (B, C, H)
        a = self.adv(torch.cat([hs, e, hs * e], dim=-1))[..., 0]  # (B, C)
        if mask is None:
            return v + a - a.mean(dim=1, keepdim=True)  # (B, C)
        valid = mask.to(a.dtype)  # (B, C)
        count = valid.sum(dim=1, keepdim=True).clamp(min=1.0)  # (B, 1)
        mean = (a * valid).sum(dim=1, keepdim=True) / count  # (B, 1)
        return (v + a - mean).masked_fill(~mask, float("-inf"))  # (B, C)

    def _check_shapes(self, states: Tensor, items: Tensor, mask: Tensor | None) -> None:
        s, d = self.config.state_dim, self.config.item_dim
        if states.dim() != 2 or states.shape[1] != s:
            raise InvalidInput(f"states must have shape (B, {s}), got {tuple(states.shape)}")
        b = states.shape[0]
        if items.dim() != 3 or items.shape[0] != b or items.shape[2] != d or items.shape[1] < 1:
            raise InvalidInput(
                f"items must have shape ({b}, C, {d}) with C ≥ 1, got {tuple(items.shape)}"
            )
        if mask is not None and (mask.shape != items.shape[:2] or mask.dtype != torch.bool):
            raise InvalidInput(
                f"mask must be a bool tensor of shape {tuple(items.shape[:2])}, "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )

    def q_values(
        self,
        state: Sequence[float] | np.ndarray | Tensor,
        items: Sequence[Sequence[float]] | np.ndarray | Tensor,
    ) -> np.ndarray:
        """(C,) Q-values of C item vectors for one state vector (the bulk predict of the
        original model server). Always deterministic: dropout is off for the call, so serve from
        a snapshot (``DQNLearner.policy()``), never from a network another thread trains."""
        s, d = self.config.state_dim, self.config.item_dim
        state_t = _as_tensor(state, f"state must be a vector of size {s}")
        items_t = _as_tensor(items, f"items must be a non-empty list of vectors of size {d}")
        if state_t.shape != (s,):
            raise InvalidInput(f"state must have shape ({s},), got {tuple(state_t.shape)}")
        if items_t.dim() != 2 or items_t.shape[0] < 1 or items_t.shape[1] != d:
            raise InvalidInput(
                f"items must have shape (C, {d}) with C ≥ 1, got {tuple(items_t.shape)}"
            )
        with _eval_mode(self), torch.inference_mode():
            return self(state_t[None], items_t[None])[0].numpy()  # (C,)

    # -- artifacts (same contract as trainer.models.base.Recommender) ------------------------
    def frozen(self) -> FrozenDuelingDQN:
        """A copy of the weights for serving: ``q_values`` in numpy (see ``FrozenDuelingDQN``)."""
        with torch.no_grad():
            return FrozenDuelingDQN(
                self.config,
                _dense_layers(self.trunk),
                _dense_layers(self.value)[0],
                _dense_layers(self.item_proj)[0],
                _dense_layers(self.adv),
            )

    def save_artifacts(self, directory: Path) -> dict[str, Any]:
        return save_checkpoint(self, self.config, directory)

    @classmethod
    def load_artifacts(cls, directory: Path) -> Self:
        return load_checkpoint(cls, DuelingDQNConfig, directory)


Dense = tuple[np.ndarray, np.ndarray]  # (in, out) weight (transposed) and (out,) bias


@dataclass(frozen=True)
class FrozenDuelingDQN:
    """``DuelingDQN.q_values`` in numpy, over a copy of the weights: what the edge scores a
    slate with on every ``rerank=dqn`` request. For one state and 50 candidates torch spends
    ~0.3 ms, mostly per-operator overhead, and numpy a fraction of it; the result is the same
    up to float rounding. Dropout is the identity here, as in eval mode."""

    config: DuelingDQNConfig
    trunk: tuple[Dense, ...]  # ReLU after every layer
    value: Dense
    item_proj: Dense
    adv: tuple[Dense, ...]  # ReLU after every layer but the last

    def q_values(self, state: np.ndarray, items: np.ndarray) -> np.ndarray:
        """(C,) Q-values of C item vectors (C, item_dim) for one (state_dim,) state."""
        s, d = self.config.state_dim, self.config.item_dim
        if state.shape != (s,) or items.ndim != 2 or items.shape[1] != d or not len(items):
            raise InvalidInput(
                f"expected a ({s},) state and (C, {d}) items, got {state.shape} and {items.shape}"
            )
        h = state.astype(np.float32)[None]  # (1, H0)
        for weight, bias in self.trunk:
            h = np.maximum(h @ weight + bias, 0.0)  # (1, H)
        v = h @ self.value[0] + self.value[1]  # (1, 1)
        e = items.astype(np.float32) @ self.item_proj[0] + self.item_proj[1]  # (C, H)
        x = np.concatenate([np.broadcast_to(h, e.shape), e, h * e], axis=1)  # (C, 3H)
        for layer, (weight, bias) in enumerate(self.adv):
            x = x @ weight + bias
            if layer < len(self.adv) - 1:
                x = np.maximum(x, 0.0)
        a = x[:, 0]  # (C,)
        return (v[0] + a - a.mean()).astype(np.float32)  # (C,)


def _dense_layers(module: nn.Module) -> tuple[Dense, ...]:
    """The module's Linear layers in forward order, as numpy copies."""
    return tuple(
        (m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy())
        for m in module.modules()
        if isinstance(m, nn.Linear)
    )


def _as_tensor(value: Any, message: str) -> Tensor:
    try:
        out = torch.as_tensor(np.asarray(value, dtype=np.float32))
    except (TypeError, ValueError) as exc:  # ragged lists, strings, ...
        raise InvalidInput(f"{message}: {exc}") from exc
    if not torch.isfinite(out).all():
        raise InvalidInput(f"{message}: values must be finite")
    return out


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    was_training = module.training
    if not was_training:  # a loaded snapshot already is: no walk over the submodules
        yield
        return
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)
