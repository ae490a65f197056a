"""bmlib's Llama: config checks, pieces vs references, math vs sdpa, KV caches, HF parity both ways
(random configs and the real SmolLM2-135M checkpoint), greedy tokens identical to HF generate."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from bmlib.generate import Decoder, generate, left_pad  # noqa: E402
from bmlib.models.hf import llama_config_from_hf, llama_from_hf, llama_to_hf  # noqa: E402
from bmlib.models.llama import (Llama, LlamaConfig, LlamaKVCache, RMSNorm, kv_cache_shape,  # noqa: E402
                                repeat_kv)

ATOL = 1e-4  # fp32 logits


def tiny(**kw) -> Llama:
    torch.manual_seed(kw.pop("seed", 0))
    return Llama(LlamaConfig.preset("tiny", **kw)).eval()


# ----------------------------------------------------------------------------- config
def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="n_kv_head"):
        LlamaConfig(n_head=9, n_kv_head=2)
    with pytest.raises(ValueError, match="n_embd"):
        LlamaConfig(n_embd=100, n_head=8, n_kv_head=8)
    with pytest.raises(ValueError, match="head_dim"):
        LlamaConfig(n_embd=60, n_head=4, n_kv_head=4)   # head_dim 15: RoPE needs pairs
    with pytest.raises(ValueError, match="rope_theta"):
        LlamaConfig(rope_theta=1.0)
    with pytest.raises(ValueError, match="rms_norm_eps"):
        LlamaConfig(rms_norm_eps=0.0)
    with pytest.raises(ValueError, match="attn_impl"):
        LlamaConfig(attn_impl="flash")
    with pytest.raises(TypeError, match="n_layer"):
        LlamaConfig(n_layer=2.0)
    with pytest.raises(TypeError, match="cfg"):
        Llama({"n_layer": 2})


def test_smollm2_preset_shape():
    c = LlamaConfig.preset("smollm2-135m")
    assert (c.head_dim, c.n_rep) == (64, 3)
    with torch.device("meta"):
        m = Llama(c)
    assert m.num_params() == 134_515_008   # the HF checkpoint's count (tests/test_smollm2.py)


# ----------------------------------------------------------------------------- pieces
def test_rmsnorm_matches_torch():
    x = torch.randn(3, 5, 16) * 4 + 1
    n = RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        n.weight.uniform_(0.5, 1.5)
    ref = F.rms_norm(x, (16,), n.weight, eps=1e-6)
    torch.testing.assert_close(n(x), ref, atol=1e-6, rtol=1e-5)
    # no mean subtraction: a constant shift changes the output, unlike LayerNorm
    assert not torch.allclose(n(x + 3.0), n(x), atol=1e-2)


def test_repeat_kv_maps_query_head_h_to_kv_head_h_over_n_rep():
    kv = torch.randn(2, 3, 5, 8)
    r = repeat_kv(kv, 4)  # (2, 12, 5, 8)
    assert r.shape == (2, 12, 5, 8)
    for h in range(12):
        assert torch.equal(r[:, h], kv[:, h // 4])
    assert repeat_kv(kv, 1) is kv


def test_attention_impls_agree():
    torch.manual_seed(0)
    a, b = tiny(attn_impl="math"), tiny(attn_impl="sdpa")
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, 512, (3, 33))
    with torch.no_grad():
        torch.testing.assert_close(a(x)[0], b(x)[0], atol=1e-5, rtol=1e-5)


def test_loss_and_validation():
    m = tiny()
    x = torch.randint(0, 512, (2, 10))
    y = x.clone()
    y[:, :3] = -100
    with torch.no_grad():
        logits, loss = m(x, y)
    ref = F.cross_entropy(logits[:, 3:].reshape(-1, 512), x[:, 3:].reshape(-1))
    torch.testing.assert_close(loss, ref)
    with pytest.raises(ValueError, match="idx"):
        m(torch.tensor([[0, 512]]))
    with pytest.raises(ValueError, match="idx"):
        m(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="block_size"):
        m(torch.zeros(1, 129, dtype=torch.long))
    with pytest.raises(ValueError, match="position_ids"):
        m(x, position_ids=torch.arange(3))
    with pytest.raises(ValueError, match="targets"):
        m(x, torch.zeros(2, 9, dtype=torch.long))


def test_position_ids_shift_equals_relative_property():
    """RoPE: shifting every position by the same offset leaves the logits unchanged (scores depend
    only on relative positions); the learned absolute table of GPT-2 would not."""
    m = tiny()
    x = torch.randint(0, 512, (1, 12))
    with torch.no_grad():
        a = m(x)[0]
        b = m(x, position_ids=torch.arange(40, 52))[0]
    torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- KV cache
def test_kv_cache_is_gqa_sized_and_decode_matches_full_forward():
    m = tiny()
    c = m.config
    cache = m.new_kv_cache(2, 20)
    assert isinstance(cache, LlamaKVCache) and cache.k.shape == kv_cache_shape(c, 2, 20) == (2, 2, 2, 20, 16)
    x = torch.randint(0, 512, (2, 14))
    with torch.no_grad():
        full = m(x)[0]
        ptrs = (cache.k.data_ptr(), cache.v.data_ptr())
        step = [m(x[:, :10], kv_cache=cache)[0]]
        for t in range(10, 14):
            step.append(m(x[:, t:t + 1], kv_cache=cache)[0])
    torch.testing.assert_close(torch.cat(step, 1), full, atol=1e-5, rtol=1e-5)
    assert (cache.k.data_ptr(), cache.v.data_ptr()) == ptrs and cache.pos == 14  # no reallocation
    with pytest.raises(ValueError, match="batch_size"):
        m(x[:1, :1], kv_cache=cache)
    with pytest.raises(ValueError, match="max_len"):
        m.new_kv_cache(1, 129)
    with pytest.raises(ValueError, match="kind"):
        m.new_kv_cache(1, 8, kind="paged")


@pytest.mark.parametrize("cache", ["static", "graph", "none"])
def test_generate_b1_and_b8_left_padded_equal_hf(cache):
    m = tiny(seed=3)
    hf = llama_to_hf(m)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 512, (1, 9), generator=g)
    ours = generate(m, x, 10, cache=cache)
    ref = hf.generate(x, max_new_tokens=10, min_new_tokens=10, do_sample=False)
    assert torch.equal(ours, ref)
    lens = torch.randint(1, 12, (8,), generator=g).tolist()
    seqs = [torch.randint(0, 512, (n,), generator=g).tolist() for n in lens]
    idx, am = left_pad(seqs)
    ours = generate(m, idx, 6, attention_mask=am, cache=cache)
    ref = hf.generate(idx, attention_mask=am.long(), max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert torch.equal(ours, ref)
    alone = generate(m, torch.tensor([seqs[0]]), 6, cache=cache)  # a padded row decodes as alone
    assert torch.equal(ours[0, -6:], alone[0, -6:])


def test_decoder_loop_drives_llama():
    m = tiny(seed=4)
    x = torch.randint(0, 512, (2, 7))
    dec = Decoder(m, batch_size=2, max_len=20)
    assert dec.cache.k.shape == kv_cache_shape(m.config, 2, 20)
    assert torch.equal(dec.generate(x, 9), generate(m, x, 9))


# ----------------------------------------------------------------------------- HF parity
@settings(max_examples=12, deadline=None)
@given(n_kv=st.sampled_from([1, 2, 4]), rep=st.sampled_from([1, 2]), hs=st.sampled_from([4, 8, 16]),
       n_layer=st.integers(1, 2), inter=st.integers(8, 48), tied=st.booleans(),
       theta=st.sampled_from([500.0, 10000.0, 1e6]), T=st.integers(1, 24), seed=st.integers(0, 99))
def test_random_configs_match_hf_both_ways(n_kv, rep, hs, n_layer, inter, tied, theta, T, seed):
    n_head = n_kv * rep
    cfg = LlamaConfig(vocab_size=97, block_size=32, n_layer=n_layer, n_head=n_head, n_kv_head=n_kv,
                      n_embd=n_head * hs, intermediate_size=inter, rope_theta=theta,
                      rms_norm_eps=1e-6, tie_word_embeddings=tied, attn_impl="math")
    torch.manual_seed(seed)
    ours = Llama(cfg).eval()
    with torch.no_grad():
        for blk in ours.model.layers:  # non-trivial gains, so a swapped norm would show
            blk.input_layernorm.weight.uniform_(0.5, 1.5)
    hf = llama_to_hf(ours)
    assert llama_config_from_hf(hf.config, attn_impl="math") == cfg
    x = torch.randint(0, 97, (2, T))
    with torch.no_grad():
        ref = hf(x).logits
        assert (ours(x)[0] - ref).abs().max() < ATOL
        back = llama_from_hf(hf, attn_impl="math")
        assert (back(x)[0] - ref).abs().max() < ATOL
    for k, v in ours.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    assert (back.lm_head.weight is back.model.embed_tokens.weight) == tied


def test_from_an_hf_initialised_model():
    """Weights HF initialised itself (nothing of ours), including an untied head and MHA (n_kv = n_head)."""
    cfg = transformers.LlamaConfig(vocab_size=300, hidden_size=48, intermediate_size=80,
                                   num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=6,
                                   max_position_embeddings=64, tie_word_embeddings=False,
                                   rope_parameters={"rope_type": "default", "rope_theta": 5000.0})
    torch.manual_seed(2)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    x = torch.randint(0, 300, (3, 30))
    with torch.no_grad():
        assert (llama_from_hf(hf)(x)[0] - hf(x).logits).abs().max() < ATOL


_REFUSED = [
    ("hidden_act", dict(hidden_act="gelu")),
    ("attention_bias", dict(attention_bias=True)),
    ("mlp_bias", dict(mlp_bias=True)),
    ("rope_type", dict(rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0})),
    ("rope_type", dict(rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0,
                                        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                        "original_max_position_embeddings": 8192})),
    ("partial_rotary_factor", dict(rope_parameters={"rope_type": "default", "rope_theta": 1e4,
                                                    "partial_rotary_factor": 0.5})),
    ("head_dim", dict(head_dim=16)),
    ("attention_dropout", dict(attention_dropout=0.1)),
]


@pytest.mark.parametrize("field,kw", _REFUSED, ids=[f for f, _ in _REFUSED])
def test_unsupported_llama_configs_are_refused(field, kw):
    base = dict(vocab_size=64, hidden_size=32, intermediate_size=40, num_hidden_layers=1,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16)
    cfg = transformers.LlamaConfig(**{**base, **kw})
    with pytest.raises(ValueError, match=field):
        llama_config_from_hf(cfg)
    if field in ("hidden_act", "attention_bias", "mlp_bias", "head_dim"):  # and the model path too
        with pytest.raises(ValueError, match=field):
            llama_from_hf(transformers.LlamaForCausalLM(cfg))


def test_converter_type_errors():
    with pytest.raises(TypeError, match="LlamaForCausalLM"):
        llama_from_hf(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="Llama"):
        llama_to_hf(torch.nn.Linear(2, 2))


# ----------------------------------------------------------------------------- the real checkpoint
@pytest.fixture(scope="module")
def smol():
    from bmlib.data.smollm2 import load_smollm2

    hf, tok = load_smollm2()
    return hf, llama_from_hf(hf, attn_impl="sdpa"), tok


def test_real_checkpoint_config_is_the_preset(smol):
    hf, ours, _ = smol
    assert llama_config_from_hf(hf.config) == LlamaConfig.preset("smollm2-135m")
    assert ours.num_params() == sum(p.numel() for p in hf.parameters())


def test_real_checkpoint_logits_and_greedy_tokens_match_hf(smol):
    hf, ours, tok = smol
    ids = tok("The capital of France is Paris. The capital of Germany is", return_tensors="pt").input_ids
    with torch.no_grad():
        ref = hf(ids).logits
        assert (ours(ids)[0] - ref).abs().max() < ATOL
    new = 6
    mine = generate(ours, ids, new)
    theirs = hf.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)
    assert torch.equal(mine, theirs)
    assert "Berlin" in tok.decode(mine[0, ids.shape[1]:])
