"""Time-series anomaly detection: windows, per-sample scores, thresholds, events and their metrics.

Every detector in the book produces one **score per sample** (higher = more anomalous; ``NaN``
where it has no opinion yet, e.g. before its first full window). An alarm is ``score >= threshold``.

**Events.** An anomalous *event* is a maximal run of consecutive samples labelled 1, written as the
half-open interval ``[start, end)``. An *alarm event* is a maximal run of consecutive alarms. With a
tolerance ``tau >= 0`` samples, event ``[s, e)`` is widened to ``[s - tau, e + tau)`` (clipped to
the series). Then

* a true event is **detected** if at least one alarm falls inside its widened interval;
* a **false alarm** is a maximal run of alarms *outside* every widened true event (alarms are
  first cut where they enter or leave a widened event);
* ``TP`` = detected true events, ``FN`` = missed true events, ``FP`` = false alarms;
  precision = ``TP / (TP + FP)`` (0 when there is no alarm), recall = ``TP / (TP + FN)``,
  ``F1`` = their harmonic mean (0 when both are 0).

An event hit by several separate alarm runs counts once. An alarm run that starts inside an event
and goes on past its end (plus ``tau``) is a hit *and* one false alarm for the spill-over: without
that cut, alarming everywhere would be one long alarm run covering every event, a "perfect"
detector. Alarming everywhere scores ``TP = K`` and up to ``K + 1`` false alarms (the gaps between
events), so precision about one half. Point-wise metrics (average precision) treat every sample
alone and come from :func:`bmlib.metrics.average_precision`.

**Thresholds** are fitted on the validation part only (:func:`evaluate`): either the one that
maximises event-level F1 there, or, when validation holds no labelled anomaly, the lowest threshold
that raises no alarm on it (:func:`quiet_threshold`).

**Noise.** Samples of a series are not independent, so :func:`block_bootstrap_ci` resamples
*blocks* of consecutive samples (the moving-block bootstrap, Kuensch, 1989) rather than samples.
"""
from __future__ import annotations

import numpy as np

from .metrics import _check_boot

RULES = ("event_f1", "quiet")


# ----------------------------------------------------------------------------- input checks
def _series(x, name: str, allow_nan: bool = False) -> np.ndarray:
    if isinstance(x, (str, bytes)) or x is None:
        raise TypeError(f"{name} must be a 1-D array of numbers, got {type(x).__name__}")
    a = np.asarray(x, dtype=np.float64) if not hasattr(x, "detach") else x.detach().cpu().numpy().astype(np.float64)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {a.shape}")
    bad = ~np.isfinite(a) if not allow_nan else np.isinf(a)
    if bad.any():
        raise ValueError(f"{name} has {int(bad.sum())} {'infinite' if allow_nan else 'non-finite (NaN/inf)'} "
                         f"values, first at index {int(np.flatnonzero(bad)[0])}")
    return a


def _binary(y, name: str) -> np.ndarray:
    a = np.asarray(y)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of 0/1, got shape {a.shape}")
    if a.dtype == bool:
        return a.astype(np.int64)
    if not np.issubdtype(a.dtype, np.number) or not np.isin(a, (0, 1)).all():
        raise ValueError(f"{name} must hold only 0 and 1 (or booleans)")
    return a.astype(np.int64)


def _int(v, name: str, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {v!r}")
    return int(v)


def _same_length(a, b, na: str, nb: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{na} has shape {a.shape} but {nb} has shape {b.shape}; they must match")


# ----------------------------------------------------------------------------- windows and scores
def sliding_windows(x, width: int) -> np.ndarray:
    """``(T - width + 1, width)``: row ``i`` is ``x[i:i + width]`` (a copy)."""
    a = _series(x, "x")
    w = _int(width, "width", 1)
    if w > a.size:
        raise ValueError(f"width={w} is longer than the series (T={a.size})")
    return np.lib.stride_tricks.sliding_window_view(a, w).copy()  # (T - w + 1, w)


def window_features(x, width: int, demean: bool = True) -> np.ndarray:
    """:func:`sliding_windows`, each row minus its own mean when ``demean`` (shape, not level:
    a trend then does not make every late window look new)."""
    W = sliding_windows(x, width)
    return W - W.mean(axis=1, keepdims=True) if demean else W


def place(values, index, n: int) -> np.ndarray:
    """A per-sample score ``(n,)``: ``values[k]`` at sample ``index[k]``, ``NaN`` elsewhere
    (e.g. a window's score at the window's last sample, so the detector is causal)."""
    v = _series(values, "values", allow_nan=True)
    i = np.asarray(index)
    n = _int(n, "n", 1)
    if i.shape != v.shape or not np.issubdtype(i.dtype, np.integer):
        raise ValueError(f"index must be integers of shape {v.shape}, got {i.dtype} {i.shape}")
    if i.size and (i.min() < 0 or i.max() >= n or np.unique(i).size != i.size):
        raise ValueError(f"index must be distinct positions in [0, n={n})")
    out = np.full(n, np.nan)
    out[i] = v
    return out


def rolling_zscore(x, window: int, eps: float = 1e-12) -> np.ndarray:
    """``|x_t - m_t| / s_t`` with ``m_t``, ``s_t`` the mean and standard deviation (``ddof=1``, as
    pandas' ``rolling().std()``) of the ``window`` samples **before** ``t``, so sample ``t`` does not
    vote on its own normality. ``NaN`` for ``t < window``."""
    a = _series(x, "x")
    w = _int(window, "window", 2)
    if w >= a.size:
        raise ValueError(f"window={w} must be shorter than the series (T={a.size})")
    past = np.lib.stride_tricks.sliding_window_view(a[:-1], w)  # (T - w, w): row j = x[j:j+w], before x[j+w]
    m, s = past.mean(axis=1), past.std(axis=1, ddof=1)
    out = np.full(a.size, np.nan)
    out[w:] = np.abs(a[w:] - m) / np.maximum(s, eps)
    return out


def forecast_pairs(x, lookback: int):
    """Next-value forecasting examples: ``(inputs (N, lookback), targets (N,), index (N,))`` with
    ``N = T - lookback``; example ``k`` forecasts ``x[t]``, ``t = index[k] = k + lookback``, from
    ``x[t - lookback:t]``. Inputs and target have the window's mean removed (level-free)."""
    a = _series(x, "x")
    L = _int(lookback, "lookback", 1)
    if L >= a.size:
        raise ValueError(f"lookback={L} must be shorter than the series (T={a.size})")
    past = np.lib.stride_tricks.sliding_window_view(a[:-1], L)  # (T - L, L)
    mu = past.mean(axis=1, keepdims=True)  # (N, 1)
    return past - mu, a[L:] - mu[:, 0], np.arange(L, a.size)


def clean_mask(labels, index, lookback: int) -> np.ndarray:
    """``(N,)`` True where the forecast example ending at ``index[k]`` (its ``lookback`` inputs and
    its target) touches no labelled anomaly: train a detector of the normal on these only."""
    y = _binary(labels, "labels")
    L = _int(lookback, "lookback", 1)
    c = np.concatenate([[0], np.cumsum(y)])
    i = np.asarray(index)
    if i.ndim != 1 or (i.size and (i.min() < L or i.max() >= y.size)):
        raise ValueError(f"index must be 1-D positions in [lookback={L}, T={y.size})")
    return (c[i + 1] - c[i - L]) == 0


# ----------------------------------------------------------------------------- events and metrics
def events(labels) -> np.ndarray:
    """``(K, 2)`` int64 ``[start, end)`` of each maximal run of 1s, in order."""
    y = _binary(labels, "labels")
    d = np.diff(np.concatenate([[0], y, [0]]))
    return np.stack([np.flatnonzero(d == 1), np.flatnonzero(d == -1)], axis=1).astype(np.int64)


def event_counts(labels, alarms, tolerance: int = 0) -> dict:
    """``dict(n_events, detected, missed, alarm_events, false_alarms)`` as defined in the module
    docstring; ``alarm_events`` counts all alarm runs (works with no true event: then every alarm
    run is a false alarm)."""
    y, a = _binary(labels, "labels"), _binary(alarms, "alarms")
    _same_length(y, a, "labels", "alarms")
    tau = _int(tolerance, "tolerance", 0)
    n = y.size
    ev, al = events(y), events(a)
    near = np.zeros(n, dtype=bool)
    detected = 0
    for s, e in ev:
        lo, hi = max(0, s - tau), min(n, e + tau)
        near[lo:hi] = True
        detected += bool(a[lo:hi].any())
    false_alarms = len(events(a.astype(bool) & ~near))  # runs of alarms outside every widened event
    return dict(n_events=len(ev), detected=int(detected), missed=int(len(ev) - detected),
                alarm_events=len(al), false_alarms=int(false_alarms))


def event_prf(labels, alarms, tolerance: int = 0) -> dict:
    """Event-level ``precision``, ``recall``, ``f1`` plus :func:`event_counts`'s counts.
    Raises ``ValueError`` when ``labels`` holds no event (recall is undefined)."""
    c = event_counts(labels, alarms, tolerance)
    if c["n_events"] == 0:
        raise ValueError("labels hold no anomalous event: event recall is undefined")
    tp, fp = c["detected"], c["false_alarms"]
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / c["n_events"]
    f = 2 * p * r / (p + r) if p + r else 0.0
    return dict(precision=float(p), recall=float(r), f1=float(f), **c)


# ----------------------------------------------------------------------------- thresholds
def quiet_threshold(scores) -> float:
    """The lowest threshold that raises no alarm on ``scores`` (just above their maximum)."""
    s = _series(scores, "scores")
    return float(np.nextafter(s.max(), np.inf))


def best_f1_threshold(labels, scores, tolerance: int = 0) -> tuple[float, float]:
    """``(threshold, f1)``: the threshold among the distinct scores (and "no alarm") with the highest
    event-level F1 on these labels; ties go to the highest threshold (fewest alarms)."""
    y, s = _binary(labels, "labels"), _series(scores, "scores")
    _same_length(y, s, "labels", "scores")
    best_t, best_f = quiet_threshold(s), 0.0
    for t in np.unique(s)[::-1]:  # highest first, so a tie keeps the higher threshold
        f = event_prf(y, s >= t, tolerance)["f1"]
        if f > best_f:
            best_t, best_f = float(t), f
    return best_t, float(best_f)


def time_split(n: int, fractions=(0.6, 0.2, 0.2)) -> dict:
    """Consecutive ``{"train", "val", "test"}`` slices of ``range(n)``, in time order."""
    n = _int(n, "n", 3)
    f = tuple(float(v) for v in fractions)
    if len(f) != 3 or min(f) <= 0 or abs(sum(f) - 1) > 1e-9:
        raise ValueError(f"fractions must be three positive numbers summing to 1, got {fractions!r}")
    a, b = int(round(f[0] * n)), int(round((f[0] + f[1]) * n))
    if not 0 < a < b < n:
        raise ValueError(f"fractions {fractions!r} leave an empty part of n={n}")
    return {"train": slice(0, a), "val": slice(a, b), "test": slice(b, n)}


def evaluate(labels, scores, splits: dict, rule: str = "event_f1", tolerance: int = 0) -> dict:
    """Fit the threshold on ``splits["val"]`` only (``rule``: ``"event_f1"`` or ``"quiet"``), apply it
    once to ``splits["test"]``. Returns ``threshold``, ``val_f1`` (event F1 on validation, NaN if it
    has no event), the test :func:`event_prf` keys prefixed ``test_`` and the point-wise ``test_ap``."""
    from .metrics import average_precision

    y = _binary(labels, "labels")
    s = _series(scores, "scores", allow_nan=True)
    _same_length(y, s, "labels", "scores")
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if not isinstance(splits, dict) or not {"val", "test"} <= set(splits):
        raise ValueError("splits must be a dict with 'val' and 'test' slices (see time_split)")
    yv, sv = y[splits["val"]], _series(s[splits["val"]], "scores on the validation part")
    yt, st = y[splits["test"]], _series(s[splits["test"]], "scores on the test part")
    if rule == "event_f1":
        thr, _ = best_f1_threshold(yv, sv, tolerance)
    else:
        thr = quiet_threshold(sv)
    val_f1 = event_prf(yv, sv >= thr, tolerance)["f1"] if yv.any() else float("nan")
    out = dict(threshold=thr, val_f1=val_f1, val_false_alarms=event_counts(yv, sv >= thr, tolerance)["false_alarms"])
    out.update({f"test_{k}": v for k, v in event_prf(yt, st >= thr, tolerance).items()})
    out["test_ap"] = average_precision(yt, st)
    return out


# ----------------------------------------------------------------------------- noise
def block_bootstrap_indices(n: int, block: int, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """``(n_boot, n)`` moving-block bootstrap indices: random blocks of ``block`` consecutive
    positions, concatenated and cut to length ``n``."""
    n = _int(n, "n", 1)
    b = _int(block, "block", 1)
    if b > n:
        raise ValueError(f"block={b} is longer than the series (n={n})")
    _check_boot(n_boot, 0.5)
    rng = np.random.default_rng(seed)
    k = -(-n // b)  # blocks per resample
    starts = rng.integers(0, n - b + 1, size=(n_boot, k))
    return (starts[:, :, None] + np.arange(b)).reshape(n_boot, k * b)[:, :n]


def block_bootstrap_ci(metric, labels, scores, block: int, n_boot: int = 1000, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float, float]:
    """``(point, low, high)``: ``metric(labels, scores)`` and its percentile interval over moving-block
    resamples. Resamples where the metric is undefined (it raises ``ValueError`` or returns NaN, e.g.
    no event was drawn) are skipped; fewer than half defined raises ``ValueError``."""
    if not callable(metric):
        raise TypeError(f"metric must be callable, got {type(metric).__name__}")
    _check_boot(n_boot, level)
    y = _binary(labels, "labels")
    s = _series(scores, "scores")
    _same_length(y, s, "labels", "scores")
    vals = []
    for i in block_bootstrap_indices(y.size, block, n_boot, seed):
        try:
            v = float(metric(y[i], s[i]))
        except ValueError:
            continue
        if np.isfinite(v):
            vals.append(v)
    if len(vals) < n_boot / 2:
        raise ValueError(f"the metric is defined on only {len(vals)} of {n_boot} resamples; use longer blocks")
    lo, hi = np.percentile(vals, [50 * (1 - level), 50 * (1 + level)])
    return float(metric(y, s)), float(lo), float(hi)
