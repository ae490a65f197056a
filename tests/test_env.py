import re

import pytest
import torch

from bmlib import env


@pytest.mark.parametrize("value,expected", [("cpu", "cpu"), ("full", "full"), ("FULL", "full"), (" cpu ", "cpu")])
def test_scale_reads_env(monkeypatch, value, expected):
    monkeypatch.setenv("BMLIB_SCALE", value)
    assert env.scale() == expected


def test_scale_default_follows_cuda(monkeypatch):
    monkeypatch.delenv("BMLIB_SCALE", raising=False)
    assert env.scale() == ("full" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(env, "_cuda_available", lambda: True)
    assert env.scale() == "full"
    monkeypatch.setattr(env, "_cuda_available", lambda: False)
    assert env.scale() == "cpu"


@pytest.mark.parametrize("bad", ["medium", "1", "gpu", "ci-full"])
def test_scale_rejects_unknown(monkeypatch, bad):
    monkeypatch.setenv("BMLIB_SCALE", bad)
    with pytest.raises(ValueError, match="BMLIB_SCALE"):
        env.scale()


def test_seed_everything_reproducible():
    env.seed_everything(123)
    a = torch.rand(5)
    env.seed_everything(123)
    assert torch.equal(a, torch.rand(5))
    for bad in (-1, 1.5, "3", True):
        with pytest.raises(ValueError, match="seed"):
            env.seed_everything(bad)


def test_device_and_bad_preference():
    assert env.device().type in ("cpu", "cuda")
    assert env.device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="prefer"):
            env.device("cuda")


def test_provenance_fields(monkeypatch):
    monkeypatch.setenv("BMLIB_SCALE", "cpu")
    p = env.provenance()
    for key in ("device", "torch", "transformers", "scale", "date", "git"):
        assert key in p and p[key]
    assert p["scale"] == "cpu"
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", p["date"])
    assert p["torch"] == torch.__version__


def test_provenance_git_commit_from_environment_when_the_tree_has_no_git(monkeypatch, tmp_path):
    monkeypatch.setenv("BMLIB_GIT_COMMIT", "abc1234")
    assert env.provenance()["git"] == "abc1234"
    monkeypatch.delenv("BMLIB_GIT_COMMIT")
    monkeypatch.setattr(env, "repo_root", lambda: tmp_path)  # a copy of the tree without .git
    assert env.provenance()["git"] == "unknown"


def test_notebook_header_prints_scale(monkeypatch, capsys):
    monkeypatch.setenv("BMLIB_SCALE", "cpu")
    prov = env.notebook_header("demo", seed=7)
    out = capsys.readouterr().out
    assert "scale: cpu" in out and "device:" in out and "torch:" in out
    assert prov["chapter"] == "demo" and prov["seed"] == 7


def test_artifacts_dir_override(monkeypatch, tmp_path):
    monkeypatch.setenv("BMLIB_ARTIFACTS", str(tmp_path / "a"))
    p = env.artifacts_dir("x", "y")
    assert p == tmp_path / "a" / "x" / "y" and p.is_dir()
