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
