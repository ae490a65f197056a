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

    def __post_init__(self):
        s = self.samples_ms
        if not isinstance(s, tuple) or not s or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x < float("inf") for x in s):
            raise ValueError(f"samples_ms must be a non-empty tuple of finite times >= 0 ms, got {s!r}")

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
    """The ``q`` quantile with linear interpolation between order statistics (NumPy's default
    ``method="linear"``, Hyndman and Fan's type 7)."""
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
    if not callable(fn):
        raise ValueError(f"fn must be callable, got {type(fn).__name__}")
    for name, v in (("warmup_s", warmup_s), ("budget_s", budget_s)):
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < float("inf")):
            raise ValueError(f"{name} must be a finite non-negative number of seconds, got {v!r}")
    if not (isinstance(min_reps, int) and min_reps >= 1):
        raise ValueError(f"min_reps must be an int >= 1, got {min_reps!r}")
    if not (isinstance(max_reps, int) and max_reps >= min_reps):
        raise ValueError(f"max_reps must be an int >= min_reps ({min_reps}), got {max_reps!r}")
    import torch  # after the checks: a bad argument fails without loading torch

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
