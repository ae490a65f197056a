"""Autoregressive generation: sampling rules, KV-cached decoding, padded batches, fast decode loops.

* Sampling: :func:`next_token_probs` turns logits into the distribution a rule samples from
  (temperature, top-k, top-p); :func:`sample_next` draws from it; ``temperature=0`` is greedy.
* Decoding: :func:`generate` runs prefill once, then one token per step, reusing keys and values
  from a cache (``cache="static"`` preallocated, ``"graph"`` fixed-shape :class:`StaticKVCache`,
  or ``"none"``: recompute the whole sequence each step, the reference).
* Batches of different lengths are *left*-padded (:func:`left_pad`), so every row's next token
  lands in the same column; the padding is hidden with a key mask and each row gets its own
  position ids, so a padded row decodes exactly as it would alone.
* :class:`Decoder` is the fast loop for timing: a fixed-shape step that can be captured as a CUDA
  graph (``mode="cuda-graph"``) or compiled (``mode="compile"``); ``mode="eager"`` runs anywhere.

Nothing here picks a device or dtype silently: the model's parameters decide both.
"""
from __future__ import annotations

import math
import numbers

import torch

from .models.gpt import GPT, KVCache, StaticKVCache
from .models.llama import Llama

DECODERS = (GPT, Llama)  # the model families generate() and Decoder drive (same forward protocol)

CACHES = ("static", "graph", "none")
MODES = ("eager", "cuda-graph", "compile")


# ----------------------------------------------------------------------------- sampling
def _check_rule(temperature, top_k, top_p) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature < 0 \
            or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float))
                              or not (0.0 < top_p <= 1.0)):
        raise ValueError(f"top_p must be None or a number in (0, 1], got {top_p!r}")


def _check_logits(logits) -> None:
    """A ``(B, V)`` float tensor whose rows a distribution can be made of: no NaN, no ``+inf``,
    and at least one finite logit per row (``-inf`` marks a banned token). Otherwise softmax gives
    NaN and ``multinomial`` either raises from deep inside or, via argmax, picks the NaN."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 2 or logits.shape[-1] < 1:
        raise ValueError(f"logits must have shape (B, vocab), got {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got dtype {logits.dtype}")
    bad = torch.isnan(logits) | (logits == float("inf"))  # (B, V)
    empty = ~torch.isfinite(logits).any(dim=-1)  # (B,): every logit is -inf (or NaN/inf)
    if bool(bad.any()) or bool(empty.any()):
        rows = sorted(set(bad.any(-1).nonzero().flatten().tolist()) | set(empty.nonzero().flatten().tolist()))
        raise ValueError(f"logits must be finite or -inf with at least one finite value per row; "
                         f"rows {rows[:5]} hold NaN, +inf or only -inf")


def filter_logits(logits, *, top_k: int | None = None, top_p: float | None = None):
    """Set every logit outside the top-k / top-p (nucleus) set to ``-inf``; ``(B, V)`` in and out.

    top-p keeps the *smallest* set of most likely tokens whose probability mass is ``>= top_p``
    (Holtzman et al., 2020): a token is kept if the mass strictly before it is ``< top_p``.
    """
    _check_logits(logits)
    _check_rule(1.0, top_k, top_p)
    out = logits.float().clone()
    if top_k is not None and top_k < out.shape[-1]:
        kth = torch.topk(out, top_k, dim=-1).values[:, -1:]  # (B, 1)
        out = out.masked_fill(out < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(out, dim=-1, descending=True)  # (B, V)
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = torch.cumsum(probs, dim=-1) - probs  # (B, V)
        drop_sorted = mass_before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        out = out.masked_fill(drop, float("-inf"))
    return out


def next_token_probs(logits, *, temperature: float = 1.0, top_k: int | None = None,
                     top_p: float | None = None):
    """The distribution a sampling rule draws the next token from: ``(B, V)`` probabilities.

    ``temperature=0`` is greedy (a one-hot on the argmax). Order: temperature, then top-k, then
    top-p on the tempered distribution (the order Hugging Face's ``generate`` uses).
    """
    _check_logits(logits)
    _check_rule(temperature, top_k, top_p)
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    z = filter_logits(logits.float() / temperature, top_k=top_k, top_p=top_p)
    return torch.softmax(z, dim=-1)


def sample_next(logits, *, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None):
    """Draw one token per row from ``logits`` (B, V) -> (B,) ids (``temperature=0``: argmax)."""
    _check_logits(logits)
    _check_rule(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(-1)
    probs = next_token_probs(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# ----------------------------------------------------------------------------- padding
def left_pad(seqs, pad_id: int = 0, device=None):
    """Left-pad token lists to one ``(B, T)`` tensor; returns ``(idx, attention_mask)``.

    ``attention_mask`` is ``(B, T)`` bool, ``True`` on real tokens (the Hugging Face convention).
    """
    if not isinstance(seqs, (list, tuple)) or not seqs:
        raise ValueError("seqs must be a non-empty list of token-id lists")
    if isinstance(pad_id, bool) or not isinstance(pad_id, int) or pad_id < 0:
        raise ValueError(f"pad_id must be an int >= 0, got {pad_id!r}")
    seqs = [s.tolist() if hasattr(s, "tolist") else s for s in seqs]  # tensors, numpy arrays
    for b, s in enumerate(seqs):
        if isinstance(s, (str, bytes)) or not hasattr(s, "__len__"):
            raise TypeError(f"seqs[{b}] must be a list of token ids, got {type(s).__name__}")
        if not all(isinstance(t, numbers.Integral) and not isinstance(t, bool) and t >= 0 for t in s):
            raise ValueError(f"seqs[{b}] must hold int token ids >= 0, got {list(s)[:8]}")
    if any(len(s) < 1 for s in seqs):
        raise ValueError(f"every sequence in seqs needs >= 1 token, got lengths {[len(s) for s in seqs]}")
    T = max(len(s) for s in seqs)
    idx = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    am = torch.zeros((len(seqs), T), dtype=torch.bool)
    for b, s in enumerate(seqs):
        idx[b, T - len(s):] = torch.as_tensor([int(t) for t in s], dtype=torch.long)
        am[b, T - len(s):] = True
    return idx.to(device), am.to(device)


def position_ids_from_mask(attention_mask):
    """Positions that count only real tokens: a left-padded row's first real token is position 0."""
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2:
        raise ValueError("attention_mask must be a (B, T) tensor, got "
                         f"{tuple(getattr(attention_mask, 'shape', ())) or type(attention_mask).__name__}")
    am = attention_mask.long()
    return (am.cumsum(-1) - 1).clamp(min=0)  # (B, T)


def _attn_mask(key_valid, tq: int, q_pos_in_keys):
    """(B, 1, tq, Tk) mask: a query sees the valid keys, and always itself (so that rows of
    padding never see an empty set and softmax stays finite; their outputs are never used)."""
    Tk = key_valid.shape[-1]
    j = torch.arange(Tk, device=key_valid.device)
    self_ = j[None, :] == q_pos_in_keys[:, None]  # (tq, Tk)
    return key_valid[:, None, None, :] | self_[None, None]


# ----------------------------------------------------------------------------- generation
def _model_dtype(model) -> torch.dtype:
    return next(model.parameters()).dtype


def _new_cache(model, kind: str, batch_size: int, max_len: int, device, dtype):
    """A ``"static"`` or ``"graph"`` KV cache shaped for ``model`` (GQA-sized for a Llama)."""
    if isinstance(model, Llama):
        return model.new_kv_cache(batch_size, max_len, kind=kind)
    cls = KVCache if kind == "static" else StaticKVCache
    return cls(model.config, batch_size, max_len, device=device, dtype=dtype)


def _check_generate_args(model, idx, max_new_tokens, attention_mask, cache):
    if not isinstance(model, DECODERS):
        raise TypeError(f"model must be a bmlib GPT or Llama, got {type(model).__name__}")
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.dtype != torch.long:
        raise ValueError(f"idx must be a (B, T) long tensor of token ids, got "
                         f"{tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if idx.shape[1] + max_new_tokens > model.config.block_size:
        raise ValueError(f"prompt length {idx.shape[1]} + max_new_tokens {max_new_tokens} exceeds "
                         f"block_size {model.config.block_size}")
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != idx.shape:
            raise ValueError(f"attention_mask must be a bool tensor of idx's shape {tuple(idx.shape)}, got "
                             f"{tuple(getattr(attention_mask, 'shape', ())) or type(attention_mask).__name__}")
        if attention_mask.is_floating_point() or not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
            raise ValueError("attention_mask must hold 0/1 or False/True (True = real token)")
        am = attention_mask.bool()
        if not bool(am.any(dim=1).all()):
            raise ValueError("attention_mask must mark at least one real token in every row")
        if not bool((am[:, 1:] >= am[:, :-1]).all()):
            raise ValueError("attention_mask must be left-padded (padding first, then real tokens; "
                             "see left_pad): a row has padding after a real token")
    if cache not in CACHES:
        raise ValueError(f"cache must be one of {CACHES}, got {cache!r}")


@torch.no_grad()
def generate(model: GPT, idx, max_new_tokens: int, *, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, attention_mask=None,
             cache: str = "static", seed: int | None = None, return_logits: bool = False):
    """Extend every row of ``idx`` (B, T) by ``max_new_tokens`` tokens; returns (B, T + new).

    ``attention_mask`` (B, T) marks real tokens of a left-padded batch (see :func:`left_pad`).
    ``cache``: ``"static"`` (preallocated :class:`KVCache`), ``"graph"`` (fixed-shape
    :class:`StaticKVCache`) or ``"none"`` (recompute everything each step: the reference).
    ``seed`` seeds a private generator, so sampling is reproducible and independent of global state.
    With ``return_logits=True`` also returns the (B, new, V) logits each new token was drawn from.
    """
    _check_generate_args(model, idx, max_new_tokens, attention_mask, cache)
    _check_rule(temperature, top_k, top_p)
    dev = idx.device
    gen = None
    if seed is not None:
        gen = torch.Generator(device=dev)
        gen.manual_seed(seed)
    B, T0 = idx.shape
    total = T0 + max_new_tokens
    am = torch.ones_like(idx, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    key_valid = torch.ones((B, total), dtype=torch.bool, device=dev)
    key_valid[:, :T0] = am
    pos_all = position_ids_from_mask(key_valid)  # (B, total)
    padded = attention_mask is not None and not bool(am.all())
    out, logits_out = idx, []

    def pick(last_logits):
        logits_out.append(last_logits)
        return sample_next(last_logits, temperature=temperature, top_k=top_k, top_p=top_p,
                           generator=gen)

    if cache == "none":
        for t in range(max_new_tokens):
            T = out.shape[1]
            mask = _attn_mask(key_valid[:, :T], T, torch.arange(T, device=dev)) if padded else None
            logits, _ = model(out, mask=mask, position_ids=pos_all[:, :T])
            out = torch.cat([out, pick(logits[:, -1].float())[:, None]], dim=1)
    else:
        dtype = _model_dtype(model)
        kv = _new_cache(model, cache, B, total, dev, dtype)
        Tk = (lambda end: end) if cache == "static" else (lambda end: total)
        # prefill: the whole prompt in one pass
        mask = _attn_mask(key_valid[:, :Tk(T0)], T0, torch.arange(T0, device=dev)) if padded else None
        logits, _ = model(idx, kv_cache=kv, mask=mask, position_ids=pos_all[:, :T0])
        nxt = pick(logits[:, -1].float())
        out = torch.cat([out, nxt[:, None]], dim=1)
        for t in range(T0, total - 1):  # decode: one token per step
            mask = key_valid[:, None, None, :Tk(t + 1)] if padded else None
            logits, _ = model(nxt[:, None], kv_cache=kv, mask=mask, position_ids=pos_all[:, t:t + 1])
            nxt = pick(logits[:, -1].float())
            out = torch.cat([out, nxt[:, None]], dim=1)
    if return_logits:
        return out, torch.stack(logits_out, dim=1)
    return out


# ----------------------------------------------------------------------------- fast decode loop
def no_eager_fallback():
    """A context in which a compiled function that would need recompiling past Dynamo's limit
    raises ``FailOnRecompileLimitHit`` instead of quietly running eagerly (every compiled decode loop)."""
    return torch._dynamo.config.patch(fail_on_recompile_limit_hit=True)


class Decoder:
    """A fixed-shape greedy decode loop for timing: prefill once, then ``n`` single-token steps.

    ``mode="eager"``: plain PyTorch with a :class:`StaticKVCache` (runs anywhere).
    ``mode="cuda-graph"``: the decode step (forward + argmax + writing the next token into the input
    buffer) is captured once as a CUDA graph and replayed; one launch per token instead of ~150.
    ``mode="compile"``: the step is wrapped in ``torch.compile(fullgraph=True, dynamic=False)``; the
    first call compiles (about a minute for a 30-layer model on two CPU cores). On a GPU with
    ``mode="reduce-overhead"``, which replays the step as a CUDA graph (plus kernel fusion); on the
    CPU, where there are no CUDA graphs, Inductor's default mode, which fuses the elementwise work
    around the matmuls into generated C++. :attr:`compile_mode` records which. A step that would
    need recompiling past Dynamo's limit raises instead of silently running eager.
    """

    def __init__(self, model: GPT, batch_size: int, max_len: int, mode: str = "eager"):
        if not isinstance(model, DECODERS):
            raise TypeError(f"model must be a bmlib GPT or Llama, got {type(model).__name__}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        dev = next(model.parameters()).device
        if mode == "cuda-graph" and dev.type != "cuda":
            raise ValueError(f"mode={mode!r} needs the model on a CUDA device, got {dev}")
        if isinstance(max_len, bool) or not (isinstance(max_len, int) and 2 <= max_len <= model.config.block_size):
            raise ValueError(f"max_len must lie in [2, block_size={model.config.block_size}], got {max_len!r}")
        if isinstance(batch_size, bool) or not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.model, self.mode, self.max_len, self.device = model, mode, max_len, dev
        self.cache = _new_cache(model, "graph", batch_size, max_len, dev, _model_dtype(model))
        self.tok = torch.zeros((batch_size, 1), dtype=torch.long, device=dev)  # the step's input
        self.graph = None
        self._step = self._eager_step
        self.compile_mode = None
        if mode == "compile":
            self.compile_mode = "reduce-overhead" if dev.type == "cuda" else "default"
            self._step = torch.compile(self._eager_step, mode=self.compile_mode, fullgraph=True, dynamic=False)

    def _eager_step(self):
        # the step's ids are the model's own argmax and its position is bounded by max_len, so the
        # value checks (a host sync each) are skipped; shapes and dtypes are still checked
        logits, _ = self.model(self.tok, kv_cache=self.cache, position_ids=self.cache.pos_t.view(1),
                               validate=False)
        nxt = logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
        self.tok.copy_(nxt)
        return nxt

    @torch.no_grad()
    def prefill(self, idx):
        """Run the prompt ``idx`` (B, T) through the model, filling the cache; sets the first token."""
        if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.shape[0] != self.tok.shape[0]:
            raise ValueError(f"idx must be a ({self.tok.shape[0]}, T) tensor of token ids, got "
                             f"{tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__}")
        if idx.shape[1] > self.max_len:
            raise ValueError(f"idx has {idx.shape[1]} tokens; the decoder holds max_len={self.max_len}")
        self.cache.reset()
        T = idx.shape[1]
        logits, _ = self.model(idx, kv_cache=self.cache, position_ids=torch.arange(T, device=self.device))
        self.tok.copy_(logits[:, -1].argmax(-1, keepdim=True))
        return self.tok.clone()

    def _capture(self):
        # Warm up on a side stream (allocator, cuBLAS handles), then capture one step.
        pos0 = self.cache.pos_t.clone()
        tok0 = self.tok.clone()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                self._eager_step()
                self.cache.pos_t.copy_(pos0)
                self.tok.copy_(tok0)
        torch.cuda.current_stream().wait_stream(s)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._out = self._eager_step()
        # capture does not execute: state is still at pos0 / tok0
        self.cache.pos_t.copy_(pos0)
        self.tok.copy_(tok0)

    @torch.no_grad()
    def decode(self, n: int):
        """``n`` greedy decode steps after :meth:`prefill`; returns the (B, n) new token ids."""
        if isinstance(n, bool) or not (isinstance(n, int) and n >= 1):
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        if self.cache.pos + n > self.max_len:
            raise ValueError(f"n={n} more tokens after {self.cache.pos} exceed max_len={self.max_len}")
        out = torch.empty((self.tok.shape[0], n), dtype=torch.long, device=self.device)
        if self.mode == "cuda-graph":
            if self.graph is None:
                self._capture()
            for i in range(n):
                self.graph.replay()
                out[:, i:i + 1].copy_(self.tok)
        else:
            with no_eager_fallback():
                for i in range(n):
                    out[:, i:i + 1].copy_(self._step())
        return out

    def generate(self, idx, max_new_tokens: int):
        """Prefill + decode: (B, T + max_new_tokens) greedy tokens (same ids as :func:`generate`)."""
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
        if not isinstance(idx, torch.Tensor) or idx.dim() != 2:
            raise ValueError(f"idx must be a (B, T) tensor of token ids, got "
                             f"{tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__}")
        if idx.shape[1] + max_new_tokens > self.max_len:
            raise ValueError(f"prompt {idx.shape[1]} + max_new_tokens {max_new_tokens} exceeds "
                             f"max_len {self.max_len}")
        first = self.prefill(idx)
        if max_new_tokens == 1:
            return torch.cat([idx, first], dim=1)
        return torch.cat([idx, first, self.decode(max_new_tokens - 1)], dim=1)


def decode_floor_ms(weight_bytes: float, mem_bw: float, kv_bytes: float = 0.0) -> float:
    """The memory-bandwidth floor of one decode step: every weight (and the KV cache) is read once.

    ``(weight_bytes + kv_bytes) / mem_bw`` seconds, in milliseconds. Batch 1 decode does ~2 FLOPs
    per weight per token, an arithmetic intensity of ~1 FLOP/byte in bf16: far below any GPU's
    ridge point, so the weight reads, not the FLOPs, set the floor.
    """
    for name, v in (("weight_bytes", weight_bytes), ("mem_bw", mem_bw), ("kv_bytes", kv_bytes)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    if mem_bw == 0:
        raise ValueError("mem_bw must be > 0 bytes/s")
    return (weight_bytes + kv_bytes) / mem_bw * 1e3


def weight_bytes(model) -> int:
    """Bytes of the model's parameters as stored (tied weights counted once)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return sum(p.numel() * p.element_size() for p in model.parameters())


def greedy_agree(a, b, logits, tol: float) -> bool:
    """Whether two greedy decodes of one prompt agree: token for token, or up to the first position
    where they differ if there the two picks' logits are within ``tol`` (a near-tie that bf16
    rounding may break either way; after it the decodes follow different prefixes and are not
    compared). ``a``, ``b``: (T,) token ids; ``logits``: (T, V), the logits that chose ``a``."""
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dim() == b.dim() == 1
            and a.shape == b.shape):
        raise ValueError("a and b must be 1-D token-id tensors of one length, got "
                         f"{getattr(a, 'shape', type(a).__name__)} and {getattr(b, 'shape', type(b).__name__)}")
    if not (isinstance(logits, torch.Tensor) and logits.dim() == 2 and logits.shape[0] == a.shape[0]):
        raise ValueError(f"logits must be (T, V) with T = {a.shape[0]}, got {getattr(logits, 'shape', logits)}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0:
        raise ValueError(f"tol must be a number >= 0, got {tol!r}")
    diff = (a != b).nonzero()
    if len(diff) == 0:
        return True
    t = int(diff[0])
    return abs(float(logits[t, a[t]]) - float(logits[t, b[t]])) <= tol
