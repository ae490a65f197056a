"""Rare positives: class weights, random oversampling and SMOTE, fitted inside training folds only.

The one rule of resampling: it is part of *fitting*. Synthetic or repeated examples are made from
the training rows of a fold and never reach that fold's validation rows (or the test set), which
are scored as they are. :func:`resample` does one fit's resampling and says which rows are new;
:func:`fit` fits a model with one of :data:`METHODS`; :func:`forward_folds_scores` runs
forward-chaining folds (train on the past, validate on the next block), resampling each fold's
training rows and checking that every validation row is an original, untouched row.

SMOTE (Chawla et al., 2002) and random oversampling come from ``imbalanced-learn``; this module only
decides *where* they are applied.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["METHODS", "resample", "fit", "forward_folds_scores"]

METHODS = ("none", "class_weight", "oversample", "smote")


def _check_xy(X, y):
    X = np.asarray(X)
    y = np.asarray(y)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n_samples, n_features), got shape {X.shape}")
    if y.ndim != 1 or len(y) != len(X):
        raise ValueError(f"y must be 1-D with len(X)={len(X)} labels, got shape {y.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError("X contains NaN or infinite values")
    if not set(np.unique(y).tolist()) <= {0, 1}:
        raise ValueError(f"y must hold binary labels in {{0, 1}}, got {np.unique(y)[:5].tolist()}")
    if y.sum() < 2:
        raise ValueError(f"y must hold at least 2 positives to resample, got {int(y.sum())}")
    return X, y.astype(int)


def _check_method(method):
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def resample(X, y, method: str, seed: int = 0, k_neighbors: int = 5):
    """``(X_res, y_res, is_new)`` for ``method`` in :data:`METHODS`. The original rows come first,
    unchanged and in order; ``is_new`` marks the rows added after them (repeated positives for
    ``"oversample"``, synthetic interpolations for ``"smote"``; none for ``"none"`` and
    ``"class_weight"``, which reweights instead). Both samplers balance the classes 1:1."""
    X, y = _check_xy(X, y)
    _check_method(method)
    if method in ("none", "class_weight"):
        return X, y, np.zeros(len(y), dtype=bool)
    from imblearn.over_sampling import SMOTE, RandomOverSampler
    if method == "smote":
        if not (isinstance(k_neighbors, int) and 1 <= k_neighbors < int(y.sum())):
            raise ValueError(f"k_neighbors must be an int in [1, n_positives={int(y.sum())}), got {k_neighbors!r}")
        sampler = SMOTE(k_neighbors=k_neighbors, random_state=seed)
    else:
        sampler = RandomOverSampler(random_state=seed)
    Xr, yr = sampler.fit_resample(X, y)
    Xr, yr = np.asarray(Xr), np.asarray(yr)
    n = len(y)
    # imbalanced-learn appends the new rows after the originals; check rather than trust it
    if not (np.array_equal(Xr[:n], X) and np.array_equal(yr[:n], y) and np.all(yr[n:] == 1)):
        raise RuntimeError("the sampler did not keep the original rows first and add positives only")
    is_new = np.zeros(len(yr), dtype=bool)
    is_new[n:] = True
    return Xr, yr, is_new


def fit(make_model: Callable, X, y, method: str, seed: int = 0, k_neighbors: int = 5):
    """Fit ``make_model(class_weight)`` (e.g. ``lambda cw: LogisticRegression(class_weight=cw)``) on
    ``(X, y)`` resampled by ``method``; ``"class_weight"`` passes ``"balanced"``, the others ``None``."""
    if not callable(make_model):
        raise TypeError(f"make_model must be callable, got {type(make_model).__name__}")
    Xr, yr, _ = resample(X, y, method, seed=seed, k_neighbors=k_neighbors)
    return make_model("balanced" if method == "class_weight" else None).fit(Xr, yr)


def forward_folds_scores(make_model: Callable, X, y, method: str, n_folds: int = 4, seed: int = 0,
                         k_neighbors: int = 5, min_train: float = 0.4):
    """Forward-chaining folds over rows in time order: the first ``min_train`` of the rows is the
    first training block, the rest is cut into ``n_folds`` validation blocks; fold ``k`` trains on
    every row before its block (resampled by ``method``) and scores the block as it is.

    Returns a list of dicts ``{"train": idx, "val": idx, "score": P(y=1) on the untouched validation
    rows, "new_rows": the rows resampling added to that fold's training set}`` (so a caller can check
    that none of them is, or was made from, a validation row). Raises if a validation block holds no
    positive (its AP would be undefined)."""
    X, y = _check_xy(X, y)
    _check_method(method)
    if not (isinstance(n_folds, int) and n_folds >= 1):
        raise ValueError(f"n_folds must be an int >= 1, got {n_folds!r}")
    if not 0 < min_train < 1:
        raise ValueError(f"min_train must be in (0, 1), got {min_train!r}")
    n = len(y)
    edges = np.linspace(int(min_train * n), n, n_folds + 1).astype(int)
    out = []
    for k in range(n_folds):
        tr, va = np.arange(edges[k]), np.arange(edges[k], edges[k + 1])
        if y[va].sum() == 0:
            raise ValueError(f"validation block {k} holds no positive; use fewer folds")
        Xr, yr, is_new = resample(X[tr], y[tr], method, seed=seed + k, k_neighbors=k_neighbors)
        model = make_model("balanced" if method == "class_weight" else None).fit(Xr, yr)
        out.append(dict(train=tr, val=va, score=model.predict_proba(X[va])[:, 1], new_rows=Xr[is_new]))
    return out
