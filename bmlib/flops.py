"""Every FLOP and byte formula of the book, in one place.

Conventions (used by every chapter, every benchmark and every MFU in the book):

* **A FLOP is half a multiply-add**: a matmul of ``(m, k) @ (k, n)`` costs ``2 m n k``. Only matmuls
  are counted; softmax, normalisation, activations, scaling, bias additions and other elementwise
  work are not (they are a few percent of a transformer's work and memory-bound anyway).
* **Causal attention counts the full ``Tq x Tk`` work**: the causal mask is *not* subtracted (as in
  Kaplan et al. 2020's dense kernels and PaLM's appendix B, Chowdhery et al. 2022). A dense kernel
  does the full square; a kernel that skips the masked half (FlashAttention) therefore shows up to
  twice its useful throughput when causal, and every table that compares causal kernels says so.
* **Backward is twice the forward** (two matmuls per forward matmul: the input and the weight
  gradient), so training is three forward passes; full activation recomputation adds one forward
  (four). Recomputation inside a fused attention kernel (FlashAttention recomputes ``q kᵀ`` in its
  backward) is hardware work, not model work, and is not counted: these are *model* FLOPs.
* **Bytes moved** count the tensors a kernel reads and writes at its boundary, once each, at their
  storage dtype (no cache reuse, no intermediates such as a materialised score matrix).

``torch.utils.flop_counter.FlopCounterMode`` counts the matmuls PyTorch actually runs;
``tests/test_flops.py`` checks these formulas against it on small models.
"""
from __future__ import annotations

import math


def _int(name: str, v, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {v!r}")
    return v


def _num(name: str, v, allow_zero: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
            or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0, got {v!r}")
    return float(v)


# ============================================================================ kernels
def matmul_flops(m: int, n: int, k: int) -> float:
    """``(m, k) @ (k, n)``: ``2 m n k`` FLOPs."""
    return 2.0 * _int("m", m) * _int("n", n) * _int("k", k)


def matmul_bytes(m: int, n: int, k: int, in_bytes: float, out_bytes: float | None = None) -> float:
    """Bytes a GEMM reads (``A (m, k)`` and ``B (k, n)`` at ``in_bytes`` per element) and writes
    (``C (m, n)`` at ``out_bytes``, default ``in_bytes``)."""
    _int("m", m), _int("n", n), _int("k", k)
    ib = _num("in_bytes", in_bytes)
    ob = ib if out_bytes is None else _num("out_bytes", out_bytes)
    return ib * (m * k + k * n) + ob * m * n


#: Memory kernels and how many times each moves its buffer: copy reads and writes it.
STREAM_PASSES = {"copy": 2, "read": 1, "write": 1}


def stream_bytes(kernel: str, nbytes: int) -> float:
    """Bytes a streaming kernel moves over a buffer of ``nbytes``: copy ``2x``, read/write ``1x``."""
    if kernel not in STREAM_PASSES:
        raise ValueError(f"kernel must be one of {tuple(STREAM_PASSES)}, got {kernel!r}")
    return float(STREAM_PASSES[kernel] * _int("nbytes", nbytes))


def attention_flops(batch: int, n_head: int, tq: int, tk: int, head_dim: int, *,
                    backward: bool = False) -> float:
    """Matmul FLOPs of scaled dot-product attention: ``q kᵀ`` and ``att v`` are ``2 tq tk hs`` each
    per head, so ``4 b nh tq tk hs`` forward (causal or not: see the module's convention); with
    ``backward`` the forward plus twice that (``dS``, ``dV``, ``dQ``, ``dK``): 3x forward."""
    f = 4.0 * _int("batch", batch) * _int("n_head", n_head) * _int("tq", tq) * _int("tk", tk) \
        * _int("head_dim", head_dim)
    return f * (3.0 if backward else 1.0)


def attention_bytes(batch: int, n_head: int, tq: int, tk: int, head_dim: int, elem_bytes: float, *,
                    backward: bool = False) -> float:
    """Bytes attention reads and writes at its boundary.

    Forward reads q (``tq``), k, v (``tk``) and writes o (``tq``): ``(2 tq + 2 tk)`` rows of
    ``b nh hs`` elements. Backward reads q, k, v, o, dO and writes dQ, dK, dV: ``(4 tq + 4 tk)``
    rows more, so forward + backward is 3x the forward for self-attention. The softmax statistics
    a fused kernel keeps (``b nh tq`` floats, ``1/hs`` of one tensor) are not counted.
    """
    row = _int("batch", batch) * _int("n_head", n_head) * _int("head_dim", head_dim) \
        * _num("elem_bytes", elem_bytes)
    tq, tk = _int("tq", tq), _int("tk", tk)
    fwd = (2 * tq + 2 * tk) * row
    return fwd + ((4 * tq + 4 * tk) * row if backward else 0.0)


def roofline(intensity, peak_flops: float, mem_bw: float):
    """Attainable FLOP/s at arithmetic ``intensity`` (FLOP/byte): ``min(peak, intensity x bw)``."""
    import numpy as np

    if not (isinstance(peak_flops, (int, float)) and isinstance(mem_bw, (int, float))
            and peak_flops > 0 and mem_bw > 0):
        raise ValueError(f"peak_flops and mem_bw must be > 0, got {peak_flops!r}, {mem_bw!r}")
    x = np.asarray(intensity, dtype=float)
    if (x < 0).any() or np.isnan(x).any():
        raise ValueError("intensity must be >= 0 FLOP/byte")
    return np.minimum(peak_flops, x * mem_bw)


# ============================================================================ models
def mha_flops(T: int, d_model: int, n_head: int, *, batch: int = 1, kv_len: int | None = None) -> int:
    """Forward matmul FLOPs of :class:`bmlib.attention.MultiHeadAttention`.

    Projections: q and out ``2·T·d²`` each, k and v ``2·Tk·d²`` each; scores ``q kᵀ`` and the
    weighted sum ``att v``: ``2·T·Tk·d`` each (summed over heads, ``nh · hs = d``). Self-attention
    (``Tk = T``): ``8·T·d² + 4·T²·d``.
    """
    for name, x in (("d_model", d_model), ("n_head", n_head)):
        _int(name, x)
    if d_model % n_head:
        raise ValueError(f"d_model ({d_model}) must be divisible by n_head ({n_head})")
    tk = T if kv_len is None else kv_len
    for name, x in (("T", T), ("kv_len", tk), ("batch", batch)):
        _int(name, x)
    d = d_model
    return batch * (4 * T * d * d + 4 * tk * d * d
                    + int(attention_flops(1, 1, T, tk, d)))  # heads split d: nh·hs = d


def attention_flops_per_token(n_layer: int, seq_len: int, d_model: int, training: bool = True) -> float:
    """Attention-score FLOPs per token that ``6N`` omits: ``4 L T d`` forward (full square, see the
    convention), x3 for training."""
    _int("n_layer", n_layer), _int("seq_len", seq_len), _int("d_model", d_model)
    return n_layer * attention_flops(1, 1, 1, seq_len, d_model, backward=training)


def _passes(training: bool, recompute: bool) -> float:
    if recompute and not training:
        raise ValueError("recompute only applies when training=True")
    return 4.0 if recompute else 3.0 if training else 1.0


def transformer_flops_per_token(n_matmul_params: float, n_layer: int, seq_len: int, d_model: int, *,
                                training: bool = True, recompute: bool = False) -> float:
    """FLOPs per token of a dense transformer: ``2 N + 4 L T d`` forward, where ``N`` counts every
    weight matrix a token passes through (the output projection included, embedding look-ups
    excluded) and ``4 L T d`` is the attention scores; x3 for training, x4 with activation
    recomputation. The formula of :meth:`bmlib.models.gpt.GPT.flops_per_token`."""
    N = _num("n_matmul_params", n_matmul_params)
    fwd = 2.0 * N + attention_flops_per_token(n_layer, seq_len, d_model, training=False)
    return fwd * _passes(training, recompute)


def gpt_matmul_params(n_layer: int, n_embd: int, vocab_size: int, n_params_non_embedding: int | None = None) -> int:
    """``N`` of :func:`transformer_flops_per_token` for a GPT-2 block stack with a tied output layer.

    ``n_params_non_embedding`` (the model's own count) is used when given: it also counts biases and
    LayerNorm gains as if they were weights (``13 L C + 2 C`` more, under 1 %: the convention of
    Kaplan et al.); otherwise the matrices only, ``12 L C²``. The output projection adds ``V C``.
    """
    _int("n_layer", n_layer), _int("n_embd", n_embd), _int("vocab_size", vocab_size)
    body = 12 * n_layer * n_embd ** 2 if n_params_non_embedding is None \
        else _int("n_params_non_embedding", n_params_non_embedding, 0)
    return body + vocab_size * n_embd


def training_flops(n_params: float, n_tokens: float, *, n_layer: int | None = None,
                   seq_len: int | None = None, d_model: int | None = None,
                   recompute: bool = False) -> float:
    """FLOPs to train ``n_params`` parameters on ``n_tokens`` tokens.

    ``6 N D`` (``8 N D`` with full activation recomputation), plus the attention term ``12 L T d``
    per token (``16 L T d`` with recomputation) when ``n_layer``, ``seq_len`` and ``d_model`` are
    all given: :func:`transformer_flops_per_token` times ``D``.
    """
    N, D = _num("n_params", n_params), _num("n_tokens", n_tokens)
    given = [x is not None for x in (n_layer, seq_len, d_model)]
    if any(given) and not all(given):
        raise ValueError("n_layer, seq_len and d_model must be given together (or none of them)")
    if all(given):
        return transformer_flops_per_token(N, n_layer, seq_len, d_model, training=True,
                                           recompute=recompute) * D
    return 2.0 * N * _passes(True, recompute) * D


def inference_flops_per_token(n_params: float) -> float:
    """``2 N``: one multiply-add per parameter per generated token (attention term aside)."""
    return 2.0 * _num("n_params", n_params)


def kv_cache_bytes(n_layer: int, d_model: int, seq_len: int, batch_size: int = 1,
                   bytes_per_value: float = 2.0) -> float:
    """Keys and values of every layer for ``batch_size x seq_len`` tokens: ``2 L T B d x bytes``."""
    for name, v in (("n_layer", n_layer), ("d_model", d_model), ("seq_len", seq_len),
                    ("batch_size", batch_size)):
        _int(name, v)
    return 2.0 * n_layer * d_model * seq_len * batch_size * _num("bytes_per_value", bytes_per_value)
