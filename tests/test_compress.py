"""Tests for bmlib.compress: quantization, pruning, distillation, low rank, sizes."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from bmlib import compress as C
from bmlib.models.gpt import GPT, GPTConfig


@pytest.fixture(scope="module")
def gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig.preset("tiny", n_layer=2, vocab_size=256, block_size=32)).eval()


def _idx(n=2, T=16, V=256, seed=1):
    return torch.randint(0, V, (n, T), generator=torch.Generator().manual_seed(seed))


def _scale_per_element(qt):
    out, inp = qt.shape
    if qt.granularity == "group":
        return qt.scale.repeat_interleave(qt.group_size, dim=1)
    return qt.scale.expand(out, inp)


# ---------------------------------------------------------------- quantization
@settings(max_examples=40, deadline=None)
@given(out=st.integers(1, 12), groups=st.integers(1, 4), g=st.sampled_from([2, 4, 8]),
       bits=st.sampled_from([2, 4, 8]), symmetric=st.booleans(),
       gran=st.sampled_from(["tensor", "channel", "group"]), seed=st.integers(0, 2**16),
       spread=st.floats(1e-3, 1e3))
def test_roundtrip_error_within_half_step(out, groups, g, bits, symmetric, gran, seed, spread):
    w = torch.randn(out, groups * g, generator=torch.Generator().manual_seed(seed)) * spread
    qt = C.quantize(w, bits, symmetric=symmetric, granularity=gran,
                    group_size=g if gran == "group" else None)
    qmin, qmax = C.qrange(bits, symmetric)
    assert qt.q.to(torch.int32).min() >= qmin and qt.q.to(torch.int32).max() <= qmax
    err = (w - qt.dequantize()).abs()
    s = _scale_per_element(qt)
    assert (err <= s / 2 * (1 + 1e-5) + 1e-12).all()


def test_symmetric_maps_absmax_exactly_and_zero_to_zero():
    w = torch.tensor([[-2.0, 0.0, 1.0, 0.5]])
    qt = C.quantize(w, 8, symmetric=True, granularity="tensor")
    assert qt.q.tolist() == [[-127, 0, 64, 32]]  # 127 * (1, 0.5, 0.25) rounded
    assert qt.scale.item() == pytest.approx(2.0 / 127)
    assert qt.dequantize()[0, 0].item() == pytest.approx(-2.0)
    assert qt.dequantize()[0, 1].item() == 0.0


def test_asymmetric_uses_full_range_and_zero_is_exact():
    w = torch.tensor([[0.5, 1.0, 3.0, 2.0]])  # all positive: min is clamped to 0
    qt = C.quantize(w, 4, symmetric=False, granularity="tensor")
    assert qt.zero_point.item() == 0 and qt.q.max().item() == 15
    w2 = torch.tensor([[-1.0, 0.0, 3.0]])
    qt2 = C.quantize(w2, 8, symmetric=False, granularity="tensor")
    assert qt2.dequantize()[0, 1].item() == pytest.approx(0.0, abs=1e-7)
    assert qt2.q.dtype == torch.uint8 and qt2.q.max().item() == 255


def test_finer_granularity_has_lower_error():
    torch.manual_seed(0)
    w = torch.randn(64, 256) * torch.logspace(-2, 1, 64)[:, None]  # rows on very different scales
    e = {g: C.quant_error(w, C.fake_quantize(w, 4, granularity=g, group_size=32 if g == "group" else None))["rel_fro_err"]
         for g in ("tensor", "channel", "group")}
    assert e["group"] < e["channel"] < e["tensor"]
    sq = [C.quant_error(w, C.fake_quantize(w, b))["sqnr_db"] for b in (2, 4, 8)]
    assert sq[0] < sq[1] < sq[2]
    # each extra bit buys ~6 dB of SQNR: 4 bits from int4 to int8
    assert sq[2] - sq[1] == pytest.approx(4 * 6.02, abs=3.0)


def test_quant_error_matches_definition():
    w = torch.tensor([[3.0, 4.0]])
    e = C.quant_error(w, torch.tensor([[3.0, 3.0]]))
    assert e["max_abs_err"] == 1.0 and e["rel_fro_err"] == pytest.approx(1 / 5)
    assert e["sqnr_db"] == pytest.approx(10 * math.log10(25))


@pytest.mark.parametrize("bad", [1, 3, 16, 0, 8.0, True, "8"])
def test_bad_bits(bad):
    with pytest.raises(ValueError, match="bits"):
        C.quantize(torch.randn(4, 8), bad)
    with pytest.raises(ValueError, match="bits"):
        C.quantize_model(nn.Sequential(nn.Linear(8, 4)), bad)


@pytest.mark.parametrize("gs", [3, 0, -4, 5, None, 2.0])
def test_group_size_must_divide(gs):
    with pytest.raises(ValueError, match="group_size"):
        C.quantize(torch.randn(4, 8), 4, granularity="group", group_size=gs)


def test_bad_quantize_arguments():
    with pytest.raises(ValueError, match="granularity"):
        C.quantize(torch.randn(4, 8), 8, granularity="row")
    with pytest.raises(ValueError, match="w must be a 2-d"):
        C.quantize(torch.randn(8), 8)
    with pytest.raises(TypeError, match="w must be a floating"):
        C.quantize(torch.ones(4, 8, dtype=torch.long), 8)
    with pytest.raises(ValueError, match="group_size"):
        C.quantize(torch.randn(4, 8), 8, granularity="channel", group_size=4)
    with pytest.raises(ValueError, match="group_size"):
        C.quantize_model(nn.Sequential(nn.Linear(12, 4)), 4, group_size=8)
    with pytest.raises(ValueError, match="w_hat"):
        C.quant_error(torch.randn(2, 3), torch.randn(3, 2))


@settings(max_examples=30, deadline=None)
@given(shape=st.tuples(st.integers(1, 5), st.integers(1, 6)), signed=st.booleans(), seed=st.integers(0, 999))
def test_int4_pack_roundtrip(shape, signed, seed):
    lo, hi = (-8, 8) if signed else (0, 16)
    q = torch.randint(lo, hi, (shape[0], 2 * shape[1]), generator=torch.Generator().manual_seed(seed),
                      dtype=torch.int8 if signed else torch.uint8)
    packed = C.pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape == (shape[0], shape[1])
    assert torch.equal(C.unpack_int4(packed, signed=signed).to(torch.int16), q.to(torch.int16))


def test_pack_int4_layout_and_bad_input():
    assert C.pack_int4(torch.tensor([1, 2], dtype=torch.int8)).item() == 0x21
    assert C.pack_int4(torch.tensor([-1, 0], dtype=torch.int8)).item() == 0x0F
    with pytest.raises(ValueError, match="even last dimension"):
        C.pack_int4(torch.zeros(3, dtype=torch.int8))
    with pytest.raises(ValueError, match="4 bits"):
        C.pack_int4(torch.tensor([16, 0], dtype=torch.int16))
    with pytest.raises(TypeError, match="q must be an integer"):
        C.pack_int4(torch.zeros(2))
    with pytest.raises(TypeError, match="packed must be a uint8"):
        C.unpack_int4(torch.zeros(2, dtype=torch.int8))


@pytest.mark.parametrize("bits,group_size,symmetric,impl", [
    (8, None, True, "dequant"), (8, None, True, "scale_after"), (8, 16, False, "dequant"),
    (4, None, True, "dequant"), (4, 16, True, "dequant"), (4, 32, False, "dequant")])
def test_quantlinear_matches_fake_quant(bits, group_size, symmetric, impl):
    torch.manual_seed(0)
    lin = nn.Linear(64, 24)
    ql = C.QuantLinear.from_linear(lin, bits, symmetric=symmetric, group_size=group_size, impl=impl)
    gran = "channel" if group_size is None else "group"
    qt = C.quantize(lin.weight.detach(), bits, symmetric=symmetric, granularity=gran, group_size=group_size)
    # stored scales are fp16, so compare against the fp16-rounded reference
    ref_w = (qt.q.float() - qt.zero_point.float().repeat_interleave(group_size or 64, 1)) \
        * qt.scale.half().float().repeat_interleave(group_size or 64, 1)
    assert torch.allclose(ql.dequantize_weight(), ref_w, atol=1e-6)
    x = torch.randn(5, 64)
    assert torch.allclose(ql(x), F.linear(x, ref_w, lin.bias), atol=1e-5)
    # storage: int4 packs two codes per byte
    assert ql.qweight.numel() == 24 * 64 // (8 // bits)


# ---------------------------------------------------------------- parity with PyTorch's fake quantization
def _torch_fake_quant(w, qt):
    """``torch.fake_quantize_per_channel_affine`` (or per tensor) with the scales and zero points of ``qt``."""
    qmin, qmax = C.qrange(qt.bits, qt.symmetric)
    out, inp = qt.shape
    if qt.granularity == "tensor":
        return torch.fake_quantize_per_tensor_affine(w, qt.scale.item(), int(qt.zero_point.item()), qmin, qmax)
    g = inp if qt.granularity == "channel" else qt.group_size
    rows = w.reshape(-1, g)  # one statistics group per row: per channel along axis 0
    fq = torch.fake_quantize_per_channel_affine(rows, qt.scale.reshape(-1).float(),
                                                qt.zero_point.reshape(-1).to(torch.int32), 0, qmin, qmax)
    return fq.reshape(out, inp)


@settings(max_examples=40, deadline=None)
@given(out=st.integers(1, 8), groups=st.integers(1, 3), g=st.sampled_from([4, 8]), bits=st.sampled_from([2, 4, 8]),
       symmetric=st.booleans(), gran=st.sampled_from(["tensor", "channel", "group"]), seed=st.integers(0, 99))
def test_fake_quantize_equals_torch(out, groups, g, bits, symmetric, gran, seed):
    w = torch.randn(out, groups * g, generator=torch.Generator().manual_seed(seed))
    kw = dict(symmetric=symmetric, granularity=gran, group_size=g if gran == "group" else None)
    qt = C.quantize(w, bits, **kw)
    ours, ref = C.fake_quantize(w, bits, **kw), _torch_fake_quant(w, qt)
    # bit-equal (torch multiplies by 1/scale where the book divides, which could split a value a float
    # rounding away from a .5 tie; none did in 1.8M elements of 2/4/8 bits x every granularity)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("bits,group_size,symmetric", [(8, None, True), (8, 16, False), (4, None, True),
                                                       (4, 16, True), (4, 32, False)])
def test_quantlinear_equals_torch_fake_quant(bits, group_size, symmetric):
    torch.manual_seed(0)
    lin = nn.Linear(64, 24)
    ql = C.QuantLinear.from_linear(lin, bits, symmetric=symmetric, group_size=group_size)
    gran = "channel" if group_size is None else "group"
    qt = C.quantize(lin.weight.detach(), bits, symmetric=symmetric, granularity=gran, group_size=group_size)
    ref = _torch_fake_quant(lin.weight.detach(), qt)
    # QuantLinear keeps its scales in fp16: |q| <= 2^b codes times a relative error of 2^-11 in the scale
    tol = 2 ** bits * qt.scale.max().item() * 2 ** -11
    torch.testing.assert_close(ql.dequantize_weight(), ref, atol=tol, rtol=0)
    x = torch.randn(5, 64)
    torch.testing.assert_close(ql(x), F.linear(x, ref, lin.bias), atol=tol * 64 * 4, rtol=1e-4)


def test_quantize_model_keeps_quality_and_shrinks(gpt):
    x = _idx()
    ref = gpt(x)[0]
    q8 = C.quantize_model(gpt, 8)
    q4 = C.quantize_model(gpt, 4, group_size=32)
    n_q = sum(isinstance(m, C.QuantLinear) for m in q8.modules())
    assert n_q == 4 * gpt.config.n_layer  # c_attn, attn.c_proj, c_fc, mlp.c_proj per block
    assert not isinstance(q8.lm_head, C.QuantLinear)
    e8, e4 = (q8(x)[0] - ref).abs().max().item(), (q4(x)[0] - ref).abs().max().item()
    assert e8 < 0.02 and e8 < e4 < 0.5
    m0, m8, m4 = C.memory_bytes(gpt), C.memory_bytes(q8), C.memory_bytes(q4)
    assert m4 < m8 < m0
    lin_fp32 = sum(l.weight.numel() * 4 for l in C.linear_layers(gpt).values())
    # int8 saves ~3/4 of the linear weights' bytes (minus fp16 scales)
    assert m0 - m8 == pytest.approx(0.75 * lin_fp32, rel=0.03)
    assert isinstance(gpt.transformer.h[0].mlp.c_fc, nn.Linear)  # original untouched


def test_quantlinear_bad_arguments():
    with pytest.raises(ValueError, match="impl"):
        C.QuantLinear(8, 4, impl="fast")
    with pytest.raises(ValueError, match="scale_after"):
        C.QuantLinear(8, 4, group_size=4, impl="scale_after")
    with pytest.raises(ValueError, match="group_size"):
        C.QuantLinear(8, 4, group_size=3)
    with pytest.raises(TypeError, match="linear"):
        C.QuantLinear.from_linear(nn.Conv1d(2, 2, 1))


def test_layer_quant_errors_rows(gpt):
    rows = C.layer_quant_errors(gpt, 4, granularity="group", group_size=32)
    assert len(rows) == 8 and all(r["bits"] == 4 for r in rows)
    assert all(0 < r["rel_fro_err"] < 0.2 for r in rows)


def test_dynamic_int8_close_and_smaller(gpt):
    dq = C.dynamic_int8(gpt)
    x = _idx()
    ref = gpt(x)[0]
    rel = ((dq(x)[0] - ref).norm() / ref.norm()).item()
    assert rel < 0.05  # activations are quantized too (per batch, 8 bits)
    assert C.disk_bytes(dq, "torch") < C.disk_bytes(gpt, "torch")


def test_torchao_guard():
    if C.torchao_available():
        pytest.skip("torchao installed")
    with pytest.raises(ImportError, match="torchao"):
        C.torchao_quantize(nn.Sequential(nn.Linear(8, 8)), "int8wo")
    with pytest.raises(ValueError, match="scheme"):
        C.torchao_quantize(nn.Sequential(nn.Linear(8, 8)), "int3")


# ---------------------------------------------------------------- pruning
@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 200), sparsity=st.floats(0.0, 0.99), seed=st.integers(0, 999))
def test_magnitude_mask_count_and_order(n, sparsity, seed):
    w = torch.randn(n, generator=torch.Generator().manual_seed(seed))
    m = C.magnitude_mask(w, sparsity)
    assert (~m).sum().item() == round(sparsity * n)
    if m.any() and (~m).any():
        assert w[~m].abs().max() <= w[m].abs().min()


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), True, "0.5"])
def test_bad_sparsity(bad):
    with pytest.raises(ValueError, match="sparsity"):
        C.magnitude_mask(torch.randn(10), bad)
    with pytest.raises(ValueError, match="sparsity"):
        C.prune_magnitude(nn.Sequential(nn.Linear(4, 4)), bad)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_prune_magnitude_levels(gpt, scope):
    import copy
    m = copy.deepcopy(gpt)
    masks = C.prune_magnitude(m, 0.6, scope=scope)
    assert C.sparsity_of(m) == pytest.approx(0.6, abs=1e-3)
    for name, lin in C.linear_layers(m).items():
        assert torch.equal(lin.weight == 0, ~masks[name])
        if scope == "layer":
            assert C.sparsity_of(lin.weight) == pytest.approx(0.6, abs=1e-3)
    if scope == "global":  # global ranking: the kept weights are the largest anywhere
        kept = torch.cat([l.weight[masks[n]].abs() for n, l in C.linear_layers(m).items()])
        dropped = torch.cat([l.weight[~masks[n]].abs() for n, l in C.linear_layers(gpt).items()])
        assert dropped.max() <= kept.min()
    with pytest.raises(ValueError, match="scope"):
        C.prune_magnitude(m, 0.5, scope="row")


@settings(max_examples=25, deadline=None)
@given(out=st.integers(1, 8), blocks=st.integers(1, 6), seed=st.integers(0, 999))
def test_mask_2to4_pattern(out, blocks, seed):
    w = torch.randn(out, 4 * blocks, generator=torch.Generator().manual_seed(seed))
    m = C.mask_2to4(w)
    g = m.view(out, blocks, 4)
    assert (g.sum(-1) == 2).all()
    a = w.abs().view(out, blocks, 4)
    assert (a.masked_fill(~g, float("inf")).amin(-1) >= a.masked_fill(g, -1).amax(-1)).all()


def test_mask_2to4_bad_shape():
    with pytest.raises(ValueError, match="divisible by 4"):
        C.mask_2to4(torch.randn(4, 6))
    with pytest.raises(RuntimeError if not torch.cuda.is_available() else ValueError):
        C.to_sparse_24(nn.Linear(8, 8))


def test_prune_mlp_neurons_shrinks_and_matches_masked_model(gpt):
    small, kept = C.prune_mlp_neurons(gpt, 0.5)
    C4 = 4 * gpt.config.n_embd
    assert small.transformer.h[0].mlp.c_fc.weight.shape == (C4 // 2, gpt.config.n_embd)
    assert small.transformer.h[0].mlp.c_proj.weight.shape == (gpt.config.n_embd, C4 // 2)
    assert C.count_parameters(small) < C.count_parameters(gpt)
    # reference: zero the dropped neurons' output columns in the full model
    import copy
    masked = copy.deepcopy(gpt)
    for i, b in enumerate(masked.transformer.h):
        drop = torch.ones(C4, dtype=torch.bool)
        drop[kept[i]] = False
        with torch.no_grad():
            b.mlp.c_proj.weight[:, drop] = 0
    x = _idx()
    assert torch.allclose(small(x)[0], masked(x)[0], atol=1e-5)
    # kept neurons compute exactly their old pre-activations
    h = torch.randn(3, gpt.config.n_embd)
    assert torch.allclose(small.transformer.h[0].mlp.c_fc(h), gpt.transformer.h[0].mlp.c_fc(h)[:, kept[0]], atol=1e-6)
    with pytest.raises(ValueError, match="keep"):
        C.prune_mlp_neurons(gpt, 0.0)


def test_prune_heads_shrinks_and_matches_masked_model(gpt):
    small, kept = C.prune_heads(gpt, 0.5)
    cfg = gpt.config
    assert all(len(k) == cfg.n_head // 2 for k in kept.values())
    a = small.transformer.h[0].attn
    assert a.c_attn.weight.shape == (3 * cfg.n_embd // 2, cfg.n_embd)
    assert a.c_proj.weight.shape == (cfg.n_embd, cfg.n_embd // 2)
    import copy
    masked = copy.deepcopy(gpt)
    hs = cfg.head_dim
    for i, b in enumerate(masked.transformer.h):
        for h in range(cfg.n_head):
            if h not in kept[i].tolist():
                with torch.no_grad():
                    b.attn.c_proj.weight[:, h * hs:(h + 1) * hs] = 0
    x = _idx()
    assert torch.allclose(small(x)[0], masked(x)[0], atol=1e-5)
    # the pruned model runs the model's own attention module, with fewer heads
    assert type(a) is type(gpt.transformer.h[0].attn) and a.n_head == cfg.n_head // 2
    full, _ = C.prune_heads(gpt, 1.0)
    assert torch.equal(full(x)[0], gpt(x)[0])  # keeping every head changes nothing
    with pytest.raises(ValueError, match="kv_cache"):
        a(torch.randn(1, 2, cfg.n_embd), kv_cache=object())
    with pytest.raises(ValueError, match="keep"):
        C.prune_heads(gpt, 1.5)


# ---------------------------------------------------------------- distillation
def test_distillation_loss_by_hand():
    s = torch.tensor([[1.0, 2.0, 0.5]])
    t = torch.tensor([[2.0, 0.0, 1.0]])
    y = torch.tensor([1])
    T, a = 2.0, 0.3
    pt = [math.exp(v / T) for v in t[0].tolist()]
    pt = [p / sum(pt) for p in pt]
    ps = [math.exp(v / T) for v in s[0].tolist()]
    ps = [p / sum(ps) for p in ps]
    kl = sum(p * math.log(p / q) for p, q in zip(pt, ps))
    es = [math.exp(v) for v in s[0].tolist()]
    ce = -math.log(es[1] / sum(es))
    want = a * T * T * kl + (1 - a) * ce
    assert C.distillation_loss(s, t, y, T, a).item() == pytest.approx(want, rel=1e-5)
    # matches PyTorch's kl_div, and is zero when student == teacher with alpha=1
    ref = F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True, reduction="batchmean") * T * T
    assert C.distillation_loss(s, t, None, T, 1.0).item() == pytest.approx(ref.item(), rel=1e-5)
    assert C.distillation_loss(t, t, None, T, 1.0).item() == pytest.approx(0.0, abs=1e-7)


def test_distillation_loss_ignores_masked_positions_and_bad_args():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    y = torch.randint(0, 7, (2, 5))
    y2 = y.clone()
    y2[:, -1] = -100
    full = C.distillation_loss(s[:, :-1], t[:, :-1], y[:, :-1], 2.0, 0.5)
    assert C.distillation_loss(s, t, y2, 2.0, 0.5).item() == pytest.approx(full.item(), rel=1e-5)
    with pytest.raises(ValueError, match="temperature"):
        C.distillation_loss(s, t, y, 0.0)
    with pytest.raises(ValueError, match="alpha"):
        C.distillation_loss(s, t, y, 2.0, 1.5)
    with pytest.raises(ValueError, match="teacher_logits"):
        C.distillation_loss(s, t[:, :3], y)
    with pytest.raises(ValueError, match="targets are required"):
        C.distillation_loss(s, t, None, 2.0, 0.5)


def test_distiller_trains_only_student(gpt):
    student = GPT(GPTConfig.preset("tiny", n_layer=1, n_embd=64, n_head=2, vocab_size=256, block_size=32))
    d = C.Distiller(student, gpt, temperature=2.0, alpha=0.7)
    assert C.count_parameters(d) == C.count_parameters(student)
    x = _idx()
    y = _idx(seed=2)
    logits, loss = d(x, y)
    want = C.distillation_loss(student(x)[0], gpt(x)[0], y, 2.0, 0.7)
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    loss.backward()
    assert all(p.grad is None for p in gpt.parameters())
    assert student.lm_head.weight.grad is not None
    with pytest.raises(ValueError, match="alpha"):
        C.Distiller(student, gpt, alpha=-1)


# ---------------------------------------------------------------- low rank
@settings(max_examples=25, deadline=None)
@given(out=st.integers(2, 24), inp=st.integers(2, 24), data=st.data())
def test_svd_error_is_tail_singular_values(out, inp, data):
    rank = data.draw(st.integers(1, min(out, inp)))
    w = torch.randn(out, inp, generator=torch.Generator().manual_seed(out * 100 + inp), dtype=torch.float64).float()
    s = torch.linalg.svdvals(w.double())
    tail = s[rank:].pow(2).sum().sqrt().item()
    assert C.low_rank_error(w, rank) == pytest.approx(tail, abs=1e-4 * (1 + s[0].item()))


def test_svd_factorize_layer():
    torch.manual_seed(0)
    lin = nn.Linear(32, 16)
    full = C.svd_factorize(lin, 16)
    x = torch.randn(4, 32)
    assert torch.allclose(full(x), lin(x), atol=1e-5)
    lr = C.svd_factorize(lin, 4)
    assert lr.down.weight.shape == (4, 32) and lr.up.weight.shape == (16, 4)
    assert C.count_parameters(lr) == 4 * (32 + 16) + 16
    for bad in (0, 17, 2.5):
        with pytest.raises(ValueError, match="rank"):
            C.svd_factorize(lin, bad)


def test_lora_init_merge_and_counts():
    torch.manual_seed(0)
    base = nn.Linear(32, 16)
    lora = C.LoRALinear(base, r=4, alpha=8)
    x = torch.randn(3, 32)
    assert torch.allclose(lora(x), base(x))  # B = 0: starts at the base model
    assert lora.scaling == 2.0
    assert C.count_parameters(lora, trainable_only=True) == 4 * 32 + 16 * 4
    with torch.no_grad():
        lora.lora_B.normal_()
    merged = lora.merge()
    assert isinstance(merged, nn.Linear)
    assert torch.allclose(merged(x), lora(x), atol=1e-5)
    assert torch.allclose(merged.weight, base.weight + 2.0 * lora.lora_B @ lora.lora_A, atol=1e-6)
    with pytest.raises(ValueError, match="r must"):
        C.LoRALinear(base, r=0)
    with pytest.raises(ValueError, match="alpha"):
        C.LoRALinear(base, r=2, alpha=0)


def test_add_and_merge_lora_on_gpt(gpt):
    import copy
    m = copy.deepcopy(gpt)
    C.add_lora(m, targets=("c_attn",), r=2, alpha=4)
    n_lora = C.count_parameters(m, trainable_only=True)
    assert n_lora == gpt.config.n_layer * 2 * (gpt.config.n_embd + 3 * gpt.config.n_embd)
    assert C.count_parameters(m) == C.count_parameters(gpt) + n_lora
    x = _idx()
    for mod in m.modules():
        if isinstance(mod, C.LoRALinear):
            with torch.no_grad():
                mod.lora_B.normal_(std=0.1)
    out = m(x)[0]
    C.merge_lora(m)
    assert not any(isinstance(mod, C.LoRALinear) for mod in m.modules())
    assert torch.allclose(m(x)[0], out, atol=1e-4)
    with pytest.raises(ValueError, match="targets"):
        C.add_lora(copy.deepcopy(gpt), targets=("nope",))


# ---------------------------------------------------------------- sizes
def _tied(tie=True):
    """An embedding table (10 x 4) shared with an output head, plus one fp16 buffer of 3."""
    m = nn.ModuleDict({"emb": nn.Embedding(10, 4), "head": nn.Linear(4, 10, bias=False)})
    if tie:
        m["head"].weight = m["emb"].weight
    m.register_buffer("b", torch.zeros(3, dtype=torch.float16))
    return m


def test_sizes_count_tied_weights_once(gpt):
    tied, untied = _tied(True), _tied(False)
    assert C.count_parameters(tied) == 40 and C.count_parameters(untied) == 80  # counted by hand
    assert C.memory_bytes(tied) == 40 * 4 + 3 * 2 and C.memory_bytes(untied) == 80 * 4 + 3 * 2
    extra = C.disk_bytes(untied) - C.disk_bytes(tied)
    assert 160 <= extra < 160 + 100  # the second table's 160 bytes plus its header entry
    assert C.count_parameters(gpt) == gpt.num_params()  # two independent counts of the tied GPT
    with pytest.raises(ValueError, match="format"):
        C.disk_bytes(gpt, "onnx")


def test_dynamic_int8_exclude_and_per_channel():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    dq = C.dynamic_int8(m, exclude=("2",))
    assert "quantized" in type(dq[0]).__module__  # torch.ao.nn.quantized.dynamic.Linear
    assert type(dq[2]) is nn.Linear  # excluded layer stays float
    pc = C.dynamic_int8(m, per_channel=True)
    x = torch.randn(8, 16)
    assert torch.allclose(pc(x), m(x), atol=0.05)
    with pytest.raises(TypeError, match="model"):
        C.dynamic_int8("not a model")


def test_quant_embedding_rows_within_half_step(gpt):
    torch.manual_seed(0)
    emb = nn.Embedding(50, 16)
    qe = C.QuantEmbedding.from_embedding(emb)
    ids = torch.tensor([[0, 3, 49], [7, 7, 1]])
    out, ref = qe(ids), emb(ids)
    step = qe.scale.float()[ids]  # (2, 3, 1)
    # s/2 from rounding, plus 127 * |s - fp16(s)| <= 127 * 2^-11 * s from storing the scale in fp16
    assert out.shape == ref.shape and ((out - ref).abs() <= step * (0.5 + 127 * 2**-11) + 1e-6).all()
    m = C.quantize_embeddings(nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2)))
    assert isinstance(m[0], C.QuantEmbedding) and C.memory_bytes(m) < 10 * 4 * 4 + 10 * 4
    with pytest.raises(ValueError, match="tied"):
        C.quantize_embeddings(gpt)
    q = C.quantize_embeddings(gpt, exclude=("wte",))
    assert isinstance(q.transformer.wpe, C.QuantEmbedding) and not isinstance(q.transformer.wte, C.QuantEmbedding)


def test_pareto_front_hand_example():
    # (size, perplexity): b is smaller than a and as good; d is dominated by b; c is the smallest
    costs, ppl = [4.0, 3.0, 1.0, 3.5], [10.0, 10.0, 12.0, 11.0]
    assert C.pareto_front(costs, ppl) == [2, 1]
    assert C.pareto_front(costs, [-p for p in ppl], higher_is_better=True) == [2, 1]
    with pytest.raises(ValueError, match="same length"):
        C.pareto_front([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        C.pareto_front([1.0, float("nan")], [1.0, 2.0])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), min_size=1, max_size=12), st.booleans())
def test_pareto_front_properties(points, higher):
    costs, qual = [float(c) for c, _ in points], [float(q) for _, q in points]
    front = C.pareto_front(costs, qual, higher_is_better=higher)
    better = (lambda a, b: a > b) if higher else (lambda a, b: a < b)

    def dominates(i, j):
        return (costs[i] <= costs[j] and not better(qual[j], qual[i])
                and (costs[i] < costs[j] or better(qual[i], qual[j])))

    assert front and all(not any(dominates(j, i) for j in range(len(points))) for i in front)
    for i in set(range(len(points))) - set(front):  # everything left out is matched or beaten by the front
        assert any(costs[f] <= costs[i] and not better(qual[i], qual[f]) for f in front)
    assert [costs[i] for i in front] == sorted(costs[i] for i in front)


def test_rounding_noise_moves_each_weight_by_at_most_half_a_step_and_unties_the_head():
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16))
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    a, a2, b = C.rounding_noise(m, 8, seed=0), C.rounding_noise(m, 8, seed=0), C.rounding_noise(m, 8, seed=1)
    assert all(torch.equal(p, before[n]) for n, p in m.named_parameters())  # the original is untouched
    assert a.lm_head.weight is not a.transformer.wte.weight  # untied ...
    assert torch.equal(a.transformer.wte.weight, m.transformer.wte.weight)  # ... and the embeddings unchanged
    for name, lin in C.linear_layers(m, exclude=()).items():
        w = lin.weight.detach()
        d = a.get_submodule(name).weight.detach() - w
        step = w.abs().amax(1, keepdim=True) / 127  # symmetric int8, one step per output channel
        assert (d.abs() <= step / 2 * (1 + 1e-5)).all() and (d != 0).float().mean() > 0.99
        assert (d.abs() > step / 4).float().mean() > 0.3  # spread over the half-step, not only tiny moves
        assert torch.equal(d, a2.get_submodule(name).weight.detach() - w)  # a seed is reproducible
        assert not torch.equal(d, b.get_submodule(name).weight.detach() - w)
    with pytest.raises(ValueError, match="bits"):
        C.rounding_noise(m, 1)
    with pytest.raises(TypeError, match="seed"):
        C.rounding_noise(m, 8, seed=0.5)


@settings(max_examples=25, deadline=None)
@given(n_out=st.integers(1, 40), k16=st.integers(1, 4), rows=st.integers(1, 9),
       act=st.sampled_from(["bfloat16", "float32"]))
def test_int8_weight_only_linear_is_the_dequantized_matmul(n_out, k16, rows, act):
    """The fused kernel computes x @ (q s)^T: exactly (fp32 rounding) with fp32 activations, and with
    bf16 activations what the bf16-rounded input gives, up to bf16 rounding of the output."""
    act_dtype = getattr(torch, act)
    g = torch.Generator().manual_seed(n_out * 100 + k16 * 10 + rows)
    lin = nn.Linear(16 * k16, n_out, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(lin.weight.shape, generator=g))
    m = C.Int8WeightOnlyLinear.from_linear(lin, act_dtype)
    qt = C.quantize(lin.weight.detach(), 8, symmetric=True, granularity="channel")
    assert torch.equal(m.qweight, qt.q.to(torch.int8))  # the codes QuantLinear and quantize() pick
    x = torch.randn(rows, 2, 16 * k16, generator=g)
    w_hat = m.qweight.float() * m.scale.float()[:, None]  # (out, in): the dequantized weight
    ref = x.to(act_dtype).float() @ w_hat.t()
    y = m(x)
    assert y.shape == (rows, 2, n_out) and y.dtype == x.dtype
    tol = 1e-5 if act == "float32" else 1e-2
    assert (y - ref).abs().max() <= tol * (ref.abs().max() + 1)


def test_int8_weight_only_model_and_bad_input():
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=32, bias=False))
    q = C.int8_weight_only(m)
    assert sum(isinstance(mod, C.Int8WeightOnlyLinear) for mod in q.modules()) == len(C.linear_layers(m, exclude=()))
    assert isinstance(q.transformer.wte, nn.Embedding) and q.transformer.wte.weight.dtype == torch.float32
    idx = torch.randint(0, 64, (2, 8))
    with torch.no_grad():
        a, b = m(idx)[0], q(idx)[0]
    assert (a - b).abs().max() < 0.05 * a.abs().max()  # int8 weights, bf16 activations: close, not equal
    with pytest.raises(ValueError, match="multiple of 16"):
        C.Int8WeightOnlyLinear(20, 4)
    with pytest.raises(ValueError, match="act_dtype"):
        C.Int8WeightOnlyLinear(16, 4, act_dtype=torch.float16)
    with pytest.raises(ValueError, match="bias"):
        C.Int8WeightOnlyLinear.from_linear(nn.Linear(16, 4))
    with pytest.raises(TypeError, match="nn.Linear"):
        C.Int8WeightOnlyLinear.from_linear(nn.Conv1d(16, 4, 1))
    with pytest.raises(ValueError, match="x must be"):
        C.Int8WeightOnlyLinear(16, 4)(torch.randn(2, 15))
