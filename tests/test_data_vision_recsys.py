"""Digits and MovieLens loaders: shapes, pinned checksums, split correctness, augmentation."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bmlib.data import digits, movielens as ml
from bmlib.data.store import content_sha256


def test_digits_checksum_and_shapes():
    a = digits.load_digits()
    assert content_sha256(a) == digits.DIGITS_SHA256
    assert a["images"].shape == (1797, 8, 8) and a["images"].max() == 16 and a["images"].min() == 0
    assert np.bincount(a["target"]).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def test_digits_split_is_stratified_disjoint_and_seeded():
    s = digits.split(seed=0)
    n = {k: len(v[1]) for k, v in s.items()}
    assert n == {"train": 1257, "val": 180, "test": 360}
    x, _ = s["train"]
    assert x.shape[1:] == (1, 8, 8) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    for k in s:  # every class keeps its share within 2 images
        counts = torch.bincount(s[k][1], minlength=10).float()
        assert (counts - n[k] / 10).abs().max() <= 2 + 0.02 * n[k]
    # disjoint: no image (with its label) appears in two splits... compare row sets via bytes
    rows = {k: {bytes(xx.numpy().tobytes()) + bytes([int(yy)]) for xx, yy in zip(*s[k])} for k in s}
    allx = digits.load_digits()
    assert len(rows["test"] & rows["train"]) <= 2  # the raw data holds a few exact duplicates
    assert sum(n.values()) == allx["images"].shape[0]
    s2 = digits.split(seed=0)
    assert torch.equal(s2["test"][1], s["test"][1]) and torch.equal(s2["test"][0], s["test"][0])
    assert not torch.equal(digits.split(seed=1)["test"][0], s["test"][0])
    with pytest.raises(ValueError, match="test_fraction"):
        digits.split(test_fraction=1.5)
    with pytest.raises(ValueError, match="seed"):
        digits.split(seed=-1)


def test_random_shift_moves_pixels_exactly():
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 2] = 1.0
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        y = digits.random_shift(x, 1, g)
        r, c = (y[0, 0] == 1).nonzero()[0].tolist()
        assert abs(r - 2) <= 1 and abs(c - 2) <= 1 and y.sum() == 1
    assert torch.equal(digits.random_shift(x, 0, g), x)
    with pytest.raises(ValueError, match="max_shift"):
        digits.random_shift(x, 5, g)
    with pytest.raises(ValueError, match=r"x must be a float tensor of shape \(B, C, H, W\)"):
        digits.random_shift(x[0], 1, g)


@settings(max_examples=10, deadline=None)
@given(b=st.integers(1, 4), h=st.integers(3, 10), deg=st.floats(0, 30), seed=st.integers(0, 99))
def test_augment_shapes_and_seeding(b, h, deg, seed):
    x = torch.rand(b, 1, h, h)
    y1 = digits.augment(x, torch.Generator().manual_seed(seed), max_degrees=deg)
    y2 = digits.augment(x, torch.Generator().manual_seed(seed), max_degrees=deg)
    assert y1.shape == x.shape and torch.equal(y1, y2)


def test_zero_rotation_is_identity():
    x = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(digits.random_rotate(x, 0.0), x, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="max_degrees"):
        digits.random_rotate(x, 200)


def test_augmented_data_only_touches_train():
    from bmlib.data.arrays import ArrayData

    s = digits.split()
    d = digits.AugmentedData(ArrayData(*s["train"], *s["val"]))
    xv, _ = d.get_batch("val", 8, torch.Generator().manual_seed(0))
    xv0, _ = ArrayData(*s["train"], *s["val"]).get_batch("val", 8, torch.Generator().manual_seed(0))
    assert torch.equal(xv, xv0)
    xt, yt = d.get_batch("train", 8, torch.Generator().manual_seed(0))
    assert xt.shape == (8, 1, 8, 8) and yt.shape == (8,)
    with pytest.raises(TypeError, match="get_batch"):
        digits.AugmentedData(object())


@pytest.fixture(scope="module")
def split():
    return ml.leave_last_out()


def test_movielens_checksum_and_shapes():
    a = ml.load_movielens()
    assert content_sha256(a) == ml.MOVIELENS_SHA256
    assert a["user"].shape == (100004,)
    assert a["user"].max() + 1 == 671 and a["item"].min() == 1 and a["item"].max() == 9066
    # sorted by user, then time
    assert np.all(np.diff(a["user"]) >= 0)
    same = np.diff(a["user"]) == 0
    assert np.all(np.diff(a["timestamp"])[same] >= 0)
    assert ml.titles([1], a) == ["Toy Story"]


def test_leave_last_out_is_correct(split):
    a = ml.load_movielens()
    assert split.n_users == 671 and split.n_items == 9066
    for u in (0, 100, 670):
        seq = a["item"][a["user"] == u]
        assert split.test[u] == seq[-1] and split.val[u] == seq[-2]
        np.testing.assert_array_equal(split.train[u], seq[:-2])
    assert sum(len(t) for t in split.train) + 2 * 671 == 100004
    # the held-out items come last in time: no training interaction is later than its user's val
    for u in range(split.n_users):
        assert len(split.train[u]) >= 18
        # MovieLens users rate each movie at most once, so a held-out item cannot be in training
        assert split.test[u] not in split.train[u] and split.val[u] not in split.train[u]
    np.testing.assert_array_equal(split.history("test")[5][-1], split.val[5])
    with pytest.raises(ValueError, match="stage"):
        split.history("train")


def test_leave_last_out_on_a_hand_example():
    data = {"user": np.array([0, 0, 0, 0, 1, 1, 1]), "item": np.array([3, 1, 2, 4, 2, 2, 5])}
    s = ml.leave_last_out(data)
    assert s.test.tolist() == [4, 5] and s.val.tolist() == [2, 2]
    assert [t.tolist() for t in s.train] == [[3, 1], [2]]
    with pytest.raises(ValueError, match=">= 3 interactions"):
        ml.leave_last_out({"user": np.array([0, 0]), "item": np.array([1, 2])})
    with pytest.raises(ValueError, match="sorted by user"):
        ml.leave_last_out({"user": np.array([1, 0, 0]), "item": np.array([1, 2, 3])})


def test_eval_candidates(split):
    c, ex = ml.eval_candidates(split, "test", 100, seed=0)
    assert ex is None and c.shape == (671, 101)
    np.testing.assert_array_equal(c[:, 0], split.test)
    for u in (0, 42, 670):
        seen = set(split.train[u]) | {split.val[u], split.test[u]}
        assert not seen & set(c[u, 1:].tolist()) and len(set(c[u, 1:].tolist())) == 100
    c2, _ = ml.eval_candidates(split, "test", 100, seed=0)
    np.testing.assert_array_equal(c, c2)
    full, ex = ml.eval_candidates(split, "val", None)
    assert full.shape == ex.shape == (671, 9066)
    tc = ml.target_columns(split, "val", None)
    np.testing.assert_array_equal(full[np.arange(671), tc], split.val)
    assert not ex[np.arange(671), tc].any() and ex[0, split.train[0] - 1].all()
    with pytest.raises(ValueError, match="n_negatives"):
        ml.eval_candidates(split, "test", 0)


def test_sequence_arrays_and_pairs(split):
    x, y, xv, yv = ml.sequence_arrays(split, 20)
    assert x.shape == y.shape == xv.shape == yv.shape == (671, 20)
    both = (x[:, 1:] != 0) & (y[:, :-1] != 0)
    np.testing.assert_array_equal(x[:, 1:][both], y[:, :-1][both])  # y is x shifted by one
    np.testing.assert_array_equal(y[:, -1], [t[-1] for t in split.train])
    np.testing.assert_array_equal(yv[:, -1], split.val)
    assert (yv[:, :-1] == 0).all()
    np.testing.assert_array_equal(ml.pad_left([[1, 2]], 4), [[0, 0, 1, 2]])
    np.testing.assert_array_equal(ml.pad_left([[1, 2, 3]], 2), [[2, 3]])
    u, i, vu, vi = ml.interaction_pairs(split)
    assert len(u) == len(i) == 100004 - 2 * 671
    counts = ml.item_counts(split, "val")
    assert counts[0] == 0 and counts.sum() == len(i)
    with pytest.raises(ValueError, match="max_len"):
        ml.pad_left([[1]], 0)
