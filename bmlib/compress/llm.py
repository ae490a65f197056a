"""Yardsticks for compressing a real language model: perplexity on a fixed real text, decode speed.

* :func:`fixed_text_windows`: ``n_windows`` windows of ``window`` tokens from the CPython
  documentation (:func:`bmlib.data.corpus.cpython_docs`, the same text every run), tokenized with the
  model's tokenizer. (What the model was trained on is not known to us; CPython's docs may be in it.)
* :func:`window_nll`: the mean next-token negative log-likelihood of each window, so a change in
  perplexity can carry a paired bootstrap interval over windows (:func:`ppl_change_ci`).
* :func:`decode_tokens_per_s`: batch-1 greedy decode speed of a bmlib model with
  :class:`bmlib.decode.BmlibDecode` (prefill excluded), timed with :func:`bmlib.bench.measure`.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .. import metrics
from ..bench import measure


def fixed_text_windows(tok, n_windows: int = 4, window: int = 256, max_chars: int = 1500) -> torch.Tensor:
    """``(n_windows, window)`` token ids: consecutive windows of the CPython docs' text."""
    from ..data.corpus import cpython_docs

    for name, v in (("n_windows", n_windows), ("window", window)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    need = n_windows * window + 1
    ids: list[int] = []
    for _, text in cpython_docs(max_chars=max_chars):
        ids += tok.encode(text + "\n\n")
        if len(ids) >= need:
            break
    if len(ids) < need:
        raise ValueError(f"the CPython docs give {len(ids)} tokens, fewer than n_windows * window + 1 = {need}")
    return torch.tensor(ids[:n_windows * window], dtype=torch.long).view(n_windows, window)


@torch.no_grad()
def window_nll(model, windows: torch.Tensor, batch_size: int = 4) -> np.ndarray:
    """Mean next-token NLL (nats) of each window under ``model`` (``model(idx) -> (logits, _)`` as
    bmlib's models, or a Hugging Face model with ``.logits``); returns a float64 array (n_windows,)."""
    if not isinstance(windows, torch.Tensor) or windows.dim() != 2 or windows.shape[1] < 2:
        raise ValueError(f"windows must be a (n, T >= 2) tensor of token ids, got "
                         f"{tuple(windows.shape) if isinstance(windows, torch.Tensor) else type(windows).__name__}")
    out = []
    for i in range(0, windows.shape[0], batch_size):
        x = windows[i:i + batch_size]
        res = model(x)
        logits = res.logits if hasattr(res, "logits") else res[0]
        nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), x[:, 1:], reduction="none")  # (b, T-1)
        out.append(nll.mean(1).double())
    return torch.cat(out).numpy()


def perplexity(nll: np.ndarray) -> float:
    """:func:`bmlib.metrics.perplexity` of the mean per-window NLL (windows of equal length, so the
    token mean)."""
    return metrics.perplexity(float(np.mean(nll)))


def ppl_change_ci(nll_base, nll_new, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple:
    """``(point, low, high)`` of the perplexity change in percent, ``100 (ppl_new / ppl_base - 1)``,
    with a paired percentile bootstrap over windows (the same windows resampled for both)."""
    a, b = np.asarray(nll_base, float), np.asarray(nll_new, float)
    if a.shape != b.shape or a.ndim != 1 or a.size < 2:
        raise ValueError(f"nll_base and nll_new must be 1-d arrays of the same length >= 2, got "
                         f"{a.shape} and {b.shape}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.size, size=(n_boot, a.size))
    boots = 100 * (np.exp(b[idx].mean(1) - a[idx].mean(1)) - 1)
    lo, hi = np.percentile(boots, [50 * (1 - level), 50 * (1 + level)])
    return float(100 * (math.exp(b.mean() - a.mean()) - 1)), float(lo), float(hi)


def decode_tokens_per_s(model, prompt: torch.Tensor, new_tokens: int = 16, *, budget_s: float = 0.0,
                        min_reps: int = 2, max_reps: int = 10):
    """``(tokens/s, Timing, tokens)``: greedy decode of ``new_tokens - 1`` tokens after the prefill
    of ``prompt`` (B, T) with :class:`bmlib.decode.BmlibDecode`; tokens/s = ``B (new_tokens - 1) /
    median time``; ``tokens`` are all ``new_tokens`` generated ids (B, new_tokens)."""
    from ..decode import BmlibDecode

    run = BmlibDecode(model, prompt, new_tokens)
    toks = run.tokens()
    t = measure(run.decode, device=prompt.device, warmup_s=0.0, budget_s=budget_s, min_reps=min_reps,
                max_reps=max_reps)
    return prompt.shape[0] * (new_tokens - 1) / (t.median_ms / 1e3), t, toks
