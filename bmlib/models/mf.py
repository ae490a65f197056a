"""Matrix factorisation for implicit feedback: the classic collaborative-filtering baseline.

Each user ``u`` and item ``i`` gets a ``dim``-vector (plus an item bias); the score is
``s(u, i) = p_u · q_i + b_i``. Training pairs are observed (user, item) interactions; negatives are
sampled uniformly from all items (``torch``'s global RNG, seeded by the training loop), so a sampled
negative is occasionally a positive — the usual, harmless approximation.

Losses (``loss=``):

* ``"bpr"``: Bayesian personalised ranking (Rendle et al., 2009),
  ``-log sigmoid(s(u, i) - s(u, j))`` for a sampled negative ``j``;
* ``"bce"``: binary cross-entropy, positive pair labelled 1 and ``n_negatives`` sampled items 0.

``model(users, items) -> (scores (B,), loss)`` follows the training loop's protocol.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import PresetConfig, check_choice, check_positive_ints

LOSSES = ("bpr", "bce")


@dataclass(frozen=True)
class MFConfig(PresetConfig):
    n_users: int = 671
    n_items: int = 9066  # items 1..n_items; 0 is padding
    dim: int = 64
    loss: str = "bpr"
    n_negatives: int = 1

    def __post_init__(self):
        check_positive_ints(self, ("n_users", "n_items", "dim", "n_negatives"))
        check_choice(self, "loss", LOSSES)


PRESETS = {"bpr-64": MFConfig(dim=64, loss="bpr"), "bce-64": MFConfig(dim=64, loss="bce", n_negatives=4)}


class MF(nn.Module):
    def __init__(self, cfg: MFConfig):
        super().__init__()
        if not isinstance(cfg, MFConfig):
            raise TypeError(f"cfg must be a MFConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.user = nn.Embedding(cfg.n_users, cfg.dim)
        self.item = nn.Embedding(cfg.n_items + 1, cfg.dim)
        self.item_bias = nn.Embedding(cfg.n_items + 1, 1)
        nn.init.normal_(self.user.weight, std=0.1)
        nn.init.normal_(self.item.weight, std=0.1)
        nn.init.zeros_(self.item_bias.weight)

    def _check(self, t, name, hi, dims=1):
        if not isinstance(t, torch.Tensor) or t.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{name} must be an integer tensor, got "
                            f"{t.dtype if isinstance(t, torch.Tensor) else type(t).__name__}")
        if t.dim() != dims:
            raise ValueError(f"{name} must be {dims}-D, got shape {tuple(t.shape)}")
        if t.numel() and (t.min() < 0 or t.max() > hi):
            raise ValueError(f"{name} must hold ids in [0, {hi}], got values in [{int(t.min())}, {int(t.max())}]")

    def pair_scores(self, users, items):
        """``s(u, i)`` for aligned ``users`` (B,) and ``items`` (B, ...) -> (B, ...)."""
        p = self.user(users)  # (B, d)
        q = self.item(items)  # (B, ..., d)
        p = p.view(p.shape[0], *([1] * (items.dim() - 1)), -1)
        return (p * q).sum(-1) + self.item_bias(items).squeeze(-1)

    def forward(self, users, items=None):
        self._check(users, "users", self.cfg.n_users - 1)
        if items is None:
            return self.user(users) @ self.item.weight.T + self.item_bias.weight.T, None  # (B, n_items + 1)
        self._check(items, "items", self.cfg.n_items)
        if items.shape != users.shape:
            raise ValueError(f"items must have the shape of users {tuple(users.shape)}, got {tuple(items.shape)}")
        pos = self.pair_scores(users, items)  # (B,)
        k = 1 if self.cfg.loss == "bpr" else self.cfg.n_negatives
        neg_items = torch.randint(1, self.cfg.n_items + 1, (users.shape[0], k), device=users.device)
        neg = self.pair_scores(users, neg_items)  # (B, k)
        if self.cfg.loss == "bpr":
            loss = -F.logsigmoid(pos - neg[:, 0]).mean()
        else:
            loss = F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos)) + \
                F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg))
        return pos, loss

    @torch.no_grad()
    def score(self, users, candidates):
        """Scores ``(U, C)`` of ``candidates`` (U, C) for ``users`` (U,)."""
        self._check(users, "users", self.cfg.n_users - 1)
        self._check(candidates, "candidates", self.cfg.n_items, dims=2)
        if candidates.shape[0] != users.shape[0]:
            raise ValueError(f"candidates must have one row per user ({users.shape[0]}), got {candidates.shape[0]}")
        return self.pair_scores(users, candidates)
