"""Scaled dot-product attention: the reference math path and PyTorch's fused paths, side by side.

Shapes follow PyTorch: ``q`` is ``(B, nh, Tq, hs)``, ``k`` and ``v`` are ``(B, nh, Tk, hs)``.
The implementation is always chosen explicitly with ``impl=``; nothing picks a backend silently.

* ``"math"``: softmax(q kᵀ / sqrt(hs) + mask) v written out in PyTorch (the reference).
* ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention`` with PyTorch's own dispatch.
* ``"sdpa-flash"``, ``"sdpa-efficient"``, ``"sdpa-cudnn"``, ``"sdpa-math"``: SDPA restricted to one
  backend (``torch.nn.attention.sdpa_kernel``); raises if that backend cannot run the inputs.

Masks: ``mask`` is boolean, broadcastable to ``(B, nh, Tq, Tk)``, ``True`` where a query may attend.
``causal=True`` lets query ``i`` see keys ``j <= i + (Tk - Tq)``: the usual triangle when
``Tq == Tk``, and the right alignment for decoding with a KV cache (``Tq < Tk``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IMPLS = ("math", "sdpa", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "sdpa-math")


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
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be 1-D (B,), got shape {tuple(lengths.shape)}")
    if (lengths < 1).any() or (lengths > tk).any():
        raise ValueError(f"lengths must lie in [1, {tk}], got {lengths.tolist()}")
    j = torch.arange(tk, device=lengths.device)
    return (j[None, :] < lengths[:, None])[:, None, None, :]


def _combine_masks(q, k, causal: bool, mask):
    tq, tk = q.shape[2], k.shape[2]
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise ValueError("mask must be a boolean tensor (True = may attend)")
        try:
            torch.broadcast_shapes(mask.shape, (q.shape[0], q.shape[1], tq, tk))
        except RuntimeError:
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} does not broadcast to (B, n_head, Tq, Tk) = "
                f"{(q.shape[0], q.shape[1], tq, tk)}") from None
    if causal:
        cm = causal_mask(tq, tk, q.device)
        mask = cm if mask is None else (mask & cm)
    return mask


def attention_math(q, k, v, mask=None, scale: float | None = None, dropout_p: float = 0.0):
    """The reference: softmax(q kᵀ · scale, masked) v, in the inputs' dtype (fp32 softmax)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    att = (q @ k.transpose(-2, -1)) * scale  # (B, nh, Tq, Tk)
    if mask is not None:
        att = att.masked_fill(~mask, float("-inf"))
    att = torch.softmax(att.float(), dim=-1).to(q.dtype)
    if dropout_p > 0.0:
        att = F.dropout(att, p=dropout_p)
    return att @ v  # (B, nh, Tq, hs)


_BACKENDS = {"sdpa-flash": "FLASH_ATTENTION", "sdpa-efficient": "EFFICIENT_ATTENTION",
             "sdpa-cudnn": "CUDNN_ATTENTION", "sdpa-math": "MATH"}


def attention(q, k, v, *, causal: bool = False, mask=None, impl: str = "math",
              dropout_p: float = 0.0, scale: float | None = None):
    """Scaled dot-product attention with an explicit implementation (see the module docstring)."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    _check_qkv(q, k, v)
    if not (0.0 <= dropout_p < 1.0):
        raise ValueError(f"dropout_p must lie in [0, 1), got {dropout_p!r}")
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
