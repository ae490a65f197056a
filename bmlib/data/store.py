"""A checksummed cache of normalised data under ``artifacts/data/``.

``cached(name, build, expected_sha256=None)`` returns a dict of NumPy arrays. On the first call it
runs ``build()`` (which reads the installed source package), stores the arrays as
``artifacts/data/<name>.npz`` with ``<name>.sha256`` beside it, and returns them. Later calls (and
machines that only received ``artifacts/data``) load the copy after checking its checksum. If the
copy is missing or corrupt and ``build`` fails with ``ImportError``, the error names the package.
If ``expected_sha256`` is given, the content digest of the arrays must match it (so a changed
upstream dataset is noticed, not silently used).
"""
from __future__ import annotations

import hashlib
import io
from typing import Callable

import numpy as np

from ..env import artifacts_dir
from ..io import atomic_write


def content_sha256(arrays: dict) -> str:
    """A digest of array names, dtypes, shapes and bytes (independent of the npz container)."""
    if not isinstance(arrays, dict) or not all(isinstance(k, str) for k in arrays):
        raise TypeError(f"arrays must be a dict of name -> array, got {type(arrays).__name__}")
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        if a.dtype == object:
            raise ValueError(f"array {k!r} has dtype object; store strings as fixed-width unicode")
        h.update(k.encode())
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def cached(name: str, build: Callable[[], dict], package: str, expected_sha256: str | None = None,
           ) -> dict:
    if not name or "/" in name:
        raise ValueError(f"name must be a plain file stem, got {name!r}")
    folder = artifacts_dir("data")
    npz, sha = folder / f"{name}.npz", folder / f"{name}.sha256"
    if npz.exists() and sha.exists():
        with np.load(npz, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        digest = content_sha256(arrays)
        if digest == sha.read_text().strip() and (expected_sha256 in (None, digest)):
            return arrays
    try:
        arrays = build()
    except ImportError as e:
        raise ImportError(
            f"dataset {name!r} needs the package {package!r} (pip install {package}), or a valid copy "
            f"at {npz} (copy artifacts/data from a machine that has it): {e}") from e
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    digest = content_sha256(arrays)
    if expected_sha256 is not None and digest != expected_sha256:
        raise ValueError(
            f"dataset {name!r} from {package!r} has sha256 {digest}, expected {expected_sha256}: "
            "the installed package ships different data than the book was written against")
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with atomic_write(npz) as f:
        f.write(buf.getvalue())
    with atomic_write(sha, "w") as f:
        f.write(digest + "\n")
    return arrays
