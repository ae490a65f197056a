"""bmlib.flops against torch.utils.flop_counter.FlopCounterMode (the matmuls PyTorch actually runs).

FlopCounterMode counts matmuls, convolutions and the fused attention kernels it has formulas for;
it does not see softmax, LayerNorm, GELU, scaling, bias additions or other elementwise work, and it
has no formula for the CPU's fused SDPA kernel (so these tests use ``attn_impl="math"``, whose
``q kᵀ`` and ``att v`` are plain matmuls). The book's convention counts matmuls only, so the matmul
part is compared exactly. Two differences are by convention and are asserted as such: GPT's
``flops_per_token`` counts biases and LayerNorm gains as weights (exactly ``2 (13 L C + 2 C)`` per
pass more: < 1 % at GPT-2 sizes), and a causal mask is
not subtracted (the math path multiplies the full square, and so do the counts).
"""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from bmlib import benchmarks, budget, flops
from bmlib.attention import MultiHeadAttention, attention
from bmlib.models.gpt import GPT, GPTConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def counted(fn) -> int:
    fc = FlopCounterMode(display=False)
    with fc:
        fn()
    return fc.get_total_flops()


def _gpt(n_layer=2, n_embd=32, n_head=4, vocab=97, block=32):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=vocab, block_size=block, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                    dropout=0.0, attn_impl="math")
    return cfg, GPT(cfg)


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("shape", [dict(), dict(n_layer=3, n_embd=48, n_head=6, vocab=50)])
def test_gpt_matmul_flops_match_flop_counter_exactly(training, shape):
    cfg, model = _gpt(**shape)
    B, T = 2, 24
    idx = torch.randint(0, cfg.vocab_size, (B, T))

    def run():
        _, loss = model(idx, idx)
        if training:
            loss.backward()

    per_token = counted(run) / (B * T)
    N_mm = flops.gpt_matmul_params(cfg.n_layer, cfg.n_embd, cfg.vocab_size)  # matrices only
    exact = flops.transformer_flops_per_token(N_mm, cfg.n_layer, T, cfg.n_embd, training=training)
    assert per_token == exact
    # the model's own count adds biases and LayerNorm gains (13 L C + 2 C values) as if they were
    # weights, 2 FLOPs each per pass; under 1 % at GPT-2 sizes, a few % on this toy
    L, C = cfg.n_layer, cfg.n_embd
    est = model.flops_per_token(T, training=training)
    assert est - per_token == 2 * (13 * L * C + 2 * C) * (3 if training else 1)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("backward", [False, True])
def test_attention_flops_match_flop_counter(causal, backward):
    torch.manual_seed(0)
    b, nh, tq, tk, hs = 2, 3, 5, 7, 8
    if causal:
        tq = tk
    q = torch.randn(b, nh, tq, hs, requires_grad=backward)
    k, v = (torch.randn(b, nh, tk, hs, requires_grad=backward) for _ in range(2))

    def run():
        out = attention(q, k, v, causal=causal, impl="math")
        if backward:
            out.sum().backward()

    assert counted(run) == flops.attention_flops(b, nh, tq, tk, hs, backward=backward)


def test_attention_case_counts_what_it_runs():
    c = benchmarks.attention_case("math", 16, 8, True, True, dtype="fp32", device="cpu", tokens=32, model_dim=16)
    assert counted(c.fn) == c.flops


def test_gemm_case_counts_what_it_runs():
    c = benchmarks.gemm_case(8, 16, 32, dtype="fp32", device="cpu")
    assert counted(c.fn) == c.flops


@settings(max_examples=15, deadline=None)
@given(T=st.integers(1, 9), Tk=st.integers(1, 9), nh=st.sampled_from([1, 2, 4]), B=st.integers(1, 2))
def test_mha_flops_match_flop_counter(T, Tk, nh, B):
    torch.manual_seed(0)
    d = 16
    m = MultiHeadAttention(d, nh, impl="math")
    x, ctx = torch.randn(B, T, d), torch.randn(B, Tk, d)
    with torch.no_grad():
        assert counted(lambda: m(x, ctx)) == flops.mha_flops(T, d, nh, batch=B, kv_len=Tk)


def test_attention_bytes_count_the_tensors_read_and_written():
    """Forward: q, k, v in, o out. Backward also reads q, k, v, o, dO and writes dq, dk, dv. Count
    them from the tensors an autograd step actually touches (fp32: 4 bytes each)."""
    b, nh, tq, tk, hs = 2, 3, 5, 7, 8
    q = torch.randn(b, nh, tq, hs, requires_grad=True)
    k, v = (torch.randn(b, nh, tk, hs, requires_grad=True) for _ in range(2))
    o = attention(q, k, v, impl="math")
    go = torch.randn_like(o)
    dq, dk, dv = torch.autograd.grad(o, (q, k, v), go)
    nbytes = lambda *ts: sum(t.numel() * t.element_size() for t in ts)
    fwd = nbytes(q, k, v, o)
    assert flops.attention_bytes(b, nh, tq, tk, hs, 4) == fwd
    assert flops.attention_bytes(b, nh, tq, tk, hs, 4, backward=True) == fwd + nbytes(q, k, v, o, go, dq, dk, dv)
    # self-attention: forward + backward moves 3x the forward (it was 2.5x before the fix)
    assert flops.attention_bytes(1, 1, 6, 6, 4, 2, backward=True) == 3 * flops.attention_bytes(1, 1, 6, 6, 4, 2)


def test_gemm_bytes_count_the_operands():
    a, b = torch.randn(8, 32, dtype=torch.bfloat16), torch.randn(32, 16, dtype=torch.bfloat16)
    c = a @ b
    assert flops.matmul_bytes(8, 16, 32, 2) == sum(t.numel() * t.element_size() for t in (a, b, c))
    assert benchmarks.gemm_case(8, 16, 32, dtype="bf16", device="cpu").bytes == flops.matmul_bytes(8, 16, 32, 2)


def test_kv_cache_bytes_match_the_models_static_cache():
    from bmlib.generate import StaticKVCache

    cfg, _ = _gpt()
    cache = StaticKVCache(cfg, 3, 20, device="cpu", dtype=torch.float32)
    tensors = [t for t in vars(cache).values() if isinstance(t, torch.Tensor) and t.dtype == torch.float32]
    held = sum(t.numel() * t.element_size() for t in tensors)
    assert held == flops.kv_cache_bytes(cfg.n_layer, cfg.n_embd, 20, batch_size=3, bytes_per_value=4)


def test_training_flops_is_the_per_token_formula_times_tokens():
    cfg, model = _gpt()
    T, D = 24, 1000
    N = model.num_params(non_embedding=True) + cfg.vocab_size * cfg.n_embd
    assert budget.training_flops(N, D, n_layer=cfg.n_layer, seq_len=T, d_model=cfg.n_embd) \
        == pytest.approx(model.flops_per_token(T) * D, rel=1e-12)
    # recomputation: four forward passes instead of three, for the weights and the attention alike
    assert flops.training_flops(N, D, n_layer=2, seq_len=T, d_model=32, recompute=True) \
        == pytest.approx(4 / 3 * flops.training_flops(N, D, n_layer=2, seq_len=T, d_model=32), rel=1e-12)
    assert budget.training_flops is flops.training_flops  # one formula, re-exported


@pytest.mark.parametrize("call,name", [
    (lambda: flops.attention_flops(0, 1, 1, 1, 1), "batch"),
    (lambda: flops.attention_bytes(1, 1, 1, 1, 1, -2), "elem_bytes"),
    (lambda: flops.matmul_flops(2, 2, 2.5), "k"),
    (lambda: flops.stream_bytes("scan", 8), "kernel"),
    (lambda: flops.transformer_flops_per_token(1e6, 2, 8, 16, training=False, recompute=True), "recompute"),
    (lambda: flops.mha_flops(4, 30, 4), "divisible"),
    (lambda: flops.roofline([1.0], 0, 1e12), "peak_flops"),
    (lambda: flops.roofline([float("nan")], 1e12, 1e12), "intensity"),
    (lambda: flops.gpt_matmul_params(True, 8, 8), "n_layer"),
])
def test_bad_inputs_name_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_roofline_turns_at_the_ridge_point():
    import numpy as np

    peak, bw = 1e15, 3e12
    ridge = peak / bw
    r = flops.roofline([ridge / 2, ridge, 2 * ridge], peak, bw)
    assert np.allclose(r, [peak / 2, peak, peak])
