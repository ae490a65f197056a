"""tools/gpu_smoke.py: the dry mode CI runs, and the driver's stop-at-the-first-wrong-answer rule."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "gpu_smoke.py"
REQUIRED = {"sdpa-backends", "fp8-scaled-mm", "cuda-graph-decoder", "flush-l2", "sparse-2to4",
            "compiled-train-step", "llama-gpu"}


@pytest.fixture(scope="module")
def smoke():
    spec = importlib.util.spec_from_file_location("gpu_smoke", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_dry_run_skips_every_check_with_a_reason():
    out = subprocess.run([sys.executable, str(SCRIPT), "--dry"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith(("PASS", "SKIP", "FAIL"))]
    names = {ln.split()[1].rstrip(":") for ln in lines}
    assert names == REQUIRED and len(lines) == len(REQUIRED)  # one line per check
    assert all(ln.startswith("SKIP") and "dry run" in ln for ln in lines)


def test_without_a_gpu_and_without_dry_it_refuses(smoke):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert smoke.main([]) == 2


def test_driver_runs_every_check_and_fails_if_any_failed(smoke):
    ran, lines = [], []

    def ok(dev):
        ran.append("ok")
        return "fine"

    def skip(dev):
        raise smoke.Skip("needs compute capability >= 8.9")

    def wrong(dev):
        ran.append("wrong")
        raise smoke.Wrong("relative error 3e-1 > 1e-2")

    def after(dev):
        ran.append("after")
        return "x"

    rc = smoke.run_checks([("a", ok), ("b", skip), ("c", wrong), ("d", after)], "cpu", out=lines.append)
    assert rc == 1 and ran == ["ok", "wrong", "after"]  # a failure does not stop the others
    assert lines[0].startswith("PASS a: fine") and lines[1] == "SKIP b: needs compute capability >= 8.9"
    assert lines[2] == "FAIL c: relative error 3e-1 > 1e-2" and lines[3].startswith("PASS d: x")
    assert len(lines) == 4


def test_an_unexpected_exception_is_a_failure(smoke):
    lines = []

    def boom(dev):
        raise KeyError("no such backend")

    assert smoke.run_checks([("x", boom)], "cpu", out=lines.append) == 1
    assert lines == ["FAIL x: KeyError: 'no such backend'"]


def test_device_independent_checks_hold_on_the_cpu(smoke):
    """The Llama comparison runs on any device; on the CPU it compares the CPU with itself, which
    must be exact (a sanity check of the check, not of a GPU)."""
    import torch

    detail = smoke.check_llama_gpu(torch.device("cpu"))
    assert "max abs diff 0.0e+00" in detail


def test_unknown_check_names_are_refused(smoke):
    with pytest.raises(SystemExit):
        smoke.main(["--dry", "--only", "warp-drive"])
