"""bmlib.checkpoint: round trips (tied weights, optimizer, RNG, extra) and all-or-nothing loading.

Every refusal is a :class:`bmlib.checkpoint.CheckpointError` (a ``ValueError``) raised before the
model, the optimizer or the global RNGs are touched: :func:`_refused` checks all three each time.
The crash tests (a writer killed mid-save) live in test_io.py beside the other kill tests.
"""
import json
import random

import numpy as np
import pytest
import torch

from bmlib import checkpoint as ckpt
from bmlib.models.gpt import GPT, GPTConfig

MICRO = GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16)


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(seed=0, cfg=MICRO):
    torch.manual_seed(seed)
    return GPT(cfg)


def _trained(seed=0):
    """A model and an AdamW that has taken one step (so the optimizer has state to save)."""
    m = _model(seed)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    x = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(seed))
    m(x, x)[1].backward()
    opt.step()
    opt.zero_grad()
    return m, opt


def _snapshot(model, opt=None):
    import copy

    return ({k: v.clone() for k, v in model.state_dict().items()},
            copy.deepcopy(opt.state_dict()) if opt is not None else None, torch.get_rng_state())


def _same_optimizer_state(a, b):
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        for name, v in a["state"][k].items():
            assert torch.equal(v, b["state"][k][name]), (k, name)


def _refused(d, model, match, opt=None):
    """``ckpt.load(d, model, opt)`` raises CheckpointError matching ``match`` and changes nothing."""
    weights, opt_state, rng = _snapshot(model, opt)
    with pytest.raises(ckpt.CheckpointError, match=match) as e:
        ckpt.load(d, model, opt)
    assert isinstance(e.value, ValueError)
    after = model.state_dict()
    assert all(torch.equal(weights[k], after[k]) for k in weights), "the model was partly loaded"
    if opt is not None:
        _same_optimizer_state(opt_state, opt.state_dict())
    assert torch.equal(rng, torch.get_rng_state())
    return e.value


# ---------------------------------------------------------------------------- round trips
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
    m, opt = _trained(0)
    ckpt.save(tmp_path / "c", m, opt, step=1, extra={"history": [{"step": 1, "loss": 2.5}], "gen": torch.arange(3)})
    m2 = _model(0)
    opt2 = torch.optim.AdamW(m2.parameters(), lr=1e-3)
    st = ckpt.load(tmp_path / "c", m2, opt2)
    assert st["extra"]["history"] == [{"step": 1, "loss": 2.5}]
    assert torch.equal(st["extra"]["gen"], torch.arange(3))
    _same_optimizer_state(opt.state_dict(), opt2.state_dict())
    assert opt2.state_dict()["state"][0]["exp_avg"].abs().sum() > 0  # real state, not zeros


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


def test_latest_pointer_and_pruning(tmp_path):
    m = _model(0)
    for s in (1, 2, 3):
        d = ckpt.save(tmp_path / f"step_{s:07d}", m, step=s)
        ckpt.write_latest(tmp_path, d, keep=2)
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_0000002", "step_0000003"]
    assert ckpt.resolve(tmp_path).name == "step_0000003"
    assert ckpt.load(tmp_path, _model(1))["step"] == 3


def test_no_temp_files_left(tmp_path):
    d = ckpt.save(tmp_path / "c", _model(0))
    assert sorted(p.name for p in d.iterdir()) == sorted([ckpt.WEIGHTS, ckpt.STATE, ckpt.MANIFEST])


# ---------------------------------------------------------------------------- damaged files
def _damage(d, how):
    w, s, man = d / ckpt.WEIGHTS, d / ckpt.STATE, d / ckpt.MANIFEST
    doc = json.loads(man.read_text())
    if how == "truncate_weights":
        w.write_bytes(w.read_bytes()[:-100])
        return "bytes.*truncated"
    if how == "truncate_state":
        s.write_bytes(s.read_bytes()[: s.stat().st_size // 2])
        return "state.pt has .* bytes"
    if how == "flip_byte":  # same size, one byte of one weight changed: only the sha256 notices
        b = bytearray(w.read_bytes())
        b[-5] ^= 0xFF
        w.write_bytes(bytes(b))
        return "sha256.*tampered"
    if how == "state_replaced":
        s.write_bytes(b"not a checkpoint")
        return "state.pt"
    if how == "drop_state":
        s.unlink()
        return "missing"
    if how == "truncate_manifest":
        man.write_text(man.read_text()[:20])
        return "manifest.json is not valid JSON"
    if how == "wrong_format":
        doc["format"] = "someone-else/9"
    elif how == "manifest_without_files":  # was a KeyError
        del doc["files"]
        man.write_text(json.dumps(doc))
        return 'no "files" table'
    elif how == "state_not_in_manifest":  # state.pt present but never verified
        del doc["files"][ckpt.STATE]
        man.write_text(json.dumps(doc))
        return "does not list.*state.pt"
    elif how == "manifest_entry_without_sha":
        del doc["files"][ckpt.WEIGHTS]["sha256"]
        man.write_text(json.dumps(doc))
        return "sha256"
    elif how == "manifest_not_an_object":
        man.write_text("[1, 2]")
        return "JSON object"
    man.write_text(json.dumps(doc))
    return "format"


DAMAGES = ["truncate_weights", "truncate_state", "flip_byte", "state_replaced", "drop_state",
           "truncate_manifest", "wrong_format", "manifest_without_files", "state_not_in_manifest",
           "manifest_entry_without_sha", "manifest_not_an_object"]


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_checkpoint_refused_and_nothing_touched(tmp_path, how):
    m, opt = _trained(0)
    d = ckpt.save(tmp_path / "c", m, opt, step=1)
    match = _damage(d, how)
    m2, opt2 = _trained(1)
    _refused(d, m2, match, opt2)
    with pytest.raises(ckpt.CheckpointError, match=match):
        ckpt.load_weights(d, m2)


def test_missing_and_broken_latest_pointer(tmp_path):
    m = _model(1)
    _refused(tmp_path / "nowhere", m, "no checkpoint")
    d = ckpt.save(tmp_path / "step_0000001", _model(0), step=1)
    ckpt.write_latest(tmp_path, d)
    (tmp_path / ckpt.LATEST).write_text('{"checkpoint": "step_00')  # truncated: was a JSONDecodeError
    _refused(tmp_path, m, "latest.json is not valid JSON")
    (tmp_path / ckpt.LATEST).write_text('{"folder": "step_0000001"}')
    _refused(tmp_path, m, 'no "checkpoint" folder name')
    (tmp_path / ckpt.LATEST).write_text('{"checkpoint": "step_0000009"}')
    _refused(tmp_path, m, "points to .*step_0000009.*no manifest.json")


# ---------------------------------------------------------------------------- does not fit
def test_wrong_model_refused_before_any_weight_is_copied(tmp_path):
    d = ckpt.save(tmp_path / "c", _model(0), step=0)
    _refused(d, _model(1, GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=16)),
             "does not fit.*missing")
    # same names, one shape differs (the position table): load_state_dict alone would copy every
    # other tensor and then raise, leaving a half-loaded model
    e = _refused(d, _model(1, GPTConfig(vocab_size=64, block_size=32, n_layer=1, n_head=2, n_embd=16)),
                 "does not fit")
    assert "transformer.wpe.weight" in str(e)
    _refused(d, _model(1).to(torch.float64), "does not fit.*float64")
    _refused(d, torch.nn.Linear(8, 4), "does not fit")


def test_optimizer_that_does_not_match_refused_before_the_model_is_loaded(tmp_path):
    m, opt = _trained(0)
    d = ckpt.save(tmp_path / "c", m, opt, step=1)
    m2 = _model(1)
    # fewer parameters in the optimizer (was: weights loaded, then ValueError from the optimizer)
    frozen_head = torch.optim.AdamW(list(m2.parameters())[1:], lr=1e-3)
    _refused(d, m2, "optimizer state has groups of", frozen_head)
    # same sizes, another optimizer class
    _refused(d, m2, "different optimizer class", torch.optim.SGD(m2.parameters(), lr=0.1, momentum=0.9))
    # two groups where the checkpoint has one
    ps = list(m2.parameters())
    _refused(d, m2, "groups of", torch.optim.AdamW([{"params": ps[:2]}, {"params": ps[2:]}], lr=1e-3))
    # an optimizer asked for where the checkpoint saved none
    d2 = ckpt.save(tmp_path / "no_opt", m, step=1)
    _refused(d2, m2, "holds no optimizer state", torch.optim.AdamW(m2.parameters(), lr=1e-3))


def test_optimizer_state_of_the_wrong_shape_refused(tmp_path):
    m, opt = _trained(0)
    d = ckpt.save(tmp_path / "c", m, opt, step=1)
    state = torch.load(d / ckpt.STATE, weights_only=True)
    state["optimizer"]["state"][0]["exp_avg"] = torch.zeros(3)
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    (d / ckpt.STATE).write_bytes(buf.getvalue())
    doc = json.loads((d / ckpt.MANIFEST).read_text())  # re-sign it: the content is what is wrong
    doc["files"][ckpt.STATE] = {"sha256": ckpt.sha256_file(d / ckpt.STATE), "bytes": len(buf.getvalue())}
    (d / ckpt.MANIFEST).write_text(json.dumps(doc))
    m2, opt2 = _trained(1)
    _refused(d, m2, "exp_avg.*shape", opt2)


def test_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="model"):
        ckpt.state_dict_dedup("not a model")
    with pytest.raises(ValueError, match="step"):
        ckpt.save(tmp_path / "never-written", _model(0), step=-1)
    d = ckpt.save(tmp_path / "c", _model(0))
    with pytest.raises(TypeError, match="model"):
        ckpt.load(d, {"not": "a model"})
    with pytest.raises(TypeError, match="model"):
        ckpt.load_weights(d, None)
