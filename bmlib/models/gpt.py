"""GPT: a decoder-only transformer in the GPT-2 layout (nanoGPT style, one readable file).

Parameter names follow Hugging Face's ``GPT2LMHeadModel`` (``transformer.h.0.attn.c_attn.weight``
...) so weights map 1:1; HF stores ``Conv1D`` weights as ``(in, out)``, we use ``nn.Linear``
``(out, in)``, so the converters in :mod:`bmlib.models.hf` transpose those four matrices.

The forward pass optionally takes a KV cache: any object with an int ``pos`` (tokens already
cached), ``update(layer, k, v) -> (k_all, v_all, mask)`` and ``advance(n)``; see :class:`KVCache`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import flops
from ..attention import IMPLS, attention
from .config import (PresetConfig, check_choice, check_fractions, check_heads, check_positive_ints,
                     check_positive_numbers, decoder_positions, lm_loss)


@dataclass(frozen=True)
class GPTConfig(PresetConfig):
    vocab_size: int = 50257
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True
    layer_norm_eps: float = 1e-5
    attn_impl: str = "sdpa"

    def __post_init__(self):
        check_positive_ints(self, ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"))
        check_heads(self)
        check_fractions(self)
        check_positive_numbers(self, ("layer_norm_eps",))
        check_choice(self, "attn_impl", IMPLS)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


# Named sizes: ``tiny`` (~1M parameters with a 4k vocabulary) up to ``gpt2-medium`` (350M).
PRESETS = {
    "tiny": GPTConfig(vocab_size=4096, block_size=128, n_layer=4, n_head=4, n_embd=128),
    "mini": GPTConfig(vocab_size=8192, block_size=256, n_layer=6, n_head=6, n_embd=384),
    "gpt2": GPTConfig(),  # 124M
    "gpt2-medium": GPTConfig(n_layer=24, n_head=16, n_embd=1024),  # 350M
}


class CausalSelfAttention(nn.Module):
    """Causal multi-head self-attention with ``n_head`` heads of ``cfg.head_dim`` (default
    ``cfg.n_head``; head pruning keeps fewer, so the inner width ``n_head * head_dim`` may be below
    ``n_embd``: see :func:`bmlib.compress.prune.prune_heads`)."""

    def __init__(self, cfg: GPTConfig, n_head: int | None = None):
        super().__init__()
        self.cfg = cfg
        self.n_head = cfg.n_head if n_head is None else n_head
        if isinstance(self.n_head, bool) or not (isinstance(self.n_head, int) and 1 <= self.n_head <= cfg.n_head):
            raise ValueError(f"n_head must be an int in [1, cfg.n_head={cfg.n_head}], got {n_head!r}")
        inner = self.n_head * cfg.head_dim
        self.c_attn = nn.Linear(cfg.n_embd, 3 * inner, bias=cfg.bias)
        self.c_proj = nn.Linear(inner, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, kv_cache=None, layer: int = 0, mask=None):
        B, T, _ = x.shape
        nh, hs = self.n_head, self.cfg.head_dim
        if kv_cache is not None and nh != self.cfg.n_head:
            raise ValueError(f"kv_cache is sized for {self.cfg.n_head} heads, this attention has {nh} "
                             "(pruned heads): pass kv_cache=None")
        C = nh * hs  # the inner width (n_embd unless heads were pruned)
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        if kv_cache is not None:
            k, v, cache_mask = kv_cache.update(layer, k, v)  # (B, nh, Tk, hs)
            if cache_mask is not None:
                mask = cache_mask if mask is None else (mask & cache_mask)
        p = self.cfg.dropout if self.training else 0.0
        y = attention(q, k, v, causal=True, mask=mask, impl=self.cfg.attn_impl, dropout_p=p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x, kv_cache=None, layer: int = 0, mask=None):
        x = x + self.attn(self.ln_1(x), kv_cache, layer, mask)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if not isinstance(cfg, GPTConfig):
            raise TypeError(f"cfg must be a GPTConfig, got {type(cfg).__name__}")
        self.config = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
            wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
            ln_f=nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias),
        ))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections by 1/sqrt(2 * n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (tied weights once). ``non_embedding`` drops the position embeddings
        (and the token embeddings, which double as the output layer), as Kaplan et al. count N."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel() + self.transformer.wte.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None, training: bool = True) -> float:
        """Matmul FLOPs per token at context length ``seq_len`` (default ``block_size``).

        forward = 2N + 4·L·T·C, where N counts every weight matrix a token passes through (the
        output projection included, the embedding look-ups excluded) and 4·L·T·C is the q·kᵀ and
        att·v products (causal masking not subtracted, as in PaLM's appendix B); training is three
        times the forward (backward = 2 x forward): 6N + 12·L·T·C. The formula and its conventions
        are :func:`bmlib.flops.transformer_flops_per_token`'s.
        """
        cfg = self.config
        T = cfg.block_size if seq_len is None else seq_len
        if isinstance(T, bool) or not (isinstance(T, int) and 1 <= T):
            raise ValueError(f"seq_len must be a positive int, got {seq_len!r}")
        N = flops.gpt_matmul_params(cfg.n_layer, cfg.n_embd, cfg.vocab_size,
                                    self.num_params(non_embedding=True))  # + lm_head matmul
        return flops.transformer_flops_per_token(N, cfg.n_layer, T, cfg.n_embd, training=training)

    def forward(self, idx, targets=None, *, kv_cache=None, mask=None, position_ids=None,
                validate: bool = True):
        """``idx`` (B, T) token ids -> ``(logits (B, T, V), loss or None)``.

        ``targets`` (B, T) gives the mean next-token cross-entropy (``-100`` is ignored).
        ``mask``: optional boolean attention mask broadcastable to (B, 1, T, Tk), e.g. padding.
        ``position_ids``: optional (B, T) or (T,) positions (default ``cache.pos + arange(T)``);
        left-padded batches pass each row's own positions. When given, the cache's ``pos`` is not
        read, so a step with a :class:`StaticKVCache` never synchronises (CUDA-graph friendly).

        Token ids must lie in ``[0, vocab_size)``, positions in ``[0, block_size)``, targets in
        ``[0, vocab_size)`` or ``-100``, and a KV cache must hold ``B`` rows: a clear
        ``ValueError``/``TypeError`` otherwise. Checking the values reads them (one host sync per
        tensor on a GPU); ``validate=False`` checks only shapes and dtypes, for a decode loop
        whose ids come from the model itself (:class:`bmlib.generate.Decoder`). The value checks
        are skipped while a CUDA graph is captured or ``torch.compile`` traces.
        """
        pos = decoder_positions(idx, kv_cache, position_ids, self.config.vocab_size, self.config.block_size,
                                validate)  # (T,), (B, T) or (T,)
        T = idx.shape[1]
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for i, block in enumerate(self.transformer.h):
            x = block(x, kv_cache, i, mask)
        if kv_cache is not None:
            kv_cache.advance(T)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)  # (B, T, V)
        loss = None if targets is None else lm_loss(logits, targets, idx, self.config.vocab_size, validate)
        return logits, loss


class KVCache:
    """A static, preallocated KV cache: ``(n_layer, B, nh, max_len, hs)`` for keys and values.

    ``update`` writes the new keys/values at ``[pos, pos+T)`` and returns the filled prefix;
    ``advance`` moves ``pos`` once all layers have written. Memory is allocated once, up front.
    """

    def __init__(self, cfg: GPTConfig, batch_size: int, max_len: int | None = None,
                 device=None, dtype=torch.float32):
        if not isinstance(cfg, GPTConfig):
            raise TypeError(f"cfg must be a GPTConfig, got {type(cfg).__name__}")
        max_len = cfg.block_size if max_len is None else max_len
        if isinstance(max_len, bool) or not (isinstance(max_len, int) and 1 <= max_len <= cfg.block_size):
            raise ValueError(f"max_len must be an int in [1, block_size={cfg.block_size}], got {max_len!r}")
        if isinstance(batch_size, bool) or not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        shape = (cfg.n_layer, batch_size, cfg.n_head, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.batch_size = batch_size
        self.pos = 0

    def update(self, layer: int, k, v):
        T = k.shape[2]
        if self.pos + T > self.max_len:
            raise ValueError(f"KV cache full: pos {self.pos} + {T} new tokens > max_len {self.max_len}")
        self.k[layer, :, :, self.pos:self.pos + T] = k
        self.v[layer, :, :, self.pos:self.pos + T] = v
        end = self.pos + T
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end], None

    def advance(self, n: int) -> None:
        self.pos += n

    def reset(self) -> None:
        self.pos = 0


class StaticKVCache:
    """A graph-friendly static KV cache: fixed shapes, position kept as a device tensor.

    Same buffers as :class:`KVCache`, ``(n_layer, B, nh, max_len, hs)``, but ``update`` writes with
    ``index_copy_`` at ``pos_t + arange(T)`` and returns the *whole* buffer with a boolean mask
    ``(1, 1, T, max_len)`` that is ``True`` for ``j <= pos + i`` (filled, causal). Every decode step
    therefore has the same shapes and no host synchronisation, which is what CUDA graphs and
    ``torch.compile(mode="reduce-overhead")`` need. The price: attention always reads ``max_len``
    keys (masked), not just the filled prefix. Pass ``position_ids`` to the model so it does not
    read :attr:`pos` (a host sync).
    """

    def __init__(self, cfg: GPTConfig, batch_size: int, max_len: int | None = None,
                 device=None, dtype=torch.float32):
        max_len = cfg.block_size if max_len is None else max_len
        if not (isinstance(max_len, int) and 1 <= max_len <= cfg.block_size):
            raise ValueError(f"max_len must lie in [1, block_size={cfg.block_size}], got {max_len}")
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        shape = (cfg.n_layer, batch_size, cfg.n_head, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.batch_size = batch_size
        self.pos_t = torch.zeros((), dtype=torch.long, device=device)
        self._j = torch.arange(max_len, device=device)  # (max_len,)

    @property
    def pos(self) -> int:
        """Tokens cached so far (reads the device tensor: a host sync on GPU)."""
        return int(self.pos_t.item())

    def update(self, layer: int, k, v):
        T = k.shape[2]
        idx = self.pos_t + torch.arange(T, device=k.device)  # (T,)
        self.k[layer].index_copy_(2, idx, k)  # (B, nh, max_len, hs)
        self.v[layer].index_copy_(2, idx, v)
        mask = self._j[None, :] <= idx[:, None]  # (T, max_len)
        return self.k[layer], self.v[layer], mask[None, None]  # mask (1, 1, T, max_len)

    def advance(self, n: int) -> None:
        self.pos_t.add_(n)

    def reset(self) -> None:
        self.pos_t.zero_()
