"""SASRec: self-attentive sequential recommendation (Kang & McAuley, 2018), one readable file.

A user's chronological item sequence ``(B, T)`` (left-padded with item 0) is embedded (item +
learned position embeddings), passed through pre-LN transformer blocks with *causal* self-attention
(:func:`bmlib.attention.attention` with an explicit ``impl``), and the hidden state at position
``t`` scores every item as the next one by a dot product with the (shared) item embeddings.

Training loss (``loss=``):

* ``"ce"`` (default): full softmax cross-entropy over all items at every non-padding position —
  cheap for a few thousand items and clearly stronger than the original's sampled loss
  (Klenitskiy & Vasilev, 2023).
* ``"bce"``: the original paper's loss, binary cross-entropy on the true next item against one
  uniformly sampled negative per position (``torch``'s global RNG, seeded by the training loop).

``model(x, y) -> (logits, loss)`` follows the training loop's protocol; ``y`` holds next items
with 0 = ignore. :meth:`SASRec.score` ranks candidate items for the next step.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..attention import IMPLS, attention
from .config import (PresetConfig, check_choice, check_fractions, check_heads, check_positive_ints,
                     check_positive_numbers)

LOSSES = ("ce", "bce")


@dataclass(frozen=True)
class SASRecConfig(PresetConfig):
    n_items: int = 9066  # items are 1..n_items; 0 is padding
    max_len: int = 200
    n_layer: int = 2
    n_head: int = 1
    n_embd: int = 64
    dropout: float = 0.2
    layer_norm_eps: float = 1e-8
    loss: str = "ce"
    attn_impl: str = "math"

    def __post_init__(self):
        check_positive_ints(self, ("n_items", "max_len", "n_layer", "n_head", "n_embd"))
        check_heads(self)
        check_fractions(self)
        check_positive_numbers(self, ("layer_norm_eps",))
        check_choice(self, "loss", LOSSES)
        check_choice(self, "attn_impl", IMPLS)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


# ``paper``: the ML-1M setting of Kang & McAuley (2 blocks, 1 head, d=50, T=200, dropout 0.2;
# d rounded to 64 here); ``small``: 2 blocks, d=32, T=50 (for CPU runs).
PRESETS = {
    "paper": SASRecConfig(max_len=200, n_layer=2, n_head=1, n_embd=64, dropout=0.2),
    "small": SASRecConfig(max_len=50, n_layer=2, n_head=1, n_embd=32, dropout=0.2),
}


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        self.cfg = cfg
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, mask, impl: str):
        B, T, C = x.shape
        nh, hs = self.cfg.n_head, self.cfg.head_dim
        q, k, v = (t.view(B, T, nh, hs).transpose(1, 2) for t in self.c_attn(x).split(C, dim=2))  # (B, nh, T, hs)
        y = attention(q, k, v, mask=mask, impl=impl, dropout_p=self.cfg.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class Block(nn.Module):
    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        self.mlp = nn.Sequential(nn.Linear(cfg.n_embd, cfg.n_embd), nn.GELU(), nn.Dropout(cfg.dropout),
                                 nn.Linear(cfg.n_embd, cfg.n_embd), nn.Dropout(cfg.dropout))

    def forward(self, x, mask, impl):
        x = x + self.attn(self.ln_1(x), mask, impl)
        return x + self.mlp(self.ln_2(x))


class SASRec(nn.Module):
    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        if not isinstance(cfg, SASRecConfig):
            raise TypeError(f"cfg must be a SASRecConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.n_items + 1, cfg.n_embd, padding_idx=0)
        self.wpe = nn.Embedding(cfg.max_len, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)
        with torch.no_grad():
            self.wte.weight[0].zero_()

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _check_seq(self, x, name="x"):
        if not isinstance(x, torch.Tensor) or x.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{name} must be an integer tensor of item ids, got "
                            f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}")
        if x.dim() != 2 or not (1 <= x.shape[1] <= self.cfg.max_len):
            raise ValueError(f"{name} must have shape (B, T) with 1 <= T <= max_len={self.cfg.max_len}, "
                             f"got {tuple(x.shape)}")
        if x.numel() and (x.min() < 0 or x.max() > self.cfg.n_items):
            raise ValueError(f"{name} must hold item ids in [0, n_items={self.cfg.n_items}] (0 = padding)")

    def hidden(self, x, impl: str | None = None):
        """Hidden states ``(B, T, n_embd)``; position ``t`` has seen items ``<= t`` only."""
        self._check_seq(x)
        impl = impl or self.cfg.attn_impl
        B, T = x.shape
        pos = torch.arange(T, device=x.device)
        h = self.drop(self.wte(x) * self.cfg.n_embd ** 0.5 + self.wpe(pos))  # (B, T, C)
        h = h * (x != 0).unsqueeze(-1)  # padding positions carry zeros, as in the paper
        # causal, and no attending to padding keys; each position may always see itself, so a
        # padding row is never all-masked (its output is ignored)
        keep = (x != 0)[:, None, None, :] | torch.eye(T, dtype=torch.bool, device=x.device)  # (B, 1, T, T)
        mask = keep & torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        for block in self.h:
            h = block(h, mask, impl)
        return self.ln_f(h)

    def forward(self, x, y=None, *, impl: str | None = None):
        """Without ``y``: next-item logits ``(B, T, n_items + 1)``. With ``y``: ``(logits, loss)``
        where, to save memory, ``logits`` are those of the non-padding targets only, ``(N, n_items + 1)``
        (``N = (y != 0).sum()``)."""
        h = self.hidden(x, impl)
        if y is None:
            return h @ self.wte.weight.T, None  # (B, T, n_items + 1)
        self._check_seq(y, "y")
        if y.shape != x.shape:
            raise ValueError(f"y must have the shape of x {tuple(x.shape)}, got {tuple(y.shape)}")
        valid = y != 0
        hv, yv = h[valid], y[valid]  # (N, C), (N,)
        logits = hv @ self.wte.weight.T  # (N, n_items + 1)
        if self.cfg.loss == "ce":
            masked = torch.cat([torch.full_like(logits[:, :1], float("-inf")), logits[:, 1:]], 1)  # never padding
            loss = F.cross_entropy(masked, yv)
        else:
            neg = torch.randint(1, self.cfg.n_items + 1, yv.shape, device=y.device)
            pos_s = logits.gather(-1, yv[:, None])[:, 0]
            neg_s = logits.gather(-1, neg[:, None])[:, 0]
            loss = F.binary_cross_entropy_with_logits(pos_s, torch.ones_like(pos_s)) + \
                F.binary_cross_entropy_with_logits(neg_s, torch.zeros_like(neg_s))
        return logits, loss

    @torch.no_grad()
    def score(self, seqs, candidates, impl: str | None = None):
        """Scores ``(B, C)`` of ``candidates`` (B, C) as the next item after each left-padded
        history in ``seqs`` (B, T): the last position's hidden state dotted with item embeddings."""
        if not isinstance(candidates, torch.Tensor) or candidates.dim() != 2 or candidates.dtype not in (
                torch.int64, torch.int32):
            raise ValueError("candidates must be an integer tensor of shape (B, C)")
        if candidates.numel() and (candidates.min() < 1 or candidates.max() > self.cfg.n_items):
            raise ValueError(f"candidates must hold item ids in [1, n_items={self.cfg.n_items}]")
        if candidates.shape[0] != seqs.shape[0]:
            raise ValueError(f"candidates must have one row per sequence ({seqs.shape[0]}), got {candidates.shape[0]}")
        was = self.training
        self.eval()
        try:
            last = self.hidden(seqs, impl)[:, -1]  # (B, C)
        finally:
            self.train(was)
        return (self.wte(candidates) * last[:, None, :]).sum(-1)


def popularity_scores(counts, candidates):
    """The popularity baseline: score each candidate by how often it was interacted with in
    training. ``counts`` (n_items + 1,) from :func:`bmlib.data.movielens.item_counts`;
    ``candidates`` (U, C) item ids; returns float64 ``(U, C)``."""
    import numpy as np

    counts = np.asarray(counts)
    cand = np.asarray(candidates)
    if counts.ndim != 1:
        raise ValueError(f"counts must be 1-D (n_items + 1,), got shape {counts.shape}")
    if cand.ndim != 2 or not np.issubdtype(cand.dtype, np.integer):
        raise ValueError(f"candidates must be an integer (U, C) array, got {cand.dtype} {cand.shape}")
    if cand.size and (cand.min() < 0 or cand.max() >= counts.shape[0]):
        raise ValueError(f"candidates must hold item ids in [0, {counts.shape[0] - 1}]")
    return counts[cand].astype(np.float64)
