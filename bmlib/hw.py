"""Hardware peaks as data.

Datasheet numbers (dense, no sparsity) for the chips the book measures on. MFU and "fraction of
peak" everywhere in the book divide by these, and every table states which entry it used. Measured
ceilings (the best GEMM, the best copy) belong in ``results/bench-<gpu>.json``, not here.
"""
from __future__ import annotations

from dataclasses import dataclass, field

DTYPES = ("fp64", "fp32", "tf32", "bf16", "fp16", "fp8", "int8")


@dataclass(frozen=True)
class Peaks:
    """Peak dense throughput per dtype (FLOP/s) and memory bandwidth (bytes/s) of one device."""

    name: str
    flops: dict = field(default_factory=dict)
    mem_bw: float = 0.0
    l2_bytes: int = 0
    memory_bytes: int = 0
    source: str = ""

    def __post_init__(self):
        if not self.name:
            raise ValueError("name must be a non-empty string")
        for k, v in self.flops.items():
            if k not in DTYPES:
                raise ValueError(f"flops keys must be in {DTYPES}, got {k!r}")
            if not (isinstance(v, (int, float)) and v > 0):
                raise ValueError(f"flops[{k!r}] must be a positive number, got {v!r}")
        if not (isinstance(self.mem_bw, (int, float)) and self.mem_bw > 0):
            raise ValueError(f"mem_bw must be a positive number of bytes/s, got {self.mem_bw!r}")

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
#: Known devices. Keys are lower-case substrings matched against ``torch.cuda.get_device_name()``.
KNOWN: dict[str, Peaks] = {
    "h100 sxm": Peaks(
        "NVIDIA H100 SXM", {"fp64": 67 * T, "fp32": 66.9 * T, "tf32": 494.7 * T, "bf16": 989.4 * T,
                            "fp16": 989.4 * T, "fp8": 1978.9 * T, "int8": 1978.9 * T},
        mem_bw=3.35e12, l2_bytes=50 * 2**20, memory_bytes=80 * 10**9,
        source="NVIDIA H100 Tensor Core GPU datasheet (SXM5, dense)"),
    "h100 pcie": Peaks(
        "NVIDIA H100 PCIe", {"fp64": 51 * T, "fp32": 51.2 * T, "tf32": 378 * T, "bf16": 756 * T,
                             "fp16": 756 * T, "fp8": 1513 * T, "int8": 1513 * T},
        mem_bw=2.0e12, l2_bytes=50 * 2**20, memory_bytes=80 * 10**9,
        source="NVIDIA H100 Tensor Core GPU datasheet (PCIe, dense)"),
    "h200": Peaks(
        "NVIDIA H200", {"fp64": 67 * T, "fp32": 66.9 * T, "tf32": 494.7 * T, "bf16": 989.4 * T,
                        "fp16": 989.4 * T, "fp8": 1978.9 * T, "int8": 1978.9 * T},
        mem_bw=4.8e12, l2_bytes=50 * 2**20, memory_bytes=141 * 10**9,
        source="NVIDIA H200 datasheet (SXM, dense)"),
    "a100": Peaks(
        "NVIDIA A100 SXM 80GB", {"fp64": 19.5 * T, "fp32": 19.5 * T, "tf32": 156 * T, "bf16": 312 * T,
                                 "fp16": 312 * T, "int8": 624 * T},
        mem_bw=2.039e12, l2_bytes=40 * 2**20, memory_bytes=80 * 10**9,
        source="NVIDIA A100 datasheet (SXM 80GB, dense)"),
    "cpu": Peaks(
        "Generic CPU (2 cores, AVX2 FMA, 3 GHz)", {"fp32": 2 * 3e9 * 32, "bf16": 2 * 3e9 * 32},
        mem_bw=20e9, l2_bytes=2 * 2**20, memory_bytes=24 * 2**30,
        source="order-of-magnitude estimate: cores x clock x 32 fp32 FLOP/cycle; measure your own"),
}
# "H100 80GB HBM3" is how torch names the SXM part.
_ALIASES = {"h100 80gb hbm3": "h100 sxm", "h100": "h100 sxm", "nvidia h100": "h100 sxm"}


def _dtype_key(dtype) -> str:
    s = str(dtype).replace("torch.", "").lower()
    s = {"float32": "fp32", "float": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16",
         "float64": "fp64", "double": "fp64", "float8_e4m3fn": "fp8", "float8_e5m2": "fp8"}.get(s, s)
    if s not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES} or a torch float dtype, got {dtype!r}")
    return s


def lookup(name: str) -> Peaks:
    """The peaks of the device called ``name`` (case-insensitive substring match).

    >>> lookup("NVIDIA H100 80GB HBM3").peak_flops("bf16") / 1e12
    989.4
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name must be a non-empty device name, got {name!r}")
    n = name.lower()
    if n.startswith("cpu"):
        return KNOWN["cpu"]
    for key in sorted(KNOWN, key=len, reverse=True):
        if key in n:
            return KNOWN[key]
    for alias in sorted(_ALIASES, key=len, reverse=True):
        if alias in n:
            return KNOWN[_ALIASES[alias]]
    raise ValueError(
        f"unknown device {name!r}; known: {[p.name for p in KNOWN.values()]}. "
        "Pass your own numbers with bmlib.hw.custom(name, flops={...}, mem_bw=...)")


def custom(name: str, flops: dict, mem_bw: float, **kw) -> Peaks:
    """Peaks for a device the table does not know; validated like the built-in entries."""
    if not isinstance(flops, dict):
        raise TypeError(f"flops must be a dict of dtype -> FLOP/s, got {type(flops).__name__}")
    return Peaks(name, {_dtype_key(k): v for k, v in flops.items()}, mem_bw, **kw)


def current() -> Peaks:
    """Peaks of the device this process computes on (GPU 0, else the generic CPU entry)."""
    from .env import device_name

    return lookup(device_name())


def mfu(flops_per_s: float, peaks: Peaks, dtype: str = "bf16") -> float:
    """Model FLOPs utilisation: achieved FLOP/s over the peak for ``dtype``."""
    if flops_per_s < 0:
        raise ValueError(f"flops_per_s must be >= 0, got {flops_per_s!r}")
    return flops_per_s / peaks.peak_flops(dtype)
