"""Execute the book's notebooks in place, top to bottom (``python -m bmlib run-notebooks``).

This is what a reader runs on a GPU box, and what produces the outputs committed with the book.
Each notebook runs in a fresh kernel in its own folder, with ``BMLIB_SCALE`` set for the kernel; a
failing notebook is reported, not fatal, and its partial outputs are saved beside it as
``<name>.failed.ipynb`` so the committed notebook is never replaced by a broken run.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from .env import SCALES, repo_root


@dataclass(frozen=True)
class RunResult:
    notebook: str
    seconds: float
    ok: bool
    error: str = ""


def default_notebooks() -> list[Path]:
    return sorted((repo_root() / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def run_notebook(path, scale: str, timeout: int = 600, kernel: str = "python3") -> RunResult:
    """Execute one notebook in place at ``scale``; returns how long it took and whether it passed."""
    import nbformat
    from nbclient import NotebookClient

    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if not (isinstance(timeout, int) and timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds per cell, got {timeout!r}")
    path = Path(path)
    if not path.exists() or path.suffix != ".ipynb":
        raise ValueError(f"path must be an existing .ipynb file, got {str(path)!r}")
    nb = nbformat.read(path, as_version=4)
    # The kernel inherits this process's environment: the scale, and matplotlib's inline backend
    # (a non-interactive MPLBACKEND such as Agg, common in CI, would silently drop every figure).
    saved = {k: os.environ.get(k) for k in ("BMLIB_SCALE", "MPLBACKEND", "BMLIB_RUN_NOTEBOOKS")}
    os.environ["BMLIB_SCALE"] = scale
    os.environ["BMLIB_RUN_NOTEBOOKS"] = "1"  # bmlib.results.save: cpu figures go to results/cpu/
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    t0 = time.perf_counter()
    try:
        client = NotebookClient(nb, timeout=timeout, kernel_name=kernel,
                                resources={"metadata": {"path": str(path.parent)}})
        client.execute()
        ok, err = True, ""
    except Exception as e:  # CellExecutionError, timeouts, dead kernels
        ok, err = False, f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    secs = time.perf_counter() - t0
    if ok:
        nbformat.write(nb, path)
    else:
        nbformat.write(nb, path.with_suffix(".failed.ipynb"))
    return RunResult(path.name, secs, ok, err)


def run_notebooks(paths=None, scale: str = "cpu", timeout: int = 600) -> list[RunResult]:
    """Run several notebooks with a progress bar; returns one :class:`RunResult` each."""
    from tqdm import tqdm

    paths = [Path(p) for p in (paths or default_notebooks())]
    if not paths:
        raise ValueError("no notebooks to run: pass paths or add notebooks/NN_*.ipynb")
    results = []
    bar = tqdm(paths, desc=f"notebooks ({scale})", unit="nb")
    for p in bar:
        bar.set_postfix_str(p.name)
        results.append(run_notebook(p, scale, timeout))
    return results


def summary_table(results: list[RunResult]) -> str:
    w = max([len(r.notebook) for r in results] + [8])
    lines = [f"{'notebook':<{w}}  {'seconds':>8}  status", f"{'-' * w}  {'-' * 8}  ------"]
    for r in results:
        status = "ok" if r.ok else f"FAILED  {r.error[:100]}"
        lines.append(f"{r.notebook:<{w}}  {r.seconds:8.1f}  {status}")
    n_ok = sum(r.ok for r in results)
    lines.append(f"{n_ok} passed, {len(results) - n_ok} failed")
    return "\n".join(lines)
