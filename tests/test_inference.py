"""bmlib.decode: the bmlib-vs-Hugging-Face decode workloads, and the decode_case phases."""
import copy

import pytest
import torch

from bmlib.decode import BmlibDecode, HFGenerate, compare_decode, read_bandwidth
from bmlib.generate import generate
from bmlib.models.hf import llama_to_hf
from bmlib.models.llama import Llama, LlamaConfig


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    model = Llama(LlamaConfig.preset("tiny")).eval()
    return model, llama_to_hf(model).eval()


def _prompt(B=2, T=5, V=512):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(3))


def test_bmlib_phases_reproduce_generate(pair):
    model, _ = pair
    idx = _prompt()
    run = BmlibDecode(model, idx, 7)
    ref = generate(model, idx, 7, cache="none")[:, idx.shape[1]:]  # recompute everything: the reference
    assert torch.equal(run.tokens(), ref)
    # decode() rewinds to the end of the prompt: calling it twice gives the same 6 tokens
    assert torch.equal(run.decode(), ref[:, 1:]) and torch.equal(run.decode(), ref[:, 1:])
    assert torch.equal(run.prefill(), ref[:, :1])


def test_hf_generate_tokens_match_bmlib(pair):
    model, hf = pair
    idx = _prompt(B=1)
    assert torch.equal(HFGenerate(hf, idx, 6).tokens(), BmlibDecode(model, idx, 6).tokens())
    assert HFGenerate(hf, idx, 6).prefill().shape == (1,)


def test_compare_decode_rows_and_summary(pair):
    model, hf = pair
    res = compare_decode(model, hf, _prompt(B=2), 4, rounds=2, budget_s=0.0, min_reps=1, max_reps=1)
    assert len(res["rows"]) == 2 and res["tokens"].shape == (2, 4)
    for r in res["rows"]:
        assert r["bmlib_decode_tokens_per_s"] == pytest.approx(2 * 3 / (r["bmlib_decode_ms"] / 1e3))
        assert r["hf_decode_ms"] == pytest.approx(max(r["hf_generate_ms"] - r["hf_prefill_ms"], 1e-9))
    s = res["speedup_vs_hf"]
    assert s["q1"] <= s["median"] <= s["q3"]


def test_compare_decode_refuses_different_models(pair):
    model, hf = pair
    other = copy.deepcopy(hf)
    with torch.no_grad():
        other.model.norm.weight.neg_()  # logits negated: the argmax becomes the argmin
    with pytest.raises(RuntimeError, match="differ"):
        compare_decode(model, other, _prompt(B=1), 6, rounds=1, budget_s=0.0, min_reps=1, max_reps=1)


@pytest.mark.parametrize("bad", [1, 0, True, 2.0])
def test_bad_new_tokens(pair, bad):
    with pytest.raises(ValueError, match="new_tokens"):
        BmlibDecode(pair[0], _prompt(), bad)


def test_bad_prompt_and_rounds(pair):
    with pytest.raises(ValueError, match="idx"):
        BmlibDecode(pair[0], torch.zeros(5, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="rounds"):
        compare_decode(pair[0], pair[1], _prompt(), 3, rounds=0)


def test_read_bandwidth_is_plausible():
    bw = read_bandwidth(8 * 2**20, budget_s=0.05)
    assert 1e8 < bw < 1e13  # between 0.1 GB/s and 10 TB/s: bytes/s, not GB/s or bits


def test_decode_case_phases_count_their_own_tokens():
    from bmlib.benchmarks import decode_case

    dec = decode_case("tiny", 2, 6, 5, device="cpu", phase="decode")
    pre = decode_case("tiny", 2, 6, 5, device="cpu", phase="prefill")
    assert dec.extra["tokens"] == 10 and pre.extra["tokens"] == 12
    assert dec.fn().shape == (2, 5) and pre.fn().shape == (2, 1)
    with pytest.raises(ValueError, match="phase"):
        decode_case("tiny", 1, 4, 4, device="cpu", phase="both")


def test_fused_decode_matches_reference(pair):
    from bmlib.decode import FusedLlamaDecode

    model, hf = pair
    idx = _prompt(B=2, T=6)
    run = FusedLlamaDecode(model, idx, 9)
    ref, ref_logits = generate(model, idx, 9, cache="none", return_logits=True)
    assert torch.equal(run.tokens(), ref[:, 6:])
    assert torch.equal(run.decode(), ref[:, 7:])  # decode() restarts after the prompt
    lg = run._step(ref[:, 6:7], 6)[:, -1]  # the logits of the token after the first new one
    assert torch.allclose(lg, ref_logits[:, 1], atol=1e-5)
    res = compare_decode(model, hf, idx[:1], 4, rounds=1, budget_s=0.0, min_reps=1, max_reps=1, impl="fused")
    assert res["tokens"].shape == (1, 4)
    with pytest.raises(ValueError, match="impl"):
        compare_decode(model, hf, idx[:1], 4, impl="triton")
    with pytest.raises(TypeError, match="Llama"):
        FusedLlamaDecode(hf, idx, 4)


def test_matvec_sum_is_the_matrix_product():
    from bmlib.decode import compiled_matvec, matvec_sum

    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(7, 5, generator=g), torch.randn(1, 1, 5, generator=g)
    assert torch.allclose(matvec_sum(w, x), torch.nn.functional.linear(x, w), atol=1e-6)
    for n, k in [(7, 5), (48, 32)]:  # two shapes, one compiled graph
        w, x = torch.randn(n, k, generator=g), torch.randn(1, 1, k, generator=g)
        assert compiled_matvec(w, x).shape == (1, 1, n)
        assert torch.allclose(compiled_matvec(w, x), x @ w.T, atol=1e-5)


def test_fused_decode_compiled_matvec_matches_library(pair):
    from bmlib.decode import FusedLlamaDecode

    model, hf = pair
    idx = _prompt(B=1, T=6)
    lib, comp = FusedLlamaDecode(model, idx, 9), FusedLlamaDecode(model, idx, 9, matvec="compiled")
    ref, ref_logits = generate(model, idx, 9, cache="none", return_logits=True)
    assert torch.equal(comp.tokens(), ref[:, 6:]) and torch.equal(comp.tokens(), lib.tokens())
    lg = comp._step(ref[:, 6:7], 6)[:, -1]
    assert torch.allclose(lg, ref_logits[:, 1], atol=1e-5)
    assert comp.head_t.data_ptr() == model.lm_head.weight.data_ptr()  # the model's (out, in) matrix, no copy
    res = compare_decode(model, hf, idx, 4, rounds=1, budget_s=0.0, min_reps=1, max_reps=1, impl="fused",
                         matvec="compiled")
    assert torch.equal(res["tokens"], ref[:, 6:10])


def test_fused_decode_refuses_bad_matvec(pair):
    from bmlib.decode import FusedLlamaDecode

    model, hf = pair
    with pytest.raises(ValueError, match="matvec must be one of"):
        FusedLlamaDecode(model, _prompt(B=1), 4, matvec="blas")
    with pytest.raises(ValueError, match="batch size 1"):
        FusedLlamaDecode(model, _prompt(B=2), 4, matvec="compiled")
    with pytest.raises(ValueError, match="impl='fused'"):
        compare_decode(model, hf, _prompt(B=1), 4, impl="decoder", matvec="compiled")


@pytest.mark.parametrize("w, x, what", [
    (torch.ones(3), torch.ones(1, 3), "w must be"),
    (torch.ones(3, 4, dtype=torch.long), torch.ones(1, 4), "w must be"),
    ([[1.0]], torch.ones(1, 1), "w must be"),
    (torch.ones(3, 4), torch.ones(1, 5), "x must be"),
    (torch.ones(3, 4), "x", "x must be"),
    (torch.ones(3, 4), torch.ones(1, 4, dtype=torch.float64), "dtype"),
])
def test_compiled_matvec_refuses_bad_input(w, x, what):
    from bmlib.decode import compiled_matvec

    with pytest.raises(ValueError, match=what):
        compiled_matvec(w, x)
