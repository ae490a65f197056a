import subprocess
import sys

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from bmlib import runner
from bmlib.cli import build_parser


def _nb(path, cells):
    nb = new_notebook(cells=[new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.mark.slow
def test_run_notebook_in_place_ok_and_failed(tmp_path):
    good, bad = tmp_path / "01_good.ipynb", tmp_path / "02_bad.ipynb"
    _nb(good, ["import os; print(os.environ['BMLIB_SCALE'])"])
    _nb(bad, ["raise RuntimeError('boom')"])
    res = runner.run_notebooks([good, bad], scale="cpu", timeout=60)
    assert [r.ok for r in res] == [True, False]
    out = nbformat.read(good, as_version=4).cells[0].outputs[0]["text"]
    assert out.strip() == "cpu"  # the kernel saw the requested scale
    assert "boom" in res[1].error
    # a failing run never replaces the notebook; its partial outputs go beside it
    assert not nbformat.read(bad, as_version=4).cells[0].outputs
    assert (tmp_path / "02_bad.failed.ipynb").exists()
    table = runner.summary_table(res)
    assert "01_good.ipynb" in table and "FAILED" in table and table.endswith("1 passed, 1 failed")


def test_runner_bad_args(tmp_path):
    with pytest.raises(ValueError, match="scale"):
        runner.run_notebook(tmp_path / "x.ipynb", scale="huge")
    with pytest.raises(ValueError, match="path"):
        runner.run_notebook(tmp_path / "missing.ipynb", scale="cpu")
    with pytest.raises(ValueError, match="timeout"):
        runner.run_notebook(tmp_path / "missing.ipynb", scale="cpu", timeout=0)


def test_cli_parser_and_env_command():
    p = build_parser()
    a = p.parse_args(["run-notebooks", "--scale", "cpu", "a.ipynb"])
    assert a.scale == "cpu" and a.paths == ["a.ipynb"]
    with pytest.raises(SystemExit):
        p.parse_args(["run-notebooks", "--scale", "medium"])
    out = subprocess.run([sys.executable, "-m", "bmlib", "env"], capture_output=True, text=True,
                         timeout=120, env={"BMLIB_SCALE": "cpu", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert "scale: cpu" in out.stdout and "torch:" in out.stdout


@pytest.mark.slow
def test_figures_are_kept_even_with_a_non_interactive_backend(tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")  # what CI exports; it must not drop the book's plots
    nb = tmp_path / "01_plot.ipynb"
    _nb(nb, ["import matplotlib.pyplot as plt\nplt.plot([1, 2, 3]);"])
    assert runner.run_notebook(nb, scale="cpu", timeout=120).ok
    outs = nbformat.read(nb, as_version=4).cells[0].outputs
    assert any("image/png" in o.get("data", {}) for o in outs)
    assert __import__("os").environ["MPLBACKEND"] == "Agg"  # restored afterwards
