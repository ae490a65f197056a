"""bmlib.imbalance: resampling stays inside training folds; AP parity with scikit-learn."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score

from bmlib import imbalance as imb
from bmlib import metrics as M


def _rare(seed, n=300, d=3, rate=0.1):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < rate).astype(int)
    y[:3] = 1
    X = rng.normal(size=(n, d)) + y[:, None]
    return X, y


def _lr(cw):
    return LogisticRegression(class_weight=cw, max_iter=500)


@pytest.mark.parametrize("method", ["oversample", "smote"])
def test_resample_balances_and_keeps_originals_first(method):
    X, y = _rare(0)
    Xr, yr, new = imb.resample(X, y, method, seed=0)
    assert yr.sum() == (yr == 0).sum() == (y == 0).sum()  # 1:1
    np.testing.assert_array_equal(Xr[~new], X)
    assert np.all(yr[new] == 1) and new.sum() == (y == 0).sum() - y.sum()
    pos = X[y == 1]
    if method == "oversample":  # copies of training positives
        assert all(np.any(np.all(pos == r, axis=1)) for r in Xr[new])
    else:  # interpolations between training positives: inside their bounding box
        assert np.all(Xr[new] >= pos.min(0) - 1e-12) and np.all(Xr[new] <= pos.max(0) + 1e-12)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(["oversample", "smote"]), st.integers(2, 4))
def test_resampling_never_touches_the_held_out_fold(seed, method, n_folds):
    X, y = _rare(seed, n=240, d=2, rate=0.15)
    y[np.linspace(100, 239, 12).astype(int)] = 1  # positives in every validation block
    # mark time in a feature: validation rows lie strictly after (above) their training rows
    X[:, 0] = np.arange(len(y)) * 10.0
    folds = imb.forward_folds_scores(_lr, X, y, method, n_folds=n_folds, seed=seed)
    assert len(folds) == n_folds
    for f in folds:
        assert f["train"].max() < f["val"].min()  # forward chaining
        start = X[f["val"], 0].min()
        assert len(f["new_rows"]) > 0
        assert np.all(f["new_rows"][:, 0] < start)  # no new row is, or was made from, a held-out row
        assert len(f["score"]) == len(f["val"])


def test_ap_parity_and_class_weight():
    X, y = _rare(1, n=600)
    Xte, yte = _rare(2, n=600)
    for method in imb.METHODS:
        m = imb.fit(_lr, X, y, method)
        s = m.predict_proba(Xte)[:, 1]
        assert M.average_precision(yte, s) == pytest.approx(average_precision_score(yte, s), abs=1e-12)
    assert imb.fit(_lr, X, y, "class_weight").class_weight == "balanced"
    assert imb.fit(_lr, X, y, "smote").class_weight is None
    # reweighting/oversampling moves probabilities up: more predicted positives at 0.5
    base = imb.fit(_lr, X, y, "none").predict_proba(Xte)[:, 1]
    for method in ("class_weight", "oversample", "smote"):
        s = imb.fit(_lr, X, y, method).predict_proba(Xte)[:, 1]
        assert (s >= 0.5).sum() > (base >= 0.5).sum()


def test_bad_inputs_named():
    X, y = _rare(0)
    with pytest.raises(ValueError, match="method"):
        imb.resample(X, y, "adasyn")
    with pytest.raises(ValueError, match="X must be 2-D"):
        imb.resample(X[:, 0], y, "smote")
    with pytest.raises(ValueError, match="y must"):
        imb.resample(X, y[:-1], "smote")
    with pytest.raises(ValueError, match="binary"):
        imb.resample(X, y * 2, "smote")
    with pytest.raises(ValueError, match="k_neighbors"):
        imb.resample(X, y, "smote", k_neighbors=10_000)
    with pytest.raises(TypeError, match="make_model"):
        imb.fit(None, X, y, "none")
    with pytest.raises(ValueError, match="no positive"):
        yy = np.zeros(len(y), int); yy[:5] = 1
        imb.forward_folds_scores(_lr, X, yy, "none", n_folds=2)
