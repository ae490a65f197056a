import json
import random

import numpy as np
import pytest
import torch

from bmlib import checkpoint as ckpt
from bmlib.models.gpt import GPT, GPTConfig

MICRO = GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16)


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(seed=0):
    torch.manual_seed(seed)
    return GPT(MICRO)


def test_round_trip_with_tied_weights(tmp_path):
    from safetensors import safe_open

    m = _model(0)
    d = ckpt.save(tmp_path / "c", m, step=3)
    with safe_open(str(d / ckpt.WEIGHTS), framework="pt") as f:
        keys = set(f.keys())
        aliases = json.loads(f.metadata()["aliases"])
    # the tied matrix is stored once, under one name, and the alias is recorded
    assert "lm_head.weight" not in keys and "transformer.wte.weight" in keys
    assert aliases == {"lm_head.weight": "transformer.wte.weight"}
    m2 = _model(1)
    assert not torch.equal(m2.transformer.wte.weight, m.transformer.wte.weight)
    state = ckpt.load(d, m2)
    assert state["step"] == 3
    for (n1, p1), (n2, p2) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2), n1
    assert m2.lm_head.weight is m2.transformer.wte.weight  # still tied after loading


def test_optimizer_and_extra_round_trip(tmp_path):
    m = _model(0)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    x = torch.randint(0, 64, (2, 8))
    m(x, x)[1].backward()
    opt.step()
    ckpt.save(tmp_path / "c", m, opt, step=1, extra={"history": [{"step": 1, "loss": 2.5}], "gen": torch.arange(3)})
    m2 = _model(0)
    opt2 = torch.optim.AdamW(m2.parameters(), lr=1e-3)
    st = ckpt.load(tmp_path / "c", m2, opt2)
    assert st["extra"]["history"] == [{"step": 1, "loss": 2.5}]
    assert torch.equal(st["extra"]["gen"], torch.arange(3))
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert s1.keys() == s2.keys()
    for k in s1:
        assert torch.equal(s1[k]["exp_avg"], s2[k]["exp_avg"])
        assert torch.equal(s1[k]["exp_avg_sq"], s2[k]["exp_avg_sq"])


def test_rng_states_restored(tmp_path):
    m = _model(0)
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    ckpt.save(tmp_path / "c", m)
    a = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(99)
    random.seed(99)
    np.random.seed(99)
    ckpt.load(tmp_path / "c", _model(0))
    b = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]


def test_truncated_checkpoint_refused(tmp_path):
    d = ckpt.save(tmp_path / "c", _model(0))
    f = d / ckpt.WEIGHTS
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(ckpt.CheckpointError, match="truncated"):
        ckpt.load(d, _model(0))


def test_tampered_checkpoint_refused(tmp_path):
    d = ckpt.save(tmp_path / "c", _model(0))
    f = d / ckpt.WEIGHTS
    raw = bytearray(f.read_bytes())
    raw[-5] ^= 0xFF  # same size, one byte of one weight changed
    f.write_bytes(bytes(raw))
    with pytest.raises(ckpt.CheckpointError, match="tampered"):
        ckpt.load(d, _model(0))
    # the model passed in is untouched when the checkpoint is refused
    m = _model(1)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load(d, m)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_tampered_state_and_missing_files_refused(tmp_path):
    d = ckpt.save(tmp_path / "c", _model(0))
    (d / ckpt.STATE).write_bytes(b"not a checkpoint")
    with pytest.raises(ckpt.CheckpointError, match="state.pt"):
        ckpt.load(d, _model(0))
    (d / ckpt.STATE).unlink()
    with pytest.raises(ckpt.CheckpointError, match="missing"):
        ckpt.verify(d)
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint"):
        ckpt.load(tmp_path / "nowhere", _model(0))
    (d / ckpt.MANIFEST).write_text("{trunc")
    with pytest.raises(ckpt.CheckpointError, match="not valid JSON"):
        ckpt.verify(d)


def test_wrong_model_refused(tmp_path):
    d = ckpt.save(tmp_path / "c", _model(0))
    other = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=16))
    with pytest.raises(ckpt.CheckpointError, match="does not fit"):
        ckpt.load(d, other)


def test_latest_pointer_and_pruning(tmp_path):
    m = _model(0)
    for s in (1, 2, 3):
        d = ckpt.save(tmp_path / f"step_{s:07d}", m, step=s)
        ckpt.write_latest(tmp_path, d, keep=2)
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_0000002", "step_0000003"]
    assert ckpt.resolve(tmp_path).name == "step_0000003"
    assert ckpt.load(tmp_path, _model(1))["step"] == 3


def test_bad_arguments():
    with pytest.raises(TypeError, match="model"):
        ckpt.state_dict_dedup("not a model")
    with pytest.raises(ValueError, match="step"):
        ckpt.save("/tmp/never-written", _model(0), step=-1)


def test_no_temp_files_left(tmp_path):
    d = ckpt.save(tmp_path / "c", _model(0))
    assert sorted(p.name for p in d.iterdir()) == sorted([ckpt.WEIGHTS, ckpt.STATE, ckpt.MANIFEST])
