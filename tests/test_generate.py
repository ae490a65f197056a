import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bmlib import generate as G
from bmlib.models.gpt import GPT, GPTConfig, KVCache, StaticKVCache


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = GPTConfig.preset("tiny", vocab_size=97, block_size=64, n_layer=2, n_embd=64)
    return GPT(cfg).eval()


# ------------------------------------------------------------------ sampling rules
@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.integers(2, 40), st.integers(1, 40), st.integers(0, 10_000))
def test_top_k_keeps_exactly_the_k_largest(B, V, k, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, V, generator=g)
    p = G.next_token_probs(logits, top_k=k)
    k_eff = min(k, V)
    assert ((p > 0).sum(-1) == k_eff).all()
    top = torch.topk(logits, k_eff, dim=-1).indices
    assert torch.allclose(p.gather(-1, top).sum(-1), torch.ones(B))
    draws = G.sample_next(logits, top_k=k, generator=g)
    assert all(d.item() in top[b].tolist() for b, d in enumerate(draws))


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 40), st.floats(0.01, 1.0), st.integers(0, 10_000))
def test_top_p_keeps_smallest_set_with_mass_at_least_p(V, top_p, seed):
    logits = torch.randn(1, V, generator=torch.Generator().manual_seed(seed)) * 3
    p = G.next_token_probs(logits, top_p=top_p)
    full = torch.softmax(logits, -1)[0]
    kept = (p[0] > 0)
    order = torch.argsort(full, descending=True)
    n = int(kept.sum())
    assert kept[order[:n]].all()  # the kept tokens are the n most likely
    assert full[order[:n]].sum() >= top_p - 1e-5  # mass >= p ...
    if n > 1:  # ... and one fewer would not reach p (smallest such set)
        assert full[order[:n - 1]].sum() < top_p + 1e-5
    # renormalised: kept probabilities proportional to the originals
    assert torch.allclose(p[0][kept], full[kept] / full[kept].sum(), atol=1e-5)


def test_temperature_zero_is_greedy_and_small_temperature_approaches_it():
    logits = torch.randn(8, 50, generator=torch.Generator().manual_seed(1))
    assert torch.equal(G.sample_next(logits, temperature=0), logits.argmax(-1))
    p = G.next_token_probs(logits, temperature=1e-4)
    assert torch.equal(p.argmax(-1), logits.argmax(-1)) and (p.max(-1).values > 0.999).all()
    p1 = G.next_token_probs(logits, temperature=1.0)
    assert torch.allclose(p1, torch.softmax(logits, -1), atol=1e-6)


def test_empirical_frequencies_match_softmax_chi_square():
    V, n = 6, 20_000
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    probs = torch.softmax(logits / 0.8, -1)[0]
    g = torch.Generator().manual_seed(0)
    draws = G.sample_next(logits.expand(n, V), temperature=0.8, generator=g)
    counts = torch.bincount(draws, minlength=V).double()
    expected = probs.double() * n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    # chi-square with 5 dof: P(chi2 > 20.5) ~ 0.001
    assert chi2 < 20.5


@pytest.mark.parametrize("kw,name", [
    (dict(temperature=-1.0), "temperature"), (dict(temperature=float("nan")), "temperature"),
    (dict(top_k=0), "top_k"), (dict(top_k=2.5), "top_k"), (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
])
def test_bad_sampling_args(kw, name):
    with pytest.raises(ValueError, match=name):
        G.sample_next(torch.randn(2, 5), **kw)


def test_bad_logits():
    with pytest.raises(ValueError, match="logits"):
        G.sample_next(torch.randn(5))
    with pytest.raises(TypeError, match="logits"):
        G.sample_next([1.0, 2.0])


# ------------------------------------------------------------------ KV cache and batching
@pytest.mark.parametrize("cache", ["static", "graph"])
def test_kv_cache_equals_recompute(model, cache):
    idx = torch.randint(0, 97, (3, 5), generator=torch.Generator().manual_seed(2))
    ref, ref_logits = G.generate(model, idx, 12, cache="none", return_logits=True)
    out, logits = G.generate(model, idx, 12, cache=cache, return_logits=True)
    assert torch.equal(out, ref)
    assert (logits - ref_logits).abs().max() < 1e-4


def test_sampling_with_cache_reproducible_and_equal(model):
    idx = torch.randint(0, 97, (2, 4), generator=torch.Generator().manual_seed(3))
    a = G.generate(model, idx, 10, temperature=1.0, top_k=20, top_p=0.9, seed=7, cache="none")
    b = G.generate(model, idx, 10, temperature=1.0, top_k=20, top_p=0.9, seed=7, cache="static")
    assert torch.equal(a, b)


@settings(max_examples=8, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=1, max_size=4), st.integers(0, 1000))
def test_left_padded_batch_equals_unbatched(model, lengths, seed):
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(0, 97, (n,), generator=g).tolist() for n in lengths]
    idx, am = G.left_pad(seqs, pad_id=0)
    for cache in ("static", "graph"):
        out, lg = G.generate(model, idx, 5, attention_mask=am, cache=cache, return_logits=True)
        for b, s in enumerate(seqs):
            ref, rlg = G.generate(model, torch.tensor([s]), 5, cache="none", return_logits=True)
            assert torch.equal(out[b, -5:], ref[0, -5:])
            assert (lg[b] - rlg[0]).abs().max() < 1e-4


def test_left_pad_layout():
    idx, am = G.left_pad([[5, 6, 7], [8]], pad_id=0)
    assert idx.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert am.tolist() == [[True, True, True], [False, False, True]]
    assert G.position_ids_from_mask(am).tolist() == [[0, 1, 2], [0, 0, 0]]
    with pytest.raises(ValueError, match="seqs"):
        G.left_pad([])
    with pytest.raises(ValueError, match="seqs"):
        G.left_pad([[1], []])


def test_decoder_eager_matches_generate(model):
    idx = torch.randint(0, 97, (2, 6), generator=torch.Generator().manual_seed(4))
    ref = G.generate(model, idx, 9, cache="none")
    dec = G.Decoder(model, 2, 15, mode="eager")
    assert torch.equal(dec.generate(idx, 9), ref)
    assert torch.equal(dec.generate(idx, 9), ref)  # reusable: prefill resets the cache


def test_static_cache_matches_dynamic_cache_logits(model):
    cfg = model.config
    idx = torch.randint(0, 97, (2, 7), generator=torch.Generator().manual_seed(5))
    a, b = KVCache(cfg, 2, 20), StaticKVCache(cfg, 2, 20)
    with torch.no_grad():
        la, _ = model(idx, kv_cache=a)
        lb, _ = model(idx, kv_cache=b)
        assert (la - lb).abs().max() < 1e-5 and a.pos == b.pos == 7
        nxt = la[:, -1:].argmax(-1)
        la, _ = model(nxt, kv_cache=a)
        lb, _ = model(nxt, kv_cache=b, position_ids=torch.tensor([7]))
        assert (la - lb).abs().max() < 1e-5


def test_position_ids_validation(model):
    with pytest.raises(ValueError, match="position_ids"):
        model(torch.zeros(2, 3, dtype=torch.long), position_ids=torch.arange(4))


@pytest.mark.parametrize("kw,name", [
    (dict(max_new_tokens=0), "max_new_tokens"), (dict(max_new_tokens=100), "block_size"),
    (dict(max_new_tokens=3, cache="paged"), "cache"),
    (dict(max_new_tokens=3, attention_mask=torch.ones(1, 2, dtype=torch.bool)), "attention_mask"),
])
def test_generate_bad_args(model, kw, name):
    with pytest.raises(ValueError, match=name):
        G.generate(model, torch.zeros(2, 4, dtype=torch.long), **kw)


def test_generate_type_errors(model):
    with pytest.raises(TypeError, match="model"):
        G.generate(torch.nn.Linear(2, 2), torch.zeros(1, 2, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="idx"):
        G.generate(model, torch.zeros(4, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="mode"):
        G.Decoder(model, 1, 10, mode="turbo")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            G.Decoder(model, 1, 10, mode="cuda-graph")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_decoder_matches_eager():
    torch.manual_seed(0)
    m = GPT(GPTConfig.preset("tiny")).cuda().eval()
    idx = torch.randint(0, 4096, (2, 8), device="cuda")
    ref = G.Decoder(m, 2, 40, mode="eager").generate(idx, 30)
    assert torch.equal(G.Decoder(m, 2, 40, mode="cuda-graph").generate(idx, 30), ref)


def test_decode_floor():
    # GPT-2 124M in bf16 on an H100 SXM: 248 MB / 3.35 TB/s = 0.074 ms
    assert G.decode_floor_ms(124e6 * 2, 3.35e12) == pytest.approx(0.074, abs=0.001)
    with pytest.raises(ValueError, match="mem_bw"):
        G.decode_floor_ms(1e6, 0)
    with pytest.raises(ValueError, match="weight_bytes"):
        G.decode_floor_ms(-1, 1e9)


def test_weight_bytes(model):
    assert G.weight_bytes(model) == 4 * model.num_params()
