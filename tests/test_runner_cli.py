import json
import re
import subprocess
import sys
import time

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from bmlib import runner
from bmlib.env import repo_root
from bmlib.cli import build_parser, main


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


# ---------------------------------------------------------------- rehearsal helpers (bmlib.env)
def test_rehearse_cap_and_scale(monkeypatch):
    from bmlib import env

    monkeypatch.delenv("BMLIB_REHEARSE", raising=False)
    monkeypatch.setenv("BMLIB_SCALE", "cpu")
    assert not env.rehearsing() and env.rehearse_cap(500) == 500 and env.scale() == "cpu"
    monkeypatch.setenv("BMLIB_REHEARSE", "1")
    monkeypatch.delenv("BMLIB_SCALE")
    assert env.rehearsing() and env.scale() == "full"
    assert env.rehearse_cap(500) == 2 and env.rehearse_cap(1) == 1
    assert env.rehearse_cap(2.5, cap=0.1) == 0.1 and env.provenance()["rehearse"] is True
    monkeypatch.setenv("BMLIB_SCALE", "cpu")
    with pytest.raises(ValueError, match="BMLIB_SCALE"):
        env.scale()
    monkeypatch.setenv("BMLIB_REHEARSE", "yes")
    with pytest.raises(ValueError, match="BMLIB_REHEARSE"):
        env.rehearsing()


@pytest.mark.parametrize("n,cap,match", [(-1, 2, "n must"), ("5", 2, "n must"), (True, 2, "n must"),
                                         (5, 0, "cap must"), (5, None, "cap must")])
def test_rehearse_cap_bad_args(n, cap, match):
    from bmlib.env import rehearse_cap

    with pytest.raises(ValueError, match=match):
        rehearse_cap(n, cap)


# ---------------------------------------------------------------- plans in notebook metadata
def test_write_plan_changes_only_the_metadata(tmp_path):
    nbp = tmp_path / "01_x.ipynb"
    _nb(nbp, ["x = 1  # é"])
    before = json.loads(nbp.read_text())
    plan = runner.write_plan(nbp, timing=True, planned_full_s=40)
    assert plan == runner.Plan(timing=True, planned_full_s=40)
    after = json.loads(nbp.read_text())
    assert after["metadata"].pop("bmlib") == {"timing": True, "planned_full_s": 40}
    assert after == before
    text = nbp.read_text(encoding="utf-8")
    assert text.endswith("}\n") and "é" in text and '\n "cells": [' in text  # indent=1, utf-8
    assert runner.write_plan(nbp, after=["00_y"]).after == ("00_y",)
    assert runner.read_plan(nbp).planned_full_s == 40  # earlier keys kept


@pytest.mark.parametrize("plan,match", [({"timing": "yes"}, "timing"), ({"planned_full_s": -3}, "planned_full_s"),
                                        ({"planned_cpu_s": True}, "planned_cpu_s"), ({"speed": 1}, "unknown")])
def test_bad_plans_are_refused(tmp_path, plan, match):
    nbp = tmp_path / "01_x.ipynb"
    _nb(nbp, ["x = 1"])
    with pytest.raises(ValueError, match=match):
        runner.write_plan(nbp, **plan)
    nb = json.loads(nbp.read_text())
    nb["metadata"]["bmlib"] = plan
    nbp.write_text(json.dumps(nb))
    with pytest.raises(ValueError, match=match):
        runner.read_plan(nbp)


def test_committed_notebooks_plan_fits_the_planned_gpu_sessions():
    plans = {p.name: runner.read_plan(p) for p in runner.default_notebooks()}
    missing = [n for n, pl in plans.items() if pl.planned_full_s is None]
    assert not missing, f"notebooks without metadata.bmlib.planned_full_s: {missing}"
    jobs = int(re.search(r"^JOBS=\$\{JOBS:-(\d+)\}", (repo_root() / "tools/gpu_run.sh").read_text(), re.M).group(1))
    wall = runner.planned_wall_s(plans, jobs)
    assert wall <= runner.FULL_SESSIONS * runner.FULL_BUDGET_S, \
        f"the book plans {wall:.0f} s at full scale with --jobs {jobs}: more than {runner.FULL_SESSIONS} GPU sessions"
    assert runner.sessions_needed(plans, jobs) <= runner.FULL_SESSIONS


def test_sessions_needed_rounds_the_planned_wall_time_up():
    P = runner.Plan
    assert runner.sessions_needed({"a": P(planned_full_s=10)}) == 1
    assert runner.sessions_needed({"a": P()}) == 1  # nothing planned: still one session
    assert runner.sessions_needed({"a": P(planned_full_s=runner.FULL_BUDGET_S + 1)}) == 2
    two = {"a": P(planned_full_s=runner.FULL_BUDGET_S), "b": P(planned_full_s=runner.FULL_BUDGET_S)}
    assert runner.sessions_needed(two, jobs=1) == 2 and runner.sessions_needed(two, jobs=2) == 1


def test_planned_wall_s_follows_the_runners_schedule():
    P = runner.Plan
    plans = {"a": P(planned_full_s=10), "b": P(planned_full_s=30), "c": P(planned_full_s=10, after=("a",)),
             "t": P(planned_full_s=5, timing=True), "d": P(planned_full_s=1)}
    assert runner.planned_wall_s(plans, 1) == 56  # one at a time: the sum
    # two slots: a, b start; c starts when a ends (10); t waits for b (30) and runs alone to 35; d 36
    assert runner.planned_wall_s(plans, 2) == 36
    assert runner.planned_wall_s({"x": P(), "y": P(planned_full_s=2)}, 3) == 2  # no plan counts 0 s
    with pytest.raises(ValueError, match="jobs"):
        runner.planned_wall_s(plans, 0)
    with pytest.raises(TypeError, match="plans"):
        runner.planned_wall_s({"a": 10}, 1)


# ---------------------------------------------------------------- progress bars
BAR = "Loading weights: 100%|██████████| 101/101 [00:00<00:00, 1234.5it/s]"


def test_strip_progress_bars_keeps_everything_else():
    nb = new_notebook(cells=[new_code_cell("x")])
    nb.cells[0].outputs = [
        nbformat.v4.new_output("stream", name="stderr",
                               text=f"\r  0%|          | 0/3 [00:00<?, ?it/s]\r{BAR}\nUserWarning: careful\n"),
        nbformat.v4.new_output("stream", name="stderr", text="step 3: 40%|████      | 4/10 [00:01<00:02, 3.1it/s]\n"),
        nbformat.v4.new_output("stream", name="stdout", text="accuracy 0.91 (50% of the data)\n"),
        nbformat.v4.new_output("display_data", data={"application/vnd.jupyter.widget-view+json": {},
                                                     "text/plain": "HBox()"}),
    ]
    assert runner.strip_progress_bars(nb) == 3
    outs = nb.cells[0].outputs
    assert [o["text"] for o in outs] == ["UserWarning: careful\n", "accuracy 0.91 (50% of the data)\n"]
    assert runner.is_progress_bar(BAR) and not runner.is_progress_bar("val loss 1.23 | 50% done")


def test_strip_progress_bars_drops_the_profilers_log_lines():
    nb = new_notebook(cells=[new_code_cell("x")])
    log = ("USDT:2026-12-03 14:45:32 9377:9377 SyncActivityProfilerHandler.cpp:52] profiler_start\n"
           "USDT:2026-12-03 14:45:34 9377:9377 SyncActivityProfilerHandler.cpp:59] profiler_stop\n")
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", name="stderr", text=log),
                           nbformat.v4.new_output("stream", name="stdout", text="USDT: a word in a print stays\n")]
    assert runner.strip_progress_bars(nb) == 2
    assert [o["text"] for o in nb.cells[0].outputs] == ["USDT: a word in a print stays\n"]


# ---------------------------------------------------------------- summary, budget, rehearsal
def test_summary_table_lists_planned_and_actual_seconds():
    res = [runner.RunResult("01_a.ipynb", 12.0, True, planned_s=30.0),
           runner.RunResult("02_b.ipynb", 0.0, False, "budget: 5 s left, planned 40 s", 40.0, skipped=True,
                            plan=runner.Plan(timing=True, planned_full_s=40.0)),
           runner.RunResult("03_c.ipynb", 3.5, False, "CellExecutionError: boom")]
    table = runner.summary_table(res).splitlines()
    assert table[2].split() == ["01_a.ipynb", "30", "12.0", "ok"]
    assert table[3].split()[:5] == ["02_b.ipynb", "yes", "40", "0.0", "SKIPPED"]
    assert table[4].split()[:4] == ["03_c.ipynb", "-", "3.5", "FAILED"]
    assert table[5].split()[:3] == ["total", "70", "15.5"] and "1 without a plan" in table[5]
    assert table[6] == "1 passed, 1 failed, 1 skipped"


def test_budget_skips_a_chapter_that_no_longer_fits(tmp_path):
    nbp = tmp_path / "01_x.ipynb"
    _nb(nbp, ["x = 1"])
    runner.write_plan(nbp, planned_full_s=60)
    r = runner.run_notebook(nbp, "full", deadline=time.time() + 30)  # 30 s left, 60 planned
    assert r.skipped and not r.ok and "budget" in r.error and r.planned_s == 60
    assert not (tmp_path / "01_x.failed.ipynb").exists()


def test_rehearse_needs_full_scale_and_bad_run_args(tmp_path):
    nbp = tmp_path / "01_x.ipynb"
    _nb(nbp, ["x = 1"])
    with pytest.raises(ValueError, match="rehearse"):
        runner.run_notebook(nbp, "cpu", rehearse=True)
    with pytest.raises(ValueError, match="jobs"):
        runner.run_notebooks([nbp], jobs=0)
    with pytest.raises(ValueError, match="budget"):
        runner.run_notebooks([nbp], budget=-5)
    with pytest.raises(ValueError, match="paths"):
        runner.run_notebooks([tmp_path / "missing.ipynb"])
    assert main(["run-notebooks", "--rehearse", "--scale", "cpu", str(nbp)]) == 2


@pytest.mark.slow
def test_rehearsal_runs_full_config_capped_and_never_touches_the_notebook(tmp_path):
    nbp = tmp_path / "01_x.ipynb"
    _nb(nbp, ["from bmlib import env, results\n"
              "print(env.scale(), env.rehearsing(), env.rehearse_cap(1000))\n"
              "print(results.results_dir().name)"])
    before = nbp.read_text()
    res = runner.run_notebooks([nbp], scale="full", timeout=120, rehearse=True, out_dir=tmp_path / "out")
    assert res[0].ok, res[0].error
    assert nbp.read_text() == before
    out = nbformat.read(tmp_path / "out" / "01_x.ipynb", as_version=4).cells[0].outputs[0]["text"]
    assert out.split() == ["full", "True", "2", "rehearse"]


@pytest.mark.slow
def test_jobs_run_timing_chapters_alone_and_respect_after(tmp_path):
    log = tmp_path / "log.txt"
    cell = ("import time, pathlib\np = pathlib.Path({log!r})\n"
            "with p.open('a') as f: f.write(f'start {name} {{time.time()}}\\n')\n"
            "time.sleep(0.3)\n"
            "with p.open('a') as f: f.write(f'end {name} {{time.time()}}\\n')")
    names = ["01_a", "02_b", "03_t"]
    for n in names:
        _nb(tmp_path / f"{n}.ipynb", [cell.format(log=str(log), name=n)])
    runner.write_plan(tmp_path / "03_t.ipynb", timing=True)
    runner.write_plan(tmp_path / "02_b.ipynb", after=["01_a"])
    res = runner.run_notebooks([tmp_path / f"{n}.ipynb" for n in names], scale="cpu", timeout=120, jobs=2)
    assert all(r.ok for r in res), [r.error for r in res]
    ev = {}
    for line in log.read_text().split("\n"):
        if line:
            kind, n, t = line.split()
            ev[(kind, n)] = float(t)
    assert ev[("start", "02_b")] >= ev[("end", "01_a")]  # after
    for n in ("01_a", "02_b"):  # nothing overlaps the timing chapter
        assert ev[("end", n)] <= ev[("start", "03_t")] or ev[("start", n)] >= ev[("end", "03_t")]
