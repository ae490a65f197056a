"""Vision Transformer (Dosovitskiy et al., 2021) for small images, one readable file.

An image ``(B, C, H, W)`` is cut into non-overlapping ``patch_size x patch_size`` patches, each
linearly embedded (a strided convolution), a learned ``[CLS]`` vector is prepended and learned
position embeddings added; pre-LayerNorm encoder blocks (attention through
:func:`bmlib.attention.attention` with an explicit ``impl``) follow, and a linear classifier reads
the final ``[CLS]`` state.

Parameter names follow Hugging Face's ``ViTForImageClassification`` (transformers 5.x:
``vit.embeddings.cls_token``, ``vit.layers.0.attention.q_proj.weight``, ``classifier.weight`` ...)
so ``model.load_state_dict(hf_model.state_dict())`` works as is (the tests check the outputs agree).

:meth:`ViT.attention_maps` returns every layer's attention probabilities (math path), and
:func:`attention_rollout` combines them into one map per image (Abnar & Zuidema, 2020).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..attention import IMPLS, attention
from .config import (PresetConfig, check_choice, check_fractions, check_heads, check_ids, check_images,
                     check_positive_ints, check_positive_numbers)


@dataclass(frozen=True)
class ViTConfig(PresetConfig):
    image_size: int = 8
    patch_size: int = 2
    in_chans: int = 1
    n_classes: int = 10
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 64
    mlp_ratio: int = 4
    dropout: float = 0.0
    layer_norm_eps: float = 1e-6
    attn_impl: str = "math"

    def __post_init__(self):
        check_positive_ints(self, ("image_size", "patch_size", "in_chans", "n_classes", "n_layer", "n_head", "n_embd",
                     "mlp_ratio"))
        if self.image_size % self.patch_size:
            raise ValueError(f"patch_size ({self.patch_size}) must divide image_size ({self.image_size})")
        check_heads(self)
        check_fractions(self)
        check_positive_numbers(self, ("layer_norm_eps",))
        check_choice(self, "attn_impl", IMPLS)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


# Named sizes for 8x8 digits: ``digits-tiny`` (~50k parameters), ``digits`` (~0.2M);
# ``vit-tiny`` is DeiT-Tiny's shape (5.7M, 224x224 RGB, Touvron et al., 2021).
PRESETS = {
    "digits-tiny": ViTConfig(n_layer=2, n_head=4, n_embd=48, mlp_ratio=2),
    "digits": ViTConfig(n_layer=4, n_head=4, n_embd=64, mlp_ratio=4, dropout=0.1),
    "vit-tiny": ViTConfig(image_size=224, patch_size=16, in_chans=3, n_classes=1000, n_layer=12, n_head=3,
                          n_embd=192, layer_norm_eps=1e-12),
}


class PatchEmbeddings(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.projection = nn.Conv2d(cfg.in_chans, cfg.n_embd, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x):
        return self.projection(x).flatten(2).transpose(1, 2)  # (B, C, h, w) -> (B, h*w, C)


class Embeddings(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.n_embd))
        self.position_embeddings = nn.Parameter(torch.zeros(1, cfg.n_patches + 1, cfg.n_embd))
        self.patch_embeddings = PatchEmbeddings(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        p = self.patch_embeddings(x)  # (B, N, C)
        cls = self.cls_token.expand(p.shape[0], -1, -1)  # (B, 1, C)
        return self.dropout(torch.cat([cls, p], dim=1) + self.position_embeddings)  # (B, N+1, C)


class SelfAttention(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        C = cfg.n_embd
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(C, C) for _ in range(4))
        self.dropout = nn.Dropout(cfg.dropout)

    def _heads(self, x):
        B, T, C = x.shape
        nh, hs = self.cfg.n_head, self.cfg.head_dim
        split = lambda t: t.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)  # noqa: E731
        return split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))

    def probs(self, x):
        """Attention probabilities ``(B, nh, T, T)``, softmax(q kᵀ / sqrt(hs)) (the math path)."""
        q, k, _ = self._heads(x)
        return torch.softmax((q @ k.transpose(-2, -1)).float() * self.cfg.head_dim ** -0.5, dim=-1)

    def forward(self, x, impl: str):
        B, T, C = x.shape
        q, k, v = self._heads(x)
        y = attention(q, k, v, impl=impl, dropout_p=self.cfg.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.dropout(self.o_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.n_embd, cfg.mlp_ratio * cfg.n_embd)
        self.fc2 = nn.Linear(cfg.mlp_ratio * cfg.n_embd, cfg.n_embd)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.fc2(F.gelu(self.fc1(x))))


class Block(nn.Module):
    """Pre-LN encoder block: ``x + attn(LN(x))`` then ``x + mlp(LN(x))``."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        self.attention = SelfAttention(cfg)
        self.layernorm_after = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, impl: str):
        x = x + self.attention(self.layernorm_before(x), impl)
        return x + self.mlp(self.layernorm_after(x))


class Encoder(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.embeddings = Embeddings(cfg)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.layernorm = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)


class ViT(nn.Module):
    """``model(x, y=None) -> (logits (B, n_classes), loss or None)`` for images ``x (B, C, H, W)``."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        if not isinstance(cfg, ViTConfig):
            raise TypeError(f"cfg must be a ViTConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.vit = Encoder(cfg)
        self.classifier = nn.Linear(cfg.n_embd, cfg.n_classes)
        self.apply(self._init)
        nn.init.trunc_normal_(self.vit.embeddings.position_embeddings, std=0.02)
        nn.init.trunc_normal_(self.vit.embeddings.cls_token, std=0.02)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _check(self, x):
        c = self.cfg
        check_images(x, c.in_chans, c.image_size)

    def features(self, x, impl: str | None = None):
        """Final hidden states ``(B, 1 + n_patches, n_embd)`` after the last LayerNorm."""
        self._check(x)
        impl = impl or self.cfg.attn_impl
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        h = self.vit.embeddings(x)  # (B, N+1, C)
        for block in self.vit.layers:
            h = block(h, impl)
        return self.vit.layernorm(h)

    def forward(self, x, y=None, *, impl: str | None = None):
        logits = self.classifier(self.features(x, impl)[:, 0])  # (B, n_classes), from [CLS]
        loss = None
        if y is not None:
            if not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],):
                raise ValueError(f"y must be a tensor of class ids with shape ({x.shape[0]},), got "
                                 f"{tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__}")
            check_ids(y, "y", self.cfg.n_classes)
            loss = F.cross_entropy(logits, y)
        return logits, loss

    @torch.no_grad()
    def attention_maps(self, x) -> list:
        """Per-layer attention probabilities, a list of ``n_layer`` tensors ``(B, n_head, T, T)`` with
        ``T = 1 + n_patches`` (token 0 is ``[CLS]``); each row sums to 1. Computed in eval mode."""
        self._check(x)
        was = self.training
        self.eval()
        try:
            maps, h = [], self.vit.embeddings(x)
            for block in self.vit.layers:
                maps.append(block.attention.probs(block.layernorm_before(h)))
                h = block(h, "math")
        finally:
            self.train(was)
        return maps


def attention_rollout(maps, residual: bool = True) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020): average heads, add the residual path
    (``0.5 A + 0.5 I``), renormalise rows, and multiply through the layers.

    ``maps``: a list of ``(B, nh, T, T)`` tensors (first layer first), e.g. from
    :meth:`ViT.attention_maps`. Returns ``(B, T, T)`` whose rows sum to 1; row 0 (``[CLS]``) says
    how much each token contributed to the classifier's input."""
    if not isinstance(maps, (list, tuple)) or not maps:
        raise ValueError("maps must be a non-empty list of (B, n_head, T, T) tensors")
    shape = maps[0].shape
    for i, m in enumerate(maps):
        if not isinstance(m, torch.Tensor) or m.dim() != 4 or m.shape != shape or m.shape[-1] != m.shape[-2]:
            raise ValueError(f"maps[{i}] must be a (B, n_head, T, T) tensor of shape {tuple(shape)}, got "
                             f"{tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__}")
    eye = torch.eye(shape[-1], dtype=maps[0].dtype, device=maps[0].device)
    out = None
    for m in maps:
        a = m.mean(dim=1)  # (B, T, T)
        if residual:
            a = 0.5 * a + 0.5 * eye
            a = a / a.sum(dim=-1, keepdim=True)
        out = a if out is None else a @ out
    return out
