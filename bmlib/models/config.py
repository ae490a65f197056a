"""What every model config shares: argument checks with one wording, named presets, ``to_dict``.

Each model family keeps its own frozen dataclass (``GPTConfig``, ``BertConfig``, ...) and its
``PRESETS`` dict in its own file; this module only holds the checks so that a bad value gets the
same clear ``ValueError`` naming the field, whichever model it is given to.
"""
from __future__ import annotations

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


def check_choice(cfg, name: str, options) -> None:
    v = getattr(cfg, name)
    if v not in options:
        raise ValueError(f"{name} must be one of {options}, got {v!r}")


class PresetConfig:
    """Mixin for frozen config dataclasses: ``Config.preset(name, **overrides)`` reads the
    ``PRESETS`` dict of the module that defines the config; ``to_dict()`` for logging/saving."""

    @classmethod
    def preset(cls, name: str, **overrides):
        presets = getattr(sys.modules[cls.__module__], "PRESETS")
        if name not in presets:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(presets)}")
        return replace(presets[name], **overrides)

    def to_dict(self) -> dict:
        return asdict(self)
