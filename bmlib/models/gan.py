"""A small DCGAN-style generative adversarial network (Goodfellow et al., 2014; Radford et al., 2016).

The generator ``G`` maps ``z ~ N(0, I)`` to an image in [0, 1]: a linear layer to a ``7x7`` feature
map, then stride-2 transposed convolutions (batch norm, ReLU) up to ``image_size`` and a sigmoid.
The discriminator ``D`` is its mirror: stride-2 convolutions with leaky ReLU and one logit
``D(x) = sigma(logit)``. The two play the minimax game

    min_G max_D  E_x[log D(x)] + E_z[log(1 - D(G(z)))].

:func:`discriminator_loss` is ``D``'s side (binary cross-entropy, real = 1, fake = 0).
:func:`generator_loss` is ``G``'s side, either the minimax (``"saturating"``) ``E[log(1 - D(G(z)))]``,
whose gradient vanishes when ``D`` rejects the fakes confidently, or the non-saturating
``-E[log D(G(z))]`` that Goodfellow et al. use in practice. :func:`train_gan` alternates one
``D`` step and one ``G`` step with Adam; :func:`sample` draws seeded images.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import PresetConfig, check_choice, check_positive_ints, check_positive_numbers

G_LOSSES = ("non_saturating", "saturating")


@dataclass(frozen=True)
class GANConfig(PresetConfig):
    image_size: int = 14
    in_chans: int = 1
    latent: int = 32
    g_channels: int = 64
    d_channels: int = 32

    def __post_init__(self):
        check_positive_ints(self, ("image_size", "in_chans", "latent", "g_channels", "d_channels"))
        k = self.image_size / 7
        if not (k >= 2 and k == 2 ** round(math.log2(k))):
            raise ValueError(f"image_size must be 7 * 2**k with k >= 1 (14, 28, ...), got {self.image_size}")

    @property
    def n_up(self) -> int:
        """Stride-2 upsampling stages from 7x7 to ``image_size``."""
        return round(math.log2(self.image_size / 7))


PRESETS = {
    "mnist14-tiny": GANConfig(image_size=14, latent=32, g_channels=64, d_channels=32),
    "mnist28": GANConfig(image_size=28, latent=64, g_channels=128, d_channels=64),
}


@dataclass(frozen=True)
class GANTrainConfig(PresetConfig):
    steps: int = 1000
    batch_size: int = 64
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    g_loss: str = "non_saturating"
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        check_positive_ints(self, ("steps", "batch_size"))
        check_positive_numbers(self, ("lr",))
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must lie in [0, 1), got {getattr(self, name)!r}")
        check_choice(self, "g_loss", G_LOSSES)
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


class Generator(nn.Module):
    """``G(z (B, latent)) -> images (B, C, S, S)`` in [0, 1]."""

    def __init__(self, cfg: GANConfig):
        super().__init__()
        if not isinstance(cfg, GANConfig):
            raise TypeError(f"cfg must be a GANConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        c0 = cfg.g_channels * 2 ** (cfg.n_up - 1)
        self.project = nn.Sequential(nn.Linear(cfg.latent, c0 * 49, bias=False), nn.BatchNorm1d(c0 * 49), nn.ReLU())
        ups, c = [], c0
        for _ in range(cfg.n_up):
            cout = max(c // 2, 16)
            ups += [nn.ConvTranspose2d(c, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
            c = cout
        self.up = nn.Sequential(*ups)
        self.to_image = nn.Conv2d(c, cfg.in_chans, 3, padding=1)
        self.c0 = c0

    def forward(self, z):
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[1] != self.cfg.latent:
            raise ValueError(f"z must have shape (B, latent={self.cfg.latent}), got "
                             f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}")
        h = self.project(z).view(-1, self.c0, 7, 7)  # (B, c0, 7, 7)
        return torch.sigmoid(self.to_image(self.up(h)))  # (B, C, S, S)


class Discriminator(nn.Module):
    """``D(x (B, C, S, S)) -> logits (B,)``; ``sigmoid(logit)`` is the probability that x is real."""

    def __init__(self, cfg: GANConfig):
        super().__init__()
        if not isinstance(cfg, GANConfig):
            raise TypeError(f"cfg must be a GANConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        layers, c, s = [], cfg.in_chans, cfg.image_size
        for i in range(cfg.n_up + 1):
            cout = cfg.d_channels * 2 ** i
            layers += [nn.Conv2d(c, cout, 4, 2, 1)] + ([nn.BatchNorm2d(cout)] if i else []) + [nn.LeakyReLU(0.2)]
            c, s = cout, (s + 2 - 4) // 2 + 1
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c * s * s, 1)

    def forward(self, x):
        c = self.cfg
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != (c.in_chans, c.image_size, c.image_size):
            raise ValueError(f"x must have shape (B, {c.in_chans}, {c.image_size}, {c.image_size}), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        return self.head(self.body(x).flatten(1)).squeeze(1)  # (B,)


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """``-E[log D(x)] - E[log(1 - D(G(z)))]``: D's side of the minimax game, as cross-entropy."""
    return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


def generator_loss(fake_logits: torch.Tensor, kind: str = "non_saturating") -> torch.Tensor:
    """``"saturating"``: ``E[log(1 - D(G(z)))]`` (the minimax objective, minimised by G);
    ``"non_saturating"``: ``-E[log D(G(z))]``. Both push D(G(z)) up; with logit ``l``, their
    derivatives are ``-sigma(l)`` and ``-(1 - sigma(l))``: the first vanishes as D(G(z)) -> 0."""
    if kind not in G_LOSSES:
        raise ValueError(f"kind must be one of {G_LOSSES}, got {kind!r}")
    if kind == "saturating":
        return -F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))  # E[log(1 - D)]
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))  # -E[log D]


def train_gan(gen: Generator, disc: Discriminator, x_train: torch.Tensor, cfg: GANTrainConfig, *,
              callback=None, device=None) -> list[dict]:
    """Alternate one discriminator and one generator Adam step for ``cfg.steps`` steps on batches of
    ``x_train (N, C, S, S)`` drawn without replacement (a fresh permutation each epoch); all
    randomness from generators seeded with ``cfg.seed``. Returns one record per step
    (``d_loss``, ``g_loss``, ``d_real`` = mean D(x), ``d_fake`` = mean D(G(z))). ``callback(step, gen)``
    runs after every step (for sample grids over training)."""
    from tqdm.auto import tqdm

    if not isinstance(cfg, GANTrainConfig):
        raise TypeError(f"cfg must be a GANTrainConfig, got {type(cfg).__name__}")
    if not isinstance(gen, Generator) or not isinstance(disc, Discriminator):
        raise TypeError("gen must be a Generator and disc a Discriminator")
    c = gen.cfg
    if not isinstance(x_train, torch.Tensor) or x_train.dim() != 4 or tuple(x_train.shape[1:]) != (
            c.in_chans, c.image_size, c.image_size):
        raise ValueError(f"x_train must have shape (N, {c.in_chans}, {c.image_size}, {c.image_size})")
    dev = torch.device(device) if device is not None else next(gen.parameters()).device
    gen.to(dev).train(), disc.to(dev).train()
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    opt_g = torch.optim.Adam(gen.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    n, perm, pos, hist = x_train.shape[0], None, 0, []
    for step in tqdm(range(1, cfg.steps + 1), desc="gan", disable=not cfg.progress, leave=False, mininterval=2.0):
        if perm is None or pos + cfg.batch_size > n:
            perm, pos = torch.randperm(n, generator=g), 0
        x = x_train[perm[pos:pos + cfg.batch_size]].to(dev)
        pos += cfg.batch_size
        z = torch.randn(cfg.batch_size, c.latent, generator=g).to(dev)
        fake = gen(z)
        # discriminator step: fakes detached, so only D learns here
        real_logits, fake_logits = disc(x), disc(fake.detach())
        d_loss = discriminator_loss(real_logits, fake_logits)
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        # generator step through the updated D
        g_logits = disc(fake)
        g_loss = generator_loss(g_logits, cfg.g_loss)
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        rec = {"step": step, "d_loss": float(d_loss.detach()), "g_loss": float(g_loss.detach()),
               "d_real": float(torch.sigmoid(real_logits.detach()).mean()),
               "d_fake": float(torch.sigmoid(fake_logits.detach()).mean())}
        if not all(math.isfinite(v) for v in rec.values()):
            raise FloatingPointError(f"GAN training produced a non-finite value at step {step}: {rec}")
        hist.append(rec)
        if callback is not None:
            callback(step, gen)
    gen.eval(), disc.eval()
    return hist


@torch.no_grad()
def sample(gen: Generator, n: int, seed: int = 0, batch_size: int = 1000) -> torch.Tensor:
    """``n`` images ``(n, C, S, S)`` in [0, 1] from ``z ~ N(0, I)`` seeded with ``seed`` (eval mode:
    batch norm uses its running statistics)."""
    if not isinstance(gen, Generator):
        raise TypeError(f"gen must be a Generator, got {type(gen).__name__}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    was = gen.training
    gen.eval()
    dev = next(gen.parameters()).device
    z = torch.randn(n, gen.cfg.latent, generator=torch.Generator().manual_seed(seed))
    out = torch.cat([gen(z[i:i + batch_size].to(dev)).cpu() for i in range(0, n, batch_size)])
    gen.train(was)
    return out
