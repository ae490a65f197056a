import json
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bmlib import bench


# ------------------------------------------------------------------ the timing primitive
def test_measure_sleep_median_within_tolerance():
    t = bench.measure(lambda: time.sleep(0.01), device="cpu", warmup_s=0.0, budget_s=0.1,
                      min_reps=5, max_reps=8)
    assert t.timer == "perf_counter"
    # sleep never returns early; scheduling can add a few ms on a loaded machine
    assert 10.0 <= t.median_ms < 40.0
    assert t.min_ms >= 10.0 and t.q1_ms <= t.median_ms <= t.q3_ms and t.iqr_ms >= 0


def test_measure_known_workload_scales_with_work():
    # one thread and the best sample: robust on a shared, oversubscribed CI machine
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x = torch.randn(256, 256)
        t1 = bench.measure(lambda: x @ x, device="cpu", warmup_s=0.01, budget_s=0.1, min_reps=10)
        t8 = bench.measure(lambda: [x @ x for _ in range(8)], device="cpu", warmup_s=0.01, budget_s=0.3,
                           min_reps=10)
    finally:
        torch.set_num_threads(old)
    assert 4.0 < t8.min_ms / t1.min_ms < 16.0


def test_measure_reps_bounds_and_warmup():
    calls = []
    t = bench.measure(lambda: calls.append(1), device="cpu", warmup_s=0.0, budget_s=10.0,
                      min_reps=3, max_reps=7)
    assert t.reps == 7  # budget never reached: capped by max_reps
    assert len(calls) == 7 + t.warmup_reps and t.warmup_reps >= 1
    t = bench.measure(lambda: time.sleep(0.002), device="cpu", warmup_s=0.0, budget_s=0.0,
                      min_reps=4, max_reps=100)
    assert t.reps == 4  # budget spent at once: floor of min_reps


@pytest.mark.parametrize("kw,name", [
    (dict(warmup_s=-1), "warmup_s"), (dict(budget_s="1"), "budget_s"), (dict(min_reps=0), "min_reps"),
    (dict(min_reps=5, max_reps=2), "max_reps"),
])
def test_measure_bad_args(kw, name):
    with pytest.raises(ValueError, match=name):
        bench.measure(lambda: None, device="cpu", **kw)


def test_measure_not_callable():
    with pytest.raises(ValueError, match="fn"):
        bench.measure(42)


def test_timing_per_s():
    t = bench.Timing((1.0, 2.0, 3.0), "perf_counter")
    assert t.median_ms == 2.0 and t.per_s(1000) == pytest.approx(500_000)


# ------------------------------------------------------------------ sweeps
def _fake(kind):
    def setup(x):
        if x == 2:
            if kind == "cuda-oom":
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")
            if kind == "runtime-oom":
                raise RuntimeError("[enforce fail at alloc_cpu.cpp] DefaultCPUAllocator: out of memory")
            if kind == "skip":
                raise bench.Skip("backend cannot run this shape")
            if kind == "error":
                raise ZeroDivisionError("boom")
        return bench.Case(lambda: sum(range(100)), flops=1e3 * x, bytes=10.0 * x)
    return setup


@pytest.mark.parametrize("kind,status,reason", [
    ("cuda-oom", "skipped", "out of memory"), ("runtime-oom", "skipped", "out of memory"),
    ("skip", "skipped", "backend cannot run"), ("error", "error", "ZeroDivisionError"),
])
def test_sweep_records_failures_and_continues(kind, status, reason):
    sw = bench.Sweep("fake", {"x": [1, 2, 3]}, _fake(kind))
    rows = bench.run_sweep(sw, device="cpu", progress=False, prov={"device": "test"},
                           warmup_s=0.0, budget_s=0.0, min_reps=2, max_reps=2)
    assert [r["x"] for r in rows] == [1, 2, 3]
    assert [r["status"] for r in rows] == ["ok", status, "ok"]
    assert reason in rows[1]["reason"] and "median_ms" not in rows[1]
    assert rows[0]["flops"] == 1e3 and rows[2]["tflops"] > 0 and rows[2]["intensity"] == 100.0
    assert all(r["device"] == "test" for r in rows)


def test_oom_raised_inside_timed_call_is_recorded():
    def setup(x):
        def fn():
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return bench.Case(fn)
    row = bench.run_case("fake", {"x": 1}, setup, device="cpu", warmup_s=0.0)
    assert row["status"] == "skipped" and row["reason"] == "out of memory"


def test_is_oom():
    assert bench.is_oom(torch.cuda.OutOfMemoryError("x"))
    assert bench.is_oom(RuntimeError("CUDA out of memory. Tried to allocate"))
    assert bench.is_oom(MemoryError())
    assert not bench.is_oom(RuntimeError("shape mismatch"))


def test_sweep_cases_are_the_product():
    sw = bench.Sweep("s", {"a": [1, 2], "b": ["x", "y", "z"]}, _fake("none"))
    assert len(sw) == 6 and sw.cases()[0] == {"a": 1, "b": "x"} and sw.cases()[-1] == {"a": 2, "b": "z"}


@pytest.mark.parametrize("kw,exc,name", [
    (dict(name="", axes={"a": [1]}, setup=lambda a: None), ValueError, "name"),
    (dict(name="s", axes={}, setup=lambda: None), ValueError, "axes"),
    (dict(name="s", axes={"a": []}, setup=lambda a: None), ValueError, "axes"),
    (dict(name="s", axes={"a": [1]}, setup=3), TypeError, "setup"),
])
def test_sweep_validation(kw, exc, name):
    with pytest.raises(exc, match=name):
        bench.Sweep(**kw)


def test_case_validation():
    with pytest.raises(TypeError, match="fn"):
        bench.Case(3)
    with pytest.raises(ValueError, match="flops"):
        bench.Case(lambda: None, flops=-1)


def test_save_rows_json_and_csv(tmp_path):
    rows = [{"bench": "g", "shape": [2, 2, 2], "tflops": 1.5, "status": "ok"},
            {"bench": "g", "shape": [4, 4, 4], "status": "skipped", "reason": "out of memory"}]
    jp, cp = bench.save_rows(rows, tmp_path / "bench-cpu")
    assert json.loads(jp.read_text()) == rows
    lines = cp.read_text().splitlines()
    assert lines[0] == "bench,shape,tflops,status,reason" and len(lines) == 3
    with pytest.raises(ValueError, match="rows"):
        bench.save_rows("nope", tmp_path / "x")


@pytest.mark.parametrize("name,expected", [
    ("NVIDIA H100 80GB HBM3", "h100-sxm"), ("NVIDIA H100 PCIe", "h100-pcie"), ("NVIDIA H200", "h200"),
    ("CPU (AMD EPYC, 2 cores)", "cpu"), ("NVIDIA GeForce RTX 4090", "geforce-rtx-4090"),
])
def test_slug(name, expected):
    assert bench.slug(name) == expected


def test_best_and_headline_figures():
    rows = [
        {"bench": "gemm", "dtype": "bf16", "status": "ok", "tflops": 700.0},
        {"bench": "gemm", "dtype": "bf16", "status": "ok", "tflops": 780.0},
        {"bench": "gemm", "dtype": "bf16", "status": "skipped"},
        {"bench": "memory", "kernel": "copy", "status": "ok", "tbps": 2.98},
    ]
    for impl, t in (("sdpa-flash", 300.0), ("sdpa-cudnn", 600.0), ("auto", 570.0)):
        rows.append({"bench": "attention", "impl": impl, "seq": 4096, "head_dim": 128, "causal": True,
                     "backward": False, "status": "ok", "tflops": t})
    figs = bench.headline_figures(rows)
    assert figs["gemm_bf16_best_tflops"] == 780.0 and figs["hbm_copy_tbps"] == 2.98
    assert figs["attention_auto_vs_best_backend_min_ratio"] == pytest.approx(0.95)
    assert "gemm_fp8_best_tflops" not in figs


# ------------------------------------------------------------------ kernels (CPU paths)
def test_gemm_case_flops_and_result():
    c = bench.gemm_case(8, 16, 32, dtype="fp32", device="cpu")
    assert c.flops == 2 * 8 * 16 * 32 and c.fn().shape == (8, 16)
    with pytest.raises(bench.Skip, match="fp8"):
        bench.gemm_case(16, 16, 16, dtype="fp8", device="cpu")
    with pytest.raises(ValueError, match="dtype"):
        bench.gemm_case(16, 16, 16, dtype="int3", device="cpu")
    with pytest.raises(ValueError, match="m must"):
        bench.gemm_case(0, 16, 16, device="cpu")


def test_memory_case_bytes():
    c = bench.memory_case("copy", 4096, device="cpu")
    assert c.bytes == 8192
    assert bench.memory_case("read", 4096, device="cpu").bytes == 4096
    with pytest.raises(ValueError, match="kernel"):
        bench.memory_case("scan", 4096)
    with pytest.raises(ValueError, match="nbytes"):
        bench.memory_case("copy", 2)


def test_attention_flops_convention():
    f = bench.attention_flops(1, 1, 4, 4, 8, causal=False, backward=False)
    assert f == 4 * 4 * 4 * 8
    assert bench.attention_flops(1, 1, 4, 4, 8, causal=True, backward=True) == f / 2 * 3.5


def test_attention_case_runs_math_and_sdpa():
    for impl in ("math", "sdpa"):
        c = bench.attention_case(impl, 16, 8, True, True, dtype="fp32", device="cpu", tokens=32, model_dim=16)
        assert c.extra == {"batch": 2, "n_head": 2} and c.fn().shape == (2, 2, 16, 8)


def test_roofline():
    import numpy as np

    r = bench.roofline([1.0, 100.0, 1000.0], peak_flops=1e15, mem_bw=3e12)
    assert np.allclose(r, [3e12, 3e14, 1e15])
    with pytest.raises(ValueError, match="intensity"):
        bench.roofline([-1.0], 1e15, 3e12)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(0.001, 1000.0), min_size=1, max_size=30))
def test_timing_quantiles_ordered(samples):
    t = bench.Timing(tuple(samples), "perf_counter")
    assert t.min_ms <= t.q1_ms <= t.median_ms <= t.q3_ms <= max(samples)


def test_cli_writes_bench_cpu_json(tmp_path, capsys):
    from types import SimpleNamespace

    from bmlib.bench_cli import main

    if torch.cuda.is_available():
        pytest.skip("CPU-path test")
    rc = main(SimpleNamespace(what="memory", quick=True, out=str(tmp_path)))
    assert rc == 0
    out = capsys.readouterr().out
    assert "No CUDA GPU" in out and "copy" in out
    doc = json.loads((tmp_path / "bench-cpu.json").read_text())
    assert doc["chapter"] == "bench-cpu" and doc["figures"]["hbm_copy_tbps"] > 0
    assert {r["kernel"] for r in doc["rows"]} == {"copy", "read", "write"}
    assert (tmp_path / "bench-cpu-rows.csv").exists()
