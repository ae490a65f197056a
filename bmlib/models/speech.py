"""Classifiers of spoken words from MFCC frame sequences: a small transformer encoder and a 1-D CNN.

Both take ``x (B, T, n_mfcc)``: a batch of MFCC sequences padded with zero frames after each
recording's end, and its ``lengths (B,)`` (or infer them, see :func:`infer_lengths`, so that the
training loop's ``model(x, y)`` protocol works with plain padded arrays). Both return
``(logits (B, n_classes), loss or None)``.

* :class:`SpeechTransformer`: a linear frame embedding plus fixed sinusoidal positions
  (:func:`bmlib.attention.sinusoidal_positions`), the book's BERT encoder layers
  (:class:`bmlib.models.bert.BertEncoder`, bidirectional attention with a padding mask from
  :func:`bmlib.attention.padding_mask`), mean pooling over the real frames, a linear head.
* :class:`SpeechCNN`: 1-D convolutions over time (conv-BN-ReLU stages, padded frames zeroed after
  each stage), mean pooling over the real frames, a linear head. Local filters over a few frames
  are the inductive bias a short word needs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..attention import IMPLS, padding_mask, sinusoidal_positions
from .bert import BertConfig, BertEncoder
from .config import PresetConfig, check_choice, check_fractions, check_heads, check_ids, check_positive_ints


@dataclass(frozen=True)
class SpeechTransformerConfig(PresetConfig):
    n_mfcc: int = 13
    n_classes: int = 10
    block_size: int = 96  # the most frames a recording may have
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    intermediate_size: int = 128
    dropout: float = 0.1
    attn_impl: str = "math"

    def __post_init__(self):
        check_positive_ints(self, ("n_mfcc", "n_classes", "block_size", "n_layer", "n_head", "n_embd",
                                   "intermediate_size"))
        check_heads(self)
        if self.n_embd % 2:
            raise ValueError(f"n_embd must be even (sinusoidal positions), got {self.n_embd}")
        check_fractions(self)
        check_choice(self, "attn_impl", IMPLS)

    def bert_config(self) -> BertConfig:
        """The encoder layers' configuration (no vocabulary: the inputs are MFCC frames)."""
        return BertConfig(vocab_size=1, block_size=self.block_size, n_layer=self.n_layer, n_head=self.n_head,
                          n_embd=self.n_embd, intermediate_size=self.intermediate_size, dropout=self.dropout,
                          layer_norm_eps=1e-5, num_labels=self.n_classes, attn_impl=self.attn_impl)


@dataclass(frozen=True)
class SpeechCNNConfig(PresetConfig):
    n_mfcc: int = 13
    n_classes: int = 10
    channels: tuple = (64, 64)
    kernel_size: int = 5
    dropout: float = 0.1

    def __post_init__(self):
        check_positive_ints(self, ("n_mfcc", "n_classes", "kernel_size"))
        ch = self.channels
        if not (ch and all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in ch)):
            raise ValueError(f"channels must be a non-empty tuple of positive ints, got {ch!r}")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (same-length padding), got {self.kernel_size}")
        check_fractions(self)


PRESETS = {
    "fsdd-tiny": SpeechTransformerConfig(),
    "fsdd-small": SpeechTransformerConfig(n_layer=4, n_head=4, n_embd=128, intermediate_size=256),
    "cnn-tiny": SpeechCNNConfig(),
    "cnn-small": SpeechCNNConfig(channels=(128, 128, 128)),
}


def infer_lengths(x: torch.Tensor) -> torch.Tensor:
    """``(B,)`` lengths of zero-padded sequences ``x (B, T, d)``: one past the last frame that is not
    all zeros (a real MFCC frame is never exactly zero: its c0 is a log energy)."""
    nonzero = (x != 0).any(dim=2)  # (B, T)
    T = x.shape[1]
    last = T - torch.flip(nonzero, dims=[1]).to(torch.int64).argmax(dim=1)  # (B,) one past the last real frame
    return torch.where(nonzero.any(dim=1), last, torch.ones_like(last))


def _check_inputs(x, lengths, n_mfcc: int, max_T: int | None):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of MFCC frames, got {type(x).__name__}")
    if x.dim() != 3 or x.shape[2] != n_mfcc or not x.is_floating_point():
        raise ValueError(f"x must be a float tensor of shape (B, T, n_mfcc={n_mfcc}), got {tuple(x.shape)} {x.dtype}")
    B, T, _ = x.shape
    if max_T is not None and T > max_T:
        raise ValueError(f"x has T={T} frames; the model takes at most block_size={max_T}")
    if lengths is None:
        lengths = infer_lengths(x)
    elif not isinstance(lengths, torch.Tensor) or lengths.shape != (B,):
        raise ValueError(f"lengths must be a ({B},) tensor, got "
                         f"{tuple(lengths.shape) if isinstance(lengths, torch.Tensor) else type(lengths).__name__}")
    elif bool(((lengths < 1) | (lengths > T)).any()):
        raise ValueError(f"lengths must lie in [1, T={T}], got {lengths.tolist()[:5]}")
    return lengths.to(x.device)


def _loss(logits, y, n_classes: int):
    if y is None:
        return None
    if not isinstance(y, torch.Tensor) or y.shape != (logits.shape[0],):
        raise ValueError(f"y must be a tensor of class ids with shape ({logits.shape[0]},)")
    check_ids(y, "y", n_classes)
    return F.cross_entropy(logits.float(), y)


def _masked_mean(h, keep):
    """Mean of ``h (B, T, C)`` over the frames where ``keep (B, T)`` is True -> ``(B, C)``."""
    w = keep.to(h.dtype)[:, :, None]  # (B, T, 1)
    return (h * w).sum(1) / w.sum(1)


class SpeechTransformer(nn.Module):
    """``model(x, y=None, lengths=None) -> (logits (B, n_classes), loss or None)``."""

    def __init__(self, cfg: SpeechTransformerConfig):
        super().__init__()
        if not isinstance(cfg, SpeechTransformerConfig):
            raise TypeError(f"cfg must be a SpeechTransformerConfig, got {type(cfg).__name__}")
        self.config = cfg
        self.embed = nn.Linear(cfg.n_mfcc, cfg.n_embd)
        self.register_buffer("pos", sinusoidal_positions(cfg.block_size, cfg.n_embd), persistent=False)
        self.ln_in = nn.LayerNorm(cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.encoder = BertEncoder(cfg.bert_config())
        self.head = nn.Linear(cfg.n_embd, cfg.n_classes)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, x, y=None, lengths=None):
        cfg = self.config
        lengths = _check_inputs(x, lengths, cfg.n_mfcc, cfg.block_size)
        B, T, _ = x.shape
        h = self.drop(self.ln_in(self.embed(x) + self.pos[:T]))  # (B, T, C)
        mask = padding_mask(lengths, T)  # (B, 1, 1, T): padded frames are hidden as keys
        h = self.encoder(h, mask)  # (B, T, C)
        keep = mask[:, 0, 0, :]  # (B, T)
        logits = self.head(_masked_mean(h, keep))  # (B, n_classes)
        return logits, _loss(logits, y, cfg.n_classes)


class SpeechCNN(nn.Module):
    """``model(x, y=None, lengths=None) -> (logits (B, n_classes), loss or None)``."""

    def __init__(self, cfg: SpeechCNNConfig):
        super().__init__()
        if not isinstance(cfg, SpeechCNNConfig):
            raise TypeError(f"cfg must be a SpeechCNNConfig, got {type(cfg).__name__}")
        self.config = cfg
        chans = (cfg.n_mfcc, *cfg.channels)
        k = cfg.kernel_size
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv1d(a, b, k, padding=k // 2, bias=False), nn.BatchNorm1d(b), nn.ReLU())
            for a, b in zip(chans[:-1], chans[1:]))
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.channels[-1], cfg.n_classes)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, x, y=None, lengths=None):
        cfg = self.config
        lengths = _check_inputs(x, lengths, cfg.n_mfcc, None)
        B, T, _ = x.shape
        keep = torch.arange(T, device=x.device)[None, :] < lengths[:, None]  # (B, T)
        h = (x * keep[:, :, None]).transpose(1, 2)  # (B, n_mfcc, T): channels first, padding zeroed
        for stage in self.stages:
            h = stage(h) * keep[:, None, :]  # (B, C, T), padded frames zeroed
        logits = self.head(self.drop(_masked_mean(h.transpose(1, 2), keep)))  # (B, n_classes)
        return logits, _loss(logits, y, cfg.n_classes)


@torch.no_grad()
def predict_proba(model: nn.Module, x: torch.Tensor, lengths: torch.Tensor | None = None,
                  batch_size: int = 512) -> torch.Tensor:
    """Class probabilities ``(N, n_classes)`` in eval mode, in batches."""
    was = model.training
    model.eval()
    try:
        out = []
        for i in range(0, x.shape[0], batch_size):
            li = None if lengths is None else lengths[i:i + batch_size]
            out.append(torch.softmax(model(x[i:i + batch_size], lengths=li)[0].float(), dim=-1))
        return torch.cat(out)
    finally:
        model.train(was)
