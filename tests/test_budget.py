import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bmlib import budget
from bmlib.models.gpt import GPT, GPTConfig

A100_BF16 = 312e12


def test_gpt3_flops_and_a100_hours():
    f = budget.training_flops(175e9, 300e9)
    assert f == pytest.approx(3.15e23, rel=1e-12)
    h = budget.gpu_hours(f, A100_BF16, mfu=1.0)
    assert h == pytest.approx(280_449, rel=1e-3)  # GPU-hours, not GPUs


def test_gpt3_narayanan_34_days_on_1024_a100():
    # Narayanan et al. (2021): 8ND with recomputation, 140 TFLOP/s per A100, 1024 GPUs
    f = budget.training_flops(175e9, 300e9, recompute=True)
    assert f == pytest.approx(4.2e23)
    days = budget.wall_clock_days(f, 1024, A100_BF16, mfu=140e12 / A100_BF16)
    assert 33 < days < 35


def test_training_flops_match_flop_counter_on_a_small_gpt(one_thread):
    """``training_flops`` with the attention term equals what FlopCounterMode counts for one forward
    and backward of a small GPT (math attention; N = the weight matrices + the output layer)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=61, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0, attn_impl="math")
    m = GPT(cfg)
    B, T = 3, 16
    idx = torch.randint(0, cfg.vocab_size, (B, T))
    fc = FlopCounterMode(display=False)
    with fc:
        _, loss = m(idx, idx)
        loss.backward()
    N_mm = 12 * cfg.n_layer * cfg.n_embd ** 2 + cfg.vocab_size * cfg.n_embd
    assert budget.training_flops(N_mm, B * T, n_layer=cfg.n_layer, seq_len=T, d_model=cfg.n_embd) \
        == fc.get_total_flops()


def test_attention_args_together():
    with pytest.raises(ValueError, match="n_layer, seq_len and d_model"):
        budget.training_flops(1e6, 1e6, n_layer=2)


def test_chinchilla_20_tokens_per_param_and_optimal_split():
    assert budget.chinchilla_tokens(70e9) == pytest.approx(1.4e12)
    # Chinchilla itself: 70B params, 1.4T tokens -> C = 5.88e23
    n, d = budget.chinchilla_optimal(6 * 70e9 * 1.4e12)
    assert n == pytest.approx(70e9, rel=1e-9) and d == pytest.approx(1.4e12, rel=1e-9)


def test_fitted_optimum_minimises_loss_on_the_isoflop_line():
    C = 5.88e23
    n_opt, d_opt = budget.chinchilla_optimal_fitted(C)
    assert 6 * n_opt * d_opt == pytest.approx(C)
    ns = np.geomspace(n_opt / 10, n_opt * 10, 2001)
    losses = budget.chinchilla_loss(ns, C / (6 * ns))
    assert ns[np.argmin(losses)] == pytest.approx(n_opt, rel=0.01)
    assert 1e10 < n_opt < 1e11  # tens of billions at Chinchilla's budget


def test_chinchilla_loss_decreases_with_scale():
    assert budget.chinchilla_loss(1e9, 2e10) > budget.chinchilla_loss(1e10, 2e11) > budget.CHINCHILLA["E"]


def test_memory_per_param():
    assert budget.train_bytes_per_param("mixed-adam") == 16
    assert budget.train_bytes_per_param("fp32-adam") == 16
    assert budget.inference_bytes_per_param("bf16") == 2
    assert budget.inference_bytes_per_param("int4") == 0.5
    # GPT-2 124M: 12 layers, 768 wide, 1024 tokens, bf16 keys and values: 36 MiB
    assert budget.kv_cache_bytes(12, 768, 1024) == 36 * 2**20
    with pytest.raises(ValueError, match="recipe"):
        budget.train_bytes_per_param("adam-int2")
    with pytest.raises(ValueError, match="dtype"):
        budget.inference_bytes_per_param("fp6")


def test_run_budget_and_cost():
    r = budget.run_budget(1e9, 20e9, peak_flops_per_gpu=989.4e12, mfu=0.4, price_per_gpu_hour=2.5, n_gpus=8)
    # 6 x 1e9 x 20e9 = 1.2e20 FLOPs at 40 % of 989.4 TFLOP/s: 84.2 GPU-hours, $210.57, 0.44 days on 8
    assert r["flops"] == pytest.approx(1.2e20)
    assert r["gpu_hours"] == pytest.approx(84.226, abs=1e-3)
    assert r["cost"] == pytest.approx(210.57, abs=0.01)
    assert r["days"] == pytest.approx(0.43868, abs=1e-5)


@pytest.mark.parametrize("kw,name", [
    (dict(flops=-1, peak_flops_per_gpu=1e12, mfu=0.5), "flops"),
    (dict(flops=1e20, peak_flops_per_gpu=0, mfu=0.5), "peak_flops_per_gpu"),
    (dict(flops=1e20, peak_flops_per_gpu=1e12, mfu=1.5), "mfu"),
    (dict(flops=1e20, peak_flops_per_gpu=1e12, mfu=0), "mfu"),
])
def test_gpu_hours_bad_args(kw, name):
    with pytest.raises(ValueError, match=name):
        budget.gpu_hours(**kw)


def test_bad_types():
    with pytest.raises(ValueError, match="n_params"):
        budget.training_flops("1e9", 1e9)
    with pytest.raises(ValueError, match="n_gpus"):
        budget.wall_clock_days(1e20, 0, 1e12)
    with pytest.raises(ValueError, match="n_layer"):
        budget.kv_cache_bytes(0, 768, 1024)


@settings(max_examples=50, deadline=None)
@given(st.floats(1e6, 1e12), st.floats(1e6, 1e13), st.floats(0.05, 1.0))
def test_hours_scale_linearly(n, d, mfu):
    f = budget.training_flops(n, d)
    h1 = budget.gpu_hours(f, 1e15, mfu)
    h2 = budget.gpu_hours(2 * f, 1e15, mfu)
    assert h2 == pytest.approx(2 * h1)
    assert budget.gpu_hours(f, 1e15, mfu / 2) == pytest.approx(2 * h1)


@settings(max_examples=50, deadline=None)
@given(st.floats(1e15, 1e27))
def test_optimal_split_spends_the_budget(C):
    n, d = budget.chinchilla_optimal(C)
    assert 6 * n * d == pytest.approx(C, rel=1e-9)
    assert d / n == pytest.approx(20.0)


def test_serving_cost_per_million_by_hand():
    # 1,000 tokens/s for an hour is 3.6 M tokens; at $3.60 an hour that is $1 per million
    assert budget.serving_cost_per_million(1000.0, 3.6) == pytest.approx(1.0, rel=1e-12)
    # twice the throughput halves the cost; a free machine costs nothing
    assert budget.serving_cost_per_million(2000.0, 3.6) == pytest.approx(0.5, rel=1e-12)
    assert budget.serving_cost_per_million(10.0, 0.0) == 0.0
    for bad in (0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match="tokens_per_s"):
            budget.serving_cost_per_million(bad, 1.0)
    with pytest.raises(ValueError, match="dollars_per_hour"):
        budget.serving_cost_per_million(10.0, -2.0)
