"""Foundations: stable activations and losses vs PyTorch, and hand-written MLP backprop vs autograd."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

from bmlib.foundations import (MLP2, bce, bce_with_logits, cross_entropy, log_softmax, logsumexp,
                               mlp_backward, mlp_forward, mse, numerical_grad, sigmoid, softmax)

floats = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False)


@settings(max_examples=50, deadline=None)
@given(xs=st.lists(floats, min_size=1, max_size=20))
def test_sigmoid_softmax_logsumexp_match_torch(xs):
    x = torch.tensor(xs, dtype=torch.float64)
    torch.testing.assert_close(sigmoid(x), torch.sigmoid(x), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(logsumexp(x), torch.logsumexp(x, 0), atol=1e-9, rtol=1e-12)
    torch.testing.assert_close(softmax(x), torch.softmax(x, 0), atol=1e-12, rtol=1e-9)
    torch.testing.assert_close(log_softmax(x), torch.log_softmax(x, 0), atol=1e-9, rtol=1e-9)
    assert torch.isfinite(sigmoid(x)).all() and torch.isfinite(logsumexp(x))


def test_stability_at_extremes():
    z = torch.tensor([-1000.0, -100.0, 0.0, 100.0, 1000.0])
    s = sigmoid(z)
    assert torch.isfinite(s).all() and s[0] == 0.0 and s[2] == 0.5 and s[-1] == 1.0
    x = torch.tensor([1000.0, 1000.0])
    assert torch.isinf(torch.log(torch.exp(x).sum()))
    assert abs(logsumexp(x).item() - (1000 + math.log(2))) < 1e-3
    assert logsumexp(torch.tensor([float("-inf")] * 3)).item() == float("-inf")


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 8), k=st.integers(2, 6), scale=st.sampled_from([1.0, 100.0, 1e4]),
       seed=st.integers(0, 1000))
def test_cross_entropy_matches_torch(n, k, scale, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g, dtype=torch.float64) * scale
    y = torch.randint(0, k, (n,), generator=g)
    got = cross_entropy(logits, y)
    assert torch.isfinite(got)
    torch.testing.assert_close(got, F.cross_entropy(logits, y), atol=1e-9, rtol=1e-9)


def test_bce_and_the_misparenthesised_version():
    p = torch.tensor([0.9, 0.2, 0.6, 0.01], dtype=torch.float64)
    y = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(bce(p, y), F.binary_cross_entropy(p, y))
    wrong = (-y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()  # '-' binds to y only
    assert abs(wrong - bce(p, y)) > 0.01
    # wrong = correct + 2 * mean((1 - y) log(1 - p)): it rewards confident mistakes on negatives
    torch.testing.assert_close(wrong, bce(p, y) + 2 * ((1 - y) * torch.log(1 - p)).mean())


@settings(max_examples=40, deadline=None)
@given(zs=st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=10),
       seed=st.integers(0, 100))
def test_bce_with_logits_matches_torch_and_is_finite(zs, seed):
    z = torch.tensor(zs, dtype=torch.float64)
    y = torch.randint(0, 2, z.shape, generator=torch.Generator().manual_seed(seed)).double()
    got = bce_with_logits(z, y)
    assert torch.isfinite(got)
    torch.testing.assert_close(got, F.binary_cross_entropy_with_logits(z, y), atol=1e-10, rtol=1e-10)


def test_naive_bce_fails_at_large_logits_stable_does_not():
    z = torch.tensor([40.0])  # float32 sigmoid(40) == 1.0 exactly
    y = torch.tensor([0.0])
    naive = bce(sigmoid(z), y)
    assert torch.isinf(naive)
    torch.testing.assert_close(bce_with_logits(z, y), torch.tensor(40.0), atol=1e-5, rtol=0)


def test_mse():
    a, b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 0.0, 6.0])
    assert mse(a, b).item() == pytest.approx((0 + 4 + 9) / 3)
    torch.testing.assert_close(mse(a, b), F.mse_loss(a, b))


def test_mlp_backward_matches_autograd_and_finite_differences():
    torch.manual_seed(0)
    params = MLP2.init(5, 7, 3, seed=1)
    x = torch.randn(11, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (11,))
    logits, loss, cache = mlp_forward(params, x, y)
    grads = mlp_backward(params, cache)
    # autograd
    leaves = {n: t.clone().requires_grad_() for n, t in params.tensors().items()}
    out = torch.tanh(x @ leaves["W1"] + leaves["b1"]) @ leaves["W2"] + leaves["b2"]
    F.cross_entropy(out, y).backward()
    for n in MLP2.NAMES:
        torch.testing.assert_close(grads[n], leaves[n].grad, atol=1e-12, rtol=1e-10)
    # central differences
    for n in MLP2.NAMES:
        num = numerical_grad(lambda: mlp_forward(params, x, y)[1], getattr(params, n), eps=1e-6)
        assert (num - grads[n]).abs().max() < 1e-8
    # the parameters were restored
    torch.testing.assert_close(mlp_forward(params, x, y)[1], loss)


def test_numerical_grad_known_function():
    t = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    g = numerical_grad(lambda: (t ** 3).sum(), t, eps=1e-5)
    torch.testing.assert_close(g, 3 * t ** 2, atol=1e-8, rtol=0)


def test_errors():
    with pytest.raises(TypeError, match="z must be a torch.Tensor"):
        sigmoid([1.0])
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        softmax(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"logits must have shape \(N, K\)"):
        cross_entropy(torch.randn(3), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"targets must be an integer tensor of shape \(2,\)"):
        cross_entropy(torch.randn(2, 3), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="targets must lie in"):
        cross_entropy(torch.randn(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="p must hold probabilities"):
        bce(torch.tensor([1.5]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"z \(2,\) and y \(3,\) must have the same shape"):
        bce_with_logits(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="d_hidden must be an int >= 1"):
        MLP2.init(3, 0, 2)
    p = MLP2.init(3, 4, 2)
    with pytest.raises(ValueError, match=r"x must have shape \(N, d_in=3\)"):
        mlp_forward(p, torch.zeros(5, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match="params must be an MLP2"):
        mlp_forward({}, torch.zeros(5, 3))
    with pytest.raises(ValueError, match="cache must come from mlp_forward"):
        mlp_backward(p, mlp_forward(p, torch.zeros(5, 3, dtype=torch.float64))[2])
    with pytest.raises(ValueError, match="eps must be a positive float"):
        numerical_grad(lambda: 0.0, torch.zeros(2), eps=0)
