"""Two labelled univariate series for anomaly detection, read offline from the ``sktime`` wheel.

sktime ships the two files as plain CSV (columns ``data``, ``label``; ``label`` 1 = anomalous) with
**no loader function**: they were added with the example notebook
``examples/07_detection_anomaly_changepoints.ipynb`` (sktime pull request #7284, "anomaly and
changepoint detection notebook from ODSC 2024", commit ``c392695``, October 2024; the commit message
says "adds the data used to the data folder, without loaders"). What the notebook says about them:

* ``sktime/datasets/data/mitdb/mitdb.csv`` -- "an ECG dataset [that] has an example of a subsequence
  outlier": 7,500 samples of one electrocardiogram lead, one labelled anomalous run of 352 samples
  (a single unusual heartbeat and what follows it). The name and the 360 Hz beat spacing (about 290
  samples between beats, about 0.8 s) point to the MIT-BIH Arrhythmia Database (Moody and Mark,
  2001, PhysioNet); the record and the labelling rule are not stated by the source.
* ``sktime/datasets/data/yahoo/yahoo.csv`` -- "the Yahoo timeseries contains synthetic labelled
  anomalies" (point outliers): 1,000 samples of trend + seasonality + noise with 7 labelled points.
  The source does not say which file of Yahoo's Webscope S5 benchmark it is.

We read the CSV files found with ``importlib.util.find_spec("sktime")`` (which locates the package
without importing it: the book installs ``sktime`` with ``--no-deps``), keep a checksummed copy
under ``artifacts/data/`` and check shapes and label counts against the numbers above.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from .store import cached

MITDB_SHA256 = "7756ba04b07bb0d41c186d1c55eb7f4a296fbd10d470163a03478d8061917bb5"
YAHOO_SHA256 = "8450671fea9c257220ee46dd723976066073364ace42924b35db17de7cd9e2f7"
EXPECTED = {  # name: (samples, anomalous samples, anomalous events)
    "mitdb": (7500, 352, 1),
    "yahoo": (1000, 7, 7),
}
SERIES = tuple(EXPECTED)


def _data_dir() -> Path:
    spec = importlib.util.find_spec("sktime")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the package 'sktime' is not installed (pip install --no-deps sktime==1.2.0)")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def _build(name: str) -> dict:
    import pandas as pd

    path = _data_dir() / name / f"{name}.csv"
    if not path.exists():
        raise ImportError(f"the installed 'sktime' has no {name}/{name}.csv (sktime >= the October 2024 "
                          "examples ships it)")
    df = pd.read_csv(path)
    if list(df.columns) != ["data", "label"]:
        raise ValueError(f"{path.name} has columns {list(df.columns)}, expected ['data', 'label']")
    return {"x": df["data"].to_numpy(dtype=np.float64), "label": df["label"].to_numpy(dtype=np.int64)}


def load_series(name: str) -> dict:
    """``dict(x (T,) float64, label (T,) int64 with 1 = anomalous)`` for ``name`` in ``("mitdb", "yahoo")``."""
    if name not in EXPECTED:
        raise ValueError(f"name must be one of {SERIES}, got {name!r}")
    sha = {"mitdb": MITDB_SHA256, "yahoo": YAHOO_SHA256}[name]
    a = cached(f"anomaly_{name}", lambda: _build(name), package="sktime", expected_sha256=sha)
    n, n_pos, n_events = EXPECTED[name]
    x, y = a["x"], a["label"]
    runs = int(np.count_nonzero(np.diff(np.r_[0, y, 0]) == 1))
    if x.shape != (n,) or y.shape != (n,) or int(y.sum()) != n_pos or runs != n_events:
        raise ValueError(f"{name} has unexpected shape {x.shape} or labels ({int(y.sum())} anomalous "
                         f"samples in {runs} runs; expected {n} samples, {n_pos} in {n_events})")
    return {"x": x, "label": y}
