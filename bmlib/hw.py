"""Hardware peaks as data, looked up by exact device name.

Datasheet numbers (dense, no sparsity) for the GPUs the book measures on. MFU and "fraction of
peak" everywhere in the book divide by these, and every table states which entry it used
(:attr:`Peaks.label`). :func:`lookup` matches a name exactly (case and an ``NVIDIA`` prefix aside)
against each entry's names (its key, its datasheet name and the name ``torch.cuda.get_device_name``
reports), uses the memory size where names collide, and raises ``ValueError`` on an unknown or
ambiguous name: a device the table does not know gets no peak rather than a neighbour's.

CPUs have no entry: a CPU's peak depends on its model, core count, clock and vector units, and
no single number is one a reader can trust. On a CPU, :func:`current` returns ``None``; report
MFU there only against a peak measured in the same run (:func:`measured`, e.g. the best GEMM of
:func:`bmlib.benchmarks.measured_peaks`), labelled "measured peak", or not at all.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

DTYPES = ("fp64", "fp32", "tf32", "bf16", "fp16", "fp8", "int8")
KINDS = ("datasheet", "measured", "custom")


def _norm(name: str) -> str:
    n = " ".join(name.strip().casefold().split())
    return n[len("nvidia "):] if n.startswith("nvidia ") else n


@dataclass(frozen=True)
class Peaks:
    """Peak dense throughput per dtype (FLOP/s) and memory bandwidth (bytes/s) of one device.

    ``kind`` says where the numbers come from: ``"datasheet"`` (the table below), ``"measured"``
    (a benchmark in this run) or ``"custom"`` (numbers the caller typed in). ``names`` are the
    extra exact names :func:`lookup` accepts for a table entry.
    """

    name: str
    flops: dict = field(default_factory=dict)
    mem_bw: float = 0.0
    l2_bytes: int = 0
    memory_bytes: int = 0
    source: str = ""
    kind: str = "datasheet"
    key: str = ""
    names: tuple = ()

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.flops, dict):
            raise TypeError(f"flops must be a dict of dtype -> FLOP/s, got {type(self.flops).__name__}")
        for k, v in self.flops.items():
            if k not in DTYPES:
                raise ValueError(f"flops keys must be in {DTYPES}, got {k!r}")
            if isinstance(v, bool) or not (isinstance(v, (int, float)) and 0 < v < float("inf")):
                raise ValueError(f"flops[{k!r}] must be a positive number, got {v!r}")
        if isinstance(self.mem_bw, bool) or not (isinstance(self.mem_bw, (int, float))
                                                 and 0 < self.mem_bw < float("inf")):
            raise ValueError(f"mem_bw must be a positive number of bytes/s, got {self.mem_bw!r}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if not self.key:
            object.__setattr__(self, "key", re.sub(r"[^a-z0-9]+", "-", _norm(self.name)).strip("-"))

    @property
    def label(self) -> str:
        """How a table names this peak: ``"NVIDIA H100 SXM (datasheet peak)"``."""
        return f"{self.name} ({self.kind} peak)"

    def peak_flops(self, dtype: str) -> float:
        """Peak FLOP/s for ``dtype`` (one of ``DTYPES``); raises if this device has no entry."""
        dtype = _dtype_key(dtype)
        if dtype not in self.flops:
            raise ValueError(f"{self.name} has no peak for dtype={dtype!r}; known: {sorted(self.flops)}")
        return float(self.flops[dtype])

    def ridge_point(self, dtype: str = "bf16") -> float:
        """Arithmetic intensity (FLOP/byte) where the roofline turns from memory- to compute-bound."""
        return self.peak_flops(dtype) / self.mem_bw


T = 1e12
_H100_SXM = {"fp64": 67 * T, "fp32": 66.9 * T, "tf32": 494.7 * T, "bf16": 989.4 * T, "fp16": 989.4 * T,
             "fp8": 1978.9 * T, "int8": 1978.9 * T}
_A100 = {"fp64": 19.5 * T, "fp32": 19.5 * T, "tf32": 156 * T, "bf16": 312 * T, "fp16": 312 * T, "int8": 624 * T}
_A100_SRC = "NVIDIA A100 Tensor Core GPU datasheet (dense)"

#: Known devices by key. ``names`` holds the exact names ``torch.cuda.get_device_name()`` reports
#: and the short names the book uses; "A100 SXM" and "A100 PCIe" name two memory sizes each.
KNOWN: dict[str, Peaks] = {p.key: p for p in (
    Peaks("NVIDIA H100 SXM", _H100_SXM, mem_bw=3.35e12, l2_bytes=50 * 2**20, memory_bytes=80 * 10**9,
          source="NVIDIA H100 Tensor Core GPU datasheet (SXM5, dense)", key="h100-sxm",
          names=("NVIDIA H100 80GB HBM3", "H100 SXM5")),
    Peaks("NVIDIA H100 PCIe", {"fp64": 51 * T, "fp32": 51.2 * T, "tf32": 378 * T, "bf16": 756 * T,
                               "fp16": 756 * T, "fp8": 1513 * T, "int8": 1513 * T},
          mem_bw=2.0e12, l2_bytes=50 * 2**20, memory_bytes=80 * 10**9,
          source="NVIDIA H100 Tensor Core GPU datasheet (PCIe, dense)", key="h100-pcie"),
    Peaks("NVIDIA H200", _H100_SXM, mem_bw=4.8e12, l2_bytes=50 * 2**20, memory_bytes=141 * 10**9,
          source="NVIDIA H200 datasheet (SXM, dense)", key="h200", names=("H200 SXM",)),
    Peaks("NVIDIA A100 SXM 80GB", _A100, mem_bw=2.039e12, l2_bytes=40 * 2**20, memory_bytes=80 * 10**9,
          source=_A100_SRC + ", SXM 80GB", key="a100-sxm-80gb", names=("NVIDIA A100-SXM4-80GB", "A100 SXM")),
    Peaks("NVIDIA A100 SXM 40GB", _A100, mem_bw=1.555e12, l2_bytes=40 * 2**20, memory_bytes=40 * 10**9,
          source=_A100_SRC + ", SXM 40GB", key="a100-sxm-40gb", names=("NVIDIA A100-SXM4-40GB", "A100 SXM")),
    Peaks("NVIDIA A100 PCIe 80GB", _A100, mem_bw=1.935e12, l2_bytes=40 * 2**20, memory_bytes=80 * 10**9,
          source=_A100_SRC + ", PCIe 80GB", key="a100-pcie-80gb", names=("NVIDIA A100 80GB PCIe", "A100 PCIe")),
    Peaks("NVIDIA A100 PCIe 40GB", _A100, mem_bw=1.555e12, l2_bytes=40 * 2**20, memory_bytes=40 * 10**9,
          source=_A100_SRC + ", PCIe 40GB", key="a100-pcie-40gb", names=("NVIDIA A100-PCIE-40GB", "A100 PCIe")),
)}


def _dtype_key(dtype) -> str:
    s = str(dtype).replace("torch.", "").lower()
    s = {"float32": "fp32", "float": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16",
         "float64": "fp64", "double": "fp64", "float8_e4m3fn": "fp8", "float8_e5m2": "fp8"}.get(s, s)
    if s not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES} or a torch float dtype, got {dtype!r}")
    return s


def _check_name(name) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name must be a non-empty device name, got {name!r}")
    return _norm(name)


def match(name: str, memory_bytes: int | None = None, *, known: dict | None = None) -> Peaks | None:
    """The table entry called exactly ``name`` (its key, datasheet name or one of its ``names``;
    case, spacing and an ``NVIDIA`` prefix aside), or ``None`` if no entry has that name.

    Where several entries share the name (``"A100 SXM"``: 40GB and 80GB), ``memory_bytes`` picks
    the one whose memory is within 15 %; without it, or if it fits none or several, ``ValueError``.
    """
    n = _check_name(name)
    table = KNOWN if known is None else known
    hits = [p for p in table.values() if n in {_norm(x) for x in (p.key, p.name, *p.names)}]
    if memory_bytes is not None:
        if isinstance(memory_bytes, bool) or not isinstance(memory_bytes, int) or memory_bytes <= 0:
            raise ValueError(f"memory_bytes must be a positive int, got {memory_bytes!r}")
    if len(hits) <= 1:
        return hits[0] if hits else None
    if memory_bytes is None:
        raise ValueError(f"device name {name!r} is ambiguous: it names {[p.name for p in hits]}; "
                         "pass memory_bytes (torch.cuda.get_device_properties(0).total_memory)")
    fit = [p for p in hits if abs(p.memory_bytes - memory_bytes) <= 0.15 * p.memory_bytes]
    if len(fit) != 1:
        raise ValueError(f"device name {name!r} with memory_bytes={memory_bytes} matches "
                         f"{[p.name for p in fit] or 'none'} of {[p.name for p in hits]}")
    return fit[0]


def lookup(name: str, memory_bytes: int | None = None) -> Peaks:
    """The datasheet peaks of the device called exactly ``name`` (see :func:`match`).

    >>> lookup("NVIDIA H100 80GB HBM3").peak_flops("bf16") / 1e12
    989.4

    Raises ``ValueError`` for an unknown name (``"NVIDIA H100 NVL"``, ``"NVIDIA GH200 480GB"``: not
    in the table, so no neighbour's numbers), an ambiguous one, or a CPU.
    """
    n = _check_name(name)
    p = match(name, memory_bytes)
    if p is not None:
        return p
    if n.startswith("cpu"):
        raise ValueError(f"unknown device name {name!r}: the table has no CPU entry (a CPU's peak "
                         "depends on its model and clock). Measure one in the same run with "
                         "bmlib.benchmarks.measured_peaks(), or report no MFU")
    raise ValueError(
        f"unknown device name {name!r}; known: {sorted({x for p in KNOWN.values() for x in (p.name, *p.names)})}. "
        "Pass your own numbers with bmlib.hw.custom(name, flops={...}, mem_bw=...)")


def custom(name: str, flops: dict, mem_bw: float, **kw) -> Peaks:
    """Peaks for a device the table does not know (``kind="custom"``), validated like the table."""
    if not isinstance(flops, dict):
        raise TypeError(f"flops must be a dict of dtype -> FLOP/s, got {type(flops).__name__}")
    kw.setdefault("kind", "custom")
    return Peaks(name, {_dtype_key(k): v for k, v in flops.items()}, mem_bw, **kw)


def measured(name: str, flops: dict, mem_bw: float, source: str) -> Peaks:
    """Peaks measured in this run (``kind="measured"``; :attr:`Peaks.label` says "measured peak"):
    ``flops`` the best GEMM throughput per dtype, ``mem_bw`` the best streaming bandwidth,
    ``source`` what was measured (e.g. ``"best of 6 fp32 GEMMs, bmlib.benchmarks"``)."""
    if not isinstance(source, str) or not source.strip():
        raise ValueError("source must say what was measured, got an empty string")
    return custom(name, flops, mem_bw, source=source, kind="measured")


def current() -> Peaks | None:
    """Datasheet peaks of GPU 0 (exact name and memory size), or ``None`` without a GPU.

    Raises ``ValueError`` on a GPU the table does not know. ``None`` on a CPU means "no peak a
    reader can trust": measure one (:func:`bmlib.benchmarks.measured_peaks`) or report no MFU.
    """
    import torch

    if not torch.cuda.is_available():
        return None
    return lookup(torch.cuda.get_device_name(0), int(torch.cuda.get_device_properties(0).total_memory))


def mfu(flops_per_s: float, peaks: Peaks, dtype: str = "bf16") -> float:
    """Model FLOPs utilisation: achieved FLOP/s over the peak for ``dtype``."""
    if isinstance(flops_per_s, bool) or not isinstance(flops_per_s, (int, float)) or not flops_per_s >= 0:
        raise ValueError(f"flops_per_s must be a number >= 0, got {flops_per_s!r}")
    if not isinstance(peaks, Peaks):
        raise TypeError(f"peaks must be a bmlib.hw.Peaks, got {type(peaks).__name__}")
    return flops_per_s / peaks.peak_flops(dtype)
