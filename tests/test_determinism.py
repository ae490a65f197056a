"""Reproducibility: two cpu-scale runs of a chapter on the CPU write identical results figures.

Each chapter below is copied to a temporary folder and executed twice, top to bottom, with
``bmlib.runner.run_notebook`` (a fresh kernel each time), the two runs writing their results to two
different folders (``BMLIB_RESULTS_DIR``). Every headline figure must then be equal to the last bit,
except timings (names ending in ``_ms``, ``_s``, ``_per_s``, ``_tflops``, ``_tbps`` or containing
``speedup``), which measure the machine rather than the mathematics. ``notebook_header`` seeds
every generator, so a difference means a chapter has an unseeded source of randomness.

The chapters are the fastest ones planned to be deterministic; a chapter that is not written yet is
skipped with a message. Slow-ish (four notebook runs), but part of ``make test``.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = {"01_foundations": "foundations", "10_medicine": "medicine"}
TIMING = re.compile(r"(_ms|_s|_per_s|_tflops|_tbps|_seconds)$|speedup")
pytestmark = pytest.mark.slow


def _run_twice(stem: str, results_name: str, tmp_path: Path) -> tuple[dict, dict]:
    from bmlib.runner import run_notebook

    src = ROOT / "notebooks" / f"{stem}.ipynb"
    if not src.exists():
        pytest.skip(f"notebooks/{stem}.ipynb is not written yet")
    docs = []
    old = os.environ.get("BMLIB_RESULTS_DIR")
    try:
        for i in (1, 2):
            work = tmp_path / f"run{i}"
            out = tmp_path / f"results{i}"
            work.mkdir()
            out.mkdir()
            nb = work / src.name
            shutil.copyfile(src, nb)
            os.environ["BMLIB_RESULTS_DIR"] = str(out)
            r = run_notebook(nb, "cpu", timeout=300)
            assert r.ok, f"run {i} of {stem} failed: {r.error}"
            f = out / f"{results_name}.json"
            assert f.exists(), f"{stem} wrote no {results_name}.json into BMLIB_RESULTS_DIR"
            docs.append(json.loads(f.read_text()))
    finally:
        if old is None:
            os.environ.pop("BMLIB_RESULTS_DIR", None)
        else:
            os.environ["BMLIB_RESULTS_DIR"] = old
    return docs[0], docs[1]


@pytest.mark.parametrize("stem", sorted(CHAPTERS))
def test_two_ci_runs_write_identical_figures(stem, tmp_path):
    a, b = _run_twice(stem, CHAPTERS[stem], tmp_path)
    assert a["provenance"]["scale"] == b["provenance"]["scale"] == "cpu"
    assert set(a["figures"]) == set(b["figures"]), "the two runs reported different figures"
    compared = {k: (a["figures"][k], b["figures"][k]) for k in a["figures"] if not TIMING.search(k)}
    assert compared, f"{stem}: every figure is a timing; nothing to compare"
    diff = {k: v for k, v in compared.items()
            if not (v[0] == v[1] or (isinstance(v[0], float) and math.isnan(v[0]) and math.isnan(v[1])))}
    assert not diff, f"{stem}: figures differ between two seeded cpu runs: {diff}"
