import pytest
import torch

from bmlib import hw


def test_lookup_by_torch_names():
    assert hw.lookup("NVIDIA H100 80GB HBM3").name == "NVIDIA H100 SXM"
    assert hw.lookup("NVIDIA H100 PCIe").name == "NVIDIA H100 PCIe"
    assert hw.lookup("NVIDIA H200").mem_bw == pytest.approx(4.8e12)
    assert hw.lookup("NVIDIA A100-SXM4-80GB").peak_flops("bf16") == pytest.approx(312e12)
    assert hw.lookup("CPU (AMD EPYC, 2 cores)").name.startswith("Generic CPU")


def test_h100_numbers_the_book_divides_by():
    h = hw.lookup("H100 SXM")
    assert h.peak_flops("bf16") == pytest.approx(989.4e12)
    assert h.peak_flops(torch.bfloat16) == h.peak_flops("bf16")
    assert h.peak_flops("fp8") == pytest.approx(2 * h.peak_flops("bf16"), rel=1e-3)
    assert h.mem_bw == pytest.approx(3.35e12)
    assert h.ridge_point("bf16") == pytest.approx(989.4e12 / 3.35e12)


def test_mfu():
    h = hw.lookup("H100 SXM")
    assert hw.mfu(494.7e12, h, "bf16") == pytest.approx(0.5)
    with pytest.raises(ValueError, match="flops_per_s"):
        hw.mfu(-1.0, h)


def test_custom_and_errors():
    p = hw.custom("My GPU", flops={"bfloat16": 100e12}, mem_bw=1e12)
    assert p.peak_flops("bf16") == 100e12
    with pytest.raises(ValueError, match="unknown device"):
        hw.lookup("Quantum Abacus 9000")
    with pytest.raises(ValueError, match="name"):
        hw.lookup("")
    with pytest.raises(ValueError, match="mem_bw"):
        hw.custom("x", flops={"fp32": 1e12}, mem_bw=0)
    with pytest.raises(ValueError, match=r"flops\['fp32'\]"):
        hw.custom("x", flops={"fp32": -1}, mem_bw=1e9)
    with pytest.raises(ValueError, match="dtype"):
        hw.lookup("H100 SXM").peak_flops("int3")
    with pytest.raises(ValueError, match="no peak for dtype"):
        hw.lookup("A100").peak_flops("fp8")


def test_current_is_known():
    assert hw.current().mem_bw > 0
