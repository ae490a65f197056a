import dataclasses
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from bmlib import checkpoint as ckpt
from bmlib.data.tokens import TokenData
from bmlib.models.gpt import GPT, GPTConfig
from bmlib.data.arrays import ArrayData
from bmlib.train import (RESUME_FREE, TrainConfig, TrainingDiverged, config_changes, evaluate, lr_at,
                         measure_train_step, param_groups, resolve_peak_flops, train)

MICRO = GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16)


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(**kw):
    base = dict(max_steps=6, batch_size=4, lr=1e-2, warmup_steps=2, eval_iters=2, progress=False,
                device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def _tokens(n=2000, seed=0):
    g = torch.Generator().manual_seed(seed)
    # a learnable stream: mostly "next = current + 1 (mod 64)" with some noise
    ids = [0]
    noise = torch.randint(0, 64, (n,), generator=g)
    flip = torch.rand(n, generator=g) < 0.1
    for i in range(1, n):
        ids.append(int(noise[i]) if flip[i] else (ids[-1] + 1) % 64)
    return torch.tensor(ids)


def _token_data(block=8):
    ids = _tokens()
    return TokenData(ids[:1600], ids[1600:], block)


def _gpt(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=dropout))


# ---------------------------------------------------------------- schedule


def test_schedule_values():
    cfg = _cfg(max_steps=110, lr=1.0, min_lr=0.1, warmup_steps=10)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(4, cfg) == pytest.approx(0.5)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55)  # half-way down the cosine: (lr + min_lr) / 2
    assert lr_at(110, cfg) == pytest.approx(0.1)
    assert lr_at(500, cfg) == pytest.approx(0.1)  # clamped past the end
    lrs = [lr_at(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # monotone decay after warm-up
    const = _cfg(max_steps=50, lr=0.3, warmup_steps=5, lr_schedule="constant")
    assert [lr_at(s, const) for s in (0, 4, 5, 49)] == pytest.approx([0.06, 0.3, 0.3, 0.3])
    assert _cfg(lr=2.0, min_lr=None).final_lr == pytest.approx(0.2)
    with pytest.raises(ValueError, match="step"):
        lr_at(-1, cfg)


def test_lr_used_by_the_loop_matches_schedule():
    cfg = _cfg(max_steps=5, warmup_steps=2)
    res = train(_gpt(), _token_data(), cfg)
    assert [h["lr"] for h in res.history] == pytest.approx([lr_at(s, cfg) for s in range(5)])


# ---------------------------------------------------------------- config validation


@pytest.mark.parametrize("kw,match", [
    (dict(max_steps=0), "max_steps"), (dict(batch_size=0), "batch_size"), (dict(lr=-1.0), "lr"),
    (dict(lr=float("nan")), "lr"), (dict(min_lr=1.0, lr=0.1), "min_lr"), (dict(weight_decay=-0.1), "weight_decay"),
    (dict(lr_schedule="linear"), "lr_schedule"), (dict(grad_clip=0.0), "grad_clip"),
    (dict(grad_accum=0), "grad_accum"), (dict(warmup_steps=10, max_steps=5), "warmup_steps"),
    (dict(betas=(0.9, 1.0)), "betas"), (dict(dtype="fp16"), "dtype"), (dict(eval_iters=0), "eval_iters"),
    (dict(divergence_ratio=0.5), "divergence_ratio"), (dict(batch_size=2.5), "batch_size"),
    (dict(eval_interval=-1), "eval_interval"), (dict(seed=-3), "seed"),
    (dict(eps=-1.0), "eps"), (dict(eps=0.0), "eps"), (dict(eps=float("nan")), "eps"),
    (dict(weight_decay=float("inf")), "weight_decay"), (dict(grad_clip=float("inf")), "grad_clip"),
    (dict(min_lr=float("nan")), "min_lr"), (dict(min_lr=-0.1), "min_lr"), (dict(lr=True), "lr"),
    (dict(divergence_ratio=float("inf")), "divergence_ratio"), (dict(betas=(True, 0.9)), "betas"),
    (dict(betas=(0.9,)), "betas"), (dict(max_steps=True), "max_steps"), (dict(keep_checkpoints=0), "keep_checkpoints"),
    (dict(checkpoint_interval=-1), "checkpoint_interval"), (dict(eval_batch_size=0), "eval_batch_size"),
    (dict(warmup_steps=1.5), "warmup_steps"), (dict(device="gpu!"), "device"),
])
def test_bad_configs(kw, match):
    with pytest.raises(ValueError, match=match):
        _cfg(**kw)


@pytest.mark.parametrize("kw,match", [
    (dict(compile="yes"), "compile"), (dict(fused=1), "fused"), (dict(progress=None), "progress"),
    (dict(device=3), "device"), (dict(checkpoint_dir=5), "checkpoint_dir"),
])
def test_bad_config_types(kw, match):
    with pytest.raises(TypeError, match=match):
        _cfg(**kw)


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(["lr", "min_lr", "weight_decay", "grad_clip", "eps", "divergence_ratio"]),
       st.sampled_from([float("nan"), float("inf"), float("-inf")]))
def test_non_finite_numbers_rejected(name, value):
    with pytest.raises(ValueError, match=name):
        _cfg(**{name: value})


def test_bad_types():
    with pytest.raises(TypeError, match="loss_fn"):
        _cfg(loss_fn="mse")
    with pytest.raises(TypeError, match="cfg"):
        train(_gpt(), _token_data(), {"max_steps": 3})
    with pytest.raises(TypeError, match="get_batch"):
        train(_gpt(), [1, 2, 3], _cfg())
    class OutputOnly(nn.Linear):
        def forward(self, x, y=None):
            return super().forward(x)

    lin = OutputOnly(3, 1)
    data = ArrayData(torch.randn(8, 3), torch.randn(8, 1), torch.randn(4, 3), torch.randn(4, 1))
    with pytest.raises(TypeError, match="loss_fn"):  # model returns a tensor, not (output, loss)
        train(lin, data, _cfg())


@settings(max_examples=25, deadline=None)
@given(st.one_of(st.integers(max_value=0), st.floats(max_value=0.0, allow_nan=False)))
def test_nonpositive_lr_rejected(lr):
    with pytest.raises(ValueError, match="lr"):
        _cfg(lr=lr)


# ---------------------------------------------------------------- optimizer groups


def test_param_groups_follow_nanogpt():
    m = _gpt()
    decay, no_decay = param_groups(m, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(m.parameters()))  # tied once
    with pytest.raises(ValueError, match="trainable"):
        param_groups(nn.Linear(2, 2).requires_grad_(False), 0.1)


# ---------------------------------------------------------------- learning and evaluation


def test_training_learns_and_reports():
    res = train(_gpt(), _token_data(), _cfg(max_steps=40, lr=1e-2, eval_interval=20, batch_size=8))
    assert res.steps == 40 and len(res.history) == 40
    first = res.history[0]["train_loss"]
    assert first == pytest.approx(math.log(64), rel=0.1)  # uniform guess at init
    assert res.final_val_loss < first - 1.0  # it learned the +1 pattern
    assert [e["step"] for e in res.evals] == [20, 40]
    assert res.best_val_loss == min(e["val_loss"] for e in res.evals)
    assert res.history[19]["val_loss"] == res.evals[0]["val_loss"]
    assert res.history[0]["val_loss"] is None
    assert res.tokens_per_s > 0 and res.mfu is None and res.flops is None  # no peak_flops: no MFU meter
    assert set(res.history[0]) >= {"step", "lr", "train_loss", "val_loss", "grad_norm", "tokens_per_s", "mfu"}


def test_evaluate_is_deterministic_and_restores_mode():
    m, d = _gpt(dropout=0.2), _token_data()
    m.train()
    a = evaluate(m, d, iters=3, batch_size=4)
    b = evaluate(m, d, iters=3, batch_size=4)
    assert a == b and m.training
    with pytest.raises(ValueError, match="iters"):
        evaluate(m, d, iters=0)
    with pytest.raises(ValueError, match="split"):
        evaluate(m, d, split="test")


def test_loss_fn_with_plain_module_and_array_data():
    g = torch.Generator().manual_seed(0)
    w = torch.tensor([[2.0], [-1.0], [0.5]])
    xtr, xva = torch.randn(256, 3, generator=g), torch.randn(64, 3, generator=g)
    data = ArrayData(xtr, xtr @ w, xva, xva @ w)
    torch.manual_seed(0)
    lin = nn.Linear(3, 1)
    res = train(lin, data, _cfg(max_steps=150, lr=0.05, batch_size=32, weight_decay=0.0, loss_fn=F.mse_loss))
    assert res.final_val_loss < 1e-3
    assert torch.allclose(lin.weight.detach().t(), w, atol=0.05)
    assert res.mfu is None  # no flops_per_token: no MFU meter
    assert data.epoch >= 150 * 32 // 256


def test_array_data_epochs_without_replacement():
    x = torch.arange(10)
    d = ArrayData(x, x, x, x)
    g = torch.Generator().manual_seed(0)
    seen = torch.cat([d.get_batch("train", 5, g)[0] for _ in range(2)])
    assert sorted(seen.tolist()) == list(range(10))  # one epoch = every row once
    with pytest.raises(ValueError, match="rows"):
        ArrayData(torch.zeros(3, 2), torch.zeros(4), x, x)
    with pytest.raises(ValueError, match="split"):
        d.get_batch("test", 2, g)


# ---------------------------------------------------------------- gradient accumulation


class _Fixed:
    """Returns consecutive rows of a fixed batch, so accumulation sees the same examples."""

    def __init__(self, x, y):
        self.x, self.y, self.i = x, y, 0

    def get_batch(self, split, batch_size, generator):
        if split == "val":
            return self.x[:batch_size], self.y[:batch_size]
        s = slice(self.i, self.i + batch_size)
        self.i = (self.i + batch_size) % len(self.x)
        return self.x[s], self.y[s]


def test_grad_accumulation_equals_large_batch():
    ids = _tokens(8 * 9).view(8, 9)
    x, y = ids[:, :-1], ids[:, 1:]
    big, small = _gpt(3), _gpt(3)
    kw = dict(max_steps=3, warmup_steps=0, grad_clip=None, eval_iters=1)
    train(big, _Fixed(x, y), _cfg(batch_size=8, grad_accum=1, **kw))
    train(small, _Fixed(x, y), _cfg(batch_size=2, grad_accum=4, **kw))
    for (n, a), (_, b) in zip(big.named_parameters(), small.named_parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=n)


# ---------------------------------------------------------------- exact resume


def _stop_at(k):
    return lambda rec, model: rec["step"] == k


def test_resume_is_bit_identical_gpt(tmp_path):
    def cfg(d):
        return _cfg(max_steps=8, checkpoint_dir=str(d), checkpoint_interval=100, eval_interval=4)

    full = train(_gpt(0, dropout=0.1), _token_data(), cfg(tmp_path / "a"))
    part = train(_gpt(0, dropout=0.1), _token_data(), cfg(tmp_path / "b"), callbacks=[_stop_at(3)])
    assert part.steps == 3 and ckpt.resolve(tmp_path / "b").name == "step_0000003"
    torch.manual_seed(1234)  # a different global RNG state: resume must restore the saved one
    resumed = train(_gpt(7, dropout=0.1), _token_data(), cfg(tmp_path / "b"), resume_from=tmp_path / "b")
    assert resumed.steps == 8
    for (n, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), n
    assert [h["train_loss"] for h in full.history] == [h["train_loss"] for h in resumed.history]
    assert full.final_val_loss == resumed.final_val_loss


def test_resume_is_bit_identical_array_data(tmp_path):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 3, generator=g), torch.randn(40, 1, generator=g)

    def run(stop=None, resume=None, d="a"):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.2), nn.Linear(8, 1))
        cfg = _cfg(max_steps=12, batch_size=16, loss_fn=F.mse_loss, checkpoint_dir=str(tmp_path / d))
        return train(m, ArrayData(x, y, x, y), cfg, resume_from=resume,
                     callbacks=[_stop_at(stop)] if stop else None)

    full = run()
    run(stop=5, d="b")  # 5 steps x 16 rows: stops in the middle of the third epoch
    resumed = run(resume=tmp_path / "b", d="b")
    for (n, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), n


def test_mfu_is_computed_from_totals():
    m, data = _gpt(), _token_data(block=8)
    res = train(m, data, _cfg(max_steps=5, batch_size=4, grad_accum=2), peak_flops=1e12)
    tokens = 5 * 2 * 4 * 8  # steps x micro-batches x rows x positions
    assert res.flops == pytest.approx(m.flops_per_token(8) * tokens)
    assert res.mfu == pytest.approx(res.flops / res.train_seconds / 1e12)
    # the step records use the same definition: their seconds add up to the total
    step_seconds = [2 * 4 * 8 / h["tokens_per_s"] for h in res.history]
    assert sum(step_seconds) == pytest.approx(res.train_seconds, rel=1e-6)
    assert sum(h["mfu"] * t for h, t in zip(res.history, step_seconds)) * 1e12 == pytest.approx(res.flops)
    assert res.train_seconds < res.seconds  # evaluation is not counted as training time


def test_mfu_needs_a_peak_and_a_flop_count():
    for bad in (-1.0, 0, float("nan"), "fast", True):
        with pytest.raises(ValueError, match="peak_flops"):
            train(_gpt(), _token_data(), _cfg(max_steps=1, warmup_steps=0), peak_flops=bad)
    data = ArrayData(torch.randn(8, 3), torch.randn(8, 1), torch.randn(4, 3), torch.randn(4, 1))
    with pytest.raises(ValueError, match="flops_per_token"):
        train(nn.Linear(3, 1), data, _cfg(max_steps=1, warmup_steps=0, loss_fn=F.mse_loss), peak_flops=1e12)
    assert resolve_peak_flops(None, "cpu", "fp32") is None
    assert resolve_peak_flops(2e12, "cpu", "fp32") == 2e12
    if not torch.cuda.is_available():  # "auto" on a CPU: bmlib.hw has no peak a reader can trust
        assert train(_gpt(), _token_data(), _cfg(max_steps=1, warmup_steps=0), peak_flops="auto").mfu is None
        assert resolve_peak_flops("auto", "cpu", "fp32") is None


# ---------------------------------------------------------------- resume refuses another run's config


def _interrupted(tmp_path, **kw):
    cfg = _cfg(max_steps=8, checkpoint_dir=str(tmp_path), **kw)
    train(_gpt(0), _token_data(), cfg, callbacks=[_stop_at(3)])
    return cfg


@pytest.mark.parametrize("change", [dict(lr=2e-2), dict(batch_size=2), dict(seed=1), dict(max_steps=10),
                                    dict(grad_accum=2), dict(warmup_steps=1), dict(weight_decay=0.0),
                                    dict(lr=2e-2, seed=4)])
def test_resume_refuses_a_changed_config(tmp_path, change):
    cfg = _interrupted(tmp_path)
    new = dataclasses.replace(cfg, **change)
    m = _gpt(7)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match="differs from the config") as e:
        train(m, _token_data(), new, resume_from=tmp_path)
    for name in change:  # the message names each changed field with both values
        assert f"{name}: {getattr(cfg, name)!r} -> {getattr(new, name)!r}" in str(e.value)
    assert str(tuple(change)) in str(e.value)  # and says how to resume anyway
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # refused before loading
    res = train(m, _token_data(), new, resume_from=tmp_path, allow_changes=tuple(change))
    assert res.steps == new.max_steps and res.history[0]["lr"] == lr_at(0, cfg)  # the saved history is kept


def test_resume_allows_fields_that_do_not_change_the_run(tmp_path):
    cfg = _interrupted(tmp_path)
    new = dataclasses.replace(cfg, progress=True, checkpoint_interval=2, keep_checkpoints=3,
                              checkpoint_dir=tmp_path)  # a Path instead of the same folder as a str
    assert set(RESUME_FREE) == {"progress", "checkpoint_dir", "checkpoint_interval", "keep_checkpoints"}
    assert config_changes(cfg.to_dict(), new) == {}
    assert train(_gpt(7), _token_data(), new, resume_from=tmp_path).steps == 8
    with pytest.raises(ValueError, match="allow_changes"):
        config_changes(cfg.to_dict(), new, allow_changes=("learning_rate",))


def test_resume_beyond_max_steps_refused_before_loading(tmp_path):
    cfg = _interrupted(tmp_path)  # a checkpoint at step 3
    m = _gpt(7)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match="step 3, beyond cfg.max_steps=2"):
        train(m, _token_data(), dataclasses.replace(cfg, max_steps=2), resume_from=tmp_path,
              allow_changes=("max_steps",))
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_resume_from_a_checkpoint_not_written_by_train(tmp_path):
    m = _gpt(0)
    ckpt.save(tmp_path / "plain", m, torch.optim.AdamW(m.parameters()), step=2)
    with pytest.raises(ValueError, match="not a checkpoint written by bmlib.train"):
        train(_gpt(1), _token_data(), _cfg(), resume_from=tmp_path / "plain")
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint"):
        train(_gpt(1), _token_data(), _cfg(), resume_from=tmp_path / "nowhere")


# ---------------------------------------------------------------- divergence


class _Poisoned(nn.Module):
    """Wraps a model; from forward call ``at`` on, the loss is ``value`` (NaN or huge)."""

    def __init__(self, inner, at, value):
        super().__init__()
        self.inner, self.at, self.value, self.calls = inner, at, value, 0

    def forward(self, x, y):
        out, loss = self.inner(x, y)
        self.calls += 1
        if self.training and self.calls >= self.at:
            loss = loss * self.value
        return out, loss


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    m = _Poisoned(_gpt(), at=5, value=float("nan"))
    cfg = _cfg(max_steps=10, checkpoint_dir=str(tmp_path), checkpoint_interval=1, eval_interval=0)
    with pytest.raises(TrainingDiverged, match="diverged at step 5.*nan") as e:
        train(m, _token_data(), cfg)
    assert e.value.step == 5 and math.isnan(e.value.loss)
    assert e.value.last_checkpoint.endswith("step_0000004")
    assert ckpt.resolve(tmp_path).name == "step_0000004"
    good = _Poisoned(_gpt(9), at=10**9, value=1.0)
    st = ckpt.load(tmp_path, good)
    assert st["step"] == 4
    assert all(torch.isfinite(p).all() for p in good.parameters())
    # the bad step did not touch the weights: they equal the step-4 checkpoint
    for (n, a), (_, b) in zip(m.state_dict().items(), good.state_dict().items()):
        assert torch.equal(a, b), n


def test_exploding_loss_stops():
    m = _Poisoned(_gpt(), at=3, value=1e3)
    with pytest.raises(TrainingDiverged, match="divergence_ratio") as e:
        train(m, _token_data(), _cfg(max_steps=10))
    assert e.value.step == 3 and e.value.last_checkpoint is None
    # with the check off, the same run finishes
    m2 = _Poisoned(_gpt(), at=3, value=1e3)
    assert train(m2, _token_data(), _cfg(max_steps=4, divergence_ratio=None)).steps == 4


# ---------------------------------------------------------------- benchmark helper


def test_measure_train_step_cpu():
    m = _gpt()
    kw = dict(dtype="fp32", warmup_s=0.0, budget_s=0.05, min_reps=2, max_reps=3)
    r = measure_train_step(m, batch_size=2, seq_len=8, peak_flops=1e12, **kw)
    assert r["flops_per_step"] == pytest.approx(m.flops_per_token(8) * 16)  # batch x seq_len tokens
    assert r["reps"] >= 2 and r["peak_tflops"] == 1.0
    assert r["mfu"] == pytest.approx(r["tflops"] / 1.0)  # MFU and TFLOP/s from the same median
    none = measure_train_step(m, batch_size=2, seq_len=8, peak_flops=None, **kw)
    assert none["mfu"] is None and none["peak_tflops"] is None
    with pytest.raises(ValueError, match="seq_len"):
        measure_train_step(m, batch_size=2, seq_len=17)
    with pytest.raises(ValueError, match="dtype"):
        measure_train_step(m, batch_size=2, seq_len=8, dtype="int8")
