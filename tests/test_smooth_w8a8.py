"""W8A8 with per-token scales (bmlib.compress.Int8DynamicLinear) and SmoothQuant (bmlib.compress.smooth)."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bmlib import compress as C
from bmlib.compress import smooth as S
from bmlib.models.llama import Llama, LlamaConfig


def _fake_per_row(t):
    """PyTorch's reference: symmetric int8 fake quantization with one scale per row (axis 0)."""
    s = t.abs().amax(1).clamp_min(1e-12) / 127
    return torch.fake_quantize_per_channel_affine(t, s, torch.zeros(t.shape[0], dtype=torch.int32), 0, -127, 127)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    m = Llama(LlamaConfig.preset("tiny")).eval()
    with torch.no_grad():  # outlier channels, as a trained model has: the smoothing has work to do
        for blk in m.model.layers:
            blk.input_layernorm.weight[:2] = 30.0
            blk.mlp.up_proj.weight[:3] *= 40.0
    return m


def _windows(n, T, vocab, seed):
    return torch.randint(0, vocab, (n, T), generator=torch.Generator().manual_seed(seed))


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 5), k=st.integers(2, 40), out=st.integers(1, 24), seed=st.integers(0, 10**6))
def test_int8_dynamic_linear_equals_fake_quantized_matmul(n, k, out, seed):
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(k, out, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(out, k, generator=g))
    x = torch.randn(2, n, k, generator=g) * torch.rand(2, n, 1, generator=g) * 10
    ref = _fake_per_row(x.reshape(-1, k)).double() @ _fake_per_row(lin.weight.detach()).double().T
    y = C.Int8DynamicLinear.from_linear(lin)(x)
    assert y.shape == (2, n, out) and y.dtype == x.dtype
    torch.testing.assert_close(y.reshape(-1, out).double(), ref, rtol=1e-5, atol=1e-5)


def test_per_token_scale_protects_the_other_tokens():
    torch.manual_seed(1)
    lin = torch.nn.Linear(64, 32, bias=False)
    x = torch.randn(4, 64)
    loud = x.clone()
    loud[0] *= 1000  # one outlier token
    ours = C.Int8DynamicLinear.from_linear(lin)
    assert torch.equal(ours(x)[1:], ours(loud)[1:])  # the other tokens' codes and scales do not move
    ao = C.dynamic_int8(torch.nn.Sequential(lin))  # torch.ao: one scale for the whole batch
    err_ao = (ao(loud)[1:] - lin(x[1:])).abs().max()
    err_ours = (ours(loud)[1:] - lin(x[1:])).abs().max()
    assert err_ours < err_ao / 10


def test_int8_dynamic_linear_bad_input():
    with pytest.raises(TypeError, match="linear"):
        C.Int8DynamicLinear.from_linear(torch.nn.Conv1d(2, 2, 1))
    with pytest.raises(ValueError, match="bias"):
        C.Int8DynamicLinear.from_linear(torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="in_features"):
        C.Int8DynamicLinear(1, 4)  # torch._int_mm returns wrong sums for K = 1
    m = C.Int8DynamicLinear.from_linear(torch.nn.Linear(8, 4, bias=False))
    with pytest.raises(ValueError, match=r"\(\.\.\., 8\)"):
        m(torch.randn(3, 7))
    with pytest.raises(ValueError, match="float"):
        m(torch.ones(3, 8, dtype=torch.long))


def test_w8a8_replaces_linears_and_keeps_the_tied_embedding(tiny):
    q = C.w8a8(tiny, exclude=("o_proj",))
    kinds = {type(m).__name__ for n, m in q.named_modules() if n.endswith(("q_proj", "down_proj", "lm_head"))}
    assert kinds == {"Int8DynamicLinear"}
    assert all(isinstance(b.self_attn.o_proj, torch.nn.Linear) for b in q.model.layers)
    assert torch.equal(q.model.embed_tokens.weight, tiny.model.embed_tokens.weight)
    assert isinstance(tiny.lm_head, torch.nn.Linear)  # the original is untouched


@pytest.mark.parametrize("alpha,alpha_head", [(0.0, None), (0.5, None), (0.85, 0.3), (1.0, 0.0)])
def test_smoothing_keeps_the_fp32_function(tiny, alpha, alpha_head):
    cal, ev = _windows(4, 12, tiny.config.vocab_size, 0), _windows(2, 12, tiny.config.vocab_size, 1)
    sm = S.smooth_llama(tiny, S.input_absmax(tiny, cal), alpha, alpha_head=alpha_head)
    with torch.no_grad():
        torch.testing.assert_close(sm(ev)[0], tiny(ev)[0], rtol=1e-4, atol=1e-4)
    assert sm.lm_head.weight is not sm.model.embed_tokens.weight  # the head's smoothed copy is its own
    torch.testing.assert_close(sm.model.embed_tokens.weight, tiny.model.embed_tokens.weight)


def test_smoothing_flattens_the_activations_and_helps_int8(tiny):
    cal, ev = _windows(4, 12, tiny.config.vocab_size, 0), _windows(4, 12, tiny.config.vocab_size, 1)
    amax = S.input_absmax(tiny, cal)
    sm = S.smooth_llama(tiny, amax, 0.5)
    amax_s = S.input_absmax(sm, cal)
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"):
        spread = lambda a: (a.max() / a.median()).item()  # noqa: E731
        assert spread(amax_s[name]) < spread(amax[name]) / 2
    with torch.no_grad():
        ref = tiny(ev)[0]
        err = lambda m: (C.w8a8(m)(ev)[0] - ref).pow(2).mean().item()  # noqa: E731
        assert err(sm) < err(tiny)


def test_input_absmax_is_the_channel_max_of_the_layer_input(tiny):
    cal = _windows(3, 10, tiny.config.vocab_size, 2)
    amax = S.input_absmax(tiny, cal, batch_size=2)
    with torch.no_grad():
        x0 = tiny.model.layers[0].input_layernorm(tiny.model.embed_tokens(cal))  # (n, T, C): q/k/v's input
    torch.testing.assert_close(amax["model.layers.0.self_attn.q_proj"], x0.abs().amax((0, 1)))
    assert len(amax) == 7 * tiny.config.n_layer + 1  # seven linears per block, plus the output layer


def test_smooth_bad_input(tiny):
    amax = S.input_absmax(tiny, _windows(2, 8, tiny.config.vocab_size, 0))
    with pytest.raises(ValueError, match="alpha"):
        S.smooth_llama(tiny, amax, 1.5)
    with pytest.raises(ValueError, match="alpha"):
        S.smooth_llama(tiny, amax, 0.5, alpha_head=-0.1)
    with pytest.raises(TypeError, match="Llama"):
        S.smooth_llama(torch.nn.Linear(2, 2), amax)
    with pytest.raises(ValueError, match="windows"):
        S.input_absmax(tiny, torch.randn(2, 8))
    with pytest.raises(ValueError, match="act_absmax"):
        S.smooth_llama(tiny, {"lm_head": amax["lm_head"]})
    with pytest.raises(ValueError, match="channels"):
        S.smoothing_scales(torch.ones(5), [torch.ones(3, 4)], 0.5)
