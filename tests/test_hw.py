"""bmlib.hw: exact device lookup (no neighbour's peaks), labelled peaks, no invented CPU peak."""
import pytest
import torch

from bmlib import hw


@pytest.mark.parametrize("name,key", [
    ("NVIDIA H100 80GB HBM3", "h100-sxm"),   # torch's name for the SXM part
    ("NVIDIA H100 PCIe", "h100-pcie"),
    ("NVIDIA H200", "h200"),
    ("NVIDIA A100-SXM4-80GB", "a100-sxm-80gb"),
    ("NVIDIA A100-SXM4-40GB", "a100-sxm-40gb"),
    ("NVIDIA A100-PCIE-40GB", "a100-pcie-40gb"),
    ("NVIDIA A100 80GB PCIe", "a100-pcie-80gb"),
    ("h100 sxm", "h100-sxm"), ("H100-SXM", "h100-sxm"), ("  nvidia   H200 ", "h200"),
])
def test_lookup_by_exact_names(name, key):
    assert hw.lookup(name).key == key


@pytest.mark.parametrize("name", [
    "NVIDIA H100 NVL",        # substring matching gave it the SXM peaks
    "NVIDIA GH200 480GB",     # ... and the H200's
    "NVIDIA H200 NVL", "NVIDIA H100", "H100", "A100", "NVIDIA A100", "Quantum Abacus 9000",
])
def test_unknown_names_raise_instead_of_borrowing_a_neighbour(name):
    with pytest.raises(ValueError, match="unknown device"):
        hw.lookup(name)
    assert hw.match(name) is None


def test_a100_pcie_40gb_gets_its_own_bandwidth():
    """Substring matching gave "A100-PCIE-40GB" the SXM 80GB's 2.039 TB/s; its datasheet says 1.555."""
    p = hw.lookup("NVIDIA A100-PCIE-40GB")
    assert p.mem_bw == pytest.approx(1.555e12) and p.memory_bytes == 40 * 10**9
    assert hw.lookup("NVIDIA A100-SXM4-80GB").mem_bw == pytest.approx(2.039e12)


def test_colliding_names_need_the_memory_size():
    with pytest.raises(ValueError, match="ambiguous"):
        hw.lookup("A100 SXM")
    gib = 2**30
    assert hw.lookup("A100 SXM", memory_bytes=80 * gib).key == "a100-sxm-80gb"  # torch reports GiB
    assert hw.lookup("A100 PCIe", memory_bytes=40 * gib).key == "a100-pcie-40gb"
    with pytest.raises(ValueError, match="matches none"):
        hw.lookup("A100 SXM", memory_bytes=24 * gib)
    with pytest.raises(ValueError, match="memory_bytes"):
        hw.lookup("A100 SXM", memory_bytes=-1)


def test_two_entries_with_one_name_and_one_size_are_ambiguous():
    a = hw.custom("Twin", {"fp32": 1e12}, 1e12, memory_bytes=10**9, names=("twin",), key="twin-a")
    b = hw.custom("Twin B", {"fp32": 2e12}, 1e12, memory_bytes=10**9, names=("twin",), key="twin-b")
    with pytest.raises(ValueError, match="matches"):
        hw.match("twin", memory_bytes=10**9, known={"twin-a": a, "twin-b": b})


def test_cpu_has_no_datasheet_peak():
    with pytest.raises(ValueError, match="no CPU entry"):
        hw.lookup("CPU (AMD EPYC, 2 cores)")
    assert not any("cpu" in k for k in hw.KNOWN)


def test_current():
    p = hw.current()
    if torch.cuda.is_available():
        assert p is hw.lookup(torch.cuda.get_device_name(0), torch.cuda.get_device_properties(0).total_memory)
    else:
        assert p is None  # no peak a reader can trust on a CPU


def test_h100_numbers_the_book_divides_by():
    """The H100 SXM5 datasheet (dense): 989.4 TFLOP/s bf16, 1,978.9 fp8, 3.35 TB/s."""
    h = hw.lookup("H100 SXM")
    assert h.peak_flops("bf16") == 989.4e12 and h.peak_flops(torch.bfloat16) == 989.4e12
    assert h.peak_flops("fp8") == 1978.9e12 and h.mem_bw == 3.35e12
    assert h.ridge_point("bf16") == pytest.approx(295.3, abs=0.1)  # FLOP/byte
    assert h.label == "NVIDIA H100 SXM (datasheet peak)"


def test_measured_and_custom_peaks_are_labelled():
    m = hw.measured("CPU (this machine)", {"float32": 5e10}, 2e10, source="best fp32 GEMM")
    assert m.kind == "measured" and m.label == "CPU (this machine) (measured peak)"
    assert m.peak_flops("fp32") == 5e10
    assert hw.custom("My GPU", flops={"bfloat16": 100e12}, mem_bw=1e12).label.endswith("(custom peak)")
    with pytest.raises(ValueError, match="source"):
        hw.measured("x", {"fp32": 1e9}, 1e9, source=" ")


def test_mfu_divides_by_the_dtype_peak():
    h = hw.lookup("H100 SXM")
    assert hw.mfu(494.7e12, h, "bf16") == pytest.approx(0.5) and hw.mfu(494.7e12, h, "fp8") == pytest.approx(0.25, rel=1e-3)
    with pytest.raises(ValueError, match="flops_per_s"):
        hw.mfu(-1.0, h)
    with pytest.raises(TypeError, match="peaks"):
        hw.mfu(1e12, "H100")


@pytest.mark.parametrize("call,exc,name", [
    (lambda: hw.lookup(""), ValueError, "name"),
    (lambda: hw.lookup(None), ValueError, "name"),
    (lambda: hw.custom("x", flops={"fp32": 1e12}, mem_bw=0), ValueError, "mem_bw"),
    (lambda: hw.custom("x", flops={"fp32": -1}, mem_bw=1e9), ValueError, r"flops\['fp32'\]"),
    (lambda: hw.custom("x", flops=None, mem_bw=1e9), TypeError, "flops"),
    (lambda: hw.custom("x", flops={"fp32": 1e9}, mem_bw=1e9, kind="guess"), ValueError, "kind"),
    (lambda: hw.lookup("H100 SXM").peak_flops("int3"), ValueError, "dtype"),
    (lambda: hw.lookup("NVIDIA A100-SXM4-80GB").peak_flops("fp8"), ValueError, "no peak for dtype"),
])
def test_bad_inputs(call, exc, name):
    with pytest.raises(exc, match=name):
        call()
