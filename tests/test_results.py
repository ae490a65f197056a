import json

import pytest

from bmlib import results


@pytest.fixture
def rdir(tmp_path, monkeypatch):
    monkeypatch.setenv("BMLIB_RESULTS_DIR", str(tmp_path))
    monkeypatch.setenv("BMLIB_SCALE", "cpu")
    return tmp_path


def test_save_and_load_roundtrip(rdir):
    p = results.save("demo", {"x_ms": 1.5, "acc": 0.9}, rows=[{"impl": "a", "ms": 1.5}])
    doc = json.loads(p.read_text())
    assert doc["chapter"] == "demo" and doc["figures"] == {"x_ms": 1.5, "acc": 0.9}
    assert doc["provenance"]["scale"] == "cpu" and doc["rows"][0]["impl"] == "a"
    assert results.load("demo")["figures"]["acc"] == 0.9
    assert [d["chapter"] for d in results.load_all(rdir)] == ["demo"]


def test_ci_scale_never_writes_committed_results(tmp_path, monkeypatch):
    monkeypatch.delenv("BMLIB_RESULTS_DIR", raising=False)
    monkeypatch.delenv("BMLIB_RUN_NOTEBOOKS", raising=False)  # tests and nbval: not the runner
    monkeypatch.delenv("BMLIB_REHEARSE", raising=False)
    monkeypatch.setenv("BMLIB_SCALE", "cpu")
    monkeypatch.setenv("BMLIB_ARTIFACTS", str(tmp_path / "art"))
    p = results.save("demo_ci_location", {"v": 1.0})
    assert p.parent == tmp_path / "art" / "results"


@pytest.mark.parametrize("figures,match", [
    ({}, "non-empty"), ({"Bad Name": 1.0}, "snake_case"), ({"x": "fast"}, "number"),
    ({"x": float("nan")}, "finite"), ({"x": True}, "number"),
])
def test_bad_figures(rdir, figures, match):
    with pytest.raises(ValueError, match=match):
        results.save("demo", figures)


def test_bad_chapter_and_rows(rdir):
    with pytest.raises(ValueError, match="chapter"):
        results.save("Demo Chapter", {"x": 1})
    with pytest.raises(ValueError, match="rows"):
        results.save("demo", {"x": 1}, rows=[1, 2])


# ---------------------------------------------------------------- where save() writes, by context
def test_cpu_scale_inside_run_notebooks_writes_results_cpu(tmp_path, monkeypatch):
    monkeypatch.delenv("BMLIB_RESULTS_DIR", raising=False)
    monkeypatch.delenv("BMLIB_REHEARSE", raising=False)
    monkeypatch.setenv("BMLIB_SCALE", "cpu")
    monkeypatch.setenv("BMLIB_RUN_NOTEBOOKS", "1")
    monkeypatch.setattr(results, "repo_root", lambda: tmp_path)
    p = results.save("demo", {"v": 2.0})
    assert p == tmp_path / "results" / "cpu" / "demo.json"
    assert results.load("demo")["figures"] == {"v": 2.0}


def test_full_scale_writes_results_and_rehearsal_never_does(tmp_path, monkeypatch):
    monkeypatch.delenv("BMLIB_RESULTS_DIR", raising=False)
    monkeypatch.setattr(results, "repo_root", lambda: tmp_path)
    monkeypatch.setenv("BMLIB_ARTIFACTS", str(tmp_path / "art"))
    monkeypatch.setenv("BMLIB_SCALE", "full")
    monkeypatch.delenv("BMLIB_REHEARSE", raising=False)
    assert results.save("demo", {"v": 1.0}) == tmp_path / "results" / "demo.json"
    monkeypatch.setenv("BMLIB_REHEARSE", "1")
    p = results.save("demo", {"v": 3.0})
    assert p == tmp_path / "art" / "results" / "rehearse" / "demo.json"
    assert json.loads(p.read_text())["provenance"]["rehearse"] is True
    assert json.loads((tmp_path / "results" / "demo.json").read_text())["figures"] == {"v": 1.0}


def test_cpu_load_never_falls_back_to_full_results(tmp_path, monkeypatch):
    monkeypatch.delenv("BMLIB_RESULTS_DIR", raising=False)
    monkeypatch.delenv("BMLIB_RUN_NOTEBOOKS", raising=False)
    monkeypatch.setattr(results, "repo_root", lambda: tmp_path)
    monkeypatch.setenv("BMLIB_ARTIFACTS", str(tmp_path / "art"))
    monkeypatch.setenv("BMLIB_SCALE", "full")
    results.save("demo", {"v": 1.0})
    monkeypatch.setenv("BMLIB_SCALE", "cpu")
    assert results.load("demo") is None  # a full figure is never shown as a CPU one


def test_runner_flag_must_be_0_or_1(monkeypatch):
    monkeypatch.delenv("BMLIB_RESULTS_DIR", raising=False)
    monkeypatch.setenv("BMLIB_SCALE", "cpu")
    monkeypatch.setenv("BMLIB_RUN_NOTEBOOKS", "yes")
    with pytest.raises(ValueError, match="BMLIB_RUN_NOTEBOOKS"):
        results.results_dir()


# ---------------------------------------------------------------- show_reference_run
def _reference(folder, **prov):
    p = {"device": "NVIDIA H200", "scale": "full", "date": "2026-12-02", "git": "abc1234",
         "torch": "2.11.0", **prov}
    doc = {"chapter": "demo", "provenance": p, "figures": {"gemm_bf16_tflops": 771.25, "n": 3},
           "rows": [{"impl": "bmlib", "ms": 1.5}, {"impl": "hf", "ms": 2.5}]}
    (folder / "demo.json").write_text(json.dumps(doc))
    return doc


def test_show_reference_run_without_a_run_says_so(tmp_path, capsys):
    assert results.show_reference_run("demo", folder=tmp_path) is None
    out = capsys.readouterr().out
    assert out.strip() == "No full-scale GPU run of this chapter has been committed yet."


def test_show_reference_run_shows_figures_rows_provenance_and_plot(tmp_path, capsys, monkeypatch):
    _reference(tmp_path)
    shown, plotted = [], []
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    doc = results.show_reference_run("demo", plot=plotted.append, folder=tmp_path)
    out = capsys.readouterr().out
    assert "NVIDIA H200" in out and "2026-12-02" in out and "git abc1234" in out
    assert "No full-scale" not in out
    figs, rows = shown
    assert list(figs.index) == ["gemm_bf16_tflops", "n"] and list(figs["value"]) == ["771.2", "3"]
    assert list(rows["impl"]) == ["bmlib", "hf"]
    assert plotted == [doc] and doc["figures"]["n"] == 3


def test_show_reference_run_refuses_non_full_or_rehearsal_files(tmp_path):
    _reference(tmp_path, scale="cpu")
    with pytest.raises(ValueError, match="not a full-scale"):
        results.show_reference_run("demo", folder=tmp_path)
    _reference(tmp_path, rehearse=True)
    with pytest.raises(ValueError, match="not a full-scale"):
        results.show_reference_run("demo", folder=tmp_path)
    (tmp_path / "demo.json").write_text(json.dumps({"figures": {}}))
    with pytest.raises(ValueError, match="provenance"):
        results.show_reference_run("demo", folder=tmp_path)


def test_show_reference_run_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="plot"):
        results.show_reference_run("demo", plot="bar", folder=tmp_path)
    with pytest.raises(ValueError, match="chapter"):
        results.show_reference_run("Demo Chapter", folder=tmp_path)


def test_show_reference_run_on_the_repository_reads_results(monkeypatch, capsys):
    # with no committed file for an unknown chapter the repository's results/ says so plainly
    assert results.show_reference_run("no_such_chapter_xyz") is None
    assert "No full-scale GPU run" in capsys.readouterr().out
