"""Low rank: truncated-SVD factorisation of a linear layer and LoRA adapters."""
from __future__ import annotations

import copy
import math
from typing import Iterable

import torch
import torch.nn as nn

from ._common import _check_tensor, _set_module


# --------------------------------------------------------------------------------------------
# Low rank: SVD and LoRA
# --------------------------------------------------------------------------------------------
class LowRankLinear(nn.Module):
    """``y = up(down(x))``: a rank-``r`` factorisation ``W ~ B A`` with A (r, in), B (out, r)."""

    def __init__(self, down: nn.Linear, up: nn.Linear):
        super().__init__()
        self.down, self.up = down, up
        self.in_features, self.out_features, self.rank = down.in_features, up.out_features, down.out_features

    def forward(self, x):
        return self.up(self.down(x))

    def weight_approx(self) -> torch.Tensor:
        return self.up.weight @ self.down.weight


def svd_factorize(linear: nn.Linear, rank: int) -> LowRankLinear:
    """Best rank-``rank`` approximation of ``linear.weight`` (Eckart-Young): ``W = U S V^T``,
    ``A = sqrt(S_r) V_r^T``, ``B = U_r sqrt(S_r)``. Saves parameters when ``r (in + out) < in * out``."""
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
    out, inp = linear.weight.shape
    if isinstance(rank, bool) or not isinstance(rank, int) or not (1 <= rank <= min(out, inp)):
        raise ValueError(f"rank must be an int in [1, {min(out, inp)}] for a weight of shape {(out, inp)}, got {rank!r}")
    U, S, Vh = torch.linalg.svd(linear.weight.detach().float(), full_matrices=False)
    r = S[:rank].sqrt()
    down = nn.Linear(inp, rank, bias=False)
    up = nn.Linear(rank, out, bias=linear.bias is not None)
    dt, dev = linear.weight.dtype, linear.weight.device
    with torch.no_grad():
        down.weight.copy_(r[:, None] * Vh[:rank])  # (r, in)
        up.weight.copy_(U[:, :rank] * r[None, :])  # (out, r)
        if linear.bias is not None:
            up.bias.copy_(linear.bias.detach())
    return LowRankLinear(down, up).to(device=dev, dtype=dt)


def low_rank_error(w: torch.Tensor, rank: int) -> float:
    """Frobenius error of the truncated SVD of ``w`` at ``rank`` (= sqrt of the tail sum of sigma^2)."""
    _check_tensor("w", w, dim=2)
    lin = nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    return (w.float() - svd_factorize(lin, rank).weight_approx().float()).norm().item()


class LoRALinear(nn.Module):
    """LoRA (Hu et al., 2021): ``y = base(x) + (alpha / r) * x A^T B^T`` with the base frozen.

    ``A`` (r, in) starts Kaiming-uniform and ``B`` (out, r) at zero, so training starts exactly at
    the base model; only ``A`` and ``B`` train. :meth:`merge` folds ``(alpha/r) B A`` into the weight."""

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"base must be an nn.Linear, got {type(base).__name__}")
        if isinstance(r, bool) or not isinstance(r, int) or not (1 <= r <= min(base.in_features, base.out_features)):
            raise ValueError(f"r must be an int in [1, {min(base.in_features, base.out_features)}], got {r!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
            raise ValueError(f"alpha must be a positive number, got {alpha!r}")
        if not (0.0 <= dropout < 1.0):
            raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
        self.base = base.requires_grad_(False)
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        dev, dt = base.weight.device, base.weight.dtype
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, device=dev, dtype=dt))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=dev, dtype=dt))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout)
        self.in_features, self.out_features = base.in_features, base.out_features

    def forward(self, x):
        return self.base(x) + (self.dropout(x) @ self.lora_A.T @ self.lora_B.T) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        return self.scaling * (self.lora_B @ self.lora_A)  # (out, in)

    def merge(self) -> nn.Linear:
        """A plain ``nn.Linear`` with weight ``W + (alpha/r) B A`` (same outputs, no extra latency)."""
        lin = copy.deepcopy(self.base)
        with torch.no_grad():
            lin.weight.add_(self.delta_weight().to(lin.weight.dtype))
        return lin.requires_grad_(True)


def add_lora(model: nn.Module, targets: Iterable[str], r: int = 8, alpha: float = 16.0,
             dropout: float = 0.0, train: Iterable[str] = ()) -> nn.Module:
    """Freeze ``model`` and wrap every ``nn.Linear`` whose name ends with one of ``targets`` in a
    :class:`LoRALinear` (in place). Parameters whose name contains a ``train`` entry (e.g. a new
    classifier head) stay trainable. Returns the model."""
    targets, train = tuple(targets), tuple(train)
    if not targets:
        raise ValueError("targets must name at least one linear layer suffix, e.g. ('query', 'value')")
    model.requires_grad_(False)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.endswith(targets)]
    if not names:
        raise ValueError(f"targets {targets} match no nn.Linear in the model")
    for n in names:
        _set_module(model, n, LoRALinear(model.get_submodule(n), r, alpha, dropout))
    for n, p in model.named_parameters():
        if any(t in n for t in train):
            p.requires_grad_(True)
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every :class:`LoRALinear` in ``model`` by its merged ``nn.Linear`` (in place)."""
    for n, m in list(model.named_modules()):
        if isinstance(m, LoRALinear):
            _set_module(model, n, m.merge())
    return model
