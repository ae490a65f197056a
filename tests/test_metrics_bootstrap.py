"""bmlib.metrics bootstrap intervals and PR curve: parity with scipy / scikit-learn, bad inputs."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from sklearn import metrics as skm

from bmlib import metrics as M


def _data(seed, n=400):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    s = y * 0.8 + rng.normal(size=n)
    return y, s


@pytest.mark.parametrize("seed", [0, 1])
def test_bootstrap_ci_matches_scipy_percentile(seed):
    y, s = _data(seed)
    pred = (s > 0.4).astype(int)
    point, lo, hi = M.bootstrap_ci(M.accuracy, y, pred, n_boot=4000, seed=seed)
    ref = stats.bootstrap((y, pred), lambda a, b: np.mean(a == b), paired=True, vectorized=False,
                          n_resamples=4000, method="percentile", confidence_level=0.95,
                          random_state=np.random.default_rng(seed + 100))
    assert point == pytest.approx(np.mean(y == pred), abs=1e-12)
    # two independent Monte-Carlo estimates of the same interval agree within ~a third of its width
    width = hi - lo
    assert abs(lo - ref.confidence_interval.low) < 0.1 * width + 0.005
    assert abs(hi - ref.confidence_interval.high) < 0.1 * width + 0.005
    # and the width is the binomial one: 2 * 1.96 * sqrt(p (1-p) / n)
    p = point
    assert width == pytest.approx(2 * 1.96 * np.sqrt(p * (1 - p) / len(y)), rel=0.15)


def test_stratified_bootstrap_keeps_class_counts_and_ap_is_defined():
    y = np.r_[np.ones(5, int), np.zeros(495, int)]
    idx = M.bootstrap_indices(y, n_boot=200, seed=0, stratify=True)
    assert idx.shape == (200, 500)
    assert np.all(y[idx].sum(axis=1) == 5)
    s = np.random.default_rng(0).random(500)
    point, lo, hi = M.bootstrap_ci(M.average_precision, y, s, n_boot=200, stratify=True)
    assert lo <= point <= hi or lo <= hi  # defined on every resample (would raise otherwise)
    assert point == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)


def test_paired_difference_interval():
    y, s = _data(3, n=1000)
    a = (s > 0.4).astype(int)
    d, lo, hi = M.bootstrap_diff_ci(M.accuracy, y, a, a)
    assert d == lo == hi == 0.0  # a model against itself: exactly no difference
    b = np.where(np.random.default_rng(0).random(1000) < 0.3, 1 - a, a)  # 30% of predictions flipped
    d, lo, hi = M.bootstrap_diff_ci(M.accuracy, y, a, b)
    assert d == pytest.approx(M.accuracy(y, a) - M.accuracy(y, b))
    assert lo > 0  # flipping 30% of predictions is clearly worse


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(20, 200))
def test_precision_recall_curve_matches_sklearn(seed, n):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y[0], y[1] = 0, 1
    s = np.round(rng.normal(size=n), 1)  # ties
    p, r, t = M.precision_recall_curve(y, s)
    ps, rs, ts = skm.precision_recall_curve(y, s)
    # sklearn: thresholds ascending, plus the final (P=1, R=0) point; it also drops points past full recall
    k = len(ts)
    np.testing.assert_allclose(p[::-1][-k:], ps[:-1], atol=1e-12)
    np.testing.assert_allclose(r[::-1][-k:], rs[:-1], atol=1e-12)
    np.testing.assert_allclose(t[::-1][-k:], ts, atol=1e-12)
    assert M.average_precision(y, s) == pytest.approx(float(np.sum(np.diff(np.r_[0.0, r]) * p)), abs=1e-12)


def test_bootstrap_bad_inputs():
    y, s = _data(0, n=50)
    with pytest.raises(TypeError, match="metric"):
        M.bootstrap_ci("accuracy", y, s)
    with pytest.raises(ValueError, match="n_boot"):
        M.bootstrap_ci(M.roc_auc, y, s, n_boot=3)
    with pytest.raises(ValueError, match="level"):
        M.bootstrap_ci(M.roc_auc, y, s, level=95)
    with pytest.raises(ValueError, match="y_score"):
        M.bootstrap_ci(M.roc_auc, y, s[:-1])
    with pytest.raises(ValueError, match="score_b"):
        M.bootstrap_diff_ci(M.roc_auc, y, s, s[:-1])
