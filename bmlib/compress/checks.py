"""Argument checks shared by the compression modules: a bmlib Llama, and token-id windows."""
from __future__ import annotations

import torch

from ..models.llama import Llama


def check_llama(model) -> None:
    if not isinstance(model, Llama):
        raise TypeError(f"model must be a bmlib Llama, got {type(model).__name__}")


def check_token_ids(x, name: str = "windows", min_len: int = 1, vocab_size: int | None = None) -> torch.Tensor:
    """``x`` if it is an (n, T >= ``min_len``) int64 tensor of token ids (in ``[0, vocab_size)``
    when that is given); a ``ValueError`` naming ``name`` otherwise."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] < min_len or x.dtype != torch.long:
        got = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a (n, T >= {min_len}) int64 tensor of token ids, got {got}")
    if vocab_size is not None and x.numel() and (x.min() < 0 or x.max() >= vocab_size):
        raise ValueError(f"{name} must hold token ids in [0, {vocab_size}), got range "
                         f"[{int(x.min())}, {int(x.max())}]")
    return x
