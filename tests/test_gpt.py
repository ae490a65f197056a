"""GPT: parameter-count and FLOPs formulas, the math/SDPA paths, and config validation."""
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.utils.flop_counter import FlopCounterMode

from bmlib.models.gpt import GPT, GPTConfig


def param_formula(c: GPTConfig) -> int:
    """Exact count with biases and tied output layer: embeddings V·C + T·C, per block
    ln_1 2C + c_attn (3C²+3C) + c_proj (C²+C) + ln_2 2C + c_fc (4C²+4C) + c_proj (4C²+C)
    = 12C² + 13C, plus the final LayerNorm 2C."""
    V, T, L, C = c.vocab_size, c.block_size, c.n_layer, c.n_embd
    return V * C + T * C + L * (12 * C * C + 13 * C) + 2 * C


def matmul_flops_per_token(c: GPTConfig, T: int) -> int:
    """Forward matmul FLOPs per token: 2·(12·L·C² + V·C) for the weights + 4·L·T·C for attention."""
    return 2 * (12 * c.n_layer * c.n_embd ** 2 + c.vocab_size * c.n_embd) + 4 * c.n_layer * T * c.n_embd


@pytest.mark.parametrize("name", ["tiny", "mini", "gpt2", "gpt2-medium"])
def test_param_count_formula_on_meta(name):
    cfg = GPTConfig.preset(name)
    with torch.device("meta"):
        model = GPT(cfg)
    assert model.num_params() == param_formula(cfg)
    assert model.num_params(non_embedding=True) == param_formula(cfg) - (cfg.vocab_size + cfg.block_size) * cfg.n_embd


def test_gpt2_is_124m():
    assert param_formula(GPTConfig.preset("gpt2")) == 124_439_808
    assert param_formula(GPTConfig.preset("gpt2-medium")) == 354_823_168


@pytest.mark.parametrize("training", [False, True])
def test_flops_per_token_matches_flop_counter(training):
    torch.manual_seed(0)
    cfg = GPTConfig.preset("tiny", attn_impl="math")  # the CPU SDPA kernel is not counted by FlopCounterMode
    model = GPT(cfg)
    B, T = 2, 64
    idx = torch.randint(0, cfg.vocab_size, (B, T))
    fc = FlopCounterMode(display=False)
    with fc:
        _, loss = model(idx, idx)
        if training:
            loss.backward()
    counted = fc.get_total_flops() / (B * T)
    exact = matmul_flops_per_token(cfg, T) * (3 if training else 1)  # backward = 2 x forward
    assert counted == exact
    # bmlib's 2N + 4LTC also counts bias/LayerNorm parameters as if they were matmul weights: < 1 % more
    est = model.flops_per_token(T, training=training)
    assert est >= counted and est / counted - 1 < 0.01


def test_math_and_sdpa_agree():
    torch.manual_seed(0)
    m = GPT(GPTConfig.preset("tiny", attn_impl="math")).eval()
    s = GPT(GPTConfig.preset("tiny", attn_impl="sdpa")).eval()
    s.load_state_dict(m.state_dict())
    idx = torch.randint(0, 4096, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(m(idx)[0], s(idx)[0], atol=1e-5, rtol=1e-5)


def test_loss_ignores_minus_100_and_is_log_vocab_at_init():
    """The loss with the second half of the targets set to -100 equals the loss of the first half
    alone (a causal model's first 8 logits do not see the rest), and is near log V at init."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny")).eval()
    idx = torch.randint(0, 4096, (2, 16))
    nxt = torch.randint(0, 4096, (2, 16))  # random targets (with tied weights, idx itself scores high)
    tgt = nxt.clone()
    tgt[:, 8:] = -100
    with torch.no_grad():
        logits, loss = model(idx, tgt)
        _, first_half = model(idx[:, :8], nxt[:, :8])
        # an NLL in float64 from the logits, by hand: logsumexp minus the target's logit
        z = logits[:, :8].double()
        nll = (torch.logsumexp(z, -1) - z.gather(-1, nxt[:, :8, None]).squeeze(-1)).mean()
    torch.testing.assert_close(loss, first_half, atol=1e-5, rtol=1e-5)
    assert abs(loss.item() - nll.item()) < 1e-5
    assert abs(loss.item() - torch.log(torch.tensor(4096.0)).item()) < 0.2  # near-uniform at init


@pytest.mark.parametrize("kw, field", [
    (dict(n_embd=130, n_head=4), "n_embd"),
    (dict(n_layer=-1), "n_layer"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(block_size=2.5), "block_size"),
    (dict(attn_impl="flash3"), "attn_impl"),
    (dict(dropout=1.0), "dropout"),
    (dict(layer_norm_eps=-1), "layer_norm_eps"),
    (dict(layer_norm_eps=0.0), "layer_norm_eps"),
    (dict(layer_norm_eps=float("nan")), "layer_norm_eps"),
    (dict(bias="yes"), "bias"),
    (dict(n_head=True), "n_head"),
])
def test_bad_config_names_the_field(kw, field):
    with pytest.raises((ValueError, TypeError), match=field):
        GPTConfig(**kw)


def test_negative_layer_norm_eps_used_to_give_nan_logits():
    """Why layer_norm_eps is checked: with eps = -1 a LayerNorm of a constant row is sqrt(-1)."""
    ln = torch.nn.LayerNorm(4, eps=-1.0)
    assert torch.isnan(ln(torch.ones(1, 4))).all()


@pytest.mark.parametrize("call, exc, name", [
    (lambda m: m(torch.tensor([[1, 4096]])), ValueError, "idx"),
    (lambda m: m(torch.tensor([[-1, 2]])), ValueError, "idx"),
    (lambda m: m(torch.tensor([[1.0, 2.0]])), TypeError, "idx"),
    (lambda m: m(torch.tensor([[True, False]])), TypeError, "idx"),
    (lambda m: m(torch.tensor([[1, 2]]), position_ids=torch.tensor([127, 128])), ValueError, "position_ids"),
    (lambda m: m(torch.tensor([[1, 2]]), position_ids=torch.tensor([-1, 0])), ValueError, "position_ids"),
    (lambda m: m(torch.tensor([[1, 2]]), position_ids=torch.tensor([0.0, 1.0])), TypeError, "position_ids"),
    (lambda m: m(torch.tensor([[1, 2]]), torch.tensor([[1, 4096]])), ValueError, "targets"),
    (lambda m: m(torch.tensor([[1, 2]]), torch.tensor([[1.0, 2.0]])), TypeError, "targets"),
])
def test_bad_ids_raise_clear_errors(call, exc, name):
    model = GPT(GPTConfig.preset("tiny")).eval()
    with pytest.raises(exc, match=name), torch.no_grad():
        call(model)


@pytest.mark.parametrize("cache_cls", ["KVCache", "StaticKVCache"])
def test_kv_cache_of_the_wrong_batch_size(cache_cls):
    from bmlib.models import gpt

    cfg = GPTConfig.preset("tiny")
    model = GPT(cfg).eval()
    kv = getattr(gpt, cache_cls)(cfg, batch_size=3, max_len=16)
    with pytest.raises(ValueError, match="kv_cache was built for batch_size 3"), torch.no_grad():
        model(torch.zeros(2, 4, dtype=torch.long), kv_cache=kv)
    assert kv.pos == 0  # nothing was written
    with pytest.raises(ValueError, match="batch_size"):
        getattr(gpt, cache_cls)(cfg, batch_size=0)


def test_unknown_preset_and_bad_inputs():
    with pytest.raises(ValueError, match="preset"):
        GPTConfig.preset("gpt5")
    model = GPT(GPTConfig.preset("tiny"))
    with pytest.raises(ValueError, match="idx"):
        model(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 129, dtype=torch.long))
    with pytest.raises(ValueError, match="targets"):
        model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="seq_len"):
        model.flops_per_token(0)
    with pytest.raises(TypeError, match="cfg"):
        GPT({"n_layer": 2})


@settings(max_examples=15, deadline=None)
@given(L=st.integers(1, 3), nh=st.integers(1, 4), hs=st.integers(1, 8), V=st.integers(2, 64),
       Tmax=st.integers(4, 32), B=st.integers(1, 3), data=st.data())
def test_config_space_shapes_and_count(L, nh, hs, V, Tmax, B, data):
    cfg = GPTConfig(vocab_size=V, block_size=Tmax, n_layer=L, n_head=nh, n_embd=nh * hs, attn_impl="math")
    model = GPT(cfg).eval()
    assert model.num_params() == param_formula(cfg)
    T = data.draw(st.integers(1, Tmax))
    idx = torch.randint(0, V, (B, T))
    with torch.no_grad():
        logits, _ = model(idx)
    assert logits.shape == (B, T, V) and torch.isfinite(logits).all()
    # causality: changing the last token leaves earlier logits unchanged
    idx2 = idx.clone()
    idx2[:, -1] = (idx2[:, -1] + 1) % V
    with torch.no_grad():
        torch.testing.assert_close(model(idx2)[0][:, :-1], logits[:, :-1])


def test_config_type_checks_reach_subclasses():
    """check_types runs before every PresetConfig's own __post_init__, subclasses included."""
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Wider(GPTConfig):
        extra: int = 1

    with pytest.raises(ValueError, match="layer_norm_eps"):
        Wider(layer_norm_eps=-1.0)  # the parent's range checks still run
    with pytest.raises(TypeError, match="extra must be of type int"):
        Wider(extra="a")
    assert Wider(extra=2).extra == 2


@pytest.mark.parametrize("bad", [torch.zeros(3, dtype=torch.long), torch.zeros(1, 2, 3, dtype=torch.long), [[1, 2]]])
def test_check_ids_batched_wants_a_b_by_t_tensor(bad):
    # the one check every model's forward starts with: (B, T) first, then the dtype, then the values
    from bmlib.models.config import check_ids

    with pytest.raises(ValueError, match=r"ids must be a \(B, T\) tensor"):
        check_ids(bad, "ids", 10, batched=True)
    with pytest.raises(TypeError, match="integer ids"):
        check_ids(torch.zeros(2, 3), "ids", 10, batched=True)
    with pytest.raises(ValueError, match=r"ids in \[0, 10\)"):
        check_ids(torch.tensor([[1, 10]]), "ids", 10, batched=True)
    check_ids(torch.tensor([[1, 9]]), "ids", 10, batched=True)
