"""Attention-head pruning of a Llama-family model (grouped-query attention included).

* :func:`head_importance`: Michel et al. (2019)'s proxy, ``I_h = mean over windows |dL/dm_h|``,
  the gradient of the language-model loss with respect to a head mask ``m`` at ``m = 1``: one
  forward and backward pass per window scores every head of every layer at once (masking the
  heads one by one would cost ``n_layer * n_head`` evaluations).
* :func:`mask_lowest` / :func:`random_mask`: a ``(n_layer, n_head)`` keep-mask without the ``k``
  least important heads, or without ``k`` heads drawn at random (the baseline).
* :func:`prune_llama_heads`: physical removal. Query heads go from ``q_proj`` (rows) and
  ``o_proj`` (columns); with GQA the key/value heads are shared, so a KV head stays as long as one
  of its query heads does and is removed from ``k_proj``/``v_proj`` only when all of them are
  gone. :class:`PrunedAttention` records which kept KV head each kept query head reads. The pruned
  model computes exactly what the masked one computes (``Llama.forward(..., head_mask=...)``).
"""
from __future__ import annotations

import copy
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..attention import apply_rope, attention
from ..models.llama import Llama, check_head_mask
from .checks import check_llama, check_token_ids
from .prune import _sliced_linear


def head_importance(model: Llama, windows: torch.Tensor, normalize: bool = True, progress: bool = False) -> torch.Tensor:
    """``(n_layer, n_head)`` importance of each query head: the mean over ``windows`` (n, T) of
    ``|dL/dm_h|`` at ``m = 1``, ``L`` the window's mean next-token loss (Michel et al., 2019).
    ``normalize=True`` divides each layer's scores by their L2 norm, as the paper does before
    ranking heads across layers. The model's weights get no gradient (their ``requires_grad`` is
    restored)."""
    check_llama(model)
    cfg = model.config
    windows = check_token_ids(windows, "windows", 2, cfg.vocab_size)
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize must be a bool, got {type(normalize).__name__}")
    from tqdm.auto import tqdm

    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    dev = model.model.embed_tokens.weight.device
    total = torch.zeros(cfg.n_layer, cfg.n_head, dtype=torch.float64)
    try:
        for x in tqdm(windows, disable=not progress, desc="head importance"):
            m = torch.ones(cfg.n_layer, cfg.n_head, device=dev, requires_grad=True)
            x = x[None].to(dev)  # (1, T)
            logits, _ = model(x[:, :-1], head_mask=m)
            loss = F.cross_entropy(logits[0].float(), x[0, 1:])
            (g,) = torch.autograd.grad(loss, m)
            total += g.detach().abs().double().cpu()
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
    imp = (total / windows.shape[0]).float()
    if normalize:
        imp = imp / imp.norm(dim=1, keepdim=True).clamp_min(1e-20)
    return imp


def _check_k(k, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not (0 <= k <= n):
        raise ValueError(f"k must be an int in [0, {n}] (the number of heads to prune), got {k!r}")
    return int(k)


def mask_lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """``(n_layer, n_head)`` float keep-mask with the ``k`` lowest-scoring heads set to 0 (ranked
    across all layers; ties broken by index)."""
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2:
        raise ValueError(f"scores must be a (n_layer, n_head) tensor, got "
                         f"{tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__}")
    k = _check_k(k, scores.numel())
    mask = torch.ones(scores.numel())
    mask[torch.argsort(scores.detach().flatten().float().cpu(), stable=True)[:k]] = 0.0
    return mask.view(scores.shape)


def random_mask(n_layer: int, n_head: int, k: int, seed: int = 0) -> torch.Tensor:
    """``(n_layer, n_head)`` float keep-mask with ``k`` heads, drawn uniformly without replacement
    (``seed``), set to 0: the baseline an importance score must beat."""
    for name, v in (("n_layer", n_layer), ("n_head", n_head)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    k = _check_k(k, n_layer * n_head)
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n_layer * n_head)
    mask[torch.randperm(n_layer * n_head, generator=g)[:k]] = 0.0
    return mask.view(n_layer, n_head)


class PrunedAttention(nn.Module):
    """GQA attention with a subset of its query heads: ``q_heads`` (kept query heads, in order)
    and the KV heads they read (``kv_heads``: the kept ones; ``kv_index[i]`` is the position in
    ``kv_heads`` of the KV head query head ``q_heads[i]`` reads, ``q // n_rep`` as in
    :func:`bmlib.models.llama.repeat_kv`). No KV cache (it is sized for every head)."""

    def __init__(self, attn: nn.Module, q_heads: list[int]):
        super().__init__()
        cfg = attn.cfg
        self.cfg = cfg
        hs, rep = cfg.head_dim, cfg.n_rep
        q_heads = sorted(int(h) for h in q_heads)
        kv_heads = sorted({h // rep for h in q_heads})
        self.q_heads, self.kv_heads = q_heads, kv_heads
        self.register_buffer("kv_index", torch.tensor([kv_heads.index(h // rep) for h in q_heads], dtype=torch.long),
                             persistent=False)
        q_rows = (torch.tensor(q_heads, dtype=torch.long)[:, None] * hs + torch.arange(hs)).flatten()
        kv_rows = (torch.tensor(kv_heads, dtype=torch.long)[:, None] * hs + torch.arange(hs)).flatten()
        with warnings.catch_warnings():  # a layer without heads makes zero-element matrices
            warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
            self.q_proj = _sliced_linear(attn.q_proj, rows=q_rows)
            self.k_proj = _sliced_linear(attn.k_proj, rows=kv_rows)
            self.v_proj = _sliced_linear(attn.v_proj, rows=kv_rows)
            self.o_proj = _sliced_linear(attn.o_proj, cols=q_rows)

    def forward(self, x, rope, kv_cache=None, layer: int = 0, mask=None, head_mask=None):
        if kv_cache is not None:
            raise ValueError("kv_cache must be None for a head-pruned attention (the cache is sized for every head)")
        if head_mask is not None:
            raise ValueError("head_mask must be None for a head-pruned attention (the heads are already removed)")
        B, T, C = x.shape
        nq, nkv, hs = len(self.q_heads), len(self.kv_heads), self.cfg.head_dim
        if nq == 0:
            return torch.zeros_like(x)  # every head of this layer removed: the block adds nothing
        q = self.q_proj(x).view(B, T, nq, hs).transpose(1, 2)   # (B, nq, T, hs)
        k = self.k_proj(x).view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv', T, hs)
        v = self.v_proj(x).view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv', T, hs)
        q, k = apply_rope(q, cache=rope), apply_rope(k, cache=rope)
        k, v = k.index_select(1, self.kv_index), v.index_select(1, self.kv_index)  # (B, nq, T, hs)
        y = attention(q, k, v, causal=True, mask=mask, impl=self.cfg.attn_impl)  # (B, nq, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, nq * hs)  # (B, T, nq * hs)
        return self.o_proj(y)


def prune_llama_heads(model: Llama, keep: torch.Tensor) -> Llama:
    """A copy of ``model`` without the query heads where ``keep`` (n_layer, n_head; 0/1 or bool)
    is 0, and without the KV heads none of whose query heads is kept. Its outputs equal
    ``model(idx, head_mask=keep)``; a KV cache is refused."""
    check_llama(model)
    check_head_mask(keep, model.config)
    kb = keep.detach().cpu()
    if kb.is_floating_point() and not ((kb == 0) | (kb == 1)).all():
        raise ValueError("keep must hold only 0 and 1 (a float mask scales heads; it cannot remove them)")
    kb = kb.bool()
    new = copy.deepcopy(model)
    for i, block in enumerate(new.model.layers):
        heads = torch.nonzero(kb[i]).flatten().tolist()
        block.self_attn = PrunedAttention(block.self_attn, heads).train(block.self_attn.training)
    return new
