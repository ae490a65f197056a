"""A small tabular transformer in the FT-Transformer style (Gorishniy et al., 2021).

Each of the ``n_features`` numerical features becomes a token by its own affine map,
``token_j = x_j * W_j + b_j`` (``W_j, b_j`` in R^d: the "feature tokenizer"); a learned ``[CLS]``
token is prepended; pre-LayerNorm encoder blocks (bidirectional attention through
:func:`bmlib.attention.attention`, GELU MLP) mix the tokens; the head reads the ``[CLS]`` state.
Attention over features lets the model learn feature interactions that a linear model cannot; on
small, clean tables a well-regularised logistic regression is a strong baseline all the same.

``forward(x, y=None) -> (output, loss)`` is the training protocol of :func:`bmlib.train.train`:
``task="classification"`` gives logits ``(B, n_outputs)`` and cross-entropy against integer labels;
``task="regression"`` gives ``(B,)`` (or ``(B, n_outputs)``) and the mean squared error.
Standardise the features first (fit the scaler on the training split only).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..attention import IMPLS, attention
from .config import (PresetConfig, check_choice, check_fractions, check_heads, check_positive_ints,
                     check_positive_numbers)

TASKS = ("classification", "regression")


@dataclass(frozen=True)
class TabularConfig(PresetConfig):
    n_features: int = 30
    n_outputs: int = 2
    task: str = "classification"
    d_token: int = 32
    n_layer: int = 2
    n_head: int = 4
    ffn_mult: float = 2.0
    dropout: float = 0.1
    attn_dropout: float = 0.1
    layer_norm_eps: float = 1e-5
    attn_impl: str = "math"

    def __post_init__(self):
        check_positive_ints(self, ("n_features", "n_outputs", "d_token", "n_layer", "n_head"))
        check_choice(self, "task", TASKS)
        if self.task == "classification" and self.n_outputs < 2:
            raise ValueError(f"n_outputs must be >= 2 classes for classification, got {self.n_outputs}")
        check_heads(self, "d_token")
        check_positive_numbers(self, ("ffn_mult", "layer_norm_eps"))
        check_fractions(self, ("dropout", "attn_dropout"))
        check_choice(self, "attn_impl", IMPLS)

    @property
    def head_dim(self) -> int:
        return self.d_token // self.n_head

    @property
    def d_ffn(self) -> int:
        return max(1, int(round(self.ffn_mult * self.d_token)))


# ``tiny`` (d=32, 2 layers), ``small`` (d=64, 3 layers), ``ft-default`` (the paper's default:
# d=192, 3 layers, 8 heads, FFN 4/3 d).
PRESETS = {
    "tiny": TabularConfig(),
    "small": TabularConfig(d_token=64, n_layer=3, n_head=4),
    "ft-default": TabularConfig(d_token=192, n_layer=3, n_head=8, ffn_mult=4 / 3, dropout=0.1,
                                attn_dropout=0.2),
}


class FeatureTokenizer(nn.Module):
    """``(B, F)`` numbers -> ``(B, F, d)`` tokens: ``x[:, j, None] * weight[j] + bias[j]``."""

    def __init__(self, n_features: int, d: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_features, d))
        self.bias = nn.Parameter(torch.empty(n_features, d))
        bound = 1 / math.sqrt(d)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x):
        return x[:, :, None] * self.weight + self.bias  # (B, F, d)


class EncoderBlock(nn.Module):
    """Pre-LN block: ``x + Attn(LN(x))``, then ``x + MLP(LN(x))``; bidirectional attention."""

    def __init__(self, cfg: TabularConfig):
        super().__init__()
        d = cfg.d_token
        self.cfg = cfg
        self.ln_1 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.c_fc = nn.Linear(d, cfg.d_ffn)
        self.c_out = nn.Linear(cfg.d_ffn, d)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x):
        B, T, C = x.shape
        nh, hs = self.cfg.n_head, self.cfg.head_dim
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        p = self.cfg.attn_dropout if self.training else 0.0
        y = attention(q, k, v, causal=False, impl=self.cfg.attn_impl, dropout_p=p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        x = x + self.drop(self.c_proj(y))
        return x + self.drop(self.c_out(self.drop(F.gelu(self.c_fc(self.ln_2(x))))))


class TabularTransformer(nn.Module):
    def __init__(self, cfg: TabularConfig):
        super().__init__()
        if not isinstance(cfg, TabularConfig):
            raise TypeError(f"cfg must be a TabularConfig, got {type(cfg).__name__}")
        self.config = cfg
        d = cfg.d_token
        self.tokenizer = FeatureTokenizer(cfg.n_features, d)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        nn.init.normal_(self.cls, std=1 / math.sqrt(d))
        self.h = nn.ModuleList([EncoderBlock(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.head = nn.Linear(d, cfg.n_outputs)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _check(self, x, y):
        cfg = self.config
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2 or x.shape[1] != cfg.n_features:
            raise ValueError(f"x must have shape (B, n_features={cfg.n_features}), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"x must be floating point (standardised features), got {x.dtype}")
        if y is None:
            return
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
        if cfg.task == "classification":
            if y.shape != (x.shape[0],) or y.is_floating_point():
                raise ValueError(f"y must be integer class labels of shape ({x.shape[0]},), got "
                                 f"{tuple(y.shape)} {y.dtype}")
            if y.numel() and (y.min() < 0 or y.max() >= cfg.n_outputs):
                raise ValueError(f"y labels must lie in [0, {cfg.n_outputs - 1}]")
        else:
            want = (x.shape[0],) if cfg.n_outputs == 1 else (x.shape[0], cfg.n_outputs)
            if tuple(y.shape) != want:
                raise ValueError(f"y must have shape {want} for regression, got {tuple(y.shape)}")

    def forward(self, x, y=None):
        """``x`` (B, n_features) -> ``(output, loss or None)``; see the module docstring."""
        self._check(x, y)
        tok = self.tokenizer(x)  # (B, F, d)
        h = torch.cat([self.cls.expand(x.shape[0], -1, -1), tok], dim=1)  # (B, 1 + F, d)
        for block in self.h:
            h = block(h)
        out = self.head(F.gelu(self.ln_f(h[:, 0])))  # (B, n_outputs), from the [CLS] token
        if self.config.task == "regression" and self.config.n_outputs == 1:
            out = out[:, 0]  # (B,)
        loss = None
        if y is not None:
            if self.config.task == "classification":
                loss = F.cross_entropy(out.float(), y.long())
            else:
                loss = F.mse_loss(out.float(), y.float())
        return out, loss

    @torch.no_grad()
    def predict_proba(self, x) -> torch.Tensor:
        """Class probabilities ``(B, n_outputs)`` in eval mode (classification only)."""
        if self.config.task != "classification":
            raise ValueError("predict_proba needs task='classification'")
        was = self.training
        self.eval()
        try:
            return torch.softmax(self(x)[0].float(), dim=-1)
        finally:
            self.train(was)
