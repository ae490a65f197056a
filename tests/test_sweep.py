"""Sweeps (bmlib.sweep) and the book's benchmarks (bmlib.benchmarks): rows for every case, failures
recorded not raised, kernels that compute what they claim, and ``python -m bmlib bench`` on the CPU."""
import json

import pytest
import torch

from bmlib import benchmarks, sweep

# ------------------------------------------------------------------ sweeps
def _fake(kind):
    def setup(x):
        if x == 2:
            if kind == "cuda-oom":
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")
            if kind == "runtime-oom":
                raise RuntimeError("[enforce fail at alloc_cpu.cpp] DefaultCPUAllocator: out of memory")
            if kind == "skip":
                raise sweep.Skip("backend cannot run this shape")
            if kind == "error":
                raise ZeroDivisionError("boom")
        return sweep.Case(lambda: sum(range(100)), flops=1e3 * x, bytes=10.0 * x)
    return setup


@pytest.mark.parametrize("kind,status,reason", [
    ("cuda-oom", "skipped", "out of memory"), ("runtime-oom", "skipped", "out of memory"),
    ("skip", "skipped", "backend cannot run"), ("error", "error", "ZeroDivisionError"),
])
def test_sweep_records_failures_and_continues(kind, status, reason):
    sw = sweep.Sweep("fake", {"x": [1, 2, 3]}, _fake(kind))
    rows = sweep.run_sweep(sw, device="cpu", progress=False, prov={"device": "test"},
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
        return sweep.Case(fn)
    row = sweep.run_case("fake", {"x": 1}, setup, device="cpu", warmup_s=0.0)
    assert row["status"] == "skipped" and row["reason"] == "out of memory"


def test_is_oom():
    assert sweep.is_oom(torch.cuda.OutOfMemoryError("x"))
    assert sweep.is_oom(RuntimeError("CUDA out of memory. Tried to allocate"))
    assert sweep.is_oom(MemoryError())
    assert not sweep.is_oom(RuntimeError("shape mismatch"))


def test_sweep_cases_are_the_product():
    sw = sweep.Sweep("s", {"a": [1, 2], "b": ["x", "y", "z"]}, _fake("none"))
    assert len(sw) == 6 and sw.cases()[0] == {"a": 1, "b": "x"} and sw.cases()[-1] == {"a": 2, "b": "z"}


@pytest.mark.parametrize("kw,exc,name", [
    (dict(name="", axes={"a": [1]}, setup=lambda a: None), ValueError, "name"),
    (dict(name="s", axes={}, setup=lambda: None), ValueError, "axes"),
    (dict(name="s", axes={"a": []}, setup=lambda a: None), ValueError, "axes"),
    (dict(name="s", axes={"a": [1]}, setup=3), TypeError, "setup"),
])
def test_sweep_validation(kw, exc, name):
    with pytest.raises(exc, match=name):
        sweep.Sweep(**kw)


def test_case_validation():
    with pytest.raises(TypeError, match="fn"):
        sweep.Case(3)
    with pytest.raises(ValueError, match="flops"):
        sweep.Case(lambda: None, flops=-1)


def test_save_rows_json_and_csv(tmp_path):
    rows = [{"bench": "g", "shape": [2, 2, 2], "tflops": 1.5, "status": "ok"},
            {"bench": "g", "shape": [4, 4, 4], "status": "skipped", "reason": "out of memory"}]
    jp, cp = sweep.save_rows(rows, tmp_path / "bench-cpu")
    assert json.loads(jp.read_text()) == rows
    lines = cp.read_text().splitlines()
    assert lines[0] == "bench,shape,tflops,status,reason" and len(lines) == 3
    with pytest.raises(ValueError, match="rows"):
        sweep.save_rows("nope", tmp_path / "x")


@pytest.mark.parametrize("name,expected", [
    ("NVIDIA H100 80GB HBM3", "h100-sxm"), ("NVIDIA H100 PCIe", "h100-pcie"), ("NVIDIA H200", "h200"),
    ("CPU (AMD EPYC, 2 cores)", "cpu"), ("NVIDIA GeForce RTX 4090", "geforce-rtx-4090"),
    ("NVIDIA A100-PCIE-40GB", "a100-pcie-40gb"), ("NVIDIA H100 NVL", "h100-nvl"),
])
def test_slug(name, expected):
    assert sweep.slug(name) == expected


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
    figs = benchmarks.headline_figures(rows)
    assert figs["gemm_bf16_best_tflops"] == 780.0 and figs["hbm_copy_tbps"] == 2.98
    assert figs["attention_auto_vs_best_backend_min_ratio"] == pytest.approx(0.95)
    assert "gemm_fp8_best_tflops" not in figs


# ------------------------------------------------------------------ kernels (CPU paths)
def test_gemm_case_computes_the_product():
    torch.manual_seed(0)
    c = benchmarks.gemm_case(8, 16, 32, dtype="fp32", device="cpu")
    out = c.fn()
    assert out.shape == (8, 16) and c.flush_l2 is False
    with pytest.raises(sweep.Skip, match="fp8"):
        benchmarks.gemm_case(16, 16, 16, dtype="fp8", device="cpu")
    with pytest.raises(sweep.Skip, match="tf32"):
        benchmarks.gemm_case(16, 16, 16, dtype="tf32", device="cpu")
    with pytest.raises(ValueError, match="dtype"):
        benchmarks.gemm_case(16, 16, 16, dtype="int3", device="cpu")
    with pytest.raises(ValueError, match="m must"):
        benchmarks.gemm_case(0, 16, 16, device="cpu")


def test_memory_case_kernels_do_their_work():
    c = benchmarks.memory_case("read", 4096, device="cpu")
    assert float(c.fn()) == 1024.0  # sums 1024 ones: it read every element
    assert benchmarks.memory_case("copy", 4096, device="cpu").bytes \
        == 2 * benchmarks.memory_case("write", 4096, device="cpu").bytes  # copy reads and writes
    with pytest.raises(ValueError, match="kernel"):
        benchmarks.memory_case("scan", 4096)
    with pytest.raises(ValueError, match="nbytes"):
        benchmarks.memory_case("copy", 2)


def test_attention_case_math_and_sdpa_agree():
    outs = {}
    for impl in ("math", "sdpa", "auto"):
        torch.manual_seed(0)
        c = benchmarks.attention_case(impl, 16, 8, True, False, dtype="fp32", device="cpu", tokens=32,
                                      model_dim=16)
        assert c.extra == {"batch": 2, "n_head": 2}
        outs[impl] = c.fn()
    torch.testing.assert_close(outs["math"], outs["sdpa"], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="impl"):
        benchmarks.attention_case("cuda-magic", 16, 8, True, False, device="cpu")


def test_gemm_sweep_rows_on_cpu():
    rows = sweep.run_sweep(benchmarks.gemm_sweep([(32, 32, 32)], ["fp32", "fp16"], device="cpu"), device="cpu",
                           progress=False, prov={"device": "test"}, warmup_s=0.0, budget_s=0.0, min_reps=2,
                           max_reps=2)
    assert [r["status"] for r in rows] == ["ok", "skipped"] and "fp16" in rows[1]["reason"]
    assert rows[0]["tflops"] > 0 and rows[0]["intensity"] > 0


def test_measured_peaks_are_labelled_measured():
    p = benchmarks.measured_peaks("cpu", sizes=(64,), mem_mb=1, warmup_s=0.0, budget_s=0.02)
    assert p.kind == "measured" and p.label.endswith("(measured peak)") and "GEMM" in p.source
    assert p.peak_flops("fp32") > 0 and p.mem_bw > 0


def test_cpu_train_row_mfu_is_against_a_measured_gemm(one_thread):
    if torch.cuda.is_available():
        pytest.skip("CPU-path test")
    cfg = dict(benchmarks.plan("train", True, False), batch_size=1, seq_len=8, warmup_s=0.0, budget_s=0.05)
    gemm = [{"bench": "gemm", "dtype": "fp32", "status": "ok", "tflops": 1e-3}]
    [row] = benchmarks.train_rows(cfg, "cpu", gemm_rows=gemm)
    assert row["impl"] == "bmlib.train" and row["status"] == "ok" and row["tokens_per_s"] > 0
    assert row["mfu"] == pytest.approx(row["tflops"] / 1e-3) and row["peak"].startswith("measured peak")
    [row] = benchmarks.train_rows(cfg, "cpu", gemm_rows=[])
    assert row["mfu"] is None and row["peak"].startswith("none")


def test_plan_rejects_unknown_benchmark():
    with pytest.raises(ValueError, match="what"):
        benchmarks.plan("fft", True, False)
    assert benchmarks.plan("attention", True, True)["dtype"] == "bf16"


def test_cli_writes_bench_cpu_json(tmp_path, capsys):
    from bmlib.cli import main

    if torch.cuda.is_available():
        pytest.skip("CPU-path test")
    rc = main(["bench", "memory", "--quick", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "No CUDA GPU" in out and "copy" in out
    doc = json.loads((tmp_path / "bench-cpu.json").read_text())
    assert doc["chapter"] == "bench-cpu" and doc["figures"]["hbm_copy_tbps"] > 0
    assert {r["kernel"] for r in doc["rows"]} == {"copy", "read", "write"}
    assert (tmp_path / "bench-cpu-rows.csv").exists()
