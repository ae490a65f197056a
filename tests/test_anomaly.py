"""Anomaly detection: the sktime series loader, event metrics (hand-worked and properties), the
rolling z-score against pandas, thresholds fitted on validation only, windows and bad inputs."""
import importlib.util

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score

from bmlib import anomaly as A
from bmlib.data import anomaly as D
from bmlib.data.store import content_sha256


@pytest.fixture
def fresh_artifacts(tmp_path, monkeypatch):
    monkeypatch.setenv("BMLIB_ARTIFACTS", str(tmp_path))
    return tmp_path


# ----------------------------------------------------------------------------- loader
@pytest.mark.parametrize("name, pinned", [("mitdb", D.MITDB_SHA256), ("yahoo", D.YAHOO_SHA256)])
def test_installed_sktime_matches_pinned_sha256(name, pinned):
    arrays = {k: np.asarray(v) for k, v in D._build(name).items()}
    assert content_sha256(arrays) == pinned


def test_load_series_shapes_labels_and_cache(fresh_artifacts):
    e, y = D.load_series("mitdb"), D.load_series("yahoo")
    assert e["x"].shape == e["label"].shape == (7500,) and int(e["label"].sum()) == 352
    assert y["x"].shape == y["label"].shape == (1000,) and int(y["label"].sum()) == 7
    np.testing.assert_array_equal(A.events(e["label"]), [[6936, 7288]])
    assert len(A.events(y["label"])) == 7 and (np.diff(A.events(y["label"]), axis=1) == 1).all()
    assert (fresh_artifacts / "data" / "anomaly_mitdb.sha256").read_text().strip() == D.MITDB_SHA256
    # the cached copy is read back unchanged; the raw CSV agrees
    path = D._data_dir() / "yahoo" / "yahoo.csv"
    np.testing.assert_array_equal(D.load_series("yahoo")["x"], pd.read_csv(path)["data"].to_numpy())
    with pytest.raises(ValueError, match="name"):
        D.load_series("nab")


def test_missing_sktime_names_the_package(fresh_artifacts, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "sktime" else real(n, *a))
    with pytest.raises(ImportError, match="sktime"):
        D.load_series("mitdb")


# ----------------------------------------------------------------------------- events, hand-worked
def test_events_runs():
    np.testing.assert_array_equal(A.events([0, 1, 1, 0, 0, 1, 0, 1]), [[1, 3], [5, 6], [7, 8]])
    assert A.events([0, 0, 0]).shape == (0, 2)


def test_event_prf_hand_worked():
    #        idx 0  1  2  3  4  5  6  7  8  9 10 11
    labels = [0, 0, 1, 1, 1, 0, 0, 0, 0, 1, 0, 0]  # events [2,5) and [9,10)
    alarms = [1, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1]  # alarm runs [0,1), [3,7), [11,12)
    r = A.event_prf(labels, alarms)
    # event [2,5) is hit by the run [3,7); [9,10) is missed. Alarms outside the events: 0, 5-6, 11,
    # i.e. three false alarms [0,1), [5,7) (the spill-over of [3,7) past the event) and [11,12)
    assert (r["detected"], r["missed"], r["false_alarms"], r["alarm_events"]) == (1, 1, 3, 3)
    assert r["precision"] == pytest.approx(1 / 4) and r["recall"] == 0.5
    assert r["f1"] == pytest.approx(1 / 3)  # 2 * (1/4) * (1/2) / (3/4)
    # tolerance 1: events widen to [1,6) and [8,11); alarms 0, 6 and 11 stay false, [9,10) is still missed
    r1 = A.event_prf(labels, alarms, tolerance=1)
    assert (r1["detected"], r1["false_alarms"]) == (1, 3)
    # tolerance 2: [0,7) and [7,12) cover every alarm, and the alarm at 11 now detects the second event
    r2 = A.event_prf(labels, alarms, tolerance=2)
    assert (r2["detected"], r2["false_alarms"]) == (2, 0) and r2["f1"] == 1.0


def test_event_prf_edge_cases():
    y = [0, 1, 1, 0]
    assert A.event_prf(y, [0, 0, 0, 0])["f1"] == 0.0 and A.event_prf(y, [0, 0, 0, 0])["precision"] == 0.0
    # alarming everywhere: a hit and two false alarms (before and after the event), not a perfect score
    every = A.event_prf(y, [1, 1, 1, 1])
    assert (every["detected"], every["false_alarms"]) == (1, 2) and every["f1"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no anomalous event"):
        A.event_prf([0, 0, 0], [1, 0, 0])
    assert A.event_counts([0, 0, 0], [1, 0, 1])["false_alarms"] == 2


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=40), st.lists(st.booleans(), min_size=1, max_size=40),
       st.integers(0, 3))
def test_event_metric_properties(y, a, tau):
    n = min(len(y), len(a))
    y, a = np.array(y[:n], dtype=int), np.array(a[:n], dtype=int)
    c = A.event_counts(y, a, tau)
    assert c["detected"] + c["missed"] == c["n_events"] == len(A.events(y))
    assert c["alarm_events"] == len(A.events(a))
    assert 0 <= c["false_alarms"] <= c["alarm_events"] + c["n_events"]
    if not y.any():
        assert c["false_alarms"] == c["alarm_events"]  # without events every alarm run is false
    if y.any():
        r = A.event_prf(y, a, tau)
        assert 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1 and min(r["precision"], r["recall"]) <= r["f1"] + 1e-12
        assert A.event_prf(y, y, tau)["f1"] == 1.0  # the labels as alarms are perfect
        # more tolerance never detects fewer events nor raises more false alarms
        r3 = A.event_counts(y, a, tau + 1)
        assert r3["detected"] >= c["detected"] and r3["false_alarms"] <= c["false_alarms"]
        # adding alarms never loses a detection
        assert A.event_counts(y, np.maximum(a, y), tau)["detected"] == c["n_events"]


# ----------------------------------------------------------------------------- scores
@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3), min_size=6, max_size=60), st.integers(2, 5))
def test_rolling_zscore_matches_pandas(xs, w):
    x = np.array(xs)
    s = pd.Series(x)
    past = s.shift(1).rolling(w)
    sd = past.std().to_numpy()
    ref = np.abs(x - past.mean().to_numpy()) / np.maximum(sd, 1e-12)
    got = A.rolling_zscore(x, w)
    assert np.isnan(got[:w]).all()
    ok = sd[w:] > 1e-6 * (1 + np.abs(x).max())  # pandas' running sums lose digits on constant windows
    np.testing.assert_allclose(got[w:][ok], ref[w:][ok], rtol=1e-6, atol=1e-6)


def test_rolling_zscore_flags_a_spike():
    rng = np.random.default_rng(0)
    x = rng.normal(size=300)
    x[200] += 12
    z = A.rolling_zscore(x, 50)
    assert np.nanargmax(z) == 200 and z[200] > 8


def test_windows_place_and_forecast_pairs():
    x = np.arange(10.0)
    W = A.sliding_windows(x, 4)
    assert W.shape == (7, 4) and (W[3] == [3, 4, 5, 6]).all()
    assert np.allclose(A.window_features(x, 4).mean(axis=1), 0)
    p = A.place([5.0, 6.0], np.array([3, 9]), 10)
    assert p[3] == 5 and p[9] == 6 and np.isnan(p[[0, 1, 2, 4]]).all()
    X, y, t = A.forecast_pairs(x, 3)
    assert X.shape == (7, 3) and (t == np.arange(3, 10)).all()
    np.testing.assert_allclose(X[0] + x[0:3].mean(), x[0:3])  # inputs are the window minus its mean
    np.testing.assert_allclose(y, x[3:] - np.array([x[i - 3:i].mean() for i in t]))  # target minus the same mean
    lab = np.zeros(10, int)
    lab[5] = 1
    m = A.clean_mask(lab, t, 3)  # example t uses x[t-3..t]; it touches sample 5 for t in 5..8
    np.testing.assert_array_equal(m, [True, True, False, False, False, False, True])


@pytest.mark.parametrize("call, arg", [
    (lambda: A.sliding_windows(np.ones((3, 3)), 2), "x"),
    (lambda: A.sliding_windows(np.ones(5), 6), "width"),
    (lambda: A.sliding_windows(np.ones(5), 0), "width"),
    (lambda: A.rolling_zscore([1.0, np.nan, 2.0, 3.0], 2), "x"),
    (lambda: A.rolling_zscore(np.ones(5), 1), "window"),
    (lambda: A.event_prf([0, 1, 2], [0, 1, 0]), "labels"),
    (lambda: A.event_prf([0, 1, 0], [0, 1]), "alarms"),
    (lambda: A.event_prf([0, 1, 0], [0, 1, 0], tolerance=-1), "tolerance"),
    (lambda: A.place([1.0], np.array([7]), 5), "index"),
    (lambda: A.time_split(10, (0.5, 0.5, 0.0)), "fractions"),
    (lambda: A.evaluate([0, 1] * 5, np.ones(10), A.time_split(10), rule="max"), "rule"),
    (lambda: A.evaluate([0, 1] * 5, np.r_[np.ones(9), np.nan], A.time_split(10)), "test part"),
    (lambda: A.block_bootstrap_indices(5, 6), "block"),
])
def test_bad_inputs_name_the_argument(call, arg):
    with pytest.raises(ValueError, match=arg):
        call()


def test_type_errors():
    with pytest.raises(TypeError, match="x"):
        A.sliding_windows("abc", 2)
    with pytest.raises(TypeError, match="metric"):
        A.block_bootstrap_ci(None, [0, 1], [0.0, 1.0], 1)


# ----------------------------------------------------------------------------- thresholds and evaluation
def test_best_f1_threshold_hand_worked():
    y = np.array([0, 0, 1, 0, 0, 0, 1, 0])
    s = np.array([0.1, 0.5, 0.9, 0.2, 0.8, 0.1, 0.7, 0.3])
    # thr 0.9: 1 of 2 events, no false alarm (F1 2/3); 0.8: + a false alarm at 4 (F1 1/2); 0.7: both
    # events, one false alarm (P 2/3, R 1: F1 0.8); 0.5: false alarms at 1 and 4 (F1 2/3); 0.2: at 1,
    # 3-4 and 7 (F1 4/7): the merged run 1..4 around the event at 2 still counts its spill-over
    t, f = A.best_f1_threshold(y, s)
    assert t == 0.7 and f == pytest.approx(0.8)
    assert A.quiet_threshold(s) > 0.9 and not (s >= A.quiet_threshold(s)).any()


def test_threshold_is_chosen_on_validation_only():
    rng = np.random.default_rng(1)
    n = 300
    y = np.zeros(n, int)
    y[[130, 160, 250, 280]] = 1
    s = rng.random(n)
    s[y == 1] += 1.0
    sp = A.time_split(n, (0.4, 0.3, 0.3))  # val 120..210, test 210..300
    r = A.evaluate(y, s, sp, "event_f1")
    # changing anything in the test part (labels or scores) leaves the threshold alone ...
    s2, y2 = s.copy(), y.copy()
    s2[210:] = rng.random(90) * 5
    y2[220] = 1
    assert A.evaluate(y2, s2, sp, "event_f1")["threshold"] == r["threshold"]
    # ... the training part too; the validation part moves it
    s3 = s.copy()
    s3[:120] = 9.0
    assert A.evaluate(y, s3, sp, "event_f1")["threshold"] == r["threshold"]
    s4 = s.copy()
    s4[120:210] *= 0.5
    assert A.evaluate(y, s4, sp, "event_f1")["threshold"] != r["threshold"]
    # and the test figures are the threshold applied once to the test part
    assert r["test_f1"] == A.event_prf(y[210:], s[210:] >= r["threshold"])["f1"]
    assert r["test_ap"] == pytest.approx(average_precision_score(y[210:], s[210:]), abs=1e-12)
    q = A.evaluate(y, s, sp, "quiet")
    assert q["threshold"] > s[120:210].max() and q["val_false_alarms"] == 0


def test_block_bootstrap():
    idx = A.block_bootstrap_indices(20, 5, n_boot=50, seed=0)
    assert idx.shape == (50, 20) and idx.min() >= 0 and idx.max() < 20
    assert (np.diff(idx.reshape(50, 4, 5), axis=2) == 1).all()  # blocks are consecutive runs
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.05).astype(int)
    s = y + rng.normal(scale=0.8, size=400)
    p, lo, hi = A.block_bootstrap_ci(lambda a, b: average_precision_score(a, b) if a.any() else np.nan,
                                     y, s, block=40, n_boot=200)
    assert lo < p < hi and 0 < lo and hi <= 1
    assert A.block_bootstrap_ci(lambda a, b: 0.5, y, s, 40, n_boot=50) == (0.5, 0.5, 0.5)
