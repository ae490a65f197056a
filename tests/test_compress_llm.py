"""bmlib.compress.llm: fixed-text windows, per-window NLL, the perplexity-change interval, decode speed."""
import math

import numpy as np
import pytest
import torch

from bmlib import compress as C
from bmlib.compress import llm as L
from bmlib.models.llama import Llama, LlamaConfig


class ByteTok:
    def encode(self, text):
        return [b % 512 for b in text.encode()]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return Llama(LlamaConfig.preset("tiny")).eval()


def test_windows_are_fixed_consecutive_text():
    a = L.fixed_text_windows(ByteTok(), 3, 16)
    b = L.fixed_text_windows(ByteTok(), 3, 16)
    assert a.shape == (3, 16) and torch.equal(a, b)
    assert torch.equal(L.fixed_text_windows(ByteTok(), 1, 48).view(3, 16), a)  # windows tile one stream


def test_window_nll_matches_cross_entropy(tiny):
    W = L.fixed_text_windows(ByteTok(), 3, 10)
    nll = L.window_nll(tiny, W, batch_size=2)
    with torch.no_grad():
        logits = tiny(W)[0]
    for i in range(3):
        ref = torch.nn.functional.cross_entropy(logits[i, :-1], W[i, 1:]).item()
        assert nll[i] == pytest.approx(ref, rel=1e-5)
    assert L.perplexity(nll) == pytest.approx(math.exp(nll.mean()))


def test_ppl_change_ci_known_shift():
    base = np.array([1.0, 2.0, 3.0, 4.0])
    d, lo, hi = L.ppl_change_ci(base, base + 0.01)  # every window 0.01 nats worse: +1.005%
    assert d == pytest.approx(100 * (math.exp(0.01) - 1)) and lo == pytest.approx(d) and hi == pytest.approx(d)
    d, lo, hi = L.ppl_change_ci(base, base + np.array([0.1, -0.1, 0.05, -0.05]))
    assert lo < 0 < hi and lo <= d <= hi  # changes of both signs: an interval around 0
    with pytest.raises(ValueError, match="nll_base"):
        L.ppl_change_ci(base, base[:3])


def test_int8_copy_keeps_perplexity_and_decodes(tiny):
    W = L.fixed_text_windows(ByteTok(), 2, 12)
    q = C.dynamic_int8(tiny, per_channel=True)
    d, _, _ = L.ppl_change_ci(L.window_nll(tiny, W), L.window_nll(q, W))
    assert abs(d) < 5.0  # per-channel int8 of a random tiny model: a few percent at most
    tps, t, toks = L.decode_tokens_per_s(q, W[:1, :4], 5, min_reps=1, max_reps=1)
    assert tps > 0 and toks.shape == (1, 5) and t.reps == 1


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_bad_window_args(bad):
    with pytest.raises(ValueError, match="n_windows"):
        L.fixed_text_windows(ByteTok(), bad, 8)
    with pytest.raises(ValueError, match="window"):
        L.fixed_text_windows(ByteTok(), 2, bad)


def test_bad_windows_tensor(tiny):
    with pytest.raises(ValueError, match="windows"):
        L.window_nll(tiny, torch.zeros(5, dtype=torch.long))


def test_compare_variants_measures_every_variant_against_the_first(tiny):
    W = L.fixed_text_windows(ByteTok(), 4, 12)
    prompt = W[:1, :5]
    noisy = C.quantize_model(tiny, 4, exclude=())  # int4 weights: same shapes, other logits
    nll = {}
    rows = L.compare_variants({"ref": tiny, "same": tiny, "compiled": tiny, "int4": noisy}, prompt, 4, W,
                              rounds=2, nll=nll, modes={"compiled": "compile"})
    by = {r["variant"]: r for r in rows}
    assert list(by) == ["ref", "same", "compiled", "int4"] and set(nll) == set(by)
    assert by["ref"]["ppl_change_pct"] == 0 and by["ref"]["speedup_vs_fp32"] == 1
    assert by["same"]["same_tokens_as_fp32"] and by["same"]["ppl_change_pct"] == 0
    assert by["compiled"]["decode_mode"] == "compile" and by["same"]["decode_mode"] == "eager"
    assert by["compiled"]["same_tokens_as_fp32"]  # the compiled step decodes the eager step's tokens
    assert all(len(r["tokens_per_s_rounds"]) == 2 and np.shape(r["tokens"]) == (1, 4) for r in rows)
    np.testing.assert_allclose(nll["int4"], L.window_nll(noisy, W))  # quality on the given windows
    assert by["int4"]["ppl"] == pytest.approx(L.perplexity(nll["int4"]))
    assert by["int4"]["ci_low"] <= by["int4"]["ppl_change_pct"] <= by["int4"]["ci_high"]
    assert all(r["decode_tokens_per_s"] > 0 and r["size_mb"] > 0 for r in rows)
    assert all(r["speedup_q1"] <= r["speedup_vs_fp32"] <= r["speedup_q3"] for r in rows)
    for kw, field in [(dict(variants={}), "variants"), (dict(rounds=0), "rounds"),
                      (dict(modes={"other": "compile"}), "modes"), (dict(modes={"ref": "turbo"}), "mode")]:
        args = dict(variants={"ref": tiny}, prompt=prompt, new_tokens=4, windows=W, rounds=1) | kw
        with pytest.raises(ValueError, match=field):
            L.compare_variants(**args)


@pytest.mark.parametrize("bad", [torch.zeros(3, 4), torch.zeros(4, dtype=torch.long), [[1, 2]],
                                 torch.zeros(3, 1, dtype=torch.long)])
def test_compression_functions_refuse_bad_token_windows(tiny, bad):
    from bmlib.compress.heads import head_importance

    for fn in (L.window_nll, head_importance):
        with pytest.raises(ValueError, match=r"windows must be a \(n, T >= 2\) int64 tensor"):
            fn(tiny, bad)
    with pytest.raises(ValueError, match=r"token ids in \[0, 512\)"):
        head_importance(tiny, torch.full((2, 3), 600))
