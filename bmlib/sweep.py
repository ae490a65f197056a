"""Sweeps as data: declare axes and a ``setup``, time every combination, keep every row.

A sweep is a declaration: named axes (shape x dtype x impl ...) and a ``setup`` function that
turns one combination into a :class:`Case` (the callable to time plus the work it does). The
runner times every combination with :func:`bmlib.bench.measure`, derives FLOP/s and bytes/s, and
records a row per case. A case that runs out of memory, or that an implementation cannot run,
becomes a row with ``status="skipped"`` and the reason; an unexpected error becomes
``status="error"`` with its type and message. Nothing aborts the sweep. Rows are written with
:func:`save_rows` and shown with :func:`format_table`.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Callable

from .bench import measure

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
    from .hw import match

    peaks = match(name)
    if peaks is not None:
        return peaks.key
    base = name
    base = re.sub(r"^nvidia\s+", "", base.strip(), flags=re.I)
    base = re.sub(r"\b\d+\s*gb\b", "", base, flags=re.I)
    return re.sub(r"[^a-z0-9]+", "-", base.lower()).strip("-") or "device"
