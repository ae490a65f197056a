"""Evaluation metrics, written out in NumPy and tested against scikit-learn and sacrebleu.

Every function accepts NumPy arrays, Python lists and torch tensors (moved to the CPU), and returns
a Python ``float`` (or a NumPy array for curves and the confusion matrix). Bad input raises
``ValueError`` naming the argument: mismatched lengths, empty inputs, labels outside the expected
set, ``k < 1``, probabilities outside [0, 1], non-finite scores.

* Classification: :func:`accuracy`, :func:`precision`, :func:`recall`, :func:`f1` (``average=
  "binary"`` with labels in {0, 1}, or ``"macro"`` over the labels present in ``y_true`` or
  ``y_pred``; 0/0 counts as 0, like scikit-learn's ``zero_division=0``), :func:`confusion_matrix`.
* Ranking of binary scores: :func:`roc_curve`, :func:`roc_auc`, :func:`average_precision` (PR-AUC
  as scikit-learn's ``average_precision_score``), :func:`recall_at_specificity`.
* Calibration: :func:`reliability_curve`, :func:`expected_calibration_error` (equal-width bins).
* Language: :func:`perplexity` (from a mean NLL in nats), :func:`bleu` (corpus BLEU-4 with
  brevity penalty; equals ``sacrebleu.corpus_bleu(...).score`` for ``tokenize="13a"`` -- sacrebleu's
  default -- and ``tokenize="none"``, with sacrebleu's default ``"exp"`` smoothing).
* Speech: :func:`word_edit_ops` (substitutions, deletions, insertions of one Levenshtein alignment),
  :func:`word_error_rate` (corpus WER; equals ``jiwer.wer`` on whitespace-separated words).
* Recommendation, leave-one-out: :func:`rank_of_target`, :func:`hit_rate_at_k`, :func:`ndcg_at_k`.
* Noise: :func:`bootstrap_ci` (percentile bootstrap of any metric, matches ``scipy.stats.bootstrap``),
  :func:`bootstrap_diff_ci` (paired difference of two models), :func:`precision_recall_curve`.
"""
from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np

__all__ = [
    "accuracy", "precision", "recall", "f1", "confusion_matrix", "roc_curve", "roc_auc",
    "average_precision", "recall_at_specificity", "reliability_curve",
    "expected_calibration_error", "perplexity", "bleu", "tokenize_13a", "rank_of_target",
    "hit_rate_at_k", "ndcg_at_k", "precision_recall_curve", "bootstrap_indices", "bootstrap_ci",
    "bootstrap_diff_ci", "word_edit_ops", "word_error_rate",
]


# ----------------------------------------------------------------------------- input checking
def _to_numpy(x, name: str) -> np.ndarray:
    """A NumPy copy of a list / array / torch tensor (detached, on the CPU)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor, without importing torch
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        x = x.numpy()
    if isinstance(x, (str, bytes)) or x is None or np.isscalar(x):
        raise TypeError(f"{name} must be an array, list or tensor, got {type(x).__name__}")
    try:
        a = np.asarray(x)
    except Exception as e:  # ragged lists
        raise ValueError(f"{name} could not be converted to an array: {e}") from None
    if a.dtype == object:
        raise ValueError(f"{name} must be a rectangular array of numbers")
    return a


def _vector(x, name: str) -> np.ndarray:
    a = _to_numpy(x, name)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D of shape (N,), got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty; need at least one sample")
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric, got dtype {a.dtype}")
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return a


def _pair(y_true, other, other_name: str):
    t = _vector(y_true, "y_true")
    o = _vector(other, other_name)
    if t.shape[0] != o.shape[0]:
        raise ValueError(f"y_true and {other_name} must have the same length, "
                         f"got {t.shape[0]} and {o.shape[0]}")
    return t, o


def _labels(a: np.ndarray, name: str) -> np.ndarray:
    """Class labels must be integers (bools, or floats with integral values, are accepted)."""
    if a.dtype.kind == "b":
        return a.astype(np.int64)
    if a.dtype.kind == "f":
        if not np.all(a == np.round(a)):
            raise ValueError(f"{name} must hold integer class labels, got non-integral floats")
        return a.astype(np.int64)
    return a.astype(np.int64)


def _binary(a: np.ndarray, name: str) -> np.ndarray:
    a = _labels(a, name)
    bad = np.setdiff1d(np.unique(a), [0, 1])
    if bad.size:
        raise ValueError(f"{name} must contain only the labels 0 and 1, found {bad[:5].tolist()}")
    return a


def _check_average(average: str) -> None:
    if average not in ("binary", "macro"):
        raise ValueError(f"average must be 'binary' or 'macro', got {average!r}")


def _safe_div(num, den):
    num, den = np.asarray(num, float), np.asarray(den, float)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


# ----------------------------------------------------------------------------- classification
def accuracy(y_true, y_pred) -> float:
    """Fraction of exact matches between integer labels (any number of classes)."""
    t, p = _pair(y_true, y_pred, "y_pred")
    return float(np.mean(_labels(t, "y_true") == _labels(p, "y_pred")))


def confusion_matrix(y_true, y_pred, labels=None) -> np.ndarray:
    """``(C, C)`` counts, row = true label, column = predicted label, in the order of ``labels``
    (default: the sorted union of the labels in ``y_true`` and ``y_pred``, as scikit-learn)."""
    t, p = _pair(y_true, y_pred, "y_pred")
    t, p = _labels(t, "y_true"), _labels(p, "y_pred")
    if labels is None:
        labels = np.union1d(t, p)
    else:
        labels = _labels(_vector(labels, "labels"), "labels")
        if np.unique(labels).size != labels.size:
            raise ValueError("labels must not repeat")
        missing = np.setdiff1d(np.union1d(t, p), labels)
        if missing.size:
            raise ValueError(f"y_true/y_pred contain labels {missing[:5].tolist()} not in labels")
    index = {int(l): i for i, l in enumerate(labels)}
    ti = np.array([index[int(v)] for v in t])
    pi = np.array([index[int(v)] for v in p])
    cm = np.zeros((len(labels), len(labels)), dtype=np.int64)
    np.add.at(cm, (ti, pi), 1)
    return cm


def _prf(y_true, y_pred, average: str):
    """Per-class (tp, fp, fn) for the positive class (binary) or for every class (macro)."""
    _check_average(average)
    t, p = _pair(y_true, y_pred, "y_pred")
    if average == "binary":
        t, p = _binary(t, "y_true"), _binary(p, "y_pred")
        tp = np.array([np.sum((t == 1) & (p == 1))])
        fp = np.array([np.sum((t == 0) & (p == 1))])
        fn = np.array([np.sum((t == 1) & (p == 0))])
        return tp, fp, fn
    cm = confusion_matrix(t, p)
    tp = np.diag(cm)
    return tp, cm.sum(axis=0) - tp, cm.sum(axis=1) - tp


def precision(y_true, y_pred, average: str = "binary") -> float:
    """tp / (tp + fp): of the predicted positives, how many are positive (0 when none predicted)."""
    tp, fp, _ = _prf(y_true, y_pred, average)
    return float(np.mean(_safe_div(tp, tp + fp)))


def recall(y_true, y_pred, average: str = "binary") -> float:
    """tp / (tp + fn): of the true positives, how many were found (sensitivity)."""
    tp, _, fn = _prf(y_true, y_pred, average)
    return float(np.mean(_safe_div(tp, tp + fn)))


def f1(y_true, y_pred, average: str = "binary") -> float:
    """Harmonic mean of precision and recall, 2tp / (2tp + fp + fn); macro = mean over classes."""
    tp, fp, fn = _prf(y_true, y_pred, average)
    return float(np.mean(_safe_div(2 * tp, 2 * tp + fp + fn)))


# ----------------------------------------------------------------------------- binary scores
def _binary_scores(y_true, y_score):
    t, s = _pair(y_true, y_score, "y_score")
    t = _binary(t, "y_true")
    if t.min() == t.max():
        raise ValueError("y_true must contain both classes 0 and 1 to rank scores")
    return t, s.astype(np.float64)


def _curve_counts(t, s):
    """Cumulative (fps, tps, thresholds) at each distinct score, highest first."""
    order = np.argsort(-s, kind="mergesort")
    s, t = s[order], t[order]
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]  # last index of each distinct score
    tps = np.cumsum(t)[last]
    fps = (last + 1) - tps
    return fps, tps, s[last]


def roc_curve(y_true, y_score):
    """``(fpr, tpr, thresholds)`` at every distinct score (predict 1 when ``score >= threshold``),
    starting at (0, 0) with threshold ``+inf`` (scikit-learn with ``drop_intermediate=False``)."""
    t, s = _binary_scores(y_true, y_score)
    fps, tps, thr = _curve_counts(t, s)
    fpr = np.r_[0.0, fps / fps[-1]]
    tpr = np.r_[0.0, tps / tps[-1]]
    return fpr, tpr, np.r_[np.inf, thr]


def roc_auc(y_true, y_score) -> float:
    """Area under the ROC curve (trapezoids; ties count one half): the probability that a random
    positive scores above a random negative."""
    fpr, tpr, _ = roc_curve(y_true, y_score)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def average_precision(y_true, y_score) -> float:
    """PR-AUC as step sum ``sum_n (R_n - R_{n-1}) P_n`` over distinct thresholds (no interpolation),
    as scikit-learn's ``average_precision_score``. A random scorer gets the positive rate."""
    t, s = _binary_scores(y_true, y_score)
    fps, tps, _ = _curve_counts(t, s)
    prec = tps / (tps + fps)
    rec = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, rec]) * prec))


def recall_at_specificity(y_true, y_score, specificity: float = 0.95) -> float:
    """The highest recall (sensitivity, TPR) of any threshold whose specificity (1 - FPR) is at
    least ``specificity``: "how many cancers do we catch if at most 5% of healthy cases are
    flagged"."""
    if not (isinstance(specificity, (int, float)) and 0.0 <= specificity <= 1.0):
        raise ValueError(f"specificity must lie in [0, 1], got {specificity!r}")
    fpr, tpr, _ = roc_curve(y_true, y_score)
    ok = (1.0 - fpr) >= specificity - 1e-12
    return float(tpr[ok].max())


# ----------------------------------------------------------------------------- calibration
def _probs(y_true, y_prob):
    t = _labels(_vector(y_true, "y_true"), "y_true")
    p = _to_numpy(y_prob, "y_prob").astype(np.float64)
    if p.ndim not in (1, 2):
        raise ValueError(f"y_prob must be (N,) positive-class probabilities or (N, C) class "
                         f"probabilities, got shape {p.shape}")
    if p.shape[0] != t.shape[0]:
        raise ValueError(f"y_true and y_prob must have the same length, got {t.shape[0]} and "
                         f"{p.shape[0]}")
    if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        raise ValueError("y_prob must hold probabilities in [0, 1]")
    if p.ndim == 1:
        return _binary(t, "y_true"), p
    if p.shape[1] < 2:
        raise ValueError(f"y_prob of shape (N, C) needs C >= 2, got shape {p.shape}")
    if t.min() < 0 or t.max() >= p.shape[1]:
        raise ValueError(f"y_true labels must lie in [0, {p.shape[1] - 1}] for y_prob with "
                         f"{p.shape[1]} classes")
    return t, p


def _check_bins(n_bins) -> None:
    if not (isinstance(n_bins, int) and not isinstance(n_bins, bool) and n_bins >= 1):
        raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")


def reliability_curve(y_true, y_prob, n_bins: int = 10):
    """Equal-width bins on [0, 1]: ``(mean_predicted, fraction_positive, counts)`` for the
    non-empty bins, as scikit-learn's ``calibration_curve(strategy="uniform")`` plus the counts.

    ``y_prob`` of shape (N,) is the positive-class probability (binary ``y_true``); of shape (N, C)
    the top-label view is used: confidence = max probability, "positive" = the argmax is right.
    """
    _check_bins(n_bins)
    t, p = _probs(y_true, y_prob)
    if p.ndim == 2:
        conf, hit = p.max(axis=1), (p.argmax(axis=1) == t).astype(float)
    else:
        conf, hit = p, t.astype(float)
    edges = np.linspace(0.0, 1.0 + 1e-8, n_bins + 1)  # scikit-learn's edges: 1.0 falls in the last
    ids = np.searchsorted(edges[1:-1], conf, side="right")
    counts = np.bincount(ids, minlength=n_bins)
    sum_conf = np.bincount(ids, weights=conf, minlength=n_bins)
    sum_hit = np.bincount(ids, weights=hit, minlength=n_bins)
    nz = counts > 0
    return sum_conf[nz] / counts[nz], sum_hit[nz] / counts[nz], counts[nz]


def expected_calibration_error(y_true, y_prob, n_bins: int = 10) -> float:
    """ECE = sum_b (n_b / N) |mean confidence_b - observed frequency_b| over equal-width bins
    (Guo et al., 2017); see :func:`reliability_curve` for the binary and top-label views."""
    conf, freq, counts = reliability_curve(y_true, y_prob, n_bins)
    return float(np.sum(counts / counts.sum() * np.abs(conf - freq)))


# ----------------------------------------------------------------------------- language
def perplexity(mean_nll) -> float:
    """exp(mean negative log-likelihood per token, in nats), e.g. of a cross-entropy loss.

    Above ``log(max float) ~ 709.78`` nats the perplexity exceeds the float range and is returned
    as ``inf`` (the IEEE result of the overflow), not an ``OverflowError``.
    """
    if hasattr(mean_nll, "detach"):
        if mean_nll.numel() != 1:
            raise ValueError(f"mean_nll must be a scalar, got shape {tuple(mean_nll.shape)}")
        mean_nll = mean_nll.item()
    if isinstance(mean_nll, np.ndarray):
        if mean_nll.size != 1:
            raise ValueError(f"mean_nll must be a scalar, got shape {mean_nll.shape}")
        mean_nll = mean_nll.item()
    if isinstance(mean_nll, bool) or not isinstance(mean_nll, (int, float, np.number)):
        raise TypeError(f"mean_nll must be a number, got {type(mean_nll).__name__}")
    mean_nll = float(mean_nll)
    if not math.isfinite(mean_nll) or mean_nll < 0:
        raise ValueError(f"mean_nll must be a finite, non-negative NLL in nats, got {mean_nll!r}")
    try:
        return math.exp(mean_nll)
    except OverflowError:  # mean_nll > log(sys.float_info.max): the true value is beyond float
        return math.inf


_13A = [
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),  # punctuation and symbols
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),  # period/comma unless preceded by a digit
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),  # period/comma unless followed by a digit
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),  # dash after a digit
]


def tokenize_13a(line: str) -> list[str]:
    """mteval-v13a tokenisation (WMT's, and sacrebleu's default): split off punctuation."""
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        line = (line.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<")
                .replace("&gt;", ">"))
    line = f" {line} "
    for pattern, repl in _13A:
        line = pattern.sub(repl, line)
    return line.split()


def _ngrams(tokens: list[str], max_n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for n in range(1, max_n + 1)
                   for i in range(len(tokens) - n + 1))


def bleu(hypotheses, references, tokenize: str = "13a", smooth: str = "exp",
         max_order: int = 4) -> float:
    """Corpus BLEU on a 0..100 scale (Papineni et al., 2002), equal to sacrebleu's
    ``corpus_bleu(hypotheses, refs, tokenize=..., smooth_method=...).score``.

    ``references[i]`` is one reference string or a list of reference strings for
    ``hypotheses[i]``. Clipped n-gram counts (n = 1..max_order) and lengths are summed over the
    corpus; BLEU = BP * exp(mean_n log p_n) with brevity penalty BP = exp(1 - r/c) when the
    hypotheses' total length c is below r, the sum of the reference lengths closest to each
    hypothesis (ties: the shorter). ``smooth="exp"`` replaces the k-th zero precision by
    1 / (2^k * total_n) (mteval's NIST smoothing; sacrebleu's default); ``"none"`` leaves it 0.
    """
    if tokenize not in ("13a", "none"):
        raise ValueError(f"tokenize must be '13a' or 'none', got {tokenize!r}")
    if smooth not in ("exp", "none"):
        raise ValueError(f"smooth must be 'exp' or 'none', got {smooth!r}")
    if not (isinstance(max_order, int) and max_order >= 1):
        raise ValueError(f"max_order must be a positive int, got {max_order!r}")
    if isinstance(hypotheses, str) or not isinstance(hypotheses, (list, tuple)):
        raise TypeError("hypotheses must be a list of strings")
    if isinstance(references, str) or not isinstance(references, (list, tuple)):
        raise TypeError("references must be a list with one string or list of strings per hypothesis")
    if len(hypotheses) == 0:
        raise ValueError("hypotheses is empty; need at least one sentence")
    if len(references) != len(hypotheses):
        raise ValueError(f"hypotheses and references must have the same length, got "
                         f"{len(hypotheses)} and {len(references)}")
    tok = tokenize_13a if tokenize == "13a" else str.split
    correct, total = [0] * max_order, [0] * max_order
    sys_len = ref_len = 0
    for i, (hyp, refs) in enumerate(zip(hypotheses, references)):
        refs = [refs] if isinstance(refs, str) else list(refs)
        if not isinstance(hyp, str) or not refs or not all(isinstance(r, str) for r in refs):
            raise TypeError(f"hypotheses[{i}] must be a string and references[{i}] a string or a "
                            "non-empty list of strings")
        h = tok(hyp.rstrip())
        ref_counts: Counter = Counter()
        lens = []
        for r in refs:
            rt = tok(r.rstrip())
            lens.append(len(rt))
            for g, c in _ngrams(rt, max_order).items():
                ref_counts[g] = max(ref_counts[g], c)
        sys_len += len(h)
        ref_len += min(lens, key=lambda L: (abs(len(h) - L), L))  # closest, ties -> shorter
        for g, c in _ngrams(h, max_order).items():
            correct[len(g) - 1] += min(c, ref_counts.get(g, 0))
        for n in range(1, max_order + 1):
            total[n - 1] += max(0, len(h) - n + 1)
    if not any(correct):
        return 0.0
    bp = 1.0 if sys_len >= ref_len else (math.exp(1 - ref_len / sys_len) if sys_len else 0.0)
    logs, k = [], 0
    for n in range(max_order):
        if total[n] == 0:
            return 0.0  # no n-grams of this order at all: BLEU-n undefined, sacrebleu gives 0
        if correct[n] == 0:
            if smooth == "none":
                return 0.0
            k += 1
            p = 1.0 / (2 ** k * total[n])
        else:
            p = correct[n] / total[n]
        logs.append(math.log(p))
    return 100.0 * bp * math.exp(sum(logs) / max_order)


# ----------------------------------------------------------------------------- recommendation
def rank_of_target(scores, target) -> np.ndarray:
    """1-based rank of each user's held-out item among its candidates (leave-one-out).

    ``scores`` (U, N) scores every candidate for U users (higher = recommended first); ``target``
    (U,) is the column of the held-out item. Ties count against the target (rank = 1 + number of
    other candidates scoring >= it), so a constant scorer does not look perfect. Mask candidates
    the user has seen by setting their score to ``-inf``.
    """
    s = _to_numpy(scores, "scores").astype(np.float64)
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] == 0:
        raise ValueError(f"scores must be a non-empty (U, N) array, got shape {s.shape}")
    if np.isnan(s).any():
        raise ValueError("scores contains NaN")
    t = _vector(target, "target")
    if t.shape[0] != s.shape[0]:
        raise ValueError(f"target must have one entry per row of scores ({s.shape[0]}), "
                         f"got {t.shape[0]}")
    t = _labels(t, "target")
    if t.min() < 0 or t.max() >= s.shape[1]:
        raise ValueError(f"target must hold column indices in [0, {s.shape[1] - 1}]")
    ts = s[np.arange(s.shape[0]), t]
    if not np.all(np.isfinite(ts)):
        raise ValueError("the target items' scores must be finite (did you mask the target?)")
    return (s >= ts[:, None]).sum(axis=1)  # includes the target itself: 1-based


def _check_k(k) -> None:
    if not (isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 1):
        raise ValueError(f"k must be an int >= 1, got {k!r}")


def hit_rate_at_k(scores, target, k: int = 10) -> float:
    """HR@k: the fraction of users whose held-out item ranks in the top ``k``."""
    _check_k(k)
    return float(np.mean(rank_of_target(scores, target) <= k))


def ndcg_at_k(scores, target, k: int = 10) -> float:
    """NDCG@k with one relevant item: mean of 1 / log2(rank + 1) if rank <= k else 0 (the ideal
    DCG is 1, the held-out item at rank 1)."""
    _check_k(k)
    r = rank_of_target(scores, target)
    return float(np.mean(np.where(r <= k, 1.0 / np.log2(r + 1.0), 0.0)))


# ----------------------------------------------------------------------------- noise: bootstrap
def precision_recall_curve(y_true, y_score):
    """``(precision, recall, thresholds)`` at every distinct score, highest threshold first,
    ending at recall 1 (scikit-learn's ``precision_recall_curve`` lists them lowest first and
    appends the point (P=1, R=0)); :func:`average_precision` is ``sum(diff([0, R]) * P)`` over these."""
    t, s = _binary_scores(y_true, y_score)
    fps, tps, thr = _curve_counts(t, s)
    return tps / (tps + fps), tps / tps[-1], thr


def _check_boot(n_boot, level) -> None:
    if not (isinstance(n_boot, (int, np.integer)) and not isinstance(n_boot, bool) and n_boot >= 10):
        raise ValueError(f"n_boot must be an int >= 10, got {n_boot!r}")
    if isinstance(level, bool) or not isinstance(level, (float, int)) or not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")


def bootstrap_indices(y_true, n_boot: int = 1000, seed: int = 0, stratify: bool = False) -> np.ndarray:
    """``(n_boot, n)`` row indices drawn with replacement. ``stratify=True`` resamples each class
    of ``y_true`` separately, keeping its count (needed for rare positives: a plain resample may
    hold none, and ranking metrics are then undefined)."""
    t = _vector(y_true, "y_true")
    _check_boot(n_boot, 0.5)
    rng = np.random.default_rng(seed)
    if not stratify:
        return rng.integers(0, t.size, size=(n_boot, t.size))
    parts = [np.flatnonzero(t == c) for c in np.unique(t)]
    return np.concatenate([p[rng.integers(0, p.size, size=(n_boot, p.size))] for p in parts], axis=1)


def bootstrap_ci(metric, y_true, y_score, n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                 stratify: bool = False) -> tuple[float, float, float]:
    """``(point, low, high)``: ``metric(y_true, y_score)`` on the data and the percentile bootstrap
    interval (Efron and Tibshirani, 1993) of ``level`` over ``n_boot`` resamples of the examples.
    The same as ``scipy.stats.bootstrap(..., paired=True, method="percentile")`` up to Monte-Carlo
    error. It measures test-set sampling noise only (not seed-to-seed training noise)."""
    if not callable(metric):
        raise TypeError(f"metric must be callable, got {type(metric).__name__}")
    _check_boot(n_boot, level)
    t, s = _pair(y_true, y_score, "y_score")
    idx = bootstrap_indices(t, n_boot, seed, stratify)
    vals = np.array([metric(t[i], s[i]) for i in idx], dtype=np.float64)
    lo, hi = np.percentile(vals, [50 * (1 - level), 50 * (1 + level)])
    return float(metric(t, s)), float(lo), float(hi)


def bootstrap_diff_ci(metric, y_true, score_a, score_b, n_boot: int = 1000, level: float = 0.95,
                      seed: int = 0, stratify: bool = False) -> tuple[float, float, float]:
    """``(point, low, high)`` for ``metric(a) - metric(b)`` on the *same* resampled examples
    (a paired bootstrap). If the interval contains 0, the two are not distinguishable at ``level``."""
    if not callable(metric):
        raise TypeError(f"metric must be callable, got {type(metric).__name__}")
    _check_boot(n_boot, level)
    t, a = _pair(y_true, score_a, "score_a")
    _, b = _pair(y_true, score_b, "score_b")
    idx = bootstrap_indices(t, n_boot, seed, stratify)
    vals = np.array([metric(t[i], a[i]) - metric(t[i], b[i]) for i in idx], dtype=np.float64)
    lo, hi = np.percentile(vals, [50 * (1 - level), 50 * (1 + level)])
    return float(metric(t, a) - metric(t, b)), float(lo), float(hi)


# ----------------------------------------------------------------------------- speech
def word_edit_ops(reference: str, hypothesis: str) -> tuple[int, int, int]:
    """``(substitutions, deletions, insertions)`` turning ``reference`` into ``hypothesis`` (words
    split on whitespace) with the fewest edits (Levenshtein); ties prefer substitutions."""
    for name, v in (("reference", reference), ("hypothesis", hypothesis)):
        if not isinstance(v, str):
            raise TypeError(f"{name} must be a string, got {type(v).__name__}")
    r, h = reference.split(), hypothesis.split()
    # D[i][j] = (edits, subs, dels, ins) for r[:i] -> h[:j]; compare by edits, then fewer dels + ins
    D = [[(j, 0, 0, j) for j in range(len(h) + 1)]]
    for i in range(1, len(r) + 1):
        row = [(i, 0, i, 0)]
        for j in range(1, len(h) + 1):
            e, s_, d, n = D[i - 1][j - 1]
            sub = (e + (r[i - 1] != h[j - 1]), s_ + (r[i - 1] != h[j - 1]), d, n)
            e, s_, d, n = D[i - 1][j]
            dele = (e + 1, s_, d + 1, n)
            e, s_, d, n = row[j - 1]
            ins = (e + 1, s_, d, n + 1)
            row.append(min(sub, dele, ins, key=lambda t: (t[0], t[2] + t[3])))
        D.append(row)
    _, subs, dels, ins = D[-1][-1]
    return subs, dels, ins


def word_error_rate(references, hypotheses) -> float:
    """Corpus word error rate ``sum(S + D + I) / sum(N)`` over pairs of strings (``N`` = words in the
    reference); a single pair may be given as two strings. Can exceed 1 (many insertions)."""
    if isinstance(references, str) and isinstance(hypotheses, str):
        references, hypotheses = [references], [hypotheses]
    if not isinstance(references, (list, tuple)) or not isinstance(hypotheses, (list, tuple)):
        raise TypeError("references and hypotheses must be strings or lists of strings")
    if len(references) != len(hypotheses):
        raise ValueError(f"references ({len(references)}) and hypotheses ({len(hypotheses)}) differ in length")
    n = sum(len(r.split()) if isinstance(r, str) else 0 for r in references)
    if n == 0:
        raise ValueError("references must hold at least one word")
    return float(sum(sum(word_edit_ops(r, h)) for r, h in zip(references, hypotheses)) / n)
