"""Size accounting (parameters, bytes in memory and on disk) and the cost/quality Pareto front."""
from __future__ import annotations

import io
import math

import torch
import torch.nn as nn


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of (unique) parameters; ``trainable_only`` counts those with ``requires_grad``."""
    seen, n = set(), 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        n += p.numel()
    return n



# --------------------------------------------------------------------------------------------
# Size on disk and in memory
# --------------------------------------------------------------------------------------------
def memory_bytes(model: nn.Module) -> int:
    """Bytes of the model's unique parameter and buffer storage (tied weights once). Models from
    ``torch.ao`` dynamic quantization keep their weights in packed params: counted from the state dict."""
    seen, n = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = (t.data_ptr(), t.numel(), t.dtype)
        if key in seen:
            continue
        seen.add(key)
        n += t.numel() * t.element_size()
    if any("_packed_params" in k for k in model.state_dict()):
        n = sum(t.numel() * t.element_size() for t in _flat_state_tensors(model))
    return n


def _flat_state_tensors(model: nn.Module):
    seen = set()
    for k, v in model.state_dict().items():
        items = v if isinstance(v, tuple) else (v,)
        for t in items:
            if isinstance(t, torch.Tensor):
                if t.is_quantized:
                    t = t.int_repr()
                key = (t.data_ptr(), t.numel())
                if key not in seen:
                    seen.add(key)
                    yield t


def disk_bytes(model: nn.Module, format: str = "safetensors") -> int:
    """Size of the serialised state dict: ``"safetensors"`` (shared tensors stored once) or
    ``"torch"`` (``torch.save``; the only one that can hold ``torch.ao`` packed weights)."""
    formats = ("safetensors", "torch")
    if format not in formats:
        raise ValueError(f"format must be one of {formats}, got {format!r}")
    if format == "torch":
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        return buf.getbuffer().nbytes
    from safetensors.torch import save

    unique, seen = {}, set()
    for k, v in model.state_dict().items():
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"format='safetensors' cannot store {k!r} ({type(v).__name__}); use format='torch'")
        key = (v.data_ptr(), v.numel(), v.dtype)
        if key not in seen:  # tied weights (lm_head = wte) once
            seen.add(key)
            unique[k] = v.detach().contiguous()
    return len(save(unique))


def pareto_front(costs, qualities, higher_is_better: bool = False) -> list[int]:
    """Indices of the non-dominated points, ordered by cost: no other point has a cost <= and a
    quality at least as good, with one of the two strictly better. ``costs`` (size, latency) are
    always lower-is-better; ``higher_is_better`` says which way ``qualities`` go."""
    costs, qualities = list(costs), list(qualities)
    if len(costs) != len(qualities):
        raise ValueError(f"costs and qualities must have the same length, got {len(costs)} and {len(qualities)}")
    if not all(math.isfinite(float(v)) for v in costs + qualities):
        raise ValueError("costs and qualities must be finite numbers")
    sign = -1.0 if higher_is_better else 1.0
    order = sorted(range(len(costs)), key=lambda i: (costs[i], sign * qualities[i]))
    front, best = [], math.inf
    for i in order:
        q = sign * qualities[i]
        if q < best:
            front.append(i)
            best = q
    return front
