"""What every model config shares: argument checks with one wording, named presets, ``to_dict``.

Each model family keeps its own frozen dataclass (``GPTConfig``, ``BertConfig``, ...) and its
``PRESETS`` dict in its own file; this module only holds the checks so that a bad value gets the
same clear ``ValueError`` naming the field, whichever model it is given to.

Every subclass of :class:`PresetConfig` gets :func:`check_types` run before its own
``__post_init__``: a field annotated ``int``, ``float``, ``bool``, ``str`` or ``tuple`` that holds
another type raises ``TypeError`` naming the field (``bool`` is not accepted as an ``int``; an
``int`` is accepted as a ``float``; a ``float`` must be finite). The model files then check ranges.

:func:`check_ids` is the one check of token-id tensors that the models' ``forward`` use.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import sys
from dataclasses import asdict, replace


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_positive_ints(cfg, names) -> None:
    """Each named field must be an int >= 1."""
    for name in names:
        v = getattr(cfg, name)
        if not (_is_int(v) and v >= 1):
            raise ValueError(f"{name} must be a positive int, got {v!r}")


def check_heads(cfg, width: str = "n_embd", heads: str = "n_head") -> None:
    """The model width must split evenly into attention heads."""
    w, h = getattr(cfg, width), getattr(cfg, heads)
    if w % h:
        raise ValueError(f"{width} ({w}) must be divisible by {heads} ({h})")


def check_fractions(cfg, names=("dropout",)) -> None:
    """Each named field (a probability such as dropout) must be a number in [0, 1)."""
    for name in names:
        v = getattr(cfg, name)
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v < 1.0):
            raise ValueError(f"{name} must lie in [0, 1), got {v!r}")


def check_positive_numbers(cfg, names) -> None:
    """Each named field (an epsilon, a multiplier) must be a finite number > 0."""
    for name in names:
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {v!r}")


_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "tuple": (tuple,)}


def check_types(cfg) -> None:
    """Every field annotated ``int``/``float``/``bool``/``str``/``tuple`` must hold that type."""
    for f in dataclasses.fields(cfg):
        t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        want = _TYPES.get(t)
        if want is None:
            continue
        v = getattr(cfg, f.name)
        ok = isinstance(v, want) and (t == "bool" or not isinstance(v, bool))
        if not ok:
            raise TypeError(f"{f.name} must be of type {t}, got {type(v).__name__} {v!r}")
        if t == "float" and not math.isfinite(v):
            raise ValueError(f"{f.name} must be a finite number, got {v!r}")


def check_ids(t, name: str, high: int, *, low: int = 0, ignore: int | None = None,
              values: bool = True, batched: bool = False) -> None:
    """``t`` must be an integer tensor with values in ``[low, high)`` (or equal to ``ignore``,
    e.g. ``-100`` for targets); ``batched=True``: a (B, T) one (a ``ValueError`` otherwise, the
    check every model's ``forward`` starts with). ``values=False`` checks only the type: reading
    the values is one host synchronisation, which a CUDA-graph capture or ``torch.compile`` cannot
    take, so the value check is also skipped while either is running."""
    import torch

    if batched and (not isinstance(t, torch.Tensor) or t.dim() != 2):
        raise ValueError(f"{name} must be a (B, T) tensor of token ids, got "
                         f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integer ids, got {type(t).__name__}")
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise TypeError(f"{name} must hold integer ids (torch.long), got dtype {t.dtype}")
    if not values or t.numel() == 0 or torch.compiler.is_compiling():
        return
    if t.is_cuda and torch.cuda.is_current_stream_capturing():
        return
    bad = (t < low) | (t >= high)
    if ignore is not None:
        bad &= t != ignore
    if bool(bad.any()):
        first = t[bad][:5].tolist()
        also = f" (or {ignore})" if ignore is not None else ""
        raise ValueError(f"{name} must hold ids in [{low}, {high}){also}, got {first}")


def decoder_positions(idx, kv_cache, position_ids, vocab_size: int, block_size: int, validate: bool = True):
    """Check a decoder's ``forward`` inputs and return the positions of ``idx``'s tokens.

    ``idx`` must be (B, T) ids in ``[0, vocab_size)``, a KV cache must hold ``B`` rows, and the
    positions lie in ``[0, block_size)``: ``(T,)`` counting on from the cache's ``pos`` when
    ``position_ids`` is ``None``, else ``position_ids`` itself, (B, T) or (T,)."""
    import torch

    check_ids(idx, "idx", vocab_size, values=validate, batched=True)
    B, T = idx.shape
    cache_b = getattr(kv_cache, "batch_size", None)
    if cache_b is not None and cache_b != B:
        raise ValueError(f"kv_cache was built for batch_size {cache_b}, but idx has batch size {B}")
    if position_ids is None:
        start = kv_cache.pos if kv_cache is not None else 0
        if start + T > block_size:
            raise ValueError(f"sequence length {start + T} exceeds block_size {block_size}")
        return torch.arange(start, start + T, dtype=torch.long, device=idx.device)  # (T,)
    if not isinstance(position_ids, torch.Tensor) or position_ids.shape not in ((B, T), (T,)):
        raise ValueError(f"position_ids must be a ({B}, {T}) or ({T},) tensor, got "
                         f"{tuple(getattr(position_ids, 'shape', ())) or type(position_ids).__name__}")
    if T > block_size:
        raise ValueError(f"sequence length {T} exceeds block_size {block_size}")
    check_ids(position_ids, "position_ids", block_size, values=validate)
    return position_ids  # (B, T) or (T,)


def lm_loss(logits, targets, idx, vocab_size: int, validate: bool = True):
    """Mean next-token cross-entropy of ``logits`` (B, T, V) against ``targets`` of ``idx``'s shape
    (ids in ``[0, vocab_size)``, ``-100`` ignored), computed in fp32."""
    import torch
    import torch.nn.functional as F

    if not isinstance(targets, torch.Tensor) or targets.shape != idx.shape:
        raise ValueError(f"targets must have the shape of idx {tuple(idx.shape)}, got "
                         f"{tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__}")
    check_ids(targets, "targets", vocab_size, ignore=-100, values=validate)
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)


def check_images(x, in_chans: int, image_size: int) -> None:
    """``x`` must be a floating-point tensor of images ``(B, in_chans, image_size, image_size)``."""
    import torch

    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of images, got {type(x).__name__}")
    if x.dim() != 4 or tuple(x.shape[1:]) != (in_chans, image_size, image_size):
        raise ValueError(f"x must have shape (B, {in_chans}, {image_size}, {image_size}) "
                         f"(B, in_chans, image_size, image_size), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")


def check_choice(cfg, name: str, options) -> None:
    v = getattr(cfg, name)
    if v not in options:
        raise ValueError(f"{name} must be one of {options}, got {v!r}")


class PresetConfig:
    """Mixin for frozen config dataclasses: ``Config.preset(name, **overrides)`` reads the
    ``PRESETS`` dict of the module that defines the config; ``to_dict()`` for logging/saving.
    A subclass's ``__post_init__`` runs after :func:`check_types`."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("__post_init__")
        if own is None and any("__post_init__" in vars(b) for b in cls.__mro__[1:-1]):
            return  # the inherited __post_init__ is already wrapped

        @functools.wraps(own or (lambda self: None))
        def __post_init__(self):
            check_types(self)
            if own is not None:
                own(self)

        cls.__post_init__ = __post_init__

    @classmethod
    def preset(cls, name: str, **overrides):
        presets = getattr(sys.modules[cls.__module__], "PRESETS")
        if name not in presets:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(presets)}")
        if not isinstance(presets[name], cls):  # a module may hold presets of several configs
            raise ValueError(f"preset {name!r} is a {type(presets[name]).__name__}, not a {cls.__name__}")
        return replace(presets[name], **overrides)

    def to_dict(self) -> dict:
        return asdict(self)
