"""Real photographs shipped inside the scikit-image wheel, checksummed through ``bmlib.data.store``.

* :func:`load_photos` — colour photos from ``skimage.data`` (``astronaut``, ``chelsea`` (a cat),
  ``coffee``, ``rocket``) as uint8 ``(H, W, 3)`` arrays, nothing downloaded;
* :func:`load_lfw_subset` — ``skimage.data.lfw_subset()``: 200 grey 25x25 crops from Labeled Faces
  in the Wild (Huang et al., 2007), per its docstring the first 100 faces and the last 100 non-faces
  cut from the same photos' backgrounds; returned with the labels ``1`` (face) / ``0`` (not a face)
  that this order implies (values in ``[0, 1]``, although the docstring says uint8);
* :func:`hog_features` — histograms of oriented gradients (Dalal & Triggs, 2005) per image, through
  ``skimage.feature.hog``: the classical baseline for the transfer-learning section of chapter 7.
"""
from __future__ import annotations

import numpy as np

from .store import cached

PACKAGE = "scikit-image"
PHOTO_NAMES = ("astronaut", "chelsea", "coffee", "rocket")
PHOTOS_SHA256 = "794775fae94774c85eefba04ad3cda357b8c5413bbb37a2ce1ddbbc94566beb8"
LFW_SHA256 = "926d73348bc9198e23b86511beb03a96d2823e4fe5384fed861db3c7e5cd0874"
N_LFW, LFW_SIDE, N_FACES = 200, 25, 100


def _skimage_data():
    try:
        import skimage.data as d
    except ImportError as e:
        raise ImportError(f"the photos ship in the package {PACKAGE!r}: pip install {PACKAGE}") from e
    return d


def _build_photos() -> dict:
    d = _skimage_data()
    return {n: np.asarray(getattr(d, n)(), dtype=np.uint8) for n in PHOTO_NAMES}


def load_photos() -> dict:
    """``{name: uint8 (H, W, 3)}`` for :data:`PHOTO_NAMES`, checksummed."""
    a = cached("skimage_photos", _build_photos, package=PACKAGE,
               expected_sha256=None if PHOTOS_SHA256 == "PENDING" else PHOTOS_SHA256)
    for n in PHOTO_NAMES:
        if a[n].ndim != 3 or a[n].shape[-1] != 3 or a[n].dtype != np.uint8:
            raise ValueError(f"photo {n!r} has shape {a[n].shape} dtype {a[n].dtype}; expected uint8 (H, W, 3)")
    return {n: a[n] for n in PHOTO_NAMES}


def _build_lfw() -> dict:
    d = _skimage_data()
    x = np.asarray(d.lfw_subset(), dtype=np.float32)
    y = np.r_[np.ones(N_FACES), np.zeros(len(x) - N_FACES)].astype(np.int64)
    return {"images": x, "target": y}


def load_lfw_subset() -> tuple[np.ndarray, np.ndarray]:
    """``(images float32 (200, 25, 25) in [0, 1], target int64 (200,))``: 1 = face (first 100)."""
    a = cached("lfw_subset", _build_lfw, package=PACKAGE,
               expected_sha256=None if LFW_SHA256 == "PENDING" else LFW_SHA256)
    x, y = a["images"], a["target"]
    if x.shape != (N_LFW, LFW_SIDE, LFW_SIDE) or y.shape != (N_LFW,):
        raise ValueError(f"lfw_subset has shapes {x.shape}, {y.shape}; expected "
                         f"({N_LFW}, {LFW_SIDE}, {LFW_SIDE}) and ({N_LFW},)")
    return x, y


def hog_features(images, orientations: int = 9, pixels_per_cell: int = 5, cells_per_block: int = 2) -> np.ndarray:
    """HOG descriptors ``(B, D)`` float64 of grey images ``(B, H, W)``; ``D`` =
    ``n_blocks_y * n_blocks_x * cells_per_block**2 * orientations`` with ``n_blocks = H // ppc - cpb + 1``
    (L2-Hys block normalisation, as ``skimage.feature.hog``)."""
    x = np.asarray(images)
    if x.ndim != 3:
        raise ValueError(f"images must have shape (B, H, W) (grey), got {x.shape}")
    for name, v in (("orientations", orientations), ("pixels_per_cell", pixels_per_cell),
                    ("cells_per_block", cells_per_block)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if min(x.shape[1:]) // pixels_per_cell < cells_per_block:
        raise ValueError(f"pixels_per_cell ({pixels_per_cell}) x cells_per_block ({cells_per_block}) "
                         f"does not fit images of size {x.shape[1:]}")
    try:
        from skimage.feature import hog
    except ImportError as e:
        raise ImportError(f"HOG features need the package {PACKAGE!r}: pip install {PACKAGE}") from e
    return np.stack([hog(im, orientations=orientations, pixels_per_cell=(pixels_per_cell,) * 2,
                         cells_per_block=(cells_per_block,) * 2, block_norm="L2-Hys", feature_vector=True)
                     for im in x])
