"""Files survive crashes: ``bmlib.io.atomic_write`` and ``bmlib.checkpoint``.

The central test kills (SIGKILL: no cleanup handlers, no ``finally``) a process in the middle of
writing a large file through ``atomic_write`` and checks that the previous file is intact, that the
leftover temporary file cannot be mistaken for it (hidden name, ``.tmp`` suffix, not matched by the
globs the book uses), and that the next save works and replaces the target.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bmlib.io import atomic_write, sha256_file, write_json

ROOT = Path(__file__).resolve().parent.parent

WRITER = textwrap.dedent("""
    import sys, time
    from bmlib.io import atomic_write
    target, chunks = sys.argv[1], int(sys.argv[2])
    block = bytes(range(256)) * 4096          # 1 MiB
    with atomic_write(target, "wb") as f:
        for i in range(chunks):
            f.write(block)
            f.flush()
            print(f"chunk {i}", flush=True)
            time.sleep(0.05)
    print("done", flush=True)
""")


def _spawn_writer(target: Path, chunks: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(chunks)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for(proc: subprocess.Popen, line: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = proc.stdout.readline()
        if out.strip() == line:
            return
        if out == "" and proc.poll() is not None:
            raise AssertionError(f"writer exited early ({proc.returncode}): {proc.stderr.read()[-2000:]}")
    proc.kill()
    raise AssertionError(f"writer never printed {line!r}")


def _kill_when(proc: subprocess.Popen, line: str) -> None:
    """SIGKILL the writer as soon as it prints ``line``: a crash at exactly that moment."""
    try:
        _wait_for(proc, line)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("kill_after", [0, 5])
def test_sigkill_mid_write_keeps_the_previous_file(tmp_path, kill_after):
    target = tmp_path / "results" / "training.json"
    write_json(target, {"chapter": "training", "figures": {"final_val_loss": 1.25}})
    before = sha256_file(target)

    proc = _spawn_writer(target, chunks=400)  # would be 400 MiB if it finished
    _kill_when(proc, f"chunk {kill_after}")

    # the previous file is untouched and still parses
    assert sha256_file(target) == before
    assert json.loads(target.read_text())["figures"] == {"final_val_loss": 1.25}
    # the partial data lives in a hidden temporary file that no reader of the book globs for
    leftovers = [p for p in target.parent.iterdir() if p != target]
    assert leftovers, "SIGKILL leaves the temporary file behind (no handler can run); expected one"
    for p in leftovers:
        assert p.name.startswith(f".{target.name}.") and p.name.endswith(".tmp"), p.name
        assert p.stat().st_size >= (kill_after + 1) * 2**20  # it really was mid-write
    assert sorted(target.parent.glob("*.json")) == [target]
    from bmlib import results

    assert [d["chapter"] for d in results.load_all(target.parent)] == ["training"]

    # the next save works in spite of the leftover, and replaces the target atomically
    write_json(target, {"chapter": "training", "figures": {"final_val_loss": 1.0}})
    assert json.loads(target.read_text())["figures"]["final_val_loss"] == 1.0


def test_a_completed_write_replaces_the_file(tmp_path):
    target = tmp_path / "big.bin"
    target.write_bytes(b"old")
    proc = _spawn_writer(target, chunks=3)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "done" in out
    assert target.stat().st_size == 3 * 2**20
    assert [p.name for p in tmp_path.iterdir()] == ["big.bin"]  # no temporary file left


def test_exception_inside_the_block_keeps_the_old_file_and_cleans_up(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(target, "w") as f:
            f.write("new, half written")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_keyboard_interrupt_inside_the_block_is_also_safe(tmp_path):
    target = tmp_path / "a.bin"
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(target) as f:
            f.write(b"x" * 1000)
            raise KeyboardInterrupt
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_atomic_write_creates_parent_folders_and_text_mode(tmp_path):
    target = tmp_path / "a" / "b" / "c.txt"
    with atomic_write(target, "w") as f:
        f.write("héllo\n")
    assert target.read_text(encoding="utf-8") == "héllo\n"


@pytest.mark.parametrize("mode", ["a", "r", "w+", "ab", "", None])
def test_atomic_write_rejects_other_modes(tmp_path, mode):
    with pytest.raises(ValueError, match="mode"):
        with atomic_write(tmp_path / "x", mode):
            pass
    assert list(tmp_path.iterdir()) == []


def test_write_json_roundtrip_with_numpy_and_torch_scalars(tmp_path):
    import numpy as np
    import torch
    obj = {"a": np.float32(0.5), "b": np.arange(3), "c": torch.tensor(2.0), "d": [1, "x", None]}
    p = write_json(tmp_path / "r.json", obj)
    assert json.loads(p.read_text()) == {"a": 0.5, "b": [0, 1, 2], "c": 2.0, "d": [1, "x", None]}


def test_write_json_refuses_unserialisable_values_without_touching_the_file(tmp_path):
    p = tmp_path / "r.json"
    write_json(p, {"ok": 1})
    with pytest.raises(TypeError, match="set"):
        write_json(p, {"bad": {1, 2}})
    assert json.loads(p.read_text()) == {"ok": 1}
    assert [x.name for x in tmp_path.iterdir()] == ["r.json"]


def test_sha256_file_matches_hashlib(tmp_path):
    data = os.urandom(3 * 2**20 + 17)
    p = tmp_path / "blob"
    p.write_bytes(data)
    assert sha256_file(p) == hashlib.sha256(data).hexdigest()
    assert sha256_file(p, chunk=4096) == hashlib.sha256(data).hexdigest()


# ============================================================================ bmlib.checkpoint
# Crash tests only: round trips and refusals of damaged files are in test_checkpoint.py.
def _checkpoint():
    import bmlib.checkpoint  # an import error in bmlib must fail the test, not skip it

    return bmlib.checkpoint


def _tiny_model(seed=0):
    import torch
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))


SAVER = textwrap.dedent("""
    import sys, torch
    import bmlib.io
    from bmlib import checkpoint
    real = bmlib.io.atomic_write
    # slow the second save down so the parent can kill it mid-way, after the weights file
    import contextlib, time
    @contextlib.contextmanager
    def slow(path, mode="wb"):
        with real(path, mode) as f:
            yield f
            print(f"writing {path}", flush=True)   # data written, not yet renamed into place
            time.sleep(0.5)
        print(f"wrote {path}", flush=True)         # renamed into place
        time.sleep(0.5)
    checkpoint.atomic_write = slow
    torch.manual_seed(1)
    m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
    checkpoint.save(sys.argv[1], m, step=2)
    print("done", flush=True)
""")


@pytest.mark.parametrize("moment", ["writing", "wrote"])
def test_checkpoint_killed_mid_save(tmp_path, moment):
    """Killed before the new weights are renamed into place: the previous checkpoint is intact and
    loads. Killed after the weights landed but before the manifest was rewritten: the folder's
    manifest does not match, and load refuses it instead of resuming from mixed state."""
    ckpt = _checkpoint()
    import torch
    m0 = _tiny_model(0)
    d = ckpt.save(tmp_path / "c", m0, step=1)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", SAVER, str(d)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    _kill_when(proc, f"{moment} {d / ckpt.WEIGHTS}")
    m = _tiny_model(2)
    if moment == "writing":
        assert ckpt.load(d, m)["step"] == 1
        for a, b in zip(m0.state_dict().values(), m.state_dict().values()):
            assert torch.equal(a, b)
    else:
        with pytest.raises(ckpt.CheckpointError, match="sha256|bytes"):
            ckpt.load(d, m)
