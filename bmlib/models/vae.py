"""A small variational auto-encoder (Kingma and Welling, 2014) for grey-scale images in [0, 1].

An MLP encoder maps an image ``x`` to the mean and log-variance of a diagonal Gaussian
``q(z|x) = N(mu, diag(exp(logvar)))``; a sample ``z = mu + exp(logvar / 2) * eps`` with
``eps ~ N(0, I)`` (the reparameterisation trick, so gradients flow through ``mu`` and ``logvar``)
is decoded by an MLP into per-pixel Bernoulli logits ``p(x|z)``. Training maximises the evidence
lower bound

    ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || N(0, I))  <=  log p(x),

whose KL term has the closed form :func:`gaussian_kl`. ``model(x, y=None) -> (logits, loss)``
(the training loop's protocol) returns the mean negative ELBO in nats per image; grey pixel values
are treated as Bernoulli "probabilities" (the usual continuous relaxation for MNIST, not a
normalised likelihood of grey values). :func:`sample` decodes prior draws ``z ~ N(0, I)`` and
returns the Bernoulli means.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import PresetConfig, check_images, check_positive_ints


@dataclass(frozen=True)
class VAEConfig(PresetConfig):
    image_size: int = 14
    in_chans: int = 1
    hidden: int = 256
    latent: int = 16

    def __post_init__(self):
        check_positive_ints(self, ("image_size", "in_chans", "hidden", "latent"))
        if self.latent >= self.image_size ** 2 * self.in_chans:
            raise ValueError(f"latent ({self.latent}) must be smaller than the number of pixels "
                             f"({self.image_size ** 2 * self.in_chans}): a VAE compresses")

    @property
    def n_pixels(self) -> int:
        return self.in_chans * self.image_size ** 2


PRESETS = {
    "mnist14-tiny": VAEConfig(image_size=14, hidden=256, latent=16),
    "mnist28": VAEConfig(image_size=28, hidden=512, latent=32),
}


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, diag(exp(logvar))) || N(0, I))`` per row, ``(B,)``:
    ``0.5 * sum(mu^2 + exp(logvar) - logvar - 1)`` over the last axis."""
    if not (isinstance(mu, torch.Tensor) and isinstance(logvar, torch.Tensor)):
        raise TypeError("mu and logvar must be torch tensors")
    if mu.shape != logvar.shape or mu.dim() != 2:
        raise ValueError(f"mu and logvar must both have shape (B, latent), got {tuple(mu.shape)} and "
                         f"{tuple(logvar.shape)}")
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0).sum(-1)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``z = mu + sigma * eps`` with ``sigma = exp(logvar / 2)``: a draw from ``q(z|x)`` that is a
    differentiable function of ``(mu, logvar)`` given the noise ``eps ~ N(0, I)``."""
    if eps.shape != mu.shape:
        raise ValueError(f"eps must have the shape of mu {tuple(mu.shape)}, got {tuple(eps.shape)}")
    return mu + torch.exp(0.5 * logvar) * eps


class VAE(nn.Module):
    """``model(x, y=None) -> (logits (B, C, S, S), mean negative ELBO)`` for ``x (B, C, S, S)`` in [0, 1]."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        if not isinstance(cfg, VAEConfig):
            raise TypeError(f"cfg must be a VAEConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        D, H, Z = cfg.n_pixels, cfg.hidden, cfg.latent
        self.encoder = nn.Sequential(nn.Linear(D, H), nn.ReLU(), nn.Linear(H, H), nn.ReLU())
        self.to_mu, self.to_logvar = nn.Linear(H, Z), nn.Linear(H, Z)
        self.decoder = nn.Sequential(nn.Linear(Z, H), nn.ReLU(), nn.Linear(H, H), nn.ReLU(), nn.Linear(H, D))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _check(self, x):
        c = self.cfg
        check_images(x, c.in_chans, c.image_size)

    def encode(self, x):
        """``(mu, logvar)``, each ``(B, latent)``."""
        self._check(x)
        h = self.encoder(x.flatten(1))  # (B, hidden)
        return self.to_mu(h), self.to_logvar(h)

    def decode(self, z):
        """Bernoulli logits ``(B, C, S, S)`` for latents ``z (B, latent)``."""
        c = self.cfg
        return self.decoder(z).view(-1, c.in_chans, c.image_size, c.image_size)  # (B, C, S, S)

    def elbo_terms(self, x, eps: torch.Tensor | None = None):
        """``(logits, reconstruction log-likelihood (B,), KL (B,))`` with one draw of ``z``
        (``eps`` fixes the noise; default: ``torch.randn`` from the global generator)."""
        mu, logvar = self.encode(x)
        eps = torch.randn_like(mu) if eps is None else eps
        logits = self.decode(reparameterize(mu, logvar, eps))
        rec = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(-1)  # (B,)
        return logits, rec, gaussian_kl(mu, logvar)

    def elbo(self, x, eps: torch.Tensor | None = None) -> torch.Tensor:
        """The one-sample ELBO estimate per image, ``(B,)``, in nats."""
        _, rec, kl = self.elbo_terms(x, eps)
        return rec - kl

    def forward(self, x, y=None):
        logits, rec, kl = self.elbo_terms(x)
        return logits, (kl - rec).mean()


@torch.no_grad()
def sample(model: VAE, n: int, seed: int = 0, z: torch.Tensor | None = None) -> torch.Tensor:
    """``n`` images ``(n, C, S, S)`` in [0, 1]: Bernoulli means of the decoder at ``z ~ N(0, I)``
    drawn from a generator seeded with ``seed`` (or the given ``z (n, latent)``)."""
    if not isinstance(model, VAE):
        raise TypeError(f"model must be a VAE, got {type(model).__name__}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    dev = next(model.parameters()).device
    if z is None:
        z = torch.randn(n, model.cfg.latent, generator=torch.Generator().manual_seed(seed))
    elif tuple(z.shape) != (n, model.cfg.latent):
        raise ValueError(f"z must have shape (n, latent) = ({n}, {model.cfg.latent}), got {tuple(z.shape)}")
    return torch.sigmoid(model.decode(z.to(dev))).cpu()
