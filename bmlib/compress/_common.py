"""Argument checks and module surgery shared by the compression modules."""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn


def _check_tensor(name: str, t, dim: int | None = None) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{name} must be a {dim}-d tensor, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    return t


def _check_fraction(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0.0 < v <= 1.0):
        raise ValueError(f"{name} must be a number in (0, 1], got {v!r}")
    return float(v)


def linear_layers(model: nn.Module, exclude: Iterable[str] = ("lm_head",)) -> dict:
    """``{qualified name: nn.Linear}`` for every linear layer whose name does not contain an
    ``exclude`` entry (the GPT's ``lm_head`` shares its weight with the token embedding)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    exclude = tuple(exclude)
    return {n: m for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and not any(e in n for e in exclude)}


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)
