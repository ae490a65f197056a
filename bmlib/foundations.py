"""Foundations: numerically stable activations and losses, and a 2-layer MLP with hand-written backprop.

Everything works on ``torch`` tensors without autograd, so the chapter can check each function
against PyTorch's own and each hand-derived gradient against autograd and finite differences.

* :func:`sigmoid`, :func:`logsumexp`, :func:`softmax`, :func:`log_softmax`: stable forms that never
  exponentiate a large positive number.
* :func:`mse`, :func:`cross_entropy` (from logits, via log-sum-exp), :func:`bce` (from
  probabilities, ``-[y log p + (1 - y) log(1 - p)]``) and :func:`bce_with_logits` (stable form
  ``max(z, 0) - z y + log(1 + exp(-|z|))``).
* :class:`MLP2` parameters, :func:`mlp_forward`, :func:`mlp_backward` (tanh hidden layer, softmax
  cross-entropy loss) and :func:`numerical_grad` (central differences).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def _tensor(name: str, x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    return x


def sigmoid(z):
    """``1 / (1 + exp(-z))`` evaluated as ``exp(z) / (1 + exp(z))`` for ``z < 0``: no overflow."""
    z = _tensor("z", z)
    e = torch.exp(-z.abs())  # in (0, 1]
    return torch.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def logsumexp(x, dim: int = -1, keepdim: bool = False):
    """``log sum exp(x)`` along ``dim`` as ``m + log sum exp(x - m)`` with ``m = max x``."""
    x = _tensor("x", x)
    m = x.amax(dim=dim, keepdim=True)
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)  # all -inf rows stay -inf
    out = m + torch.log(torch.exp(x - m).sum(dim=dim, keepdim=True))
    return out if keepdim else out.squeeze(dim)


def log_softmax(x, dim: int = -1):
    """``x - logsumexp(x)``."""
    return x - logsumexp(x, dim=dim, keepdim=True)


def softmax(x, dim: int = -1):
    """``exp(x - max x) / sum exp(x - max x)``: the shift leaves the result unchanged."""
    x = _tensor("x", x)
    e = torch.exp(x - x.amax(dim=dim, keepdim=True))
    return e / e.sum(dim=dim, keepdim=True)


def _same_shape(a_name, a, b_name, b):
    if a.shape != b.shape:
        raise ValueError(f"{a_name} {tuple(a.shape)} and {b_name} {tuple(b.shape)} must have the same shape")


def mse(pred, target):
    """Mean squared error ``mean((pred - target)^2)``."""
    _tensor("pred", pred), _tensor("target", target)
    _same_shape("pred", pred, "target", target)
    return ((pred - target) ** 2).mean()


def cross_entropy(logits, targets):
    """Mean of ``-log softmax(logits)[target]`` over rows: ``logits`` (N, K), ``targets`` (N,) ints."""
    logits = _tensor("logits", logits)
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (N, K), got {tuple(logits.shape)}")
    if not isinstance(targets, torch.Tensor) or targets.dtype not in (torch.int32, torch.int64) \
            or targets.shape != logits.shape[:1]:
        raise ValueError(f"targets must be an integer tensor of shape ({logits.shape[0]},), got "
                         f"{getattr(targets, 'dtype', type(targets).__name__)} "
                         f"{tuple(getattr(targets, 'shape', ()))}")
    if (targets < 0).any() or (targets >= logits.shape[1]).any():
        raise ValueError(f"targets must lie in [0, {logits.shape[1]}), got values outside")
    lp = log_softmax(logits, dim=-1)
    return -lp.gather(1, targets.long()[:, None]).mean()


def bce(p, y):
    """Binary cross-entropy from probabilities: ``mean(-[y log p + (1 - y) log(1 - p)])``.

    Mind the parentheses: the ``-`` applies to the whole bracket. Probabilities of exactly 0 or 1
    give ``inf`` where they are wrong; use :func:`bce_with_logits` on logits instead.
    """
    p, y = _tensor("p", p), _tensor("y", y)
    _same_shape("p", p, "y", y)
    if (p < 0).any() or (p > 1).any():
        raise ValueError("p must hold probabilities in [0, 1]")
    return (-(y * torch.log(p) + (1 - y) * torch.log1p(-p))).mean()


def bce_with_logits(z, y):
    """BCE of ``sigmoid(z)`` against ``y`` without forming the probability:
    ``-[y log s(z) + (1-y) log(1-s(z))] = max(z, 0) - z y + log(1 + exp(-|z|))``."""
    z, y = _tensor("z", z), _tensor("y", y)
    _same_shape("z", z, "y", y)
    return (z.clamp(min=0) - z * y + torch.log1p(torch.exp(-z.abs()))).mean()


# ============================================================================ a 2-layer MLP by hand
@dataclass
class MLP2:
    """Parameters of ``logits = tanh(x W1 + b1) W2 + b2``; ``W1`` (d_in, h), ``W2`` (h, d_out)."""

    W1: torch.Tensor
    b1: torch.Tensor
    W2: torch.Tensor
    b2: torch.Tensor

    NAMES = ("W1", "b1", "W2", "b2")

    @classmethod
    def init(cls, d_in: int, d_hidden: int, d_out: int, seed: int = 0, dtype=torch.float64) -> "MLP2":
        """Gaussian weights with standard deviation ``1/sqrt(fan_in)``, zero biases."""
        for name, v in (("d_in", d_in), ("d_hidden", d_hidden), ("d_out", d_out)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        g = torch.Generator().manual_seed(seed)
        return cls(torch.randn(d_in, d_hidden, generator=g, dtype=dtype) / d_in ** 0.5,
                   torch.zeros(d_hidden, dtype=dtype),
                   torch.randn(d_hidden, d_out, generator=g, dtype=dtype) / d_hidden ** 0.5,
                   torch.zeros(d_out, dtype=dtype))

    def tensors(self) -> dict:
        return {n: getattr(self, n) for n in self.NAMES}


def mlp_forward(params: MLP2, x, y=None):
    """Forward pass; returns ``(logits, loss, cache)``. ``loss`` (mean cross-entropy) is ``None``
    without targets ``y``; ``cache`` holds what the backward pass needs."""
    if not isinstance(params, MLP2):
        raise TypeError(f"params must be an MLP2, got {type(params).__name__}")
    x = _tensor("x", x)
    if x.dim() != 2 or x.shape[1] != params.W1.shape[0]:
        raise ValueError(f"x must have shape (N, d_in={params.W1.shape[0]}), got {tuple(x.shape)}")
    a = x @ params.W1 + params.b1  # (N, h) pre-activation
    h = torch.tanh(a)  # (N, h)
    logits = h @ params.W2 + params.b2  # (N, d_out)
    loss = cross_entropy(logits, y) if y is not None else None
    return logits, loss, {"x": x, "h": h, "logits": logits, "y": y}


def mlp_backward(params: MLP2, cache: dict) -> dict:
    """Gradients of the mean cross-entropy w.r.t. every parameter, by the chain rule:

    ``dL/dlogits = (softmax(logits) - onehot(y)) / N``; ``dW2 = hᵀ dlogits``; ``db2 = sum dlogits``;
    ``dh = dlogits W2ᵀ``; ``da = dh (1 - h²)`` (tanh' = 1 - tanh²); ``dW1 = xᵀ da``; ``db1 = sum da``.
    """
    if cache.get("y") is None:
        raise ValueError("cache must come from mlp_forward(params, x, y) with targets y")
    x, h, logits, y = cache["x"], cache["h"], cache["logits"], cache["y"]
    N = x.shape[0]
    dlogits = softmax(logits, dim=-1)
    dlogits[torch.arange(N), y] -= 1.0
    dlogits /= N  # (N, d_out)
    dW2 = h.T @ dlogits  # (h, d_out)
    db2 = dlogits.sum(0)
    dh = dlogits @ params.W2.T  # (N, h)
    da = dh * (1 - h * h)  # (N, h)
    dW1 = x.T @ da  # (d_in, h)
    db1 = da.sum(0)
    return {"W1": dW1, "b1": db1, "W2": dW2, "b2": db2}


def numerical_grad(f, t: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Central differences ``(f(t + eps e_i) - f(t - eps e_i)) / (2 eps)`` for every entry of ``t``
    (modified in place and restored). Error ``O(eps²)`` plus rounding ``O(u/eps)``: use float64."""
    if not (isinstance(eps, float) and eps > 0):
        raise ValueError(f"eps must be a positive float, got {eps!r}")
    t = _tensor("t", t)
    g = torch.zeros_like(t)
    flat, gflat = t.view(-1), g.view(-1)
    for i in range(flat.numel()):
        old = flat[i].item()
        flat[i] = old + eps
        fp = float(f())
        flat[i] = old - eps
        fm = float(f())
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * eps)
    return g
