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


# ------------------------------------------------------------------ parity with Hugging Face
def _hf_probs(logits, temperature, top_k, top_p):
    """Hugging Face's own warpers, in the order its ``generate`` applies them."""
    from transformers.generation.logits_process import (TemperatureLogitsWarper, TopKLogitsWarper,
                                                        TopPLogitsWarper)

    ids = torch.zeros(logits.shape[0], 1, dtype=torch.long)  # unused by these warpers
    z = TemperatureLogitsWarper(temperature)(ids, logits.clone())
    if top_k is not None:
        z = TopKLogitsWarper(top_k)(ids, z)
    if top_p is not None:
        z = TopPLogitsWarper(top_p)(ids, z)
    return z, torch.softmax(z, -1)


def _near_top_p_boundary(logits, temperature, top_k, top_p) -> bool:
    """True when some token's mass-before lies within float error of top_p (either rule may then
    keep or drop it; such draws test rounding, not the rule)."""
    z = G.filter_logits(logits / temperature, top_k=top_k)
    pr = torch.softmax(z.double(), -1).sort(-1, descending=True).values
    before = pr.cumsum(-1) - pr
    return bool(((before - top_p).abs() < 1e-5).any())


@settings(max_examples=80, deadline=None)
@given(B=st.integers(1, 3), V=st.integers(2, 60), temperature=st.sampled_from([0.5, 1.0, 1.7]),
       top_k=st.one_of(st.none(), st.integers(1, 70)),
       top_p=st.one_of(st.none(), st.floats(0.05, 1.0)), scale=st.sampled_from([0.5, 3.0]),
       seed=st.integers(0, 10_000))
def test_filtering_matches_hugging_face_warpers(B, V, temperature, top_k, top_p, scale, seed):
    logits = torch.randn(B, V, generator=torch.Generator().manual_seed(seed)) * scale
    if top_p is not None and _near_top_p_boundary(logits, temperature, top_k, top_p):
        return
    hz, hp = _hf_probs(logits, temperature, top_k, top_p)
    ours = G.next_token_probs(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    assert torch.equal(ours > 0, torch.isfinite(hz))  # the same tokens are kept
    torch.testing.assert_close(ours, hp, atol=1e-6, rtol=1e-5)
    z = G.filter_logits(logits, top_k=top_k, top_p=top_p)  # and filter_logits alone, temperature 1
    hz1, _ = _hf_probs(logits, 1.0, top_k, top_p)
    if top_p is None or not _near_top_p_boundary(logits, 1.0, top_k, top_p):
        assert torch.equal(torch.isfinite(z), torch.isfinite(hz1))
        assert torch.equal(z[torch.isfinite(z)], logits[torch.isfinite(z)])


def test_filtering_matches_hugging_face_with_ties_and_banned_tokens():
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.5, float("-inf")], [2.0, 2.0, 2.0, 2.0, 2.0]])
    for top_k, top_p in [(2, None), (1, None), (None, 0.5), (3, 0.9), (10, None)]:
        hz, _ = _hf_probs(logits, 1.0, top_k, top_p)
        z = G.filter_logits(logits, top_k=top_k, top_p=top_p)
        assert torch.isfinite(z).sum() == torch.isfinite(hz).sum(), (top_k, top_p)
        if top_p is None:  # top-k keeps every tie with the k-th value in both
            assert torch.equal(torch.isfinite(z), torch.isfinite(hz))


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
    with pytest.raises(TypeError, match="logits"):
        G.sample_next(torch.tensor([[1, 2]]))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("temperature", [0, 1.0])
def test_nan_or_inf_logits_are_refused(bad, temperature):
    """argmax used to pick the NaN (greedy) and multinomial to raise from deep inside."""
    logits = torch.tensor([[0.0, 1.0, 2.0], [0.0, bad, 1.0]])
    for fn in (G.sample_next, G.next_token_probs):
        with pytest.raises(ValueError, match=r"logits .*rows \[1\]"):
            fn(logits, temperature=temperature)
    with pytest.raises(ValueError, match="logits"):
        G.filter_logits(logits, top_k=2)


def test_all_minus_inf_row_is_refused_but_partly_banned_rows_are_fine():
    ninf = float("-inf")
    with pytest.raises(ValueError, match="only -inf"):
        G.sample_next(torch.tensor([[ninf, ninf], [0.0, 1.0]]))
    ok = torch.tensor([[ninf, 0.0, ninf], [0.0, 1.0, ninf]])
    draws = G.sample_next(ok, generator=torch.Generator().manual_seed(0))
    assert draws[0].item() == 1 and draws[1].item() in (0, 1)
    assert torch.equal(G.sample_next(ok, temperature=0), torch.tensor([1, 1]))


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
    with pytest.raises(ValueError, match=r"seqs\[1\]"):
        G.left_pad([[1], [2.7, 3]])  # used to truncate 2.7 to 2 silently
    with pytest.raises(ValueError, match=r"seqs\[0\]"):
        G.left_pad([[-1, 3]])
    with pytest.raises(TypeError, match=r"seqs\[0\]"):
        G.left_pad(["abc"])
    with pytest.raises(ValueError, match="pad_id"):
        G.left_pad([[1]], pad_id=-1)
    with pytest.raises(ValueError, match="attention_mask"):
        G.position_ids_from_mask([1, 1])


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


@pytest.mark.parametrize("am, msg", [
    (torch.tensor([[True, True, False], [True, True, True]]), "left-padded"),
    (torch.tensor([[False, False, False], [True, True, True]]), "at least one real token"),
    (torch.tensor([[0, 2, 1], [1, 1, 1]]), "0/1"),
    (torch.tensor([[0.0, 1.0, 1.0], [1.0, 1.0, 1.0]]), "0/1"),
])
def test_generate_bad_attention_mask(model, am, msg):
    with pytest.raises(ValueError, match=f"attention_mask.*{msg}|{msg}"):
        G.generate(model, torch.zeros(2, 3, dtype=torch.long), 2, attention_mask=am)


def test_generate_out_of_vocab_prompt(model):
    with pytest.raises(ValueError, match="idx must hold ids in \\[0, 97\\)"):
        G.generate(model, torch.tensor([[1, 97]]), 2)


def test_decoder_bad_args(model):
    with pytest.raises(ValueError, match="batch_size"):
        G.Decoder(model, 0, 10)
    dec = G.Decoder(model, 2, 10)
    with pytest.raises(ValueError, match="idx"):
        dec.prefill(torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="idx"):
        dec.prefill(torch.zeros(2, 11, dtype=torch.long))
    with pytest.raises(ValueError, match="max_new_tokens"):
        dec.generate(torch.zeros(2, 4, dtype=torch.long), 0)
    dec.prefill(torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="max_len"):
        dec.decode(7)  # 4 cached + 7 > 10
    assert dec.decode(6).shape == (2, 6)


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


def test_compiled_decoder_matches_eager_on_cpu():
    # torch.compile on the CPU (Inductor's C++ backend): the same greedy tokens as the eager step,
    # for a Llama (GQA cache) and a GPT; decoding again reuses the compiled step (no recompiling)
    from torch._dynamo.utils import counters

    from bmlib.models.llama import Llama, LlamaConfig

    torch.manual_seed(0)
    for m in (Llama(LlamaConfig.preset("tiny")).eval(), GPT(GPTConfig.preset("tiny", n_layer=2)).eval()):
        idx = torch.randint(0, m.config.vocab_size, (2, 5))
        ref = G.Decoder(m, 2, 24, mode="eager").generate(idx, 16)
        dec = G.Decoder(m, 2, 24, mode="compile")
        assert dec.compile_mode == "default"
        graphs = counters["stats"]["unique_graphs"]
        assert torch.equal(dec.generate(idx, 16), ref)
        assert counters["stats"]["unique_graphs"] == graphs + 1  # the step was compiled, as one graph
        assert torch.equal(dec.generate(idx, 16), ref)
        assert counters["stats"]["unique_graphs"] == graphs + 1


def test_compiled_decoder_refuses_to_fall_back_to_eager():
    # past Dynamo's recompile limit torch.compile would quietly run the step eagerly; the Decoder
    # raises instead (a second decoder of another batch size needs a recompile: the limit is 1 here)
    import torch._dynamo
    import torch._dynamo.exc

    torch._dynamo.reset()
    torch.manual_seed(0)
    m = GPT(GPTConfig.preset("tiny", n_layer=1, n_embd=32, n_head=2)).eval()
    with torch._dynamo.config.patch(recompile_limit=1):  # Dynamo's own override (monkeypatch would hide the key)
        G.Decoder(m, 1, 8, mode="compile").generate(torch.zeros(1, 2, dtype=torch.long), 3)
        with pytest.raises(torch._dynamo.exc.FailOnRecompileLimitHit, match="recompile"):
            G.Decoder(m, 2, 8, mode="compile").generate(torch.zeros(2, 2, dtype=torch.long), 3)
    torch._dynamo.reset()


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


def test_weight_bytes():
    lin = torch.nn.Linear(3, 5)  # 15 weights + 5 biases
    assert G.weight_bytes(lin) == 80
    assert G.weight_bytes(lin.to(torch.bfloat16)) == 40
    tied = torch.nn.Sequential(torch.nn.Embedding(7, 2), torch.nn.Linear(2, 7, bias=False))
    tied[1].weight = tied[0].weight  # one (7, 2) tensor under two names: counted once
    assert G.weight_bytes(tied) == 7 * 2 * 4
    with pytest.raises(TypeError, match="model"):
        G.weight_bytes("gpt2")


def test_greedy_agree_accepts_a_near_tie_and_refuses_a_clear_flip():
    lg = torch.zeros(4, 5)
    lg[:, 1] = 3.0
    lg[2, 2] = 2.99  # position 2: token 2 is within 0.01 of the pick
    a = torch.tensor([1, 1, 1, 1])
    assert G.greedy_agree(a, a.clone(), lg, 0.0)
    assert G.greedy_agree(a, torch.tensor([1, 1, 2, 4]), lg, 0.05)  # near-tie, then another prefix
    assert not G.greedy_agree(a, torch.tensor([1, 1, 2, 1]), lg, 0.001)
    assert not G.greedy_agree(a, torch.tensor([1, 3, 1, 1]), lg, 0.05)  # a 3-logit margin is no tie
    for args, field in [((a, a[:3], lg, 0.1), "a and b"), ((a, a, lg[:3], 0.1), "logits"),
                        ((a, a, lg, -1.0), "tol"), ((a.tolist(), a, lg, 0.1), "a and b")]:
        with pytest.raises(ValueError, match=field):
            G.greedy_agree(*args)
