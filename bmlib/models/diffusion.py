"""A small denoising diffusion probabilistic model (DDPM; Ho, Jain and Abbeel, 2020).

The forward process adds Gaussian noise in ``T`` steps, ``q(x_t | x_{t-1}) = N(sqrt(1 - beta_t)
x_{t-1}, beta_t I)``, so that in closed form ``q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)``
with ``abar_t = prod_{s<=t} (1 - beta_s)`` (:func:`q_sample`; :func:`q_step` is the one-step
process it summarises). A network ``eps_theta(x_t, t)`` learns to predict the noise: the loss is
``E_{t, x_0, eps} ||eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t)||^2`` (Ho et al.'s
simplified objective). :func:`sample` runs the learned reverse process from ``x_T ~ N(0, I)``:
``x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps_theta) / sqrt(alpha_t) + sigma_t z`` with
``sigma_t^2 = beta_t``.

Time steps are 1-based, ``t in {1, ..., T}``; the schedule tensors have ``T + 1`` entries with
index 0 meaning "no noise" (``beta_0 = 0``, ``abar_0 = 1``). Images are in [0, 1] outside this
module and scaled to [-1, 1] inside. The denoiser is an MLP on the flattened image with a
sinusoidal time embedding added in every residual block: at 14x14 it is cheap enough for a CPU
(a U-Net would sample better and cost far more per step).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import PresetConfig, check_positive_ints

MAX_ABAR_T = 0.05  # x_T must be close to pure noise: abar_T below this


@dataclass(frozen=True)
class DiffusionConfig(PresetConfig):
    image_size: int = 14
    in_chans: int = 1
    timesteps: int = 100
    beta_start: float = 1e-3
    beta_end: float = 0.2
    hidden: int = 512
    n_blocks: int = 3
    time_dim: int = 64

    def __post_init__(self):
        check_positive_ints(self, ("image_size", "in_chans", "timesteps", "hidden", "n_blocks", "time_dim"))
        if self.time_dim % 2:
            raise ValueError(f"time_dim must be even (sine and cosine halves), got {self.time_dim}")
        if not 0 < self.beta_start <= self.beta_end < 1:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1, got beta_start={self.beta_start}, "
                             f"beta_end={self.beta_end}")
        abar_T = float(torch.prod(1 - torch.linspace(self.beta_start, self.beta_end, self.timesteps,
                                                     dtype=torch.float64)))
        if abar_T >= MAX_ABAR_T:
            raise ValueError(f"the schedule leaves abar_T = {abar_T:.3g} >= {MAX_ABAR_T} of the signal at "
                             f"t = T: x_T is not noise. Raise beta_end or timesteps (linear schedules "
                             f"with fewer steps need larger betas)")

    @property
    def n_pixels(self) -> int:
        return self.in_chans * self.image_size ** 2


PRESETS = {
    "mnist14-tiny": DiffusionConfig(image_size=14, timesteps=100, beta_start=1e-3, beta_end=0.2,
                                    hidden=512, n_blocks=3),
    "mnist28": DiffusionConfig(image_size=28, timesteps=400, beta_start=2.5e-4, beta_end=0.05,
                               hidden=1024, n_blocks=4),
}


def schedule(cfg: DiffusionConfig) -> dict:
    """``{"betas", "alphas", "abar"}``: float64 tensors of ``T + 1`` entries (index 0 = no noise)."""
    if not isinstance(cfg, DiffusionConfig):
        raise TypeError(f"cfg must be a DiffusionConfig, got {type(cfg).__name__}")
    betas = torch.cat([torch.zeros(1, dtype=torch.float64),
                       torch.linspace(cfg.beta_start, cfg.beta_end, cfg.timesteps, dtype=torch.float64)])
    alphas = 1 - betas
    return {"betas": betas, "alphas": alphas, "abar": torch.cumprod(alphas, 0)}


def _check_t(t, T: int, B: int) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.dtype not in (torch.int64, torch.int32) or t.shape != (B,):
        raise ValueError(f"t must be an integer tensor of shape ({B},), got "
                         f"{getattr(t, 'dtype', type(t).__name__)} {tuple(getattr(t, 'shape', ()))}")
    if int(t.min()) < 0 or int(t.max()) > T:
        raise ValueError(f"t must lie in [0, T={T}], got values in [{int(t.min())}, {int(t.max())}]")
    return t.long()


def _bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(x.dtype).to(x.device).view(-1, *([1] * (x.dim() - 1)))  # (B, 1, 1, 1)


def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, sched: dict) -> torch.Tensor:
    """``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``: a draw from ``q(x_t | x_0)`` in one go."""
    if noise.shape != x0.shape:
        raise ValueError(f"noise must have the shape of x0 {tuple(x0.shape)}, got {tuple(noise.shape)}")
    t = _check_t(t, len(sched["abar"]) - 1, x0.shape[0])
    ab = sched["abar"][t.cpu()]
    return _bcast(ab.sqrt(), x0) * x0 + _bcast((1 - ab).sqrt(), x0) * noise


def q_step(x_prev: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, sched: dict) -> torch.Tensor:
    """One forward step ``x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) noise``."""
    if noise.shape != x_prev.shape:
        raise ValueError(f"noise must have the shape of x_prev {tuple(x_prev.shape)}, got {tuple(noise.shape)}")
    t = _check_t(t, len(sched["betas"]) - 1, x_prev.shape[0])
    b = sched["betas"][t.cpu()]
    return _bcast((1 - b).sqrt(), x_prev) * x_prev + _bcast(b.sqrt(), x_prev) * noise


def time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer steps ``t (B,)`` -> ``(B, dim)`` (as the transformer's positions)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    ang = t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([ang.sin(), ang.cos()], dim=-1)  # (B, dim)


class _Block(nn.Module):
    def __init__(self, h: int):
        super().__init__()
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(h), nn.Linear(h, h), nn.Linear(h, h)

    def forward(self, h, temb):
        return h + self.fc2(F.silu(self.fc1(F.silu(self.norm(h + temb)))))


class DDPM(nn.Module):
    """``model(x0, y=None) -> (eps_hat, loss)`` for clean images ``x0 (B, C, S, S)`` in [0, 1]: draws
    ``t ~ U{1..T}`` and ``eps ~ N(0, I)`` from the global generator and returns the noise-prediction
    MSE. ``model.eps(x_t, t)`` is the denoiser on scaled images in [-1, 1]."""

    def __init__(self, cfg: DiffusionConfig):
        super().__init__()
        if not isinstance(cfg, DiffusionConfig):
            raise TypeError(f"cfg must be a DiffusionConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        H = cfg.hidden
        self.sched = schedule(cfg)
        self.time_mlp = nn.Sequential(nn.Linear(cfg.time_dim, H), nn.SiLU(), nn.Linear(H, H))
        self.inp = nn.Linear(cfg.n_pixels, H)
        self.blocks = nn.ModuleList(_Block(H) for _ in range(cfg.n_blocks))
        self.out = nn.Sequential(nn.LayerNorm(H), nn.Linear(H, cfg.n_pixels))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _check(self, x, name="x"):
        c = self.cfg
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of images, got {type(x).__name__}")
        if x.dim() != 4 or tuple(x.shape[1:]) != (c.in_chans, c.image_size, c.image_size):
            raise ValueError(f"{name} must have shape (B, {c.in_chans}, {c.image_size}, {c.image_size}), "
                             f"got {tuple(x.shape)}")

    def eps(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predicted noise ``(B, C, S, S)`` for noisy images ``x_t`` (in the [-1, 1] scale) at steps ``t (B,)``."""
        self._check(x_t, "x_t")
        temb = self.time_mlp(time_embedding(t, self.cfg.time_dim))  # (B, H)
        h = self.inp(x_t.flatten(1))  # (B, H)
        for blk in self.blocks:
            h = blk(h, temb)
        return self.out(h).view_as(x_t)  # (B, C, S, S)

    def forward(self, x0, y=None):
        self._check(x0, "x0")
        x0 = 2 * x0 - 1  # [0, 1] -> [-1, 1]
        B = x0.shape[0]
        t = torch.randint(1, self.cfg.timesteps + 1, (B,), device=x0.device)
        noise = torch.randn_like(x0)
        eps_hat = self.eps(q_sample(x0, t, noise, self.sched), t)
        return eps_hat, F.mse_loss(eps_hat, noise)


def posterior_mean(x_t: torch.Tensor, eps: torch.Tensor, t: int, sched: dict, clip_x0: bool = False):
    """The mean of the reverse step ``p(x_{t-1} | x_t)`` given the predicted noise ``eps``.

    ``clip_x0=False``: ``(x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t)``. ``clip_x0=True``:
    the mean of ``q(x_{t-1} | x_t, x0_hat)``, ``sqrt(abar_{t-1}) beta_t / (1 - abar_t) x0_hat +
    sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) x_t``, with ``x0_hat = (x_t - sqrt(1 - abar_t) eps)
    / sqrt(abar_t)`` clipped to [-1, 1]; without the clip the two are the same expression."""
    T = len(sched["betas"]) - 1
    if isinstance(t, bool) or not isinstance(t, int) or not 1 <= t <= T:
        raise ValueError(f"t must be an int in [1, {T}], got {t!r}")
    if eps.shape != x_t.shape:
        raise ValueError(f"eps must have the shape of x_t {tuple(x_t.shape)}, got {tuple(eps.shape)}")
    beta, alpha, abar = (float(sched[k][t]) for k in ("betas", "alphas", "abar"))
    if not clip_x0:
        return (x_t - beta / math.sqrt(1 - abar) * eps) / math.sqrt(alpha)
    abar_prev = float(sched["abar"][t - 1])
    x0 = ((x_t - math.sqrt(1 - abar) * eps) / math.sqrt(abar)).clamp(-1, 1)
    return math.sqrt(abar_prev) * beta / (1 - abar) * x0 + math.sqrt(alpha) * (1 - abar_prev) / (1 - abar) * x_t


@torch.no_grad()
def sample(model: DDPM, n: int, seed: int = 0, batch_size: int = 2000, return_trajectory: tuple = (),
           clip_x0: bool = False):
    """``n`` images ``(n, C, S, S)`` in [0, 1] by ancestral sampling from ``x_T ~ N(0, I)``, all noise
    from a generator seeded with ``seed``. ``clip_x0=False`` uses the mean
    ``(x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t)``; ``clip_x0=True`` (as Ho et al.'s code)
    writes the same mean as the posterior mean of ``q(x_{t-1} | x_t, x0_hat)`` with the implied
    ``x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)`` clipped to [-1, 1] (identical when
    nothing is clipped). ``return_trajectory``: steps ``t`` at which to also return
    ``x_t`` (mapped to [0, 1], unclipped); then the result is ``(images, {t: x_t})``."""
    if not isinstance(model, DDPM):
        raise TypeError(f"model must be a DDPM, got {type(model).__name__}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    c, s = model.cfg, model.sched
    if any(not (isinstance(t, int) and 0 <= t <= c.timesteps) for t in return_trajectory):
        raise ValueError(f"return_trajectory must hold steps in [0, {c.timesteps}], got {return_trajectory!r}")
    dev = next(model.parameters()).device
    was = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    outs, traj = [], {t: [] for t in return_trajectory}
    for i in range(0, n, batch_size):
        b = min(batch_size, n - i)
        x = torch.randn(b, c.in_chans, c.image_size, c.image_size, generator=g).to(dev)  # x_T
        if c.timesteps in traj:
            traj[c.timesteps].append(((x + 1) / 2).cpu())
        for t in range(c.timesteps, 0, -1):
            tt = torch.full((b,), t, dtype=torch.long, device=dev)
            beta = float(s["betas"][t])
            mean = posterior_mean(x, model.eps(x, tt), t, s, clip_x0)
            z = torch.randn(x.shape, generator=g).to(dev) if t > 1 else torch.zeros_like(x)
            x = mean + math.sqrt(beta) * z  # x_{t-1}
            if t - 1 in traj:
                traj[t - 1].append(((x + 1) / 2).cpu())
        outs.append(((x.clamp(-1, 1) + 1) / 2).cpu())
    model.train(was)
    imgs = torch.cat(outs)
    if return_trajectory:
        return imgs, {t: torch.cat(v) for t, v in traj.items()}
    return imgs


def ema_tracker(model: DDPM, decay: float = 0.995):
    """``(ema_model, callback)``: an exponential moving average of ``model``'s weights
    (``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn(decay)``) and a
    ``callback(record, model)`` for :func:`bmlib.train.train` that updates it after every step.
    Diffusion models are sampled from the averaged weights (Ho et al., 2020); ``ema_model.module`` is a DDPM."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    if not isinstance(model, DDPM):
        raise TypeError(f"model must be a DDPM, got {type(model).__name__}")
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay < 1:
        raise ValueError(f"decay must be a number in (0, 1), got {decay!r}")
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))

    def callback(record, m):
        ema.update_parameters(m)
        return False

    return ema, callback
