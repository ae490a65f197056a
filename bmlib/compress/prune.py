"""Pruning: unstructured magnitude, 2:4 semi-structured, and structured (MLP neurons, attention heads)."""
from __future__ import annotations

import copy
from typing import Iterable

import torch
import torch.nn as nn

from ._common import _check_fraction, _check_tensor, linear_layers


def _check_sparsity(sparsity) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not (0.0 <= sparsity < 1.0):
        raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    return float(sparsity)


# --------------------------------------------------------------------------------------------
# Pruning
# --------------------------------------------------------------------------------------------
def magnitude_mask(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean keep-mask zeroing the ``round(sparsity * numel)`` smallest-|w| entries (ties by index)."""
    _check_tensor("w", w)
    sparsity = _check_sparsity(sparsity)
    k = int(round(sparsity * w.numel()))
    mask = torch.ones(w.numel(), dtype=torch.bool, device=w.device)
    if k:
        idx = torch.argsort(w.detach().abs().flatten(), stable=True)[:k]
        mask[idx] = False
    return mask.view_as(w)


def prune_magnitude(model: nn.Module, sparsity: float, scope: str = "global",
                    exclude: Iterable[str] = ("lm_head",)) -> dict:
    """Unstructured magnitude pruning of every linear weight, in place; returns ``{name: mask}``.

    ``scope="layer"`` removes ``sparsity`` of each layer; ``scope="global"`` ranks all weights
    together, so layers with many small weights lose more."""
    sparsity = _check_sparsity(sparsity)
    scopes = ("global", "layer")
    if scope not in scopes:
        raise ValueError(f"scope must be one of {scopes}, got {scope!r}")
    layers = linear_layers(model, exclude)
    masks = {}
    with torch.no_grad():
        if scope == "layer":
            for name, lin in layers.items():
                masks[name] = magnitude_mask(lin.weight, sparsity)
        else:
            flat = torch.cat([lin.weight.detach().abs().flatten() for lin in layers.values()])
            allmask = magnitude_mask(flat, sparsity)
            start = 0
            for name, lin in layers.items():
                n = lin.weight.numel()
                masks[name] = allmask[start:start + n].view_as(lin.weight)
                start += n
        for name, lin in layers.items():
            lin.weight.mul_(masks[name].to(lin.weight.dtype))
    return masks


def sparsity_of(model_or_tensor, exclude: Iterable[str] = ("lm_head",)) -> float:
    """Fraction of exactly-zero weights in a tensor, or across a model's linear weights."""
    if isinstance(model_or_tensor, torch.Tensor):
        return (model_or_tensor == 0).float().mean().item()
    layers = linear_layers(model_or_tensor, exclude)
    zeros = sum((l.weight == 0).sum().item() for l in layers.values())
    return zeros / max(1, sum(l.weight.numel() for l in layers.values()))


def mask_2to4(w: torch.Tensor) -> torch.Tensor:
    """2:4 semi-structured keep-mask: in each run of 4 consecutive inputs of a row, keep the 2 with
    the largest |w|. ``w`` is (out, in) with ``in`` divisible by 4 (NVIDIA sparse tensor cores)."""
    _check_tensor("w", w, dim=2)
    out, inp = w.shape
    if inp % 4:
        raise ValueError(f"w must have an input dimension divisible by 4 for 2:4 sparsity, got shape {tuple(w.shape)}")
    g = w.detach().abs().reshape(out, inp // 4, 4)  # (out, in/4, 4)
    top = g.topk(2, dim=-1).indices  # (out, in/4, 2)
    mask = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, top, True)
    return mask.reshape(out, inp)


def to_sparse_24(linear: nn.Linear) -> nn.Linear:
    """A copy of ``linear`` with 2:4-pruned weights stored as ``torch.sparse`` semi-structured
    (cuSPARSELt/CUTLASS kernels). CUDA fp16/bf16 only; raises ``RuntimeError`` elsewhere."""
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
    if not torch.cuda.is_available() or linear.weight.device.type != "cuda":
        raise RuntimeError("to_sparse_24 needs the linear layer on a CUDA GPU (compute capability >= 8.0)")
    if linear.weight.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"linear.weight must be float16 or bfloat16 for semi-structured sparsity, "
                         f"got {linear.weight.dtype}")
    from torch.sparse import to_sparse_semi_structured

    m = copy.deepcopy(linear)
    with torch.no_grad():
        w = m.weight * mask_2to4(m.weight)
    m.weight = nn.Parameter(to_sparse_semi_structured(w), requires_grad=False)
    return m


def mlp_neuron_scores(mlp: nn.Module) -> torch.Tensor:
    """Magnitude importance of each hidden neuron j of a GPT MLP: ``||c_fc.W[j,:]|| * ||c_proj.W[:,j]||``."""
    return mlp.c_fc.weight.detach().norm(dim=1) * mlp.c_proj.weight.detach().norm(dim=0)


def head_scores(attn: nn.Module, n_head: int) -> torch.Tensor:
    """Magnitude importance of each head h: ``||W_v rows of h|| * ||c_proj columns of h||``."""
    C = attn.c_proj.weight.shape[0]
    inner = attn.c_proj.weight.shape[1]
    hs = inner // n_head
    wv = attn.c_attn.weight.detach()[2 * inner:].view(n_head, hs, C)  # (nh, hs, C)
    wo = attn.c_proj.weight.detach().view(C, n_head, hs)  # (C, nh, hs)
    return wv.flatten(1).norm(dim=1) * wo.transpose(0, 1).flatten(1).norm(dim=1)


def _keep_top(scores: torch.Tensor, keep: float, name: str) -> torch.Tensor:
    keep = _check_fraction(name, keep)
    k = max(1, int(round(keep * scores.numel())))
    return scores.topk(k).indices.sort().values


def _sliced_linear(lin: nn.Linear, rows=None, cols=None) -> nn.Linear:
    w = lin.weight.detach()
    b = None if lin.bias is None else lin.bias.detach()
    if rows is not None:
        w = w[rows]
        b = None if b is None else b[rows]
    if cols is not None:
        w = w[:, cols]
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    return new


def prune_mlp_neurons(model: nn.Module, keep: float, scores: dict | None = None) -> tuple:
    """Structured pruning of a GPT's MLP hidden neurons: returns ``(smaller model, {layer: kept idx})``.

    Block i keeps the ``round(keep * 4C)`` neurons with the highest score (``scores[i]``, default
    :func:`mlp_neuron_scores`); ``c_fc`` loses rows and ``c_proj`` loses columns, so the matrices
    really shrink. The kept neurons compute exactly what they computed before."""
    new = copy.deepcopy(model)
    kept = {}
    for i, block in enumerate(new.transformer.h):
        s = scores[i] if scores is not None else mlp_neuron_scores(block.mlp)
        idx = _keep_top(s, keep, "keep")
        kept[i] = idx
        block.mlp.c_fc = _sliced_linear(block.mlp.c_fc, rows=idx)
        block.mlp.c_proj = _sliced_linear(block.mlp.c_proj, cols=idx)
    return new, kept


def prune_heads(model: nn.Module, keep: float, scores: dict | None = None) -> tuple:
    """Structured pruning of a GPT's attention heads: returns ``(smaller model, {layer: kept heads})``.

    Block i keeps the ``round(keep * n_head)`` highest-scoring heads (``scores[i]``, default
    :func:`head_scores`): their q, k, v rows of ``c_attn`` and their columns of ``c_proj``, in the
    model's own :class:`bmlib.models.gpt.CausalSelfAttention` built with fewer heads (so the
    pruned model computes attention exactly as the full one; a KV cache, sized for every head, is
    refused)."""
    from ..models.gpt import CausalSelfAttention

    cfg = model.config
    nh, hs, C = cfg.n_head, cfg.head_dim, cfg.n_embd
    new = copy.deepcopy(model)
    kept = {}
    for i, block in enumerate(new.transformer.h):
        attn = block.attn
        s = scores[i] if scores is not None else head_scores(attn, nh)
        heads = _keep_top(s, keep, "keep")
        kept[i] = heads
        cols = (heads[:, None] * hs + torch.arange(hs)).flatten()  # inner indices of kept heads
        rows = torch.cat([cols, C + cols, 2 * C + cols])  # q, k, v rows
        pruned = CausalSelfAttention(cfg, n_head=len(heads))
        pruned.c_attn = _sliced_linear(attn.c_attn, rows=rows)
        pruned.c_proj = _sliced_linear(attn.c_proj, cols=cols)
        block.attn = pruned.train(attn.training)
    return new, kept
