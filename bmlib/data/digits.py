"""Handwritten digits (scikit-learn's ``load_digits``): 1,797 grey-scale 8x8 images, 10 classes.

The images are the UCI "Optical Recognition of Handwritten Digits" set as shipped inside the
scikit-learn wheel (pixel values are counts 0..16 of a 4x4 block of a 32x32 bitmap), so nothing is
downloaded. :func:`load_digits` keeps a checksummed copy under ``artifacts/data/digits.npz``.

* :func:`split` — stratified, seeded train/val/test split, images scaled to ``[0, 1]`` as
  ``(N, 1, 8, 8)`` float32 tensors.
* :func:`random_shift`, :func:`random_rotate`, :func:`augment` — label-preserving augmentations as
  batched tensor ops, all randomness from a ``torch.Generator``.
* :class:`AugmentedData` — wraps any object with ``get_batch`` (the training-loop protocol) and
  augments the ``train`` batches only.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .store import cached

DIGITS_SHA256 = "18b68ce634d1126c360a55e1e13f19f24eb9c2fc4c01883619ca0eb3b56c4133"
N_IMAGES, N_CLASSES, SIDE = 1797, 10, 8


def _build() -> dict:
    from sklearn.datasets import load_digits as _sk_load

    d = _sk_load()
    return {"images": d.images.astype(np.uint8), "target": d.target.astype(np.int64)}


def load_digits() -> dict:
    """``dict(images uint8 (1797, 8, 8) in 0..16, target int64 (1797,))``, checksummed."""
    a = cached("digits", _build, package="scikit-learn",
               expected_sha256=None if DIGITS_SHA256 == "PENDING" else DIGITS_SHA256)
    if a["images"].shape != (N_IMAGES, SIDE, SIDE) or a["target"].shape != (N_IMAGES,):
        raise ValueError(f"cached digits have shapes {a['images'].shape}, {a['target'].shape}; expected "
                         f"({N_IMAGES}, {SIDE}, {SIDE}) and ({N_IMAGES},)")
    return a


def split(val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0) -> dict:
    """Stratified train/val/test split of the digits.

    Returns ``{"train": (x, y), "val": (x, y), "test": (x, y)}`` with ``x`` float32 ``(n, 1, 8, 8)``
    in ``[0, 1]`` and ``y`` int64 ``(n,)``. Every class keeps (up to rounding) its share in every
    split; the same ``seed`` gives the same split.
    """
    for name, v in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
            raise ValueError(f"{name} must be a fraction in (0, 1), got {v!r}")
    if val_fraction + test_fraction >= 0.9:
        raise ValueError(f"val_fraction + test_fraction must be < 0.9 to leave training data, "
                         f"got {val_fraction + test_fraction}")
    if not (isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0):
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    from sklearn.model_selection import train_test_split

    a = load_digits()
    x = a["images"].astype(np.float32)[:, None] / 16.0  # (N, 1, 8, 8)
    y = a["target"]
    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=test_fraction, stratify=y, random_state=seed)
    train, val = train_test_split(rest, test_size=val_fraction / (1 - test_fraction), stratify=y[rest],
                                  random_state=seed)
    return {s: (torch.from_numpy(x[i]), torch.from_numpy(y[i]))
            for s, i in (("train", np.sort(train)), ("val", np.sort(val)), ("test", np.sort(test)))}


def _check_images(x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"x must be a float tensor of shape (B, C, H, W), got {x.dtype} {tuple(x.shape)}")


def random_shift(x: torch.Tensor, max_shift: int = 1, generator: torch.Generator | None = None):
    """Shift each image by an integer offset in ``[-max_shift, max_shift]`` along each axis,
    filling the uncovered border with zeros (the background). ``x`` is ``(B, C, H, W)``."""
    _check_images(x)
    if not (isinstance(max_shift, int) and not isinstance(max_shift, bool) and 0 <= max_shift < min(x.shape[-2:])):
        raise ValueError(f"max_shift must be an int in [0, {min(x.shape[-2:]) - 1}], got {max_shift!r}")
    if max_shift == 0:
        return x.clone()
    B, C, H, W = x.shape
    s = max_shift
    d = torch.randint(-s, s + 1, (B, 2), generator=generator)  # (B, 2): (dy, dx)
    padded = F.pad(x, (s, s, s, s))  # (B, C, H + 2s, W + 2s)
    rows = (torch.arange(H)[None, :] + s - d[:, :1]).to(x.device)  # (B, H): source rows
    cols = (torch.arange(W)[None, :] + s - d[:, 1:]).to(x.device)  # (B, W): source columns
    b = torch.arange(B, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def random_rotate(x: torch.Tensor, max_degrees: float = 10.0, generator: torch.Generator | None = None):
    """Rotate each image about its centre by an angle drawn uniformly from ``[-max_degrees,
    max_degrees]`` (bilinear interpolation, zeros outside)."""
    _check_images(x)
    if isinstance(max_degrees, bool) or not isinstance(max_degrees, (int, float)) or not 0 <= max_degrees <= 180:
        raise ValueError(f"max_degrees must be a number in [0, 180], got {max_degrees!r}")
    B = x.shape[0]
    theta = (torch.rand(B, generator=generator) * 2 - 1) * math.radians(max_degrees)  # (B,)
    c, s = torch.cos(theta), torch.sin(theta)
    z = torch.zeros_like(c)
    mat = torch.stack([torch.stack([c, -s, z], 1), torch.stack([s, c, z], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(mat.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def augment(x: torch.Tensor, generator: torch.Generator | None = None, max_shift: int = 1,
            max_degrees: float = 10.0) -> torch.Tensor:
    """A small rotation followed by a random shift (both seeded by ``generator``)."""
    return random_shift(random_rotate(x, max_degrees, generator), max_shift, generator)


class AugmentedData:
    """The data protocol with augmentation: ``train`` batches of ``data`` go through
    ``augment(x, generator, **kwargs)``; ``val`` batches are returned untouched."""

    def __init__(self, data, **augment_kwargs):
        if not callable(getattr(data, "get_batch", None)):
            raise TypeError(f"data must have get_batch(split, batch_size, generator), got {type(data).__name__}")
        self.data, self.kwargs = data, augment_kwargs

    def get_batch(self, split: str, batch_size: int, generator: torch.Generator):
        x, y = self.data.get_batch(split, batch_size, generator)
        if split == "train":
            x = augment(x, generator, **self.kwargs)
        return x, y

    def state_dict(self):
        return self.data.state_dict() if hasattr(self.data, "state_dict") else None

    def load_state_dict(self, st):
        if hasattr(self.data, "load_state_dict"):
            self.data.load_state_dict(st)
