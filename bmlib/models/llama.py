"""Llama: the decoder-only transformer of Llama 2/3, SmolLM2, Mistral... (one readable file).

What changed from the GPT-2 layout of :mod:`bmlib.models.gpt`, piece by piece:

* **RMSNorm** instead of LayerNorm: ``x / sqrt(mean(x²) + eps) * g`` — no mean subtraction, no bias
  (Zhang & Sennrich, 2019), computed in fp32 as Hugging Face does.
* **RoPE** instead of learned positions: queries and keys are rotated by :func:`bmlib.attention.apply_rope`
  (Su et al., 2021), so attention scores depend on relative offsets; no ``wpe`` table.
* **SwiGLU** instead of the GELU MLP: ``down(silu(gate(x)) * up(x))`` (Shazeer, 2020), three
  matrices of width ``intermediate_size``.
* **Grouped-query attention** (Ainslie et al., 2023): ``n_head`` query heads share ``n_kv_head``
  key/value heads, so the KV cache is ``n_head / n_kv_head`` times smaller.
* No biases anywhere; the output layer tied to the token embeddings (``tie_word_embeddings``) or not.

Parameter names follow Hugging Face's ``LlamaForCausalLM`` (``model.layers.0.self_attn.q_proj.weight``
...) and all weights are ``nn.Linear`` ``(out, in)`` as there, so the converters in
:mod:`bmlib.models.hf` map state dicts 1:1 without transposes. The forward pass and the KV caches
follow :class:`bmlib.models.gpt.GPT`'s protocol, so :func:`bmlib.generate.generate` and
:class:`bmlib.generate.Decoder` drive either model.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import flops
from ..attention import IMPLS, apply_rope, attention, rope_cache
from .config import (PresetConfig, check_choice, check_heads, check_positive_ints, check_positive_numbers,
                     decoder_positions, lm_loss)
from .gpt import KVCache, StaticKVCache


@dataclass(frozen=True)
class LlamaConfig(PresetConfig):
    vocab_size: int = 49152
    block_size: int = 8192          # max_position_embeddings: the RoPE table's length
    n_layer: int = 30
    n_head: int = 9                 # query heads
    n_kv_head: int = 3              # key/value heads (n_head for plain multi-head attention)
    n_embd: int = 576
    intermediate_size: int = 1536   # SwiGLU width
    rope_theta: float = 100000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = True
    attn_impl: str = "sdpa"

    def __post_init__(self):
        check_positive_ints(self, ("vocab_size", "block_size", "n_layer", "n_head", "n_kv_head",
                                   "n_embd", "intermediate_size"))
        check_heads(self)
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head ({self.n_head}) must be divisible by n_kv_head ({self.n_kv_head})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim = n_embd / n_head = {self.head_dim} must be even for RoPE")
        check_positive_numbers(self, ("rms_norm_eps",))
        if not self.rope_theta > 1:
            raise ValueError(f"rope_theta must be > 1, got {self.rope_theta!r}")
        check_choice(self, "attn_impl", IMPLS)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def n_rep(self) -> int:
        """Query heads per key/value head."""
        return self.n_head // self.n_kv_head


# ``smollm2-135m``: the values of SmolLM2-135M(-Instruct)'s config.json (tests/test_llama.py checks
# them against the checkpoint through llama_config_from_hf). ``tiny``: for tests and derivations.
PRESETS = {
    "tiny": LlamaConfig(vocab_size=512, block_size=128, n_layer=2, n_head=4, n_kv_head=2, n_embd=64,
                        intermediate_size=160, rope_theta=10000.0),
    "smollm2-135m": LlamaConfig(vocab_size=49152, block_size=8192, n_layer=30, n_head=9, n_kv_head=3,
                                n_embd=576, intermediate_size=1536, rope_theta=100000.0,
                                rms_norm_eps=9.999999747378752e-06, tie_word_embeddings=True),
}


class RMSNorm(nn.Module):
    """``g * x / sqrt(mean(x², last axis) + eps)``, the statistics in fp32 (Hugging Face's order:
    normalise in fp32, cast back to the input dtype, then multiply by the gain)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def repeat_kv(x, n_rep: int):
    """``(B, n_kv, T, hs) -> (B, n_kv * n_rep, T, hs)``: each key/value head serves ``n_rep``
    consecutive query heads (head ``h`` reads kv head ``h // n_rep``), as in Hugging Face."""
    if n_rep == 1:
        return x
    B, nkv, T, hs = x.shape
    return x[:, :, None].expand(B, nkv, n_rep, T, hs).reshape(B, nkv * n_rep, T, hs)


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        hs = cfg.head_dim
        self.q_proj = nn.Linear(cfg.n_embd, cfg.n_head * hs, bias=False)
        self.k_proj = nn.Linear(cfg.n_embd, cfg.n_kv_head * hs, bias=False)
        self.v_proj = nn.Linear(cfg.n_embd, cfg.n_kv_head * hs, bias=False)
        self.o_proj = nn.Linear(cfg.n_head * hs, cfg.n_embd, bias=False)

    def forward(self, x, rope, kv_cache=None, layer: int = 0, mask=None, head_mask=None):
        """``head_mask`` (n_head,) or None: each query head's output is multiplied by its entry
        before ``o_proj`` (0 removes the head, 1 keeps it; a float mask can carry a gradient)."""
        B, T, C = x.shape
        nh, nkv, hs = self.cfg.n_head, self.cfg.n_kv_head, self.cfg.head_dim
        q = self.q_proj(x).view(B, T, nh, hs).transpose(1, 2)   # (B, nh, T, hs)
        k = self.k_proj(x).view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        v = self.v_proj(x).view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        q, k = apply_rope(q, cache=rope), apply_rope(k, cache=rope)  # rotate before caching
        if kv_cache is not None:
            k, v, cache_mask = kv_cache.update(layer, k, v)  # (B, nkv, Tk, hs): the cache is GQA-sized
            if cache_mask is not None:
                mask = cache_mask if mask is None else (mask & cache_mask)
        k, v = repeat_kv(k, self.cfg.n_rep), repeat_kv(v, self.cfg.n_rep)  # (B, nh, Tk, hs)
        y = attention(q, k, v, causal=True, mask=mask, impl=self.cfg.attn_impl)  # (B, nh, T, hs)
        if head_mask is not None:
            y = y * head_mask.to(y.dtype).view(1, nh, 1, 1)  # (B, nh, T, hs): masked heads give 0
        y = y.transpose(1, 2).contiguous().view(B, T, nh * hs)  # (B, T, C)
        return self.o_proj(y)


class MLP(nn.Module):
    """SwiGLU: ``down_proj(silu(gate_proj(x)) * up_proj(x))``."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.n_embd, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.n_embd, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.n_embd, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.n_embd, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.n_embd, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, rope, kv_cache=None, layer: int = 0, mask=None, head_mask=None):
        x = x + self.self_attn(self.input_layernorm(x), rope, kv_cache, layer, mask, head_mask=head_mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        if not isinstance(cfg, LlamaConfig):
            raise TypeError(f"cfg must be a LlamaConfig, got {type(cfg).__name__}")
        self.config = cfg
        self.model = nn.ModuleDict(dict(
            embed_tokens=nn.Embedding(cfg.vocab_size, cfg.n_embd),
            layers=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
            norm=RMSNorm(cfg.n_embd, cfg.rms_norm_eps),
        ))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        for m in self.modules():  # Llama's init: N(0, 0.02) for every matrix, gains at 1
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
        # the RoPE table for every position, (block_size, hs); not weights, so not in the state dict
        cos, sin = rope_cache(cfg.block_size, cfg.head_dim, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    @classmethod
    def empty(cls, cfg: LlamaConfig, device=None, dtype=torch.float32) -> "Llama":
        """A model whose weights are allocated but not initialised, to load a checkpoint into
        (skips the random init of every matrix: seconds for 135M parameters on a CPU). The RoPE
        tables are computed; the tying of ``lm_head`` to ``embed_tokens`` is kept."""
        with torch.device("meta"):
            model = cls(cfg)
        model = model.to_empty(device=device or "cpu").to(dtype)
        if cfg.tie_word_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight
        cos, sin = rope_cache(cfg.block_size, cfg.head_dim, cfg.rope_theta, device=device, dtype=dtype)
        model.rope_cos, model.rope_sin = cos, sin
        return model

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (tied weights once); ``non_embedding`` drops the token embedding (and
        an untied output layer stays counted: it is a matmul every token pays for)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.model.embed_tokens.weight.numel()
        return n

    def matmul_params(self) -> int:
        """Weights of every matrix a token is multiplied by: per layer q, k, v, o and the three
        SwiGLU matrices, plus the output layer ``V x C`` (embedding look-ups and norms excluded)."""
        c = self.config
        kv = c.n_kv_head * c.head_dim
        per_layer = 2 * c.n_embd * c.n_embd + 2 * c.n_embd * kv + 3 * c.n_embd * c.intermediate_size
        return c.n_layer * per_layer + c.vocab_size * c.n_embd

    def flops_per_token(self, seq_len: int | None = None, training: bool = True) -> float:
        """Matmul FLOPs per token at context ``seq_len`` (default ``block_size``): ``2 N + 4 L T C``
        forward with ``N =`` :meth:`matmul_params`, x3 for training
        (:func:`bmlib.flops.transformer_flops_per_token`; causal masking not subtracted)."""
        c = self.config
        T = c.block_size if seq_len is None else seq_len
        if isinstance(T, bool) or not (isinstance(T, int) and 1 <= T):
            raise ValueError(f"seq_len must be a positive int, got {seq_len!r}")
        return flops.transformer_flops_per_token(self.matmul_params(), c.n_layer, T, c.n_embd,
                                                 training=training)

    def new_kv_cache(self, batch_size: int, max_len: int | None = None, kind: str = "static"):
        """A KV cache for this model on its device and dtype: ``"static"`` (:class:`LlamaKVCache`)
        or ``"graph"`` (:class:`LlamaStaticKVCache`)."""
        if kind not in ("static", "graph"):
            raise ValueError(f"kind must be 'static' or 'graph', got {kind!r}")
        p = self.model.embed_tokens.weight
        cls = LlamaKVCache if kind == "static" else LlamaStaticKVCache
        return cls(self.config, batch_size, max_len, device=p.device, dtype=p.dtype)

    def forward(self, idx, targets=None, *, kv_cache=None, mask=None, position_ids=None,
                validate: bool = True, head_mask=None):
        """``idx`` (B, T) token ids -> ``(logits (B, T, V), loss or None)``; the arguments are
        :meth:`bmlib.models.gpt.GPT.forward`'s (targets with ``-100`` ignored, a boolean ``mask``
        broadcastable to (B, 1, T, Tk), ``position_ids`` (B, T) or (T,), ``validate``).
        ``head_mask`` (n_layer, n_head), default None (off): multiplies each query head's output
        before ``o_proj`` (Michel et al., 2019); with GQA a key/value head keeps serving its other
        query heads."""
        if head_mask is not None:
            check_head_mask(head_mask, self.config)
        pos = decoder_positions(idx, kv_cache, position_ids, self.config.vocab_size, self.config.block_size,
                                validate)  # (T,), (B, T) or (T,)
        T = idx.shape[1]
        cos, sin = self.rope_cos[pos], self.rope_sin[pos]  # (T, hs) or (B, T, hs)
        if pos.dim() == 2:
            cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, hs): broadcast over heads
        rope = (cos, sin)
        x = self.model.embed_tokens(idx)  # (B, T, C)
        for i, block in enumerate(self.model.layers):
            x = block(x, rope, kv_cache, i, mask, head_mask=None if head_mask is None else head_mask[i])
        if kv_cache is not None:
            kv_cache.advance(T)
        logits = self.lm_head(self.model.norm(x))  # (B, T, V)
        loss = None if targets is None else lm_loss(logits, targets, idx, self.config.vocab_size, validate)
        return logits, loss


def check_head_mask(head_mask, cfg: LlamaConfig) -> None:
    """``head_mask`` must be a real or boolean tensor of shape ``(n_layer, n_head)``."""
    if not isinstance(head_mask, torch.Tensor):
        raise TypeError(f"head_mask must be a torch.Tensor of shape (n_layer, n_head), got {type(head_mask).__name__}")
    if head_mask.shape != (cfg.n_layer, cfg.n_head):
        raise ValueError(f"head_mask must have shape (n_layer, n_head) = {(cfg.n_layer, cfg.n_head)}, "
                         f"got {tuple(head_mask.shape)}")
    if not (head_mask.is_floating_point() or head_mask.dtype == torch.bool):
        raise TypeError(f"head_mask must be a floating-point or bool tensor, got dtype {head_mask.dtype}")


def _check_cache_args(cfg, batch_size, max_len):
    if not isinstance(cfg, LlamaConfig):
        raise TypeError(f"cfg must be a LlamaConfig, got {type(cfg).__name__}")
    max_len = cfg.block_size if max_len is None else max_len
    if isinstance(max_len, bool) or not (isinstance(max_len, int) and 1 <= max_len <= cfg.block_size):
        raise ValueError(f"max_len must be an int in [1, block_size={cfg.block_size}], got {max_len!r}")
    if isinstance(batch_size, bool) or not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    return max_len


def kv_cache_shape(cfg: LlamaConfig, batch_size: int, max_len: int) -> tuple:
    """``(n_layer, B, n_kv_head, max_len, head_dim)``: keys (and again values) of a GQA model."""
    return (cfg.n_layer, batch_size, cfg.n_kv_head, max_len, cfg.head_dim)


class LlamaKVCache(KVCache):
    """:class:`bmlib.models.gpt.KVCache` (preallocated once, ``update`` writes ``[pos, pos+T)`` and
    returns the filled prefix) with GQA-sized buffers ``(n_layer, B, n_kv_head, max_len, hs)``."""

    def __init__(self, cfg: LlamaConfig, batch_size: int, max_len: int | None = None,
                 device=None, dtype=torch.float32):
        max_len = _check_cache_args(cfg, batch_size, max_len)
        shape = kv_cache_shape(cfg, batch_size, max_len)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len, self.batch_size, self.pos = max_len, batch_size, 0


class LlamaStaticKVCache(StaticKVCache):
    """:class:`bmlib.models.gpt.StaticKVCache` (fixed shapes, position as a device tensor, for CUDA
    graphs) with GQA-sized buffers ``(n_layer, B, n_kv_head, max_len, hs)``."""

    def __init__(self, cfg: LlamaConfig, batch_size: int, max_len: int | None = None,
                 device=None, dtype=torch.float32):
        max_len = _check_cache_args(cfg, batch_size, max_len)
        shape = kv_cache_shape(cfg, batch_size, max_len)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len, self.batch_size = max_len, batch_size
        self.pos_t = torch.zeros((), dtype=torch.long, device=device)
        self._j = torch.arange(max_len, device=device)  # (max_len,)
