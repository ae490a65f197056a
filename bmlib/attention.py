"""Scaled dot-product attention: the reference math path and PyTorch's fused paths, side by side.

Shapes follow PyTorch: ``q`` is ``(B, nh, Tq, hs)``, ``k`` and ``v`` are ``(B, nh, Tk, hs)``.
The implementation is always chosen explicitly with ``impl=``; nothing picks a backend silently.

* ``"math"``: softmax(q kᵀ / sqrt(hs) + mask) v written out in PyTorch (the reference).
* ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention`` with PyTorch's own dispatch.
* ``"sdpa-flash"``, ``"sdpa-efficient"``, ``"sdpa-cudnn"``, ``"sdpa-math"``: SDPA restricted to one
  backend (``torch.nn.attention.sdpa_kernel``); raises if that backend cannot run the inputs.
* ``"auto"``: the backend :func:`choose_impl` names for these inputs; the rule is deterministic,
  documented there, and callable on its own, so the choice is always inspectable.

Masks: ``mask`` is boolean, broadcastable to ``(B, nh, Tq, Tk)``, ``True`` where a query may attend.
``causal=True`` lets query ``i`` see keys ``j <= i + (Tk - Tq)``: the usual triangle when
``Tq == Tk``, and the right alignment for decoding with a KV cache (``Tq < Tk``).

Also here: :func:`flash_attention_tiled` (the online-softmax / FlashAttention tiling in plain
PyTorch), positional encodings (:func:`sinusoidal_positions`, :func:`rope_cache`,
:func:`apply_rope`), and :class:`MultiHeadAttention` with its parameter and FLOP formulas
(:func:`mha_params`, :func:`mha_flops`).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .flops import mha_flops  # noqa: F401  (the FLOP formula of MultiHeadAttention lives in bmlib.flops)

IMPLS = ("math", "sdpa", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "sdpa-math", "auto")


def _check_qkv(q, k, v) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape (B, n_head, T, head_dim), got {tuple(t.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got k {tuple(k.shape)} and v {tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[1] != k.shape[1] or q.shape[3] != k.shape[3]:
        raise ValueError(
            f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree in batch, n_head and head_dim")
    if q.shape[2] < 1 or k.shape[2] < 1:
        raise ValueError(f"sequence lengths must be >= 1, got Tq={q.shape[2]}, Tk={k.shape[2]}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")


def causal_mask(tq: int, tk: int, device=None) -> torch.Tensor:
    """Boolean ``(tq, tk)`` mask, ``True`` where query ``i`` may see key ``j``: ``j <= i + tk - tq``."""
    if tq < 1 or tk < tq:
        raise ValueError(f"causal attention needs 1 <= tq <= tk, got tq={tq}, tk={tk}")
    i = torch.arange(tq, device=device)[:, None]
    j = torch.arange(tk, device=device)[None, :]
    return j <= i + (tk - tq)


def padding_mask(lengths: torch.Tensor, tk: int) -> torch.Tensor:
    """``(B, 1, 1, tk)`` mask that hides key positions at or beyond each sequence's length."""
    if not isinstance(lengths, torch.Tensor):
        raise TypeError(f"lengths must be a torch.Tensor of shape (B,), got {type(lengths).__name__}")
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be 1-D (B,), got shape {tuple(lengths.shape)}")
    if (lengths < 1).any() or (lengths > tk).any():
        raise ValueError(f"lengths must lie in [1, {tk}], got {lengths.tolist()}")
    j = torch.arange(tk, device=lengths.device)
    return (j[None, :] < lengths[:, None])[:, None, None, :]


def _check_mask(q, k, mask) -> None:
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a boolean tensor (True = may attend), got {got}")
    target = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    try:
        ok = torch.broadcast_shapes(mask.shape, target) == target
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to (B, n_head, Tq, Tk) = {target}")


def _combine_masks(q, k, causal: bool, mask):
    tq, tk = q.shape[2], k.shape[2]
    _check_mask(q, k, mask)
    if causal and tq > tk:
        raise ValueError(f"causal attention needs Tq <= Tk, got Tq={tq}, Tk={tk}")
    if causal and tq > 1:  # with one query, the causal row (j <= Tk - 1) hides nothing
        cm = causal_mask(tq, tk, q.device)
        mask = cm if mask is None else (mask & cm)
    return mask


def attention_math(q, k, v, mask=None, scale: float | None = None, dropout_p: float = 0.0):
    """The reference: softmax(q kᵀ · scale, masked) v, in the inputs' dtype (fp32 softmax).

    A query row whose mask hides every key gets zeros, as SDPA returns (softmax over an empty
    set would be 0/0 = NaN, and in a left-padded GPT that NaN would reach real tokens).
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    att = (q @ k.transpose(-2, -1)) * scale  # (B, nh, Tq, Tk)
    if mask is not None:
        att = att.masked_fill(~mask, float("-inf"))
    att = torch.softmax(att.float(), dim=-1).to(q.dtype)
    if mask is not None:
        att = att.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)  # fully masked rows -> 0
    if dropout_p > 0.0:
        att = F.dropout(att, p=dropout_p)
    return att @ v  # (B, nh, Tq, hs)


_BACKENDS = {"sdpa-flash": "FLASH_ATTENTION", "sdpa-efficient": "EFFICIENT_ATTENTION",
             "sdpa-cudnn": "CUDNN_ATTENTION", "sdpa-math": "MATH"}


def _needs_explicit_mask(q, k, causal: bool, mask) -> bool:
    """Whether :func:`attention` hands SDPA an ``attn_mask`` (fused kernels may then refuse)."""
    if mask is not None:
        return True
    return causal and 1 < q.shape[2] < k.shape[2]  # SDPA's is_causal is top-left aligned


def choose_impl(q, k, *, causal: bool = False, mask=None) -> str:
    """The implementation ``impl="auto"`` uses for these inputs. The rule, in order:

    1. not on CUDA (CPU, MPS, meta) -> ``"sdpa"`` (PyTorch's CPU kernel is already fused);
    2. CUDA, fp16/bf16, no explicit mask (``mask is None`` and the causal triangle, if any, is the
       square one SDPA's ``is_causal`` handles), head_dim <= 128 and a multiple of 8, compute
       capability >= 9.0 (Hopper) -> ``"sdpa-cudnn"`` (on an H100 cuDNN ran 1.9x faster than
       FlashAttention-2 at head_dim 128, seq 4096, bf16);
    3. else CUDA, fp16/bf16, no explicit mask, head_dim <= 256, capability >= 8.0 ->
       ``"sdpa-flash"``;
    4. else CUDA fp16/bf16/fp32 -> ``"sdpa-efficient"`` (the memory-efficient kernel takes masks
       and fp32);
    5. anything else (e.g. fp64 on CUDA) -> ``"sdpa-math"``.

    It depends only on device, dtype, head_dim, the mask and the GPU's compute capability, so a
    given machine and input always get the same answer.
    """
    for name, t in (("q", q), ("k", k)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape (B, n_head, T, head_dim), got {tuple(t.shape)}")
    if q.device.type != "cuda":
        return "sdpa"
    hs = q.shape[-1]
    half = q.dtype in (torch.float16, torch.bfloat16)
    masked = _needs_explicit_mask(q, k, causal, mask)
    cap = torch.cuda.get_device_capability(q.device)
    if half and not masked and hs <= 128 and hs % 8 == 0 and cap >= (9, 0):
        return "sdpa-cudnn"
    if half and not masked and hs <= 256 and cap >= (8, 0):
        return "sdpa-flash"
    if half or q.dtype == torch.float32:
        return "sdpa-efficient"
    return "sdpa-math"


def attention(q, k, v, *, causal: bool = False, mask=None, impl: str = "math",
              dropout_p: float = 0.0, scale: float | None = None):
    """Scaled dot-product attention with an explicit implementation (see the module docstring)."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    _check_qkv(q, k, v)
    if not (0.0 <= dropout_p < 1.0):
        raise ValueError(f"dropout_p must lie in [0, 1), got {dropout_p!r}")
    if impl == "auto":
        _check_mask(q, k, mask)
        impl = choose_impl(q, k, causal=causal, mask=mask)
    if impl == "math":
        return attention_math(q, k, v, _combine_masks(q, k, causal, mask), scale, dropout_p)
    # SDPA's own is_causal is top-left aligned; use it only in the square case without a mask.
    if causal and mask is None and q.shape[2] == k.shape[2]:
        kw = dict(is_causal=True)
    else:
        m = _combine_masks(q, k, causal, mask)
        kw = dict(attn_mask=m) if m is not None else {}
    if impl == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale, **kw)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(getattr(SDPBackend, _BACKENDS[impl])):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale, **kw)


# ============================================================================ FlashAttention tiling
def _check_block(name: str, b) -> None:
    if isinstance(b, bool) or not isinstance(b, int) or b < 1:
        raise ValueError(f"{name} must be an int >= 1, got {b!r}")


def flash_attention_tiled(q, k, v, *, causal: bool = False, block_q: int = 64, block_k: int = 64,
                          scale: float | None = None, return_lse: bool = False):
    """Exact attention by tiles with an online softmax (Milakov & Gimelshein, 2018; Dao et al., 2022).

    For each block of ``block_q`` queries, walk over the keys ``block_k`` at a time and keep, per
    query row, the running maximum ``m``, the running normaliser ``l = sum exp(s - m)`` and the
    unnormalised output ``acc = sum exp(s - m) v``. When a new block raises the maximum to
    ``m'``, the old ``l`` and ``acc`` are rescaled by ``exp(m - m')``. At the end ``out = acc / l``.
    The largest intermediate is one ``(B, nh, block_q, block_k)`` tile of scores, never the
    ``(Tq, Tk)`` matrix. Accumulates in fp32 and returns the inputs' dtype; with
    ``return_lse=True`` also returns the row log-sum-exp ``m + log l`` of shape ``(B, nh, Tq)``
    (what the backward pass of FlashAttention stores). ``causal`` uses :func:`causal_mask`'s
    alignment (key ``j`` visible to query ``i`` iff ``j <= i + Tk - Tq``) and skips key blocks that
    lie entirely in the future.
    """
    _check_qkv(q, k, v)
    _check_block("block_q", block_q)
    _check_block("block_k", block_k)
    B, nh, tq, hs = q.shape
    tk = k.shape[2]
    if causal and tq > tk:
        raise ValueError(f"causal attention needs Tq <= Tk, got Tq={tq}, Tk={tk}")
    scale = 1.0 / math.sqrt(hs) if scale is None else scale
    offset = tk - tq
    out = torch.empty_like(q)  # (B, nh, Tq, hs)
    lse = torch.empty(B, nh, tq, device=q.device, dtype=torch.float32)
    for qs in range(0, tq, block_q):
        qe = min(qs + block_q, tq)
        qb = q[:, :, qs:qe].float() * scale  # (B, nh, bq, hs)
        m = torch.full((B, nh, qe - qs, 1), float("-inf"), device=q.device)  # running max
        l = torch.zeros((B, nh, qe - qs, 1), device=q.device)  # running sum of exp
        acc = torch.zeros((B, nh, qe - qs, hs), device=q.device)  # running sum of exp * v
        k_end = min(tk, qe - 1 + offset + 1) if causal else tk  # keys beyond are all in the future
        for ks in range(0, k_end, block_k):
            ke = min(ks + block_k, k_end)
            s = qb @ k[:, :, ks:ke].float().transpose(-2, -1)  # (B, nh, bq, bk): one tile
            if causal and ke - 1 > qs + offset:  # the tile crosses the diagonal
                i = torch.arange(qs, qe, device=q.device)[:, None]
                j = torch.arange(ks, ke, device=q.device)[None, :]
                s = s.masked_fill(j > i + offset, float("-inf"))
            m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True))  # (B, nh, bq, 1)
            m_safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
            p = torch.exp(s - m_safe)  # (B, nh, bq, bk)
            alpha = torch.exp(m - m_safe)  # rescales what was accumulated under the old max
            l = alpha * l + p.sum(dim=-1, keepdim=True)
            acc = alpha * acc + p @ v[:, :, ks:ke].float()
            m = m_new
        out[:, :, qs:qe] = (acc / l).to(q.dtype)
        lse[:, :, qs:qe] = (m + torch.log(l)).squeeze(-1)
    return (out, lse) if return_lse else out


def attention_scores_bytes(b: int, nh: int, tq: int, tk: int, dtype=torch.float32) -> int:
    """Bytes of the ``(B, nh, Tq, Tk)`` score matrix the math path materialises (once; the
    softmax output is a second tensor of the same size)."""
    for name, x in (("b", b), ("nh", nh), ("tq", tq), ("tk", tk)):
        if isinstance(x, bool) or not isinstance(x, int) or x < 1:
            raise ValueError(f"{name} must be an int >= 1, got {x!r}")
    return b * nh * tq * tk * torch.tensor([], dtype=dtype).element_size()


# ============================================================================ positional encodings
def sinusoidal_positions(T: int, d: int, base: float = 10000.0) -> torch.Tensor:
    """The fixed encoding of Vaswani et al. (2017): ``(T, d)`` with
    ``PE[p, 2i] = sin(p / base^(2i/d))`` and ``PE[p, 2i+1] = cos(p / base^(2i/d))``."""
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"T must be an int >= 1, got {T!r}")
    if isinstance(d, bool) or not isinstance(d, int) or d < 2 or d % 2:
        raise ValueError(f"d must be an even int >= 2, got {d!r}")
    if not base > 1:
        raise ValueError(f"base must be > 1, got {base!r}")
    pos = torch.arange(T, dtype=torch.float64)[:, None]  # (T, 1)
    inv_freq = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)  # (d/2,)
    pe = torch.zeros(T, d, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(pos * inv_freq)
    pe[:, 1::2] = torch.cos(pos * inv_freq)
    return pe.float()


def _positions(positions) -> torch.Tensor:
    if isinstance(positions, int) and not isinstance(positions, bool):
        if positions < 1:
            raise ValueError(f"positions must be an int >= 1 or a 1-D tensor, got {positions!r}")
        return torch.arange(positions)
    if not isinstance(positions, torch.Tensor) or positions.dim() != 1:
        raise ValueError("positions must be an int T or a 1-D tensor of shape (T,), got "
                         f"{tuple(positions.shape) if isinstance(positions, torch.Tensor) else positions!r}")
    return positions


def rope_cache(positions, head_dim: int, base: float = 10000.0, device=None,
               dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)``, each ``(T, head_dim)``, for rotary embeddings at ``positions`` (an int T
    means ``0..T-1``). Frequencies ``theta_i = base^(-2i/head_dim)``; each half of the last axis
    repeats them (the GPT-NeoX / Llama "rotate half" layout used by Hugging Face)."""
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 2 or head_dim % 2:
        raise ValueError(f"head_dim must be an even int >= 2, got {head_dim!r}")
    if not base > 1:
        raise ValueError(f"base must be > 1, got {base!r}")
    pos = _positions(positions).to(device=device, dtype=torch.float64)  # (T,)
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim)
    ang = pos[:, None] * inv_freq[None, :]  # (T, head_dim/2)
    ang = torch.cat([ang, ang], dim=-1)  # (T, head_dim)
    return ang.cos().to(dtype), ang.sin().to(dtype)


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x, positions=None, base: float = 10000.0, *, cache=None):
    """Rotate ``x`` of shape ``(..., T, head_dim)`` by RoPE (Su et al., 2021) at ``positions``
    (default ``0..T-1``). Pair ``(x_i, x_{i+d/2})`` turns by the angle ``p · theta_i``, so
    ``<R_m q, R_n k>`` depends only on ``m - n``. ``cache`` is a precomputed
    :func:`rope_cache` ``(cos, sin)`` for these positions (then ``positions``/``base`` are unused);
    its last two axes must be ``(T, head_dim)`` and any leading axes broadcast against ``x``'s, so
    per-row positions (a left-padded batch) pass ``(B, 1, T, head_dim)`` tables.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"x must have shape (..., T, head_dim), got {tuple(x.shape)}")
    T, hs = x.shape[-2], x.shape[-1]
    if cache is None:
        positions = T if positions is None else positions
        cos, sin = rope_cache(positions, hs, base, device=x.device, dtype=x.dtype)
    else:
        cos, sin = cache
    if cos.shape[-2:] != (T, hs) or sin.shape != cos.shape or cos.dim() > x.dim():
        raise ValueError(f"positions/cache must give (..., T, head_dim) = {(T, hs)} angles, "
                         f"got {tuple(cos.shape)}")
    return x * cos + _rotate_half(x) * sin


# ============================================================================ multi-head attention
def _check_heads(d_model, n_head) -> None:
    for name, x in (("d_model", d_model), ("n_head", n_head)):
        if isinstance(x, bool) or not isinstance(x, int) or x < 1:
            raise ValueError(f"{name} must be an int >= 1, got {x!r}")
    if d_model % n_head:
        raise ValueError(f"d_model ({d_model}) must be divisible by n_head ({n_head})")


def mha_params(d_model: int, n_head: int, bias: bool = True) -> int:
    """Parameters of :class:`MultiHeadAttention`: four ``d x d`` projections (q, k, v, out),
    ``4 d^2``, plus ``4 d`` biases. The head count splits ``d``; it does not change the count."""
    _check_heads(d_model, n_head)
    return 4 * d_model * d_model + (4 * d_model if bias else 0)


class MultiHeadAttention(nn.Module):
    """Multi-head attention (Vaswani et al., 2017) with separate q/k/v/out projections.

    ``forward(x, context=None, *, causal=False, mask=None)``: ``x`` is ``(B, T, d_model)``;
    ``context`` (keys/values source, ``(B, Tk, d_model)``) defaults to ``x`` (self-attention).
    The scores go through :func:`attention` with this module's ``impl``.
    Parameter names ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj`` (weights ``(out, in)``).
    """

    def __init__(self, d_model: int, n_head: int, impl: str = "math", bias: bool = True):
        super().__init__()
        _check_heads(d_model, n_head)
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        self.d_model, self.n_head, self.head_dim, self.impl = d_model, n_head, d_model // n_head, impl
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def _heads(self, t):
        B, T, _ = t.shape
        return t.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)

    def forward(self, x, context=None, *, causal: bool = False, mask=None):
        context = x if context is None else context
        for name, t in (("x", x), ("context", context)):
            if not isinstance(t, torch.Tensor) or t.dim() != 3 or t.shape[-1] != self.d_model:
                raise ValueError(f"{name} must have shape (B, T, d_model={self.d_model}), got "
                                 f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
        if context.shape[0] != x.shape[0]:
            raise ValueError(f"x and context must share the batch size, got {x.shape[0]} and {context.shape[0]}")
        B, T, C = x.shape
        q = self._heads(self.q_proj(x))  # (B, nh, T, hs)
        k = self._heads(self.k_proj(context))  # (B, nh, Tk, hs)
        v = self._heads(self.v_proj(context))  # (B, nh, Tk, hs)
        y = attention(q, k, v, causal=causal, mask=mask, impl=self.impl)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.out_proj(y)


# ============================================================================ memory accounting
def peak_live_bytes(fn, *args, **kwargs) -> tuple[object, int]:
    """Run ``fn(*args, **kwargs)``; return ``(result, peak bytes of tensors it allocated and held
    at the same time)``, as seen from PyTorch's dispatcher (a ``TorchDispatchMode``).

    What this measures: every tensor an ATen op returns that does not alias an input (views and
    in-place results are not new memory) counts from its creation until its Python object dies.
    It sees every intermediate of code written with PyTorch ops (the math path, the tiled
    algorithm) but not the private workspace inside one fused kernel (SDPA's CPU kernel shows only
    its outputs). It is device-independent and deterministic, unlike RSS; on a GPU prefer
    ``torch.cuda.max_memory_allocated``, which sees everything the caching allocator hands out.
    """
    import weakref

    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    state = {"cur": 0, "peak": 0}
    live: dict = {}

    def release(key):
        state["cur"] -= live.pop(key, 0)

    class _Track(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            ins = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                   if isinstance(t, torch.Tensor) and t.device.type != "meta"}
            for t in tree_flatten(out)[0]:
                if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                    continue
                st = t.untyped_storage()
                key = st.data_ptr()
                if key in ins or key in live or st.nbytes() == 0:
                    continue
                live[key] = st.nbytes()
                state["cur"] += st.nbytes()
                state["peak"] = max(state["peak"], state["cur"])
                weakref.finalize(t, release, key)
            return out

    with _Track():
        result = fn(*args, **kwargs)
    return result, state["peak"]
