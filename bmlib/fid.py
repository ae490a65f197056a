"""Fréchet distance between image sets, measured in the features of the book's MNIST classifier.

The Fréchet (2-Wasserstein) distance between two Gaussians fitted to feature sets is

    d^2 = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a^{1/2} S_b S_a^{1/2})^{1/2})

(Dowson and Landau, 1982). Heusel et al. (2017) use Inception-v3 features on natural images
(FID); for digits an ImageNet network is the wrong lens (and is not available offline here), so the
book trains its own small MNIST classifier once and uses its penultimate layer, as torchmetrics
allows with ``FrechetInceptionDistance(feature=<module>)``.

* :func:`frechet_distance` — the distance between two ``(N, d)`` feature arrays, in NumPy (float64,
  symmetric square roots by eigen-decomposition); :func:`gaussian_frechet_distance` from moments.
* :func:`frechet_distance_ci` — bootstrap interval over the rows of one set (the other held fixed).
* :func:`feature_classifier` — the book's MNIST CNN (``SmallCNN``) for a side of 28 or 14: trained
  with a fixed seed by :func:`bmlib.train.train` and cached under ``artifacts/fid/`` (sha256-verified
  checkpoint), so every run uses the same features. Returns a :class:`ClassifierFeatures`.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


# ----------------------------------------------------------------------------- Fréchet distance
def _moments(f, name: str):
    a = f.detach().cpu().double().numpy() if isinstance(f, torch.Tensor) else np.asarray(f, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 2:
        raise ValueError(f"{name} must be a 2-D array of features (N >= 2, d), got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} holds non-finite values")
    return a.mean(0), np.cov(a, rowvar=False, ddof=1).reshape(a.shape[1], a.shape[1])


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def gaussian_frechet_distance(mu_a, cov_a, mu_b, cov_b) -> float:
    """``||mu_a - mu_b||^2 + Tr(cov_a) + Tr(cov_b) - 2 Tr((cov_a^{1/2} cov_b cov_a^{1/2})^{1/2})``."""
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
    d = mu_a.shape[0]
    if mu_a.shape != (d,) or mu_b.shape != (d,) or cov_a.shape != (d, d) or cov_b.shape != (d, d):
        raise ValueError(f"need mu_a, mu_b of shape (d,) and cov_a, cov_b of shape (d, d); got {mu_a.shape}, "
                         f"{mu_b.shape}, {cov_a.shape}, {cov_b.shape}")
    ra = _sqrt_psd(cov_a)
    w = np.linalg.eigvalsh(ra @ cov_b @ ra)
    cross = np.sqrt(np.clip(w, 0, None)).sum()
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)


def frechet_distance(feats_a, feats_b) -> float:
    """Fréchet distance between Gaussians fitted (mean, unbiased covariance) to two feature sets
    ``(N_a, d)`` and ``(N_b, d)``."""
    ma, ca = _moments(feats_a, "feats_a")
    mb, cb = _moments(feats_b, "feats_b")
    if ma.shape != mb.shape:
        raise ValueError(f"feats_a and feats_b must have the same feature width, got {ma.shape[0]} and {mb.shape[0]}")
    return gaussian_frechet_distance(ma, ca, mb, cb)


def frechet_distance_ci(feats, ref, n_boot: int = 200, level: float = 0.95, seed: int = 0):
    """``(point, low, high)``: the distance of ``feats`` to ``ref`` and a percentile bootstrap interval
    over resampled rows of ``feats`` (``ref`` held fixed). It shows the sampling noise of the
    generated set; resampling with replacement also adds a small upward bias (repeated rows)."""
    from .metrics import bootstrap_indices

    a = feats.detach().cpu().double().numpy() if isinstance(feats, torch.Tensor) else np.asarray(feats, np.float64)
    mr, cr = _moments(ref, "ref")
    point = gaussian_frechet_distance(*_moments(a, "feats"), mr, cr)
    if isinstance(level, bool) or not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    idx = bootstrap_indices(np.arange(a.shape[0]), n_boot, seed)
    vals = [gaussian_frechet_distance(*_moments(a[i], "feats"), mr, cr) for i in idx]
    lo, hi = np.percentile(vals, [50 * (1 - level), 50 * (1 + level)])
    return point, float(lo), float(hi)


# ----------------------------------------------------------------------------- the feature network
#: How the book's MNIST classifier is trained for each image side (a fixed seed: trained once, cached).
CLASSIFIER_RECIPES = {
    14: {"pad": 1, "model": dict(image_size=16, channels=(16, 32), dropout=0.0),
         "train": dict(max_steps=400, batch_size=128, lr=3e-3, weight_decay=0.0, warmup_steps=20, seed=0)},
    28: {"pad": 0, "model": dict(image_size=28, channels=(32, 64), dropout=0.0),
         "train": dict(max_steps=800, batch_size=128, lr=3e-3, weight_decay=0.0, warmup_steps=40, seed=0)},
}


class ClassifierFeatures(nn.Module):
    """The classifier as a feature extractor for ``FrechetInceptionDistance(feature=...)``:
    ``forward(x (B, 1, S, S) in [0, 1]) -> (B, num_features)`` float64 penultimate activations
    (after global average pooling); :meth:`logits` gives the class scores."""

    def __init__(self, cnn, pad: int, side: int):
        super().__init__()
        self.cnn, self.pad, self.side = cnn, pad, side
        self.num_features = cnn.cfg.channels[-1]

    def _prep(self, x):
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != (1, self.side, self.side):
            raise ValueError(f"x must have shape (B, 1, {self.side}, {self.side}), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        x = x.float()
        return F.pad(x, (self.pad,) * 4) if self.pad else x  # (B, 1, S + 2 pad, S + 2 pad)

    def forward(self, x):
        return self.cnn.features(self._prep(x)).mean(dim=(2, 3)).double()  # (B, num_features)

    def logits(self, x):
        return self.cnn(self._prep(x))[0]

    @torch.no_grad()
    def predict(self, x, batch_size: int = 2000):
        """``(features (N, d) float64, probs (N, 10))`` in eval mode, batched."""
        self.eval()
        feats, probs = [], []
        for i in range(0, x.shape[0], batch_size):
            xb = self._prep(x[i:i + batch_size])
            h = self.cnn.features(xb).mean(dim=(2, 3))  # (B, d)
            feats.append(h.double())
            probs.append(torch.softmax(self.cnn.classifier(h), -1))
        return torch.cat(feats), torch.cat(probs)


def _recipe(side: int) -> dict:
    """The recipe for ``side``; during a rehearsal (``BMLIB_REHEARSE=1``) its steps are capped (and
    the capped recipe is cached under its own name, never mistaken for the real classifier)."""
    from .env import rehearse_cap

    if side not in CLASSIFIER_RECIPES:
        raise ValueError(f"side must be one of {sorted(CLASSIFIER_RECIPES)}, got {side!r}")
    r = CLASSIFIER_RECIPES[side]
    steps = rehearse_cap(r["train"]["max_steps"])
    return {**r, "train": {**r["train"], "max_steps": steps, "warmup_steps": min(steps, r["train"]["warmup_steps"])}}


def _classifier_dir(side: int, r: dict):
    from .data.mnist import MNIST_SHA256
    from .env import artifacts_dir

    key = json.dumps({"recipe": r, "data": MNIST_SHA256}, sort_keys=True, default=str)
    return artifacts_dir("fid") / f"mnist-cnn-{side}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def train_feature_classifier(side: int = 14, *, progress: bool = True):
    """Train the book's MNIST classifier for ``side`` with ``CLASSIFIER_RECIPES[side]`` (seeded) on
    the 50,000 training images (validation on the 10,000 ``val`` images) and cache its checkpoint.
    Returns the :class:`bmlib.train.Result`."""
    import shutil

    from .data.arrays import ArrayData
    from .data.mnist import images
    from .env import seed_everything
    from .models.cnn import CNNConfig, SmallCNN
    from .train import TrainConfig, train

    r = _recipe(side)
    d = _classifier_dir(side, r)
    if d.exists():
        shutil.rmtree(d)
    pad = (r["pad"],) * 4
    xtr, ytr = images("train", side)
    xva, yva = images("val", side, limit=2000)
    seed_everything(r["train"]["seed"])
    model = SmallCNN(CNNConfig(**r["model"]))
    cfg = TrainConfig(**r["train"], eval_iters=1, eval_batch_size=2000, checkpoint_dir=str(d),
                      keep_checkpoints=1, progress=progress, device="cpu")
    return train(model, ArrayData(F.pad(xtr, pad), ytr, F.pad(xva, pad), yva), cfg)


def feature_classifier(side: int = 14, *, progress: bool = True) -> ClassifierFeatures:
    """The book's MNIST classifier for images of ``side`` (28 or 14) as a :class:`ClassifierFeatures`,
    on the CPU in eval mode: loaded from ``artifacts/fid/`` when a valid (sha256-verified) checkpoint
    of the same recipe exists, else trained with the recipe's seed (a few seconds at 14x14)."""
    from . import checkpoint as ckpt
    from .models.cnn import CNNConfig, SmallCNN

    r = _recipe(side)
    model = SmallCNN(CNNConfig(**r["model"]))
    try:
        ckpt.load_weights(_classifier_dir(side, r), model)
    except ckpt.CheckpointError:
        model = train_feature_classifier(side, progress=progress).model
    return ClassifierFeatures(model.to("cpu").eval(), r["pad"], side).eval()
