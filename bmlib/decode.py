"""Decode-speed workloads on a real model: bmlib's static-KV-cache loop vs Hugging Face ``generate``.

Both sides get the same weights, dtype, prompt and number of new tokens, and produce greedy tokens
that must be identical. Prefill (the prompt's one forward pass, which yields the first new token)
and decode (one forward per further token) are timed separately:

* bmlib: :class:`bmlib.generate.Decoder`; :func:`bmlib_phases` times ``prefill`` alone and
  ``decode(n - 1)`` alone (the cache is rewound to the end of the prompt before each timed decode).
* Hugging Face: ``generate(max_new_tokens=n)`` end to end, and the prompt's forward pass alone;
  decode time is the difference (``generate`` offers no hook between the two).

:func:`compare_decode` interleaves the two sides over several rounds (so both see the same machine
load) and reports the per-round ratio of decode tokens/s with its median and inter-quartile range.
All timing goes through :func:`bmlib.bench.measure`.
"""
from __future__ import annotations

import copy
import functools
import statistics

import torch
import torch.nn.functional as F

from .bench import _quantile, measure
from .generate import Decoder, no_eager_fallback


def _check_prompt(idx, new_tokens):
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.dtype != torch.long:
        raise ValueError(f"idx must be a (B, T) long tensor of token ids, got "
                         f"{tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__}")
    if isinstance(new_tokens, bool) or not isinstance(new_tokens, int) or new_tokens < 2:
        raise ValueError(f"new_tokens must be an int >= 2 (one from prefill, the rest decoded), "
                         f"got {new_tokens!r}")


class BmlibDecode:
    """Greedy generation of ``new_tokens`` tokens after ``idx`` with a :class:`Decoder`, split into
    its two phases. ``prefill()`` returns the first token (B, 1); ``decode()`` rewinds the cache to
    the end of the prompt and returns the other ``new_tokens - 1`` tokens (B, new_tokens - 1)."""

    def __init__(self, model, idx, new_tokens: int, mode: str = "eager"):
        _check_prompt(idx, new_tokens)
        self.idx, self.new_tokens = idx, new_tokens
        self.dec = Decoder(model, idx.shape[0], idx.shape[1] + new_tokens, mode=mode)
        self.first = self.dec.prefill(idx)
        self._pos0 = self.dec.cache.pos_t.clone()

    def prefill(self):
        return self.dec.prefill(self.idx)

    def decode(self):
        # entries past the prompt are masked (StaticKVCache attends to j <= pos) and overwritten
        self.dec.cache.pos_t.copy_(self._pos0)
        self.dec.tok.copy_(self.first)
        return self.dec.decode(self.new_tokens - 1)

    def tokens(self):
        """All ``new_tokens`` new tokens (B, new_tokens): prefill's first, then the decoded ones."""
        first = self.prefill()
        self.first = first
        return torch.cat([first, self.decode()], dim=1)


class HFGenerate:
    """Hugging Face ``generate`` (greedy, exactly ``new_tokens`` new tokens) and its prefill alone."""

    def __init__(self, hf, idx, new_tokens: int, cache_implementation: str | None = None):
        _check_prompt(idx, new_tokens)
        self.hf, self.idx, self.new_tokens = hf, idx, new_tokens
        # no end-of-sequence token: exactly new_tokens tokens, and no logits processor that would
        # forbid EOS (min_new_tokens does) where bmlib's plain argmax may pick it
        gc = copy.deepcopy(hf.generation_config)
        gc.eos_token_id, gc.pad_token_id = None, getattr(hf.config, "pad_token_id", None) or 0
        gc.do_sample, gc.max_new_tokens, gc.min_new_tokens = False, new_tokens, None
        for k in ("temperature", "top_p", "top_k"):
            setattr(gc, k, None)
        self.kw = dict(attention_mask=torch.ones_like(idx), generation_config=gc)
        if cache_implementation is not None:
            self.kw["cache_implementation"] = cache_implementation

    @torch.no_grad()
    def prefill(self):
        return self.hf(self.idx, attention_mask=self.kw["attention_mask"], use_cache=True).logits[:, -1].argmax(-1)

    @torch.no_grad()
    def generate(self):
        return self.hf.generate(self.idx, **self.kw)

    def tokens(self):
        return self.generate()[:, self.idx.shape[1]:]


MATVECS = ("library", "compiled")


def matvec_sum(w, x):
    """``x @ w.T`` written as a product and a sum over the inputs: ``w`` (out, in), ``x``
    (..., in) -> (..., out), the formula alone (:func:`compiled_matvec` checks its arguments). Eager,
    this builds the whole (out, in) product; compiled
    (:func:`compiled_matvec`), Inductor turns it into one generated C++ loop over each row of ``w``,
    which is read once, in the order it lies in memory: no library kernel is called."""
    return (w * x[..., None, :]).sum(-1)  # (..., out, in) -> (..., out)


@functools.cache
def _compiled_matvec_sum():
    # one graph for every shape (dynamic=True): a model's five matrix shapes share it, and so do models
    return torch.compile(matvec_sum, dynamic=True, fullgraph=True)


def compiled_matvec(w, x):
    """:func:`matvec_sum` compiled by ``torch.compile`` (once per process, on the first call):
    ``w`` (out, in) and ``x`` (..., in), floating point of one dtype and device -> (..., out)."""
    if not (isinstance(w, torch.Tensor) and w.dim() == 2 and w.is_floating_point()):
        raise ValueError(f"w must be a 2-D floating-point (out, in) tensor, got "
                         f"{tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__}")
    if not (isinstance(x, torch.Tensor) and x.dim() >= 1 and x.shape[-1] == w.shape[1]):
        raise ValueError(f"x must be a (..., in={w.shape[1]}) tensor, got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.dtype != w.dtype or x.device != w.device:
        raise ValueError(f"x ({x.dtype}, {x.device}) must have w's dtype and device ({w.dtype}, {w.device})")
    return _compiled_matvec_sum()(w, x)


class FusedLlamaDecode:
    """The decode fast path for a bmlib :class:`~bmlib.models.llama.Llama` on the CPU, same
    interface as :class:`BmlibDecode` (``prefill``, ``decode``, ``tokens``).

    Eager PyTorch pays a fixed cost per operator, and at batch 1 a 135M-parameter model's
    matrices are small, so the number of operators per token, not the FLOPs, sets the speed.
    This step uses the model's own weights, concatenated once: per layer one matmul for
    q, k and v and one for gate and up (5 instead of 7), RoPE applied to the one new position,
    the new key and value written in place into a GQA-sized cache, SDPA over the filled prefix
    with ``enable_gqa`` (no repeated key/value heads) and no per-step checks.

    ``matvec`` chooses who multiplies a row by a matrix. ``"library"``: each matrix is kept a
    second time, transposed to (in, out) and contiguous, and multiplied as ``x @ W_t`` (MKL's
    kernel): for one row ``x`` the AMD EPYC CPU this was tuned on (2 threads) multiplied a
    row-major (in, out) matrix faster than the (out, in) one that ``F.linear`` gets; an Intel Xeon
    read both at the same rate. ``"compiled"`` (batch 1 only): the matrices stay (out, in) and each
    product is :func:`compiled_matvec`, a loop Inductor generates, compiled on the first call.
    Prefill runs the model's ordinary forward pass into the same cache. A test checks both give the
    same logits.
    """

    def __init__(self, model, idx, new_tokens: int, matvec: str = "library"):
        from .models.llama import Llama

        if not isinstance(model, Llama):
            raise TypeError(f"model must be a bmlib Llama, got {type(model).__name__}")
        _check_prompt(idx, new_tokens)
        if matvec not in MATVECS:
            raise ValueError(f"matvec must be one of {MATVECS}, got {matvec!r}")
        if matvec == "compiled" and idx.shape[0] != 1:
            raise ValueError(f"matvec='compiled' multiplies one row at a time: idx must have batch size 1, "
                             f"got {idx.shape[0]}")
        c = model.config
        self.model, self.idx, self.new_tokens, self.cfg, self.matvec = model, idx, new_tokens, c, matvec
        self.max_len = idx.shape[1] + new_tokens
        if self.max_len > c.block_size:
            raise ValueError(f"prompt {idx.shape[1]} + new_tokens {new_tokens} exceeds block_size {c.block_size}")
        # the layout the chosen product reads: (in, out) for x @ W_t, the model's own (out, in) otherwise
        t = (lambda w: w.t().contiguous()) if matvec == "library" else (lambda w: w.contiguous())  # noqa: E731
        with torch.no_grad():
            self.layers = [(b.input_layernorm.weight,
                            t(torch.cat([b.self_attn.q_proj.weight, b.self_attn.k_proj.weight, b.self_attn.v_proj.weight])),
                            t(b.self_attn.o_proj.weight), b.post_attention_layernorm.weight,
                            t(torch.cat([b.mlp.gate_proj.weight, b.mlp.up_proj.weight])), t(b.mlp.down_proj.weight))
                           for b in model.model.layers]
            self.head_t = t(model.lm_head.weight)  # (C, V) for "library", (V, C) otherwise
        self.cache = model.new_kv_cache(idx.shape[0], self.max_len, kind="static")
        self.first = self.prefill()

    def _mm(self, x, w):
        """``x`` (B, 1, in) times a stored matrix ``w`` -> (B, 1, out)."""
        return x @ w if self.matvec == "library" else _compiled_matvec_sum()(w, x)  # no per-step checks

    @torch.no_grad()
    def prefill(self):
        self.cache.pos = 0
        logits, _ = self.model(self.idx, kv_cache=self.cache)
        self.first = logits[:, -1:].argmax(-1)  # (B, 1)
        return self.first

    def _rms(self, x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.cfg.rms_norm_eps))

    @torch.no_grad()
    def _step(self, tok, pos: int):
        c, m = self.cfg, self.model
        B, nh, nkv, hs = tok.shape[0], c.n_head, c.n_kv_head, c.head_dim
        cos, sin = m.rope_cos[pos], m.rope_sin[pos]  # (hs,)
        half = hs // 2
        x = m.model.embed_tokens(tok)  # (B, 1, C)
        K, V = self.cache.k, self.cache.v  # (L, B, nkv, max_len, hs)
        for i, (w_in, w_qkv, w_o, w_post, w_gu, w_down) in enumerate(self.layers):
            qkv = self._mm(self._rms(x, w_in), w_qkv)  # (B, 1, (nh + 2 nkv) hs)
            q, k, v = qkv.view(B, nh + 2 * nkv, hs).split([nh, nkv, nkv], dim=1)  # (B, heads, hs)
            qk = torch.cat([q, k], 1)  # (B, nh + nkv, hs): one RoPE for both
            qk = qk * cos + torch.cat([-qk[..., half:], qk[..., :half]], -1) * sin
            K[i, :, :, pos] = qk[:, nh:]
            V[i, :, :, pos] = v
            y = F.scaled_dot_product_attention(qk[:, :nh, None], K[i, :, :, :pos + 1], V[i, :, :, :pos + 1],
                                               enable_gqa=True)  # (B, nh, 1, hs)
            x = x + self._mm(y.view(B, 1, nh * hs), w_o)
            g, u = self._mm(self._rms(x, w_post), w_gu).chunk(2, -1)  # (B, 1, I) each
            x = x + self._mm(F.silu(g) * u, w_down)
        return self._mm(self._rms(x, m.model.norm.weight), self.head_t)  # (B, 1, V)

    @torch.no_grad()
    def decode(self):
        p0 = self.idx.shape[1]
        tok, out = self.first, []
        with no_eager_fallback():  # the compiled product: no silent eager fallback
            for t in range(self.new_tokens - 1):
                tok = self._step(tok, p0 + t)[:, -1:].argmax(-1)
                out.append(tok)
        return torch.cat(out, 1)

    def tokens(self):
        return torch.cat([self.prefill(), self.decode()], dim=1)


IMPLS = {"decoder": BmlibDecode, "fused": FusedLlamaDecode}


def _summary(xs):
    return {"median": statistics.median(xs), "q1": _quantile(xs, 0.25), "q3": _quantile(xs, 0.75)}


def compare_decode(model, hf, idx, new_tokens: int, *, rounds: int = 5, budget_s: float = 0.5,
                   min_reps: int = 2, max_reps: int = 20, cache_implementation: str | None = None,
                   mode: str = "eager", impl: str = "decoder", matvec: str = "library") -> dict:
    """Time bmlib (``model``) and Hugging Face (``hf``, the same weights) on prompt ``idx``.

    Asserts first that both produce the same greedy tokens (a ``RuntimeError`` otherwise). Then, in
    each of ``rounds`` rounds, times bmlib's prefill, bmlib's decode, HF's prefill and HF's
    ``generate`` with :func:`measure`. Returns per-round rows and the summary (median, q1, q3 over
    rounds) of each side's decode tokens/s (``B (new_tokens - 1) / decode time``), prefill ms and
    the ratio ``bmlib / hf`` of decode tokens/s. ``mode``: the :class:`Decoder` mode (``"eager"``,
    ``"compile"``, or ``"cuda-graph"`` on a GPU); ``impl``: ``"decoder"`` (:class:`BmlibDecode`) or
    ``"fused"`` (:class:`FusedLlamaDecode`, whose product is ``matvec``)."""
    _check_prompt(idx, new_tokens)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be an int >= 1, got {rounds!r}")
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {tuple(IMPLS)}, got {impl!r}")
    if impl == "decoder" and matvec != "library":
        raise ValueError(f"matvec={matvec!r} is an option of impl='fused'; the Decoder uses the library's matmul")
    bm = (BmlibDecode(model, idx, new_tokens, mode=mode) if impl == "decoder"
          else FusedLlamaDecode(model, idx, new_tokens, matvec=matvec))
    hg = HFGenerate(hf, idx, new_tokens, cache_implementation)
    t_bm, t_hf = bm.tokens(), hg.tokens()
    if not torch.equal(t_bm, t_hf):
        same = (t_bm == t_hf).float().mean().item()
        raise RuntimeError(f"bmlib and Hugging Face greedy tokens differ ({same:.1%} equal)")
    B, n_dec = idx.shape[0], new_tokens - 1
    mk = dict(warmup_s=0.0, budget_s=budget_s, min_reps=min_reps, max_reps=max_reps)
    rows = []
    for r in range(rounds):
        bp = measure(bm.prefill, device=idx.device, **mk)
        bd = measure(bm.decode, device=idx.device, **mk)
        hp = measure(hg.prefill, device=idx.device, **mk)
        hgen = measure(hg.generate, device=idx.device, **mk)
        hf_dec_ms = max(hgen.median_ms - hp.median_ms, 1e-9)
        row = dict(round=r, batch=B, new_tokens=new_tokens,
                   bmlib_prefill_ms=bp.median_ms, bmlib_decode_ms=bd.median_ms,
                   hf_prefill_ms=hp.median_ms, hf_generate_ms=hgen.median_ms, hf_decode_ms=hf_dec_ms,
                   bmlib_decode_tokens_per_s=B * n_dec / (bd.median_ms / 1e3),
                   hf_decode_tokens_per_s=B * n_dec / (hf_dec_ms / 1e3),
                   hf_generate_tokens_per_s=B * new_tokens / (hgen.median_ms / 1e3),
                   bmlib_generate_tokens_per_s=B * new_tokens / ((bp.median_ms + bd.median_ms) / 1e3))
        row["speedup_vs_hf"] = row["bmlib_decode_tokens_per_s"] / row["hf_decode_tokens_per_s"]
        rows.append(row)
    keys = ("bmlib_decode_tokens_per_s", "hf_decode_tokens_per_s", "speedup_vs_hf", "bmlib_prefill_ms",
            "hf_prefill_ms", "hf_generate_tokens_per_s", "bmlib_generate_tokens_per_s")
    return {"rows": rows, "tokens": t_bm, **{k: _summary([row[k] for row in rows]) for k in keys}}


def read_bandwidth(nbytes: int = 256 * 2**20, device="cpu", budget_s: float = 0.3) -> float:
    """Measured read bandwidth in bytes/s: the sum of an fp32 buffer of ``nbytes`` (far larger than
    the caches), timed with :func:`measure` (``bmlib.benchmarks``' ``read`` memory kernel)."""
    from .benchmarks import memory_case

    case = memory_case("read", nbytes, device=device)
    t = measure(case.fn, device=device, warmup_s=0.05, budget_s=budget_s, min_reps=3)
    return case.bytes / (t.median_ms / 1e3)
