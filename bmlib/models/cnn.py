"""A small convolutional network: the baseline a vision transformer has to beat on small images.

Two 3x3 convolution stages (conv-BN-ReLU twice, then 2x2 max-pooling), global average pooling and
a linear classifier. Convolutions build in locality and translation equivariance, the inductive
biases a ViT must learn from data (Dosovitskiy et al., 2021); on 1,797 digits that matters.
``model(x, y=None) -> (logits, loss or None)``, the training loop's protocol.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import PresetConfig, check_fractions, check_ids, check_images, check_positive_ints


@dataclass(frozen=True)
class CNNConfig(PresetConfig):
    image_size: int = 8
    in_chans: int = 1
    n_classes: int = 10
    channels: tuple = (32, 64)
    dropout: float = 0.1

    def __post_init__(self):
        check_positive_ints(self, ("image_size", "in_chans", "n_classes"))
        ch = self.channels
        if not (isinstance(ch, tuple) and ch and all(isinstance(c, int) and not isinstance(c, bool) and c >= 1
                                                     for c in ch)):
            raise ValueError(f"channels must be a non-empty tuple of positive ints, got {ch!r}")
        if self.image_size % (2 ** len(ch)):
            raise ValueError(f"image_size ({self.image_size}) must be divisible by 2**len(channels) = "
                             f"{2 ** len(ch)} (one 2x2 pooling per stage)")
        check_fractions(self)


PRESETS = {
    "digits-tiny": CNNConfig(channels=(16, 32), dropout=0.0),
    "digits": CNNConfig(channels=(32, 64), dropout=0.1),
}


def _stage(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.MaxPool2d(2))


class SmallCNN(nn.Module):
    """``model(x, y=None) -> (logits (B, n_classes), loss or None)`` for ``x (B, C, H, W)``."""

    def __init__(self, cfg: CNNConfig):
        super().__init__()
        if not isinstance(cfg, CNNConfig):
            raise TypeError(f"cfg must be a CNNConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        chans = (cfg.in_chans, *cfg.channels)
        self.features = nn.Sequential(*(_stage(a, b) for a, b in zip(chans[:-1], chans[1:])))
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(cfg.channels[-1], cfg.n_classes)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, x, y=None):
        c = self.cfg
        check_images(x, c.in_chans, c.image_size)
        h = self.features(x).mean(dim=(2, 3))  # (B, channels[-1]): global average pooling
        logits = self.classifier(self.dropout(h))
        loss = None
        if y is not None:
            if not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],):
                raise ValueError(f"y must be a tensor of class ids with shape ({x.shape[0]},)")
            check_ids(y, "y", c.n_classes)
            loss = F.cross_entropy(logits, y)
        return logits, loss
