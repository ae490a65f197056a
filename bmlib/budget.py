"""Compute budgets: what a training run costs in FLOPs, memory, GPU-hours and money.

* FLOPs (formulas in :mod:`bmlib.flops`, re-exported here): ``6 N D`` for a dense transformer (2 per
  parameter per token forward, 4 backward) plus the attention term ``12 L T d`` per token (q·kᵀ and
  att·v, forward + backward, causal mask not subtracted) that ``6N`` leaves out (Kaplan et al., 2020;
  PaLM appendix B). Activation recomputation repeats the forward: ``8 N D`` (Narayanan et al., 2021).
* Compute-optimal size (Hoffmann et al., 2022, "Chinchilla"): ~20 tokens per parameter, and the
  fitted loss ``L(N, D) = E + A / N^α + B / D^β`` whose minimum under ``6ND = C`` gives
  ``N_opt ∝ C^{β/(α+β)}``.
* Memory: bytes per parameter for training (weights, gradients, optimiser state) and inference
  (weights; plus the KV cache).
* Time and money: ``FLOPs / (n_gpus x peak x MFU)``, GPU-hours x price.

Every function validates its inputs and returns plain numbers.
"""
from __future__ import annotations

import math

# The FLOP and byte formulas live in bmlib.flops (one convention for the whole book); the budget
# functions below use them and re-export them under their familiar names.
from .flops import (attention_flops_per_token, inference_flops_per_token, kv_cache_bytes,  # noqa: F401
                    training_flops)

# Hoffmann et al. (2022), approach 3 fit of L(N, D) = E + A/N^alpha + B/D^beta.
CHINCHILLA = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
TOKENS_PER_PARAM = 20.0


def _pos(name: str, v, allow_zero: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
            or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0, got {v!r}")
    return float(v)


def _frac(name: str, v) -> float:
    v = _pos(name, v)
    if v > 1:
        raise ValueError(f"{name} must lie in (0, 1], got {v!r}")
    return v


# --------------------------------------------------------------------------- Chinchilla
def chinchilla_tokens(n_params: float, tokens_per_param: float = TOKENS_PER_PARAM) -> float:
    """Compute-optimal training tokens for a model of ``n_params``: ~20 per parameter."""
    return _pos("n_params", n_params) * _pos("tokens_per_param", tokens_per_param)


def chinchilla_optimal(compute_flops: float, tokens_per_param: float = TOKENS_PER_PARAM) -> tuple:
    """``(N, D)`` that spend ``C = 6 N D`` with ``D = r N``: ``N = sqrt(C / 6r)``."""
    C, r = _pos("compute_flops", compute_flops), _pos("tokens_per_param", tokens_per_param)
    n = math.sqrt(C / (6.0 * r))
    return n, r * n


def chinchilla_loss(n_params, n_tokens, fit: dict | None = None):
    """The fitted ``L(N, D) = E + A / N^α + B / D^β`` (nats per token; Hoffmann et al., 2022).
    Accepts numbers or NumPy arrays (broadcast)."""
    import numpy as np

    p = {**CHINCHILLA, **(fit or {})}
    N, D = np.asarray(n_params, dtype=float), np.asarray(n_tokens, dtype=float)
    if (N <= 0).any() or (D <= 0).any():
        raise ValueError("n_params and n_tokens must be > 0")
    out = p["E"] + p["A"] / N ** p["alpha"] + p["B"] / D ** p["beta"]
    return float(out) if out.ndim == 0 else out


def chinchilla_optimal_fitted(compute_flops: float, fit: dict | None = None) -> tuple:
    """``(N_opt, D_opt)`` minimising the fitted ``L(N, D)`` subject to ``6 N D = C``.

    Setting ``d/dN [A N^-α + B (C/6N)^-β] = 0`` gives ``N_opt = G (C/6)^{β/(α+β)}`` with
    ``G = (α A / (β B))^{1/(α+β)}``, and ``D_opt = C / (6 N_opt)``.
    """
    C = _pos("compute_flops", compute_flops)
    p = {**CHINCHILLA, **(fit or {})}
    a, b = p["alpha"], p["beta"]
    G = (a * p["A"] / (b * p["B"])) ** (1.0 / (a + b))
    n = G * (C / 6.0) ** (b / (a + b))
    return n, C / (6.0 * n)


# --------------------------------------------------------------------------- memory
TRAIN_BYTES = {
    # weights + gradients + optimiser state, per parameter (Rajbhandari et al., 2020, ZeRO)
    "fp32-adam": 4 + 4 + 8,                 # fp32 weights, fp32 grads, Adam m and v
    "mixed-adam": 2 + 2 + 4 + 4 + 4,        # bf16 weights + grads, fp32 master, m, v
    "bf16-adam": 2 + 2 + 2 + 2,             # everything in bf16 (no master copy)
    "mixed-sgd": 2 + 2 + 4,                 # bf16 weights + grads, fp32 master, no state
}
INFER_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1, "int4": 0.5}


def train_bytes_per_param(recipe: str = "mixed-adam") -> float:
    """Bytes each parameter costs during training (activations excluded): see ``TRAIN_BYTES``."""
    if recipe not in TRAIN_BYTES:
        raise ValueError(f"recipe must be one of {sorted(TRAIN_BYTES)}, got {recipe!r}")
    return float(TRAIN_BYTES[recipe])


def inference_bytes_per_param(dtype: str = "bf16") -> float:
    if dtype not in INFER_BYTES:
        raise ValueError(f"dtype must be one of {sorted(INFER_BYTES)}, got {dtype!r}")
    return float(INFER_BYTES[dtype])


# --------------------------------------------------------------------------- time and money
def gpu_hours(flops: float, peak_flops_per_gpu: float, mfu: float = 1.0) -> float:
    """GPU-hours to do ``flops`` at ``mfu`` of ``peak_flops_per_gpu``."""
    return _pos("flops", flops) / (_pos("peak_flops_per_gpu", peak_flops_per_gpu) * _frac("mfu", mfu)) / 3600.0


def wall_clock_days(flops: float, n_gpus: int, peak_flops_per_gpu: float, mfu: float = 1.0) -> float:
    """Days on ``n_gpus`` GPUs (perfect scaling assumed; MFU absorbs the losses)."""
    if isinstance(n_gpus, bool) or not isinstance(n_gpus, int) or n_gpus < 1:
        raise ValueError(f"n_gpus must be a positive int, got {n_gpus!r}")
    return gpu_hours(flops, peak_flops_per_gpu, mfu) / n_gpus / 24.0


def cost(gpu_hours_: float, price_per_gpu_hour: float) -> float:
    """Money for ``gpu_hours_`` at ``price_per_gpu_hour`` (any currency)."""
    return _pos("gpu_hours", gpu_hours_, allow_zero=True) * _pos("price_per_gpu_hour", price_per_gpu_hour,
                                                                 allow_zero=True)


def run_budget(n_params: float, n_tokens: float, *, peak_flops_per_gpu: float, mfu: float,
               price_per_gpu_hour: float, n_gpus: int = 1, recompute: bool = False) -> dict:
    """FLOPs, GPU-hours, wall-clock days and cost of one training run, as one dict."""
    f = training_flops(n_params, n_tokens, recompute=recompute)
    h = gpu_hours(f, peak_flops_per_gpu, mfu)
    return {"n_params": float(n_params), "n_tokens": float(n_tokens), "flops": f, "gpu_hours": h,
            "days": wall_clock_days(f, n_gpus, peak_flops_per_gpu, mfu), "n_gpus": n_gpus, "mfu": mfu,
            "cost": cost(h, price_per_gpu_hour)}


def serving_cost_per_million(tokens_per_s: float, dollars_per_hour: float) -> float:
    """Dollars per million tokens served by one machine at a sustained ``tokens_per_s`` that costs
    ``dollars_per_hour``: ``dollars_per_hour / (3600 x tokens_per_s) x 1e6`` (the serving chapter
    measures the throughput; the price is the reader's)."""
    return _pos("dollars_per_hour", dollars_per_hour, allow_zero=True) / (
        3600.0 * _pos("tokens_per_s", tokens_per_s)) * 1e6
