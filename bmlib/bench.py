"""The book's one timing primitive.

:func:`measure` times a callable the same way everywhere in the book: warm up for a time budget
(so compilation, autotuning and allocator growth stay out of the numbers), then repeat until a time
budget or a repetition cap is reached, timing each call with CUDA events on a GPU (``perf_counter``
on the CPU), optionally flushing the L2 cache before each call. It returns every sample; the
summary is the median with its inter-quartile range, never a mean or a single run.

A benchmark is not a test: tests check that this function measures a known workload correctly,
and the chapters and ``python -m bmlib bench`` use it to produce numbers.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class Timing:
    """Samples of one measurement, in milliseconds, with the summary statistics the book reports."""

    samples_ms: tuple
    timer: str  # "cuda-events" or "perf_counter"
    warmup_reps: int = 0
    flush_l2: bool = False
    meta: dict = field(default_factory=dict)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def q1_ms(self) -> float:
        return _quantile(self.samples_ms, 0.25)

    @property
    def q3_ms(self) -> float:
        return _quantile(self.samples_ms, 0.75)

    @property
    def iqr_ms(self) -> float:
        return self.q3_ms - self.q1_ms

    @property
    def min_ms(self) -> float:
        return min(self.samples_ms)

    @property
    def reps(self) -> int:
        return len(self.samples_ms)

    def per_s(self, amount: float) -> float:
        """``amount`` (FLOPs, bytes, tokens) per second at the median time."""
        return amount / (self.median_ms / 1e3)

    def summary(self) -> dict:
        return {"median_ms": self.median_ms, "iqr_ms": self.iqr_ms, "min_ms": self.min_ms,
                "reps": self.reps, "timer": self.timer, "flush_l2": self.flush_l2}

    def __str__(self) -> str:
        return (f"{self.median_ms:.4g} ms median (IQR {self.q1_ms:.4g}-{self.q3_ms:.4g}, "
                f"n={self.reps}, {self.timer})")


def _quantile(xs, q: float) -> float:
    s = sorted(xs)
    if len(s) == 1:
        return s[0]
    pos = (len(s) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


_L2_BUFFERS: dict = {}


def _l2_flusher(device):
    """A function that evicts the GPU's L2 by writing a buffer twice its size."""
    import torch

    key = str(device)
    if key not in _L2_BUFFERS:
        props = torch.cuda.get_device_properties(device)
        l2 = getattr(props, "L2_cache_size", 0) or 64 * 2**20
        _L2_BUFFERS[key] = torch.empty(2 * l2 // 4, dtype=torch.int32, device=device)
    buf = _L2_BUFFERS[key]
    return lambda: buf.zero_()


def measure(
    fn: Callable[[], object],
    *,
    device=None,
    warmup_s: float = 0.2,
    budget_s: float = 1.0,
    min_reps: int = 5,
    max_reps: int = 200,
    flush_l2: bool = False,
    meta: dict | None = None,
) -> Timing:
    """Time ``fn()`` and return every sample.

    Args:
        fn: the work to time, called with no arguments.
        device: ``"cuda"``/``torch.device`` to time with CUDA events, ``"cpu"`` or ``None`` (CUDA if
            available) for ``perf_counter``.
        warmup_s: call ``fn`` for at least this long (and at least once) before timing.
        budget_s: stop repeating once this much time was spent timing (after ``min_reps``).
        min_reps, max_reps: bounds on the number of timed calls.
        flush_l2: on CUDA, overwrite the L2 cache before every timed call (outside the timed region).
    """
    import torch

    if not callable(fn):
        raise ValueError(f"fn must be callable, got {type(fn).__name__}")
    for name, v in (("warmup_s", warmup_s), ("budget_s", budget_s)):
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < float("inf")):
            raise ValueError(f"{name} must be a finite non-negative number of seconds, got {v!r}")
    if not (isinstance(min_reps, int) and min_reps >= 1):
        raise ValueError(f"min_reps must be an int >= 1, got {min_reps!r}")
    if not (isinstance(max_reps, int) and max_reps >= min_reps):
        raise ValueError(f"max_reps must be an int >= min_reps ({min_reps}), got {max_reps!r}")

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    use_cuda = device.type == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("device is CUDA but no CUDA device is available")
    if flush_l2 and not use_cuda:
        flush_l2 = False  # nothing to flush that we control on the CPU
    flush = _l2_flusher(device) if flush_l2 else None
    sync = (lambda: torch.cuda.synchronize(device)) if use_cuda else (lambda: None)

    # Warm-up by time budget.
    warm = 0
    t0 = time.perf_counter()
    while True:
        fn()
        warm += 1
        sync()
        if time.perf_counter() - t0 >= warmup_s:
            break

    samples: list[float] = []
    spent = 0.0
    while len(samples) < max_reps and (len(samples) < min_reps or spent < budget_s):
        if flush is not None:
            flush()
        if use_cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            sync()
            start.record()
            fn()
            end.record()
            end.synchronize()
            ms = start.elapsed_time(end)
        else:
            t = time.perf_counter()
            fn()
            ms = (time.perf_counter() - t) * 1e3
        samples.append(ms)
        spent += ms / 1e3
    return Timing(tuple(samples), "cuda-events" if use_cuda else "perf_counter", warm,
                  bool(flush_l2), dict(meta or {}))


# ============================================================================ sweeps as data
#
# A sweep is a declaration: named axes (shape x dtype x impl ...) and a ``setup`` function that
# turns one combination into a :class:`Case` (the callable to time plus the work it does). The
# runner times every combination with :func:`measure`, derives FLOP/s and bytes/s, and records a
# row per case. A case that runs out of memory, or that an implementation cannot run, becomes a
# row with ``status="skipped"`` and the reason; an unexpected error becomes ``status="error"``.
# Nothing aborts the sweep.

import itertools
import re

STATUSES = ("ok", "skipped", "error")


class Skip(Exception):
    """Raise from a sweep's ``setup`` (or the case) to record the case as skipped, with a reason."""


@dataclass(frozen=True)
class Case:
    """One thing to time: ``fn()`` doing ``flops`` floating-point operations and moving ``bytes``."""

    fn: Callable[[], object]
    flops: float = 0.0
    bytes: float = 0.0
    flush_l2: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if not callable(self.fn):
            raise TypeError(f"fn must be callable, got {type(self.fn).__name__}")
        for name in ("flops", "bytes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")


@dataclass(frozen=True)
class Sweep:
    """A benchmark declared as data: ``axes`` maps a name to its values; ``setup(**combo) -> Case``."""

    name: str
    axes: dict
    setup: Callable[..., Case]

    def __post_init__(self):
        if not (isinstance(self.name, str) and self.name):
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.axes, dict) or not self.axes:
            raise ValueError("axes must be a non-empty dict of axis name -> list of values")
        for k, vals in self.axes.items():
            if not isinstance(k, str) or not isinstance(vals, (list, tuple)) or len(vals) == 0:
                raise ValueError(f"axes[{k!r}] must be a non-empty list of values, got {vals!r}")
        if not callable(self.setup):
            raise TypeError(f"setup must be callable, got {type(self.setup).__name__}")

    def cases(self) -> list[dict]:
        """Every combination of the axes, in declaration order."""
        keys = list(self.axes)
        return [dict(zip(keys, combo)) for combo in itertools.product(*self.axes.values())]

    def __len__(self) -> int:
        n = 1
        for v in self.axes.values():
            n *= len(v)
        return n


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory error (``torch.cuda.OutOfMemoryError`` or an allocator
    ``RuntimeError`` saying "out of memory")."""
    import torch

    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, (RuntimeError, MemoryError)) and (
        "out of memory" in str(exc).lower() or isinstance(exc, MemoryError))


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _fmt_case(combo: dict) -> dict:
    out = {}
    for k, v in combo.items():
        out[k] = list(v) if isinstance(v, tuple) else v
    return out


def run_case(name: str, combo: dict, setup: Callable[..., Case], *, device=None, **measure_kw) -> dict:
    """Set up and time one case; always returns a row (``status`` ok / skipped / error)."""
    row = {"bench": name, **_fmt_case(combo)}
    try:
        case = setup(**combo)
        if not isinstance(case, Case):
            raise TypeError(f"setup must return a Case, got {type(case).__name__}")
        t = measure(case.fn, device=device, flush_l2=case.flush_l2, **measure_kw)
    except Skip as e:
        row.update(status="skipped", reason=str(e) or "skipped")
        return row
    except BaseException as e:  # noqa: BLE001 - a sweep records, it does not crash
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        if is_oom(e):
            row.update(status="skipped", reason="out of memory")
        elif isinstance(e, NotImplementedError) or "no available kernel" in str(e).lower():
            row.update(status="skipped", reason=f"unsupported: {str(e).strip().splitlines()[0][:160]}")
        else:
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            row.update(status="error", reason=f"{type(e).__name__}: {first}")
        _free_memory()
        return row
    row.update(status="ok", **t.summary(), **case.extra)
    sec = t.median_ms / 1e3
    if case.flops:
        row["flops"] = case.flops
        row["tflops"] = case.flops / sec / 1e12
    if case.bytes:
        row["bytes"] = case.bytes
        row["tbps"] = case.bytes / sec / 1e12
        row["gbps"] = case.bytes / sec / 1e9
    if case.flops and case.bytes:
        row["intensity"] = case.flops / case.bytes  # FLOP per byte
    if case.extra.get("tokens"):
        row["tokens_per_s"] = case.extra["tokens"] / sec
    if case.flops and case.extra.get("peak_flops"):
        row["mfu"] = case.flops / sec / case.extra["peak_flops"]
    del case
    return row


def run_sweep(sweep: Sweep, *, device=None, progress: bool = True, prov: dict | None = None,
              **measure_kw) -> list[dict]:
    """Time every case of ``sweep``; one row per case with the provenance's device and versions."""
    if not isinstance(sweep, Sweep):
        raise TypeError(f"sweep must be a Sweep, got {type(sweep).__name__}")
    if prov is None:
        from .env import provenance

        prov = provenance()
    stamp = {k: prov[k] for k in ("device", "torch", "cuda", "scale", "git") if k in prov}
    combos = sweep.cases()
    it = combos
    if progress:
        from tqdm import tqdm

        it = tqdm(combos, desc=sweep.name, unit="case", leave=False, mininterval=2.0)
    rows = []
    for combo in it:
        row = run_case(sweep.name, combo, sweep.setup, device=device, **measure_kw)
        row.update(stamp)
        rows.append(row)
    return rows


def ok_rows(rows: list[dict], **where) -> list[dict]:
    """The rows with ``status == "ok"`` whose fields equal every ``where`` value."""
    return [r for r in rows if r.get("status") == "ok" and all(r.get(k) == v for k, v in where.items())]


def best(rows: list[dict], key: str, **where) -> dict | None:
    """The ok row with the largest ``key`` among those matching ``where`` (None if there is none)."""
    cand = [r for r in ok_rows(rows, **where) if key in r]
    return max(cand, key=lambda r: r[key]) if cand else None


def save_rows(rows: list[dict], path) -> tuple:
    """Write ``rows`` as ``<path>.json`` and ``<path>.csv`` (atomically); returns both paths."""
    import csv
    import io as _io
    from pathlib import Path

    from .io import atomic_write, write_json

    if not (isinstance(rows, list) and all(isinstance(r, dict) for r in rows)):
        raise ValueError("rows must be a list of dicts")
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".json", ".csv") else path
    jp, cp = stem.with_suffix(".json"), stem.with_suffix(".csv")
    write_json(jp, rows)
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for r in rows:
        w.writerow({k: (str(v) if isinstance(v, (list, dict)) else v) for k, v in r.items()})
    with atomic_write(cp, "w") as f:
        f.write(buf.getvalue())
    return jp, cp


def format_table(rows: list[dict], cols: list[str] | None = None, max_rows: int = 200) -> str:
    """A plain-text table of ``rows`` (numbers to 4 significant digits)."""
    if not rows:
        return "(no rows)"
    if cols is None:
        cols = []
        for r in rows:
            cols += [k for k in r if k not in cols]
    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)
    body = [[cell(r.get(c, "")) for c in cols] for r in rows[:max_rows]]
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(b, widths)) for b in body]
    if len(rows) > max_rows:
        lines.append(f"... {len(rows) - max_rows} more rows")
    return "\n".join(lines)


def slug(name: str) -> str:
    """A file-name slug for a device: known GPUs by their datasheet name (``"NVIDIA H100 80GB
    HBM3"`` -> ``"h100-sxm"``), CPUs as ``"cpu"``, anything else lower-cased and dashed."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name must be a non-empty device name, got {name!r}")
    if name.strip().lower().startswith("cpu"):
        return "cpu"
    from .hw import lookup

    try:
        base = lookup(name).name
    except ValueError:
        base = name
    base = re.sub(r"^nvidia\s+", "", base.strip(), flags=re.I)
    base = re.sub(r"\b\d+\s*gb\b", "", base, flags=re.I)
    return re.sub(r"[^a-z0-9]+", "-", base.lower()).strip("-") or "device"


# ============================================================================ standard kernels
_TORCH_DTYPES = {"fp32": "float32", "tf32": "float32", "bf16": "bfloat16", "fp16": "float16",
                 "fp8": "float8_e4m3fn"}


def _tdtype(name: str):
    import torch

    if name not in _TORCH_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_TORCH_DTYPES)}, got {name!r}")
    return getattr(torch, _TORCH_DTYPES[name])


def gemm_case(m: int, n: int, k: int, dtype: str = "bf16", device=None, flush_l2: bool = True) -> Case:
    """``C = A @ B`` with ``A (m, k)``, ``B (k, n)``: ``2 m n k`` FLOPs.

    ``tf32`` is fp32 storage with TF32 tensor cores enabled for this call only; ``fp8`` uses
    ``torch._scaled_mm`` (e4m3 inputs, per-tensor scales, bf16 output; needs compute capability
    >= 8.9, e.g. H100). ``flush_l2`` empties L2 before each call so B is read from HBM, as in a real
    model where weights do not sit in cache.
    """
    import torch

    for nm, v in (("m", m), ("n", n), ("k", k)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{nm} must be a positive int, got {v!r}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dt = _tdtype(dtype)
    if dtype == "fp8":
        if dev.type != "cuda" or torch.cuda.get_device_capability(dev) < (8, 9):
            raise Skip("fp8 GEMM needs a CUDA GPU with compute capability >= 8.9")
        if m % 16 or n % 16 or k % 16:
            raise Skip("fp8 GEMM needs m, n, k divisible by 16")
        a = torch.randn(m, k, device=dev).to(dt)
        b = torch.randn(n, k, device=dev).to(dt).t()  # column-major B, as _scaled_mm requires
        one = torch.ones((), device=dev)
        fn = lambda: torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
        elem = 1
    else:
        if dev.type == "cpu" and dtype == "fp16":
            raise Skip("fp16 GEMM on the CPU is not a meaningful benchmark")
        if dev.type == "cpu" and dtype == "tf32":
            raise Skip("tf32 is a GPU tensor-core format")
        a = torch.randn(m, k, device=dev, dtype=dt)
        b = torch.randn(k, n, device=dev, dtype=dt)
        elem = a.element_size()
        if dtype == "tf32" or (dtype == "fp32" and dev.type == "cuda"):
            allow = dtype == "tf32"  # fp32 on CUDA means true fp32: tensor-core tf32 switched off

            def fn():
                old = torch.backends.cuda.matmul.allow_tf32
                torch.backends.cuda.matmul.allow_tf32 = allow
                try:
                    return a @ b
                finally:
                    torch.backends.cuda.matmul.allow_tf32 = old
        else:
            fn = lambda: a @ b
    out_elem = 2 if dtype == "fp8" else elem
    return Case(fn, flops=2.0 * m * n * k, bytes=float(elem * (m * k + k * n) + out_elem * m * n),
                flush_l2=flush_l2 and dev.type == "cuda")


MEMORY_KERNELS = ("copy", "read", "write")


def memory_case(kernel: str, nbytes: int, device=None) -> Case:
    """Streaming kernels over an fp32 buffer of ``nbytes``: ``copy`` (read + write: 2x bytes),
    ``read`` (a sum: 1x), ``write`` (fill: 1x). Buffers far larger than L2 measure DRAM/HBM."""
    import torch

    if kernel not in MEMORY_KERNELS:
        raise ValueError(f"kernel must be one of {MEMORY_KERNELS}, got {kernel!r}")
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 4:
        raise ValueError(f"nbytes must be an int >= 4, got {nbytes!r}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    n = nbytes // 4
    src = torch.ones(n, device=dev)
    if kernel == "copy":
        dst = torch.empty_like(src)
        return Case(lambda: dst.copy_(src), bytes=2.0 * n * 4)
    if kernel == "read":
        return Case(lambda: src.sum(), flops=float(n), bytes=1.0 * n * 4)  # n adds
    return Case(lambda: src.fill_(1.0), bytes=1.0 * n * 4)


def attention_flops(b: int, nh: int, tq: int, tk: int, hs: int, causal: bool, backward: bool) -> float:
    """Matmul FLOPs of attention: ``4 b nh tq tk hs`` forward (q kᵀ and att v), halved when causal
    (square case), x3.5 for forward + backward (backward = 2.5 x forward, the FlashAttention
    convention: five matmuls, one of them a recomputation)."""
    f = 4.0 * b * nh * tq * tk * hs
    if causal:
        f /= 2
    return f * (3.5 if backward else 1.0)


def attention_case(impl: str, seq: int, head_dim: int, causal: bool, backward: bool,
                   dtype: str = "bf16", batch: int | None = None, n_head: int | None = None,
                   device=None, tokens: int = 16384, model_dim: int = 2048) -> Case:
    """Self-attention through :func:`bmlib.attention.attention` with ``impl`` at one shape.

    Batch and head count default so that each case does comparable work: ``batch = tokens / seq``
    (at least 1) and ``n_head = model_dim / head_dim``.
    """
    import torch

    from .attention import IMPLS, attention

    if impl not in IMPLS + ("auto",):
        raise ValueError(f"impl must be one of {IMPLS + ('auto',)}, got {impl!r}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if impl == "auto":
        from . import attention as _att

        if not hasattr(_att, "choose_impl"):
            raise Skip("bmlib.attention.choose_impl is not available in this version")
    b = batch or max(1, tokens // seq)
    nh = n_head or max(1, model_dim // head_dim)
    dt = _tdtype(dtype)
    q, k, v = (torch.randn(b, nh, seq, head_dim, device=dev, dtype=dt, requires_grad=backward)
               for _ in range(3))
    if backward:
        go = torch.randn(b, nh, seq, head_dim, device=dev, dtype=dt)

    def fwd():
        return attention(q, k, v, causal=causal, impl=impl)

    if backward:
        def fn():
            out = fwd()
            q_, k_, v_ = torch.autograd.grad(out, (q, k, v), go)
            return q_
    else:
        def fn():
            with torch.no_grad():
                return fwd()
    fn()  # fails here (-> skipped) if the backend cannot run these inputs
    elem = torch.tensor([], dtype=dt).element_size()
    io_bytes = 4.0 * b * nh * seq * head_dim * elem * (2.5 if backward else 1.0)
    return Case(fn, flops=attention_flops(b, nh, seq, seq, head_dim, causal, backward),
                bytes=io_bytes, extra={"batch": b, "n_head": nh})


def roofline(intensity, peak_flops: float, mem_bw: float):
    """Attainable FLOP/s at arithmetic ``intensity`` (FLOP/byte): ``min(peak, intensity x bw)``."""
    import numpy as np

    if not (peak_flops > 0 and mem_bw > 0):
        raise ValueError(f"peak_flops and mem_bw must be > 0, got {peak_flops!r}, {mem_bw!r}")
    x = np.asarray(intensity, dtype=float)
    if (x < 0).any():
        raise ValueError("intensity must be >= 0 FLOP/byte")
    return np.minimum(peak_flops, x * mem_bw)


# ============================================================================ standard sweeps
def gemm_sweep(shapes, dtypes, device=None, flush_l2: bool = True) -> Sweep:
    """GEMM throughput over ``shapes`` ((m, n, k) tuples) x ``dtypes`` (see :func:`gemm_case`)."""
    shapes = [tuple(int(x) for x in s) for s in shapes]
    if any(len(s) != 3 for s in shapes):
        raise ValueError(f"shapes must be (m, n, k) triples, got {shapes!r}")
    return Sweep("gemm", {"shape": shapes, "dtype": list(dtypes)},
                 lambda shape, dtype: gemm_case(*shape, dtype=dtype, device=device, flush_l2=flush_l2))


def gemm_search_shapes(sizes, aligned_only: bool = True) -> list[tuple]:
    """Every (m, n, k) with each dimension from ``sizes``: the "maximum achievable matmul FLOPS"
    search (the peak a library reaches depends on the shape, so search for it)."""
    sizes = sorted({int(s) for s in sizes})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"sizes must be positive ints, got {sizes!r}")
    return [(m, n, k) for m in sizes for n in sizes for k in sizes
            if not aligned_only or (m % 16 == 0 and n % 16 == 0 and k % 16 == 0)]


def memory_sweep(kernels, sizes_bytes, device=None) -> Sweep:
    return Sweep("memory", {"kernel": list(kernels), "nbytes": [int(s) for s in sizes_bytes]},
                 lambda kernel, nbytes: memory_case(kernel, nbytes, device=device))


def attention_sweep(impls, seqs, head_dims, causal=(False, True), backward=(False, True),
                    dtype: str = "bf16", device=None, tokens: int = 16384, model_dim: int = 2048) -> Sweep:
    return Sweep("attention", {"impl": list(impls), "seq": list(seqs), "head_dim": list(head_dims),
                               "causal": list(causal), "backward": list(backward)},
                 lambda impl, seq, head_dim, causal, backward: attention_case(
                     impl, seq, head_dim, causal, backward, dtype=dtype, device=device,
                     tokens=tokens, model_dim=model_dim))


ATTN_SHAPE_KEYS = ("seq", "head_dim", "causal", "backward")


def attention_auto_ratios(rows: list[dict], auto: str = "auto") -> list[dict]:
    """Per attention shape: the automatic choice's throughput over the best other implementation's.

    Returns one dict per shape where both exist: the shape, ``best_impl``, ``best_tflops``,
    ``auto_tflops`` and ``ratio`` (1.0 = the automatic choice is as fast as the best).
    """
    shapes = {}
    for r in ok_rows([r for r in rows if r.get("bench") == "attention"]):
        key = tuple(r[k] for k in ATTN_SHAPE_KEYS)
        shapes.setdefault(key, []).append(r)
    out = []
    for key, rs in shapes.items():
        a = [r for r in rs if r["impl"] == auto]
        others = [r for r in rs if r["impl"] not in (auto,)]
        if not a or not others:
            continue
        b = max(others, key=lambda r: r["tflops"])
        out.append({**dict(zip(ATTN_SHAPE_KEYS, key)), "best_impl": b["impl"], "best_tflops": b["tflops"],
                    "auto_tflops": a[0]["tflops"], "ratio": min(1.0, a[0]["tflops"] / b["tflops"])})
    return out


def headline_figures(rows: list[dict]) -> dict:
    """The bench-<gpu> headline numbers the rows support (missing ones are left out)."""
    figs = {}
    for dt in ("bf16", "fp8", "fp16", "tf32", "fp32"):
        b = best([r for r in rows if r.get("bench") == "gemm"], "tflops", dtype=dt)
        if b is not None:
            figs[f"gemm_{dt}_best_tflops"] = b["tflops"]
    for k in MEMORY_KERNELS:
        b = best([r for r in rows if r.get("bench") == "memory"], "tbps", kernel=k)
        if b is not None:
            figs[f"hbm_{k}_tbps"] = b["tbps"]
    ratios = attention_auto_ratios(rows)
    if ratios:
        figs["attention_auto_vs_best_backend_min_ratio"] = min(r["ratio"] for r in ratios)
    return figs


# ============================================================================ end-to-end cases
def train_step_case(preset: str, batch_size: int, seq_len: int, dtype: str = "bf16", device=None,
                    seed: int = 0) -> Case:
    """One GPT training step (forward, backward, AdamW update) on random tokens.

    ``dtype="bf16"`` uses bf16 autocast on CUDA (fp32 master weights); FLOPs are
    ``model.flops_per_token(seq_len) x tokens`` (6N + attention), so MFU = achieved / peak.
    """
    import torch

    from .hw import current
    from .models.gpt import GPT, GPTConfig

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dtype not in ("bf16", "fp32"):
        raise ValueError(f"dtype must be 'bf16' or 'fp32', got {dtype!r}")
    torch.manual_seed(seed)
    cfg = GPTConfig.preset(preset)
    if seq_len > cfg.block_size:
        raise ValueError(f"seq_len must be <= block_size {cfg.block_size}, got {seq_len}")
    model = GPT(cfg).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=dev.type == "cuda")
    x = torch.randint(0, cfg.vocab_size, (batch_size, seq_len), device=dev)
    y = torch.randint(0, cfg.vocab_size, (batch_size, seq_len), device=dev)
    use_amp = dtype == "bf16" and dev.type == "cuda"

    def fn():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
            _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    tokens = batch_size * seq_len
    peaks = current()
    peak_dtype = "bf16" if use_amp else "fp32"
    return Case(fn, flops=model.flops_per_token(seq_len) * tokens,
                extra={"tokens": tokens, "peak_flops": peaks.peak_flops(peak_dtype),
                       "peak": f"{peaks.name} {peak_dtype}"})


def decode_case(preset: str, batch_size: int, prompt_len: int, new_tokens: int, mode: str = "eager",
                device=None, seed: int = 0) -> Case:
    """Greedy generation with :class:`bmlib.generate.Decoder` (prefill + ``new_tokens`` steps),
    randomly initialised weights (speed does not depend on them); bf16 on CUDA, fp32 on the CPU."""
    import torch

    from .generate import Decoder
    from .models.gpt import GPT, GPTConfig

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(seed)
    cfg = GPTConfig.preset(preset)
    model = GPT(cfg).to(dev).eval()
    if dev.type == "cuda":
        model = model.to(torch.bfloat16)
    dec = Decoder(model, batch_size, prompt_len + new_tokens, mode=mode)
    idx = torch.randint(0, cfg.vocab_size, (batch_size, prompt_len), device=dev)

    def fn():
        dec.prefill(idx)
        return dec.decode(new_tokens)

    return Case(fn, extra={"tokens": batch_size * new_tokens})
