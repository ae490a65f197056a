"""A small time-series transformer: GPT's causal blocks on a sequence of numbers.

Each time step's value(s) ``x[:, t]`` (``n_inputs`` per step) are embedded by a linear map plus a
learned position embedding; the decoder blocks are :class:`bmlib.models.gpt.Block` (pre-LN, causal
attention), so step ``t`` sees only steps ``<= t``; a linear head maps every step's state to a
forecast of what comes after it.

``forward(x, y=None) -> (pred, loss)`` follows :func:`bmlib.train.train`'s protocol: ``x`` is
``(B, T)`` or ``(B, T, n_inputs)`` (a window of past values, standardised), ``y`` ``(B,)`` the value
to forecast after the window, ``pred`` ``(B,)`` the forecast from the last step. With
``loss_on="all"`` the loss also scores the forecast after every earlier step against the next
input value (as a language model is trained on every next token; only meaningful when ``y`` is the
next value of channel 0, e.g. next-day return); ``"last"`` scores only the final forecast (use it
for targets such as realised volatility over the next days).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..attention import IMPLS
from .gpt import Block, GPTConfig
from .config import PresetConfig, check_choice, check_fractions, check_heads, check_positive_ints

LOSS_ON = ("last", "all")


@dataclass(frozen=True)
class TimeSeriesConfig(PresetConfig):
    block_size: int = 32  # the longest window (lookback) the model accepts
    n_inputs: int = 1
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 32
    dropout: float = 0.1
    loss_on: str = "last"
    attn_impl: str = "math"

    def __post_init__(self):
        check_positive_ints(self, ("block_size", "n_inputs", "n_layer", "n_head", "n_embd"))
        check_heads(self)
        check_fractions(self)
        check_choice(self, "loss_on", LOSS_ON)
        check_choice(self, "attn_impl", IMPLS)

    def gpt_config(self) -> GPTConfig:
        """The GPT block configuration (the vocabulary is unused: inputs are numbers)."""
        return GPTConfig(vocab_size=1, block_size=self.block_size, n_layer=self.n_layer,
                         n_head=self.n_head, n_embd=self.n_embd, dropout=self.dropout,
                         attn_impl=self.attn_impl)


PRESETS = {
    "tiny": TimeSeriesConfig(),
    "small": TimeSeriesConfig(block_size=64, n_layer=4, n_head=4, n_embd=64),
}


class TimeSeriesTransformer(nn.Module):
    def __init__(self, cfg: TimeSeriesConfig):
        super().__init__()
        if not isinstance(cfg, TimeSeriesConfig):
            raise TypeError(f"cfg must be a TimeSeriesConfig, got {type(cfg).__name__}")
        self.config = cfg
        g = cfg.gpt_config()
        self.embed = nn.Linear(cfg.n_inputs, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList([Block(g) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, 1)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _inputs(self, x):
        cfg = self.config
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() == 2 and cfg.n_inputs == 1:
            x = x[:, :, None]  # (B, T, 1)
        if x.dim() != 3 or x.shape[2] != cfg.n_inputs or not x.is_floating_point():
            raise ValueError(f"x must be a float tensor of shape (B, T, n_inputs={cfg.n_inputs})"
                             f"{' or (B, T)' if cfg.n_inputs == 1 else ''}, got {tuple(x.shape)} {x.dtype}")
        if not (1 <= x.shape[1] <= cfg.block_size):
            raise ValueError(f"x has T={x.shape[1]} steps; the model takes 1..block_size={cfg.block_size}")
        return x

    def forward(self, x, y=None):
        """``x`` (B, T[, n_inputs]) -> ``(forecast (B,), loss or None)``."""
        x = self._inputs(x)
        B, T, _ = x.shape
        pos = torch.arange(T, device=x.device)
        h = self.drop(self.embed(x) + self.wpe(pos))  # (B, T, C)
        for i, block in enumerate(self.h):
            h = block(h, None, i)
        pred_all = self.head(self.ln_f(h))[:, :, 0]  # (B, T): forecast after each step
        pred = pred_all[:, -1]
        loss = None
        if y is not None:
            if not isinstance(y, torch.Tensor) or y.shape != (B,):
                raise ValueError(f"y must be a tensor of shape ({B},), got "
                                 f"{tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__}")
            if self.config.loss_on == "all":
                target = torch.cat([x[:, 1:, 0], y[:, None].to(x.dtype)], dim=1)  # (B, T)
                loss = F.mse_loss(pred_all.float(), target.float())
            else:
                loss = F.mse_loss(pred.float(), y.float())
        return pred, loss

    @torch.no_grad()
    def predict(self, x, batch_size: int = 4096) -> torch.Tensor:
        """Forecasts ``(N,)`` in eval mode, in batches."""
        was = self.training
        self.eval()
        try:
            return torch.cat([self(x[i:i + batch_size])[0] for i in range(0, x.shape[0], batch_size)])
        finally:
            self.train(was)
