"""SmoothQuant (Xiao et al., 2023): move activation outliers into the weights before int8.

Dynamic int8 gives each activation tensor one scale, ``max|x| / 127``, so a few outlier channels
(SmolLM2's ``down_proj`` input reaches hundreds of times its RMS) leave the typical value only a
handful of levels. For a linear layer ``y = x W^T`` any positive per-input-channel vector ``s``
gives the same product, ``y = (x / s) (W diag(s))^T``; with

    s_j = max|x_j|^alpha / max|W_:j|^(1 - alpha)

the activation's outliers shrink and the weight's columns grow by the same factor, splitting the
quantization difficulty between the two (``alpha = 0.5``: evenly). The ``1/s`` is folded into the
layer that *produces* ``x``, so the smoothed model costs nothing at run time:

* ``q_proj``, ``k_proj``, ``v_proj`` read ``input_layernorm(x)``: divide the RMSNorm gain by ``s``;
* ``gate_proj``, ``up_proj`` read ``post_attention_layernorm(x)``: the same;
* ``down_proj`` reads ``silu(gate) * up``, linear in ``up``'s output: divide ``up_proj``'s rows;
* the output layer reads ``model.norm(x)``: divide the final norm's gain; the output layer gets
  its own copy of the (tied) embedding matrix to multiply, and the embeddings stay as they were.

(``o_proj``'s input comes from ``v_proj`` through attention; with grouped-query attention one
``v`` channel feeds several heads, so it is left as it is: its input has no large outliers.)
In exact arithmetic the smoothed model computes the same function (a test asserts the fp32
logits); only its int8 version changes. The scales come from calibration text, which must not be
the text the quality is measured on.
"""
from __future__ import annotations

import copy

import torch

from .checks import check_llama, check_token_ids

_GROUPS = (("input_layernorm", "self_attn", ("q_proj", "k_proj", "v_proj")),
           ("post_attention_layernorm", "mlp", ("gate_proj", "up_proj")))


@torch.no_grad()
def input_absmax(model, windows: torch.Tensor, batch_size: int = 4) -> dict:
    """Per input channel ``max |x|`` of every linear layer's input in a bmlib
    ``Llama`` over the calibration ``windows`` (n, T) of token ids: ``{"model.layers.0.mlp.down_proj":
    (in_features,) float32, ...}``."""
    check_llama(model)
    check_token_ids(windows, "windows", 2, model.config.vocab_size)
    amax, hooks = {}, []

    def record(name):
        def hook(_mod, inp, _out):
            m = inp[0].detach().abs().flatten(0, -2).amax(0).float()  # (in,)
            amax[name] = m if name not in amax else torch.maximum(amax[name], m)
        return hook

    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            hooks.append(mod.register_forward_hook(record(name)))
    try:
        for i in range(0, windows.shape[0], batch_size):
            model(windows[i:i + batch_size])
    finally:
        for h in hooks:
            h.remove()
    return amax


def smoothing_scales(act_absmax: torch.Tensor, weights, alpha: float) -> torch.Tensor:
    """``s_j = max|x_j|^alpha / max_i |W_ij|^(1 - alpha)`` over the input channels ``j`` of the
    weights (out, in) that read the same activation (their rows stacked)."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    w_max = torch.cat([w.detach().abs().float() for w in weights]).amax(0)  # (in,)
    if w_max.shape != act_absmax.shape:
        raise ValueError(f"act_absmax has {tuple(act_absmax.shape)} channels, the weights "
                         f"{tuple(w_max.shape)}")
    return act_absmax.clamp_min(1e-5).pow(alpha) / w_max.clamp_min(1e-5).pow(1 - alpha)


@torch.no_grad()
def smooth_llama(model, act_absmax: dict, alpha: float = 0.5, head: bool = True,
                 alpha_head: float | None = None) -> torch.nn.Module:
    """A copy of the bmlib ``Llama`` ``model`` with SmoothQuant's scales folded in (the module
    docstring says where): the same function in fp32, easier activations for int8.
    ``act_absmax`` is :func:`input_absmax` of ``model`` on calibration text. ``head``: smooth the
    output layer too (its own copy of the tied embedding matrix), with ``alpha_head`` (default
    ``alpha``): its error goes straight into the logits, so it may want its own balance."""
    check_llama(model)
    need = {f"model.layers.{i}.{parent}.{names[0]}" for i in range(model.config.n_layer)
            for _, parent, names in _GROUPS} | {f"model.layers.{i}.mlp.down_proj" for i in range(model.config.n_layer)}
    need |= {"lm_head"} if head else set()
    if not isinstance(act_absmax, dict) or need - set(act_absmax):
        raise ValueError(f"act_absmax must be input_absmax(model, ...) of this model; it lacks "
                         f"{sorted(need - set(act_absmax or {}))[:3]}")
    out = copy.deepcopy(model)
    for i, block in enumerate(out.model.layers):
        pre = f"model.layers.{i}"
        for norm_name, parent, names in _GROUPS:
            lins = [getattr(getattr(block, parent), n) for n in names]
            s = smoothing_scales(act_absmax[f"{pre}.{parent}.{names[0]}"], [l.weight for l in lins], alpha)
            getattr(block, norm_name).weight.div_(s)  # the norm's output: x / s
            for lin in lins:
                lin.weight.mul_(s)  # (out, in) * (in,): column j times s_j
        up, down = block.mlp.up_proj, block.mlp.down_proj
        s = smoothing_scales(act_absmax[f"{pre}.mlp.down_proj"], [down.weight], alpha)
        up.weight.div_(s[:, None])  # up's output channel j, hence silu(gate) * up, over s_j
        down.weight.mul_(s)
    if head:  # the output layer reads model.norm(x); its weight is the embedding table when tied
        s = smoothing_scales(act_absmax["lm_head"], [out.lm_head.weight], alpha if alpha_head is None else alpha_head)
        out.model.norm.weight.div_(s)
        out.lm_head.weight = torch.nn.Parameter(out.lm_head.weight * s)  # so it gets its own copy (untied)
    return out
