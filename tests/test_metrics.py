"""bmlib.metrics against scikit-learn and sacrebleu, plus bad-input and property tests."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from bmlib import metrics as M


def _binary_data(n=200, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    score = y * 0.8 + rng.normal(size=n)
    return y, score


# ----------------------------------------------------------------------------- classification
@pytest.mark.parametrize("conv", [np.asarray, list, torch.tensor])
def test_binary_classification_matches_sklearn(conv):
    y, s = _binary_data()
    pred = (s > 0.4).astype(int)
    yt, yp = conv(y.tolist()) if conv is not np.asarray else y, conv(pred.tolist())
    assert M.accuracy(yt, yp) == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    assert M.precision(yt, yp) == pytest.approx(skm.precision_score(y, pred), abs=1e-12)
    assert M.recall(yt, yp) == pytest.approx(skm.recall_score(y, pred), abs=1e-12)
    assert M.f1(yt, yp) == pytest.approx(skm.f1_score(y, pred), abs=1e-12)
    np.testing.assert_array_equal(M.confusion_matrix(yt, yp), skm.confusion_matrix(y, pred))


def test_macro_matches_sklearn_with_missing_class():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, 300)
    pred = np.where(rng.random(300) < 0.6, y, rng.integers(0, 4, 300))  # class 4 rarely predicted
    pred[pred == 3] = 2  # class 3 never predicted -> precision 0/0 -> 0
    for ours, theirs in ((M.precision, skm.precision_score), (M.recall, skm.recall_score),
                         (M.f1, skm.f1_score)):
        assert ours(y, pred, average="macro") == pytest.approx(
            theirs(y, pred, average="macro", zero_division=0), abs=1e-12)
    np.testing.assert_array_equal(M.confusion_matrix(y, pred), skm.confusion_matrix(y, pred))
    labels = [4, 3, 2, 1, 0]
    np.testing.assert_array_equal(M.confusion_matrix(y, pred, labels=labels),
                                  skm.confusion_matrix(y, pred, labels=labels))


def test_no_predicted_positive_gives_zero_precision():
    assert M.precision([1, 0, 1], [0, 0, 0]) == 0.0
    assert M.f1([1, 0, 1], [0, 0, 0]) == 0.0
    assert M.recall([1, 0, 1], [1, 0, 0]) == pytest.approx(0.5)


# ----------------------------------------------------------------------------- scores
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_and_average_precision_match_sklearn(seed):
    y, s = _binary_data(seed=seed)
    assert M.roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert M.average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
    # with heavy ties (scores rounded to one decimal)
    s2 = np.round(s, 1)
    assert M.roc_auc(y, s2) == pytest.approx(skm.roc_auc_score(y, s2), abs=1e-12)
    assert M.average_precision(y, s2) == pytest.approx(skm.average_precision_score(y, s2), abs=1e-12)
    fpr, tpr, thr = M.roc_curve(y, s2)
    f2, t2, th2 = skm.roc_curve(y, s2, drop_intermediate=False)
    np.testing.assert_allclose(fpr, f2)
    np.testing.assert_allclose(tpr, t2)
    np.testing.assert_allclose(thr[1:], th2[1:])


def test_roc_auc_accepts_torch_and_known_values():
    assert M.roc_auc(torch.tensor([0, 0, 1, 1]), torch.tensor([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert M.roc_auc([0, 1], [0.5, 0.5]) == 0.5
    assert M.roc_auc([0, 1], [1.0, 0.0]) == 0.0


@pytest.mark.parametrize("spec", [0.8, 0.9, 0.95, 0.99, 1.0])
def test_recall_at_specificity_matches_sklearn_roc(spec):
    y, s = _binary_data(500, seed=3)
    fpr, tpr, _ = skm.roc_curve(y, s)
    expected = tpr[fpr <= 1 - spec + 1e-12].max()
    assert M.recall_at_specificity(y, s, spec) == pytest.approx(expected, abs=1e-12)


# ----------------------------------------------------------------------------- calibration
@pytest.mark.parametrize("n_bins", [5, 10, 15])
def test_reliability_curve_and_ece_match_sklearn(n_bins):
    rng = np.random.default_rng(0)
    p = rng.random(1000) ** 2
    p[:3] = [0.0, 1.0, 0.53]  # edges: 1.0 belongs to the last bin, as in scikit-learn
    y = (rng.random(1000) < np.clip(p * 1.2, 0, 1)).astype(int)
    conf, freq, counts = M.reliability_curve(y, p, n_bins)
    frac_pos, mean_pred = calibration_curve(y, p, n_bins=n_bins, strategy="uniform")
    np.testing.assert_allclose(conf, mean_pred, atol=1e-12)
    np.testing.assert_allclose(freq, frac_pos, atol=1e-12)
    # counts by hand: bins [i/n, (i+1)/n), with 1.0 in the last bin
    ids = np.minimum((p * n_bins).astype(int), n_bins - 1)
    hand = np.bincount(ids, minlength=n_bins)
    np.testing.assert_array_equal(counts, hand[hand > 0])
    ece = np.sum(hand[hand > 0] / len(p) * np.abs(frac_pos - mean_pred))
    assert M.expected_calibration_error(y, p, n_bins) == pytest.approx(ece, abs=1e-12)


def test_ece_perfectly_calibrated_and_multiclass():
    # two bins, each with predicted 0.25 / 0.75 and observed frequency exactly that
    y = np.array([1, 0, 0, 0, 1, 1, 1, 0])
    p = np.array([0.25] * 4 + [0.75] * 4)
    assert M.expected_calibration_error(y, p, 10) == pytest.approx(0.0, abs=1e-12)
    # top-label: confidences 0.9 (right), 0.6 (wrong) -> |0.9-1|/2 + |0.6-0|/2 = 0.35
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.2, 0.6, 0.2]])
    assert M.expected_calibration_error([0, 0], probs, 10) == pytest.approx(0.35)


# ----------------------------------------------------------------------------- language
def test_perplexity():
    assert M.perplexity(0.0) == 1.0
    assert M.perplexity(torch.tensor(math.log(50.0))) == pytest.approx(50.0)
    assert M.perplexity(np.float32(math.log(4.0))) == pytest.approx(4.0, rel=1e-6)
    with pytest.raises(ValueError, match="mean_nll"):
        M.perplexity(-0.1)
    with pytest.raises(ValueError, match="mean_nll"):
        M.perplexity(float("nan"))
    with pytest.raises(TypeError, match="mean_nll"):
        M.perplexity("1.0")


def test_perplexity_beyond_the_float_range_is_inf():
    """exp(1000) does not fit a float: the answer is inf (it used to raise OverflowError)."""
    assert M.perplexity(1000.0) == math.inf
    assert M.perplexity(torch.tensor(1e6)) == math.inf
    assert M.perplexity(709.0) == pytest.approx(8.218407461554972e307)  # still finite
    with pytest.raises(ValueError, match="mean_nll"):
        M.perplexity(float("inf"))


HYPS = ["The cat sat on the mat.", "It's 3-4 p.m., isn't it?", "a b c d e f",
        "Hello, world! &amp; good-bye", "short"]
REFS_A = ["The cat is sitting on the mat.", "It is 3-4 p.m., is it not?", "a b c d e g",
          "Hello world & goodbye", "a much longer reference sentence here"]
REFS_B = ["A cat sat on a mat.", "It's 3 - 4 pm, right?", "a b x d e f", "hello, world!", "short"]


@pytest.mark.parametrize("tokenize", ["13a", "none"])
@pytest.mark.parametrize("smooth", ["exp", "none"])
def test_bleu_matches_sacrebleu(tokenize, smooth):
    import sacrebleu  # a pinned requirement: a broken install must fail, not skip
    for hyps, refs in ((HYPS, [REFS_A]), (HYPS, [REFS_A, REFS_B]), (HYPS[:2], [REFS_A[:2]])):
        expected = sacrebleu.corpus_bleu(hyps, refs, tokenize=tokenize, smooth_method=smooth).score
        per_hyp = [list(r) for r in zip(*refs)]
        assert M.bleu(hyps, per_hyp, tokenize=tokenize, smooth=smooth) == pytest.approx(
            expected, abs=1e-9)
    assert M.bleu(["x y z w"], ["x y z w"]) == pytest.approx(100.0)
    assert M.bleu(["q"], ["x y"]) == 0.0


def test_tokenize_13a_matches_sacrebleu():
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    tok = Tokenizer13a()
    for s in HYPS + REFS_A + REFS_B + ["3.14, 1,000 and x.y z-1"]:
        assert M.tokenize_13a(s) == tok(s).split()


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.sampled_from("abcde"), min_size=0, max_size=8), min_size=1, max_size=5),
       st.integers(0, 10_000))
def test_bleu_property_matches_sacrebleu(hyp_tokens, seed):
    import sacrebleu  # a pinned requirement: a broken install must fail, not skip
    rng = np.random.default_rng(seed)
    hyps = [" ".join(t) for t in hyp_tokens]
    refs = [" ".join(rng.choice(list("abcde"), rng.integers(1, 9))) for _ in hyps]
    expected = sacrebleu.corpus_bleu(hyps, [refs], tokenize="none").score
    assert M.bleu(hyps, refs, tokenize="none") == pytest.approx(expected, abs=1e-9)


# ----------------------------------------------------------------------------- recommendation
def test_hr_ndcg_by_hand():
    scores = np.array([[0.9, 0.1, 0.5, 0.3],   # target 2 -> rank 2
                       [0.2, 0.8, 0.1, 0.4],   # target 1 -> rank 1
                       [0.9, 0.8, 0.7, 0.1]])  # target 3 -> rank 4
    target = [2, 1, 3]
    np.testing.assert_array_equal(M.rank_of_target(scores, target), [2, 1, 4])
    assert M.hit_rate_at_k(scores, target, 1) == pytest.approx(1 / 3)
    assert M.hit_rate_at_k(scores, target, 2) == pytest.approx(2 / 3)
    assert M.hit_rate_at_k(scores, target, 10) == 1.0
    assert M.ndcg_at_k(scores, target, 2) == pytest.approx((1 / math.log2(3) + 1) / 3)
    assert M.ndcg_at_k(scores, target, 4) == pytest.approx((1 / math.log2(3) + 1 + 1 / math.log2(5)) / 3)
    # ties count against the target: a constant scorer is not perfect
    assert M.hit_rate_at_k(np.zeros((2, 5)), [0, 3], 1) == 0.0
    # masked (already seen) items at -inf drop below the target
    assert M.rank_of_target(torch.tensor([[float("-inf"), 0.1, 0.2]]), torch.tensor([1]))[0] == 2


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 20), st.integers(2, 30), st.integers(1, 40), st.integers(0, 10_000))
def test_ndcg_matches_sklearn(n_users, n_items, k, seed):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(n_users, n_items))  # continuous: no ties
    target = rng.integers(0, n_items, n_users)
    rel = np.zeros_like(scores)
    rel[np.arange(n_users), target] = 1.0
    assert M.ndcg_at_k(scores, target, k) == pytest.approx(skm.ndcg_score(rel, scores, k=k), abs=1e-12)
    ranks = M.rank_of_target(scores, target)
    expected_ranks = (np.argsort(-scores, axis=1) == target[:, None]).argmax(axis=1) + 1
    np.testing.assert_array_equal(ranks, expected_ranks)
    assert M.hit_rate_at_k(scores, target, k) == pytest.approx(np.mean(expected_ranks <= k))


# ----------------------------------------------------------------------------- bad inputs
def test_bad_inputs_raise_named_errors():
    with pytest.raises(ValueError, match="same length"):
        M.accuracy([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="y_true is empty"):
        M.f1([], [])
    with pytest.raises(ValueError, match="y_true must contain only the labels 0 and 1"):
        M.precision([0, 2, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="y_pred must contain only the labels 0 and 1"):
        M.recall([0, 1, 1], [0, 1, -1])
    with pytest.raises(ValueError, match="average"):
        M.f1([0, 1], [0, 1], average="micro")
    with pytest.raises(ValueError, match="both classes"):
        M.roc_auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="y_score contains NaN"):
        M.roc_auc([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="y_score must be 1-D"):
        M.roc_auc([0, 1], [[0.1], [0.2]])
    with pytest.raises(ValueError, match="y_prob must hold probabilities"):
        M.expected_calibration_error([0, 1], [0.2, 1.5])
    with pytest.raises(ValueError, match="n_bins"):
        M.expected_calibration_error([0, 1], [0.2, 0.5], n_bins=0)
    with pytest.raises(ValueError, match="y_true labels must lie in"):
        M.expected_calibration_error([0, 3], np.full((2, 3), 1 / 3))
    with pytest.raises(ValueError, match="specificity"):
        M.recall_at_specificity([0, 1], [0.1, 0.2], 1.5)
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        M.hit_rate_at_k(np.zeros((2, 3)), [0, 1], 0)
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        M.ndcg_at_k(np.zeros((2, 3)), [0, 1], k=-2)
    with pytest.raises(ValueError, match="target must hold column indices"):
        M.hit_rate_at_k(np.zeros((2, 3)), [0, 3], 1)
    with pytest.raises(ValueError, match="target must have one entry per row"):
        M.ndcg_at_k(np.zeros((2, 3)), [0], 1)
    with pytest.raises(ValueError, match="scores must be a non-empty"):
        M.ndcg_at_k(np.zeros(3), [0], 1)
    with pytest.raises(ValueError, match="hypotheses and references must have the same length"):
        M.bleu(["a b"], ["a b", "c"])
    with pytest.raises(ValueError, match="hypotheses is empty"):
        M.bleu([], [])
    with pytest.raises(ValueError, match="tokenize"):
        M.bleu(["a"], ["a"], tokenize="intl")
    with pytest.raises(TypeError, match="y_true"):
        M.accuracy(None, [1])
    with pytest.raises(ValueError, match="labels"):
        M.confusion_matrix([0, 1, 2], [0, 1, 1], labels=[0, 1])


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 50), st.integers(1, 50))
def test_length_mismatch_always_named(n1, n2):
    y = np.zeros(n1, dtype=int)
    p = np.zeros(n2, dtype=int)
    if n1 == n2:
        assert M.accuracy(y, p) == 1.0
    else:
        with pytest.raises(ValueError, match="y_true and y_pred must have the same length"):
            M.f1(y, p)
