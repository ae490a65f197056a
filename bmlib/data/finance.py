"""Stock prices, returns and leak-free forecasting windows, offline from installed packages.

Sources (both ship inside their wheels; nothing is downloaded):

* ``bokeh_sampledata.stocks`` (package ``bokeh-sampledata``): daily open/high/low/close/volume and
  dividend- and split-adjusted close for AAPL, GOOG, IBM and MSFT, 2000-03-01 to 2013-03-01
  (GOOG from its 2004-08-19 listing).
* matplotlib's sample data ``Stocks.csv`` (``matplotlib.cbook.get_sample_data``): monthly adjusted
  closes of IBM, AAPL, MSFT, XRX, AMZN, DELL, GOOGL, ADBE and the S&P 500 / Nasdaq indices,
  1990-2022 (Yahoo Finance; the file also holds a few mid-month rows, which we drop, keeping the
  first trading day of each month).

Forecasting helpers: :func:`returns`, :func:`make_windows` (past ``lookback`` returns -> next-day
return, or realised volatility over the next ``horizon`` days) and :func:`chronological_split`,
which splits on *target time* and purges windows whose targets straddle a boundary, so that no
training target lies on or after any validation/test target day (asserted).
:func:`extreme_loss_labels` builds the book's imbalanced "fraud-like" task: is tomorrow's return
below a threshold (e.g. minus twice the window's realised volatility)?
"""
from __future__ import annotations

import numpy as np

from .store import cached

DAILY_TICKERS = ("AAPL", "GOOG", "IBM", "MSFT")
MONTHLY_TICKERS = ("IBM", "AAPL", "MSFT", "XRX", "AMZN", "DELL", "GOOGL", "ADBE", "^GSPC", "^IXIC")
DAILY_SHA256 = "8b2a819f05ca8f67ed080bc9f9239c3306f56aa809523d39f1d0c12a407622b6"
MONTHLY_SHA256 = "4ecd72d4c740db5c644199002f4818edf3136be722ac7b73b966f09c19432374"
_FIELDS = ("open", "high", "low", "close", "volume", "adj_close")


def _build_daily() -> dict:
    from bokeh_sampledata import stocks

    out = {}
    for t in DAILY_TICKERS:
        d = getattr(stocks, t)
        out[f"{t}_date"] = np.array(d["date"], dtype="datetime64[D]")
        for f in _FIELDS:
            out[f"{t}_{f}"] = np.asarray(d[f], dtype=np.float64)
    return out


def load_daily_stocks(tickers=DAILY_TICKERS) -> dict:
    """``{ticker: dict(date datetime64[D] (T,), open, high, low, close, volume, adj_close)}``,
    oldest first, from ``bokeh_sampledata.stocks``."""
    if isinstance(tickers, str):
        tickers = (tickers,)
    bad = [t for t in tickers if t not in DAILY_TICKERS]
    if bad or not tickers:
        raise ValueError(f"tickers must be a non-empty subset of {DAILY_TICKERS}, got {list(tickers)}")
    arrays = cached("stocks_daily", _build_daily, package="bokeh-sampledata",
                    expected_sha256=DAILY_SHA256)
    out = {}
    for t in tickers:
        d = {"date": arrays[f"{t}_date"], **{f: arrays[f"{t}_{f}"] for f in _FIELDS}}
        n = d["date"].shape[0]
        if not all(v.shape == (n,) for v in d.values()) or not np.all(np.diff(d["date"]) > np.timedelta64(0, "D")):
            raise ValueError(f"daily prices of {t} are malformed (ragged or not strictly increasing dates)")
        out[t] = d
    return out


def _build_monthly() -> dict:
    import matplotlib.cbook as cbook
    import pandas as pd

    df = pd.read_csv(cbook.get_sample_data("Stocks.csv", asfileobj=False), skiprows=1)
    df["Date"] = pd.to_datetime(df["Date"])
    df = df[df["Date"].dt.day == 1].reset_index(drop=True)  # monthly rows only
    cols = list(MONTHLY_TICKERS)
    if [c for c in cols if c not in df.columns]:
        raise ValueError(f"Stocks.csv columns {list(df.columns)} lack some of {cols}")
    return {"date": df["Date"].to_numpy().astype("datetime64[D]"),
            "tickers": np.array(cols), "prices": df[cols].to_numpy(dtype=np.float64)}


def load_monthly_stocks() -> dict:
    """``dict(date (T,), tickers (n,), prices (T, n))``: monthly adjusted closes from matplotlib's
    ``Stocks.csv`` (NaN before a company's listing)."""
    a = cached("stocks_monthly", _build_monthly, package="matplotlib",
               expected_sha256=MONTHLY_SHA256)
    if a["prices"].shape != (a["date"].shape[0], a["tickers"].shape[0]):
        raise ValueError(f"cached monthly prices have shape {a['prices'].shape}, expected "
                         f"({a['date'].shape[0]}, {a['tickers'].shape[0]})")
    return {"date": a["date"], "tickers": [str(t) for t in a["tickers"]], "prices": a["prices"]}


def returns(prices, log: bool = False) -> np.ndarray:
    """Period returns along axis 0: ``p[t]/p[t-1] - 1``, or ``log p[t] - log p[t-1]`` with
    ``log=True``. ``prices`` (T,) or (T, n), positive; the result has T - 1 rows."""
    p = np.asarray(prices, dtype=np.float64)
    if p.ndim not in (1, 2) or p.shape[0] < 2:
        raise ValueError(f"prices must have shape (T,) or (T, n) with T >= 2, got {p.shape}")
    finite = p[np.isfinite(p)]
    if finite.size and finite.min() <= 0:
        raise ValueError("prices must be positive")
    return np.diff(np.log(p), axis=0) if log else p[1:] / p[:-1] - 1.0


def make_windows(r, lookback: int, target: str = "return", horizon: int = 1):
    """Supervised windows from a 1-D return series ``r`` (T,).

    Window ``i`` has inputs ``X[i] = r[s - lookback : s]`` (the ``lookback`` returns known at the
    close of day ``s - 1``) and a target about days ``s .. s + horizon - 1``:
    ``target="return"``: ``r[s]`` (needs ``horizon == 1``); ``target="volatility"``: realised
    volatility ``sqrt(mean(r[s : s + horizon] ** 2))``.

    Returns ``(X (N, lookback), y (N,), t (N,))`` with ``t[i] = s`` the first target day, so a
    split can prove it never looks ahead.
    """
    r = np.asarray(r, dtype=np.float64)
    if r.ndim != 1:
        raise ValueError(f"r must be a 1-D return series of shape (T,), got shape {r.shape}")
    if not np.all(np.isfinite(r)):
        raise ValueError("r contains NaN or infinite returns")
    if not (isinstance(lookback, int) and lookback >= 1):
        raise ValueError(f"lookback must be an int >= 1, got {lookback!r}")
    if not (isinstance(horizon, int) and horizon >= 1):
        raise ValueError(f"horizon must be an int >= 1, got {horizon!r}")
    if target not in ("return", "volatility"):
        raise ValueError(f"target must be 'return' or 'volatility', got {target!r}")
    if target == "return" and horizon != 1:
        raise ValueError(f"target='return' forecasts one day: horizon must be 1, got {horizon}")
    starts = np.arange(lookback, r.shape[0] - horizon + 1)
    if starts.size == 0:
        raise ValueError(f"r has {r.shape[0]} returns: too short for lookback={lookback} + "
                         f"horizon={horizon}")
    X = np.lib.stride_tricks.sliding_window_view(r, lookback)[starts - lookback]  # (N, lookback)
    if target == "return":
        y = r[starts]
    else:
        fut = np.lib.stride_tricks.sliding_window_view(r, horizon)[starts]  # (N, horizon)
        y = np.sqrt(np.mean(fut ** 2, axis=1))
    return np.ascontiguousarray(X), y, starts


def chronological_split(X, y, t, fractions=(0.7, 0.15, 0.15), horizon: int = 1) -> dict:
    """Split windows by target time into ``{"train": (X, y, t), "val": ..., "test": ...}``.

    Boundaries are days ``b1 < b2`` at the given fractions of the target-day range. A window
    belongs to a split only if all its target days ``t .. t + horizon - 1`` lie inside it; windows
    straddling a boundary are dropped (purged). Afterwards every training target day precedes every
    validation target day, which precedes every test target day -- asserted, not assumed. (Inputs
    of later splits may include earlier targets: that is the past, which a forecaster may use.)
    """
    X, y, t = np.asarray(X), np.asarray(y), np.asarray(t)
    if not (X.ndim >= 1 and y.ndim == 1 and t.ndim == 1 and X.shape[0] == y.shape[0] == t.shape[0]):
        raise ValueError(f"X, y, t must have the same number of rows, got {X.shape}, {y.shape}, {t.shape}")
    if X.shape[0] < 3:
        raise ValueError(f"need at least 3 windows to split, got {X.shape[0]}")
    if np.any(np.diff(t) <= 0):
        raise ValueError("t must be strictly increasing (windows in time order)")
    f = tuple(float(v) for v in fractions)
    if len(f) != 3 or min(f) <= 0 or abs(sum(f) - 1.0) > 1e-9:
        raise ValueError(f"fractions must be three positive numbers summing to 1, got {fractions!r}")
    if not (isinstance(horizon, int) and horizon >= 1):
        raise ValueError(f"horizon must be an int >= 1, got {horizon!r}")
    lo, hi = int(t[0]), int(t[-1]) + horizon  # target days span [lo, hi)
    b1 = lo + int(round(f[0] * (hi - lo)))
    b2 = b1 + int(round(f[1] * (hi - lo)))
    end = t + horizon  # exclusive end of each window's targets
    masks = {"train": end <= b1, "val": (t >= b1) & (end <= b2), "test": t >= b2}
    out = {k: (X[m], y[m], t[m]) for k, m in masks.items()}
    for k in out:
        if out[k][0].shape[0] == 0:
            raise ValueError(f"the {k} split is empty; use more data or other fractions")
    # no look-ahead: the last target day of a split is before the first target day of the next
    assert out["train"][2].max() + horizon - 1 < out["val"][2].min()
    assert out["val"][2].max() + horizon - 1 < out["test"][2].min()
    return out


def extreme_loss_labels(r_next, threshold) -> np.ndarray:
    """1 where the next-day return is below ``threshold`` (a rare large loss), else 0.

    ``threshold`` is a number or one value per window (shape of ``r_next``), e.g. ``-2 * sigma``
    with ``sigma`` the window's own realised volatility: a loss that is extreme *for the current
    regime*, which keeps the positive rate stable across calm and turbulent years. Compute it from
    past data only (the window's inputs, or training-set quantiles), never from the test targets.
    """
    r_next = np.asarray(r_next, dtype=np.float64)
    if r_next.ndim != 1 or r_next.size == 0:
        raise ValueError(f"r_next must be a non-empty 1-D array, got shape {r_next.shape}")
    thr = np.asarray(threshold, dtype=np.float64)
    if thr.ndim not in (0, 1) or (thr.ndim == 1 and thr.shape != r_next.shape):
        raise ValueError(f"threshold must be a number or have the shape of r_next {r_next.shape}, "
                         f"got shape {thr.shape}")
    if not np.all(np.isfinite(thr)):
        raise ValueError("threshold must be finite")
    return (r_next < thr).astype(np.int64)
