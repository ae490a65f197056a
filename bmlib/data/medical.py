"""Medical tabular data and glucose readings, offline from installed packages.

* :func:`load_breast_cancer`: scikit-learn's Wisconsin Diagnostic Breast Cancer data (Street,
  Wolberg and Mangasarian, 1993): 569 fine-needle aspirates, 30 real-valued nuclear features
  (mean, standard error and "worst" of 10 measurements); scikit-learn codes malignant as 0 and
  benign as 1 -- we flip it, so that **1 = malignant**, the class a screening test must find.
* :func:`load_diabetes`: scikit-learn's diabetes regression data (Efron et al., 2004): 442 patients,
  10 baseline variables (already mean-centred and scaled), target = disease progression one year on.
* :func:`load_glucose`: continuous glucose monitor readings of one person from
  ``bokeh_sampledata.glucose`` (every 5 minutes, March-October 2010): time, glucose (mg/dL) and the
  sensor's raw current ``isig`` (NaN where the source says "nil", about 2%).

:func:`stratified_split` makes seeded, class-balanced train/val/test splits.
"""
from __future__ import annotations

import numpy as np

from .store import cached

BREAST_CANCER_SHA256 = "60d8486ec5ed21afafab4d39456394c2282d9d1ff368d57b7edbc5a34babccb7"
DIABETES_SHA256 = "d54e0e34d8150e166002278c585b427d3bd8c8d5a8e67c86bad923aaf9bdfcc6"
GLUCOSE_SHA256 = "4eca88e2dab4ea4f2e22c130bca850f65a9da71999da61674a57f77a3aa94e24"


def _build_breast_cancer() -> dict:
    from sklearn.datasets import load_breast_cancer as _load

    d = _load()
    return {"x": d.data.astype(np.float64), "y": (1 - d.target).astype(np.int64),  # 1 = malignant
            "feature_names": np.array(list(d.feature_names))}


def load_breast_cancer() -> dict:
    """``dict(x (569, 30) float64, y (569,) int64 with 1 = malignant (212), feature_names (30,))``."""
    a = cached("breast_cancer", _build_breast_cancer, package="scikit-learn",
               expected_sha256=BREAST_CANCER_SHA256)
    if a["x"].shape != (569, 30) or a["y"].shape != (569,) or int(a["y"].sum()) != 212:
        raise ValueError(f"breast cancer data has unexpected shapes {a['x'].shape}, {a['y'].shape}")
    return {"x": a["x"], "y": a["y"], "feature_names": [str(s) for s in a["feature_names"]]}


def _build_diabetes() -> dict:
    from sklearn.datasets import load_diabetes as _load

    d = _load()
    return {"x": d.data.astype(np.float64), "y": d.target.astype(np.float64),
            "feature_names": np.array(list(d.feature_names))}


def load_diabetes() -> dict:
    """``dict(x (442, 10), y (442,) progression score, feature_names (10,))``."""
    a = cached("diabetes", _build_diabetes, package="scikit-learn", expected_sha256=DIABETES_SHA256)
    if a["x"].shape != (442, 10) or a["y"].shape != (442,):
        raise ValueError(f"diabetes data has unexpected shapes {a['x'].shape}, {a['y'].shape}")
    return {"x": a["x"], "y": a["y"], "feature_names": [str(s) for s in a["feature_names"]]}


def _build_glucose() -> dict:
    import pandas as pd
    from bokeh_sampledata.glucose import data  # isig is text with "nil" for missing readings

    return {"time": data.index.to_numpy().astype("datetime64[m]"),
            "glucose": data["glucose"].to_numpy(dtype=np.float64),
            "isig": pd.to_numeric(data["isig"], errors="coerce").to_numpy(dtype=np.float64)}


def load_glucose() -> dict:
    """``dict(time datetime64[m] (T,), glucose mg/dL (T,), isig (T,))``, oldest first, as the
    source has it (non-decreasing: three timestamps appear twice)."""
    a = cached("glucose", _build_glucose, package="bokeh-sampledata", expected_sha256=GLUCOSE_SHA256)
    n = a["time"].shape[0]
    if n < 1000 or a["glucose"].shape != (n,) or a["isig"].shape != (n,):
        raise ValueError(f"glucose data has unexpected shapes {a['time'].shape}, {a['glucose'].shape}")
    return dict(a)


def stratified_split(y, fractions=(0.6, 0.2, 0.2), seed: int = 0) -> dict:
    """Seeded index split ``{"train", "val", "test"}`` keeping each class's share in every part."""
    y = np.asarray(y)
    if y.ndim != 1 or y.size < 3:
        raise ValueError(f"y must be 1-D with at least 3 labels, got shape {y.shape}")
    f = tuple(float(v) for v in fractions)
    if len(f) != 3 or min(f) <= 0 or abs(sum(f) - 1.0) > 1e-9:
        raise ValueError(f"fractions must be three positive numbers summing to 1, got {fractions!r}")
    if not (isinstance(seed, int) and seed >= 0):
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    rng = np.random.default_rng(seed)
    parts = {"train": [], "val": [], "test": []}
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n1 = int(round(f[0] * idx.size))
        n2 = n1 + int(round(f[1] * idx.size))
        parts["train"].append(idx[:n1])
        parts["val"].append(idx[n1:n2])
        parts["test"].append(idx[n2:])
    return {k: np.sort(np.concatenate(v)) for k, v in parts.items()}
