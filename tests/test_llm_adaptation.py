"""Head masks and GQA-aware head pruning, top-k distillation, LoRA on the top layers of a Llama,
the frozen-bottom split and the sentiment prompts (tiny random Llama configs; no checkpoint)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from bmlib import compress as C
from bmlib.compress import heads as H
from bmlib.compress import llm as L
from bmlib.compress.distill import (TopKData, TopKDistiller, distillation_loss, teacher_topk, topk_distillation_loss,
                                    vocab_map)
from bmlib.models.llama import Llama, LlamaConfig

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = LlamaConfig(vocab_size=97, block_size=32, n_layer=3, n_head=6, n_kv_head=2, n_embd=48,
                  intermediate_size=64, rope_theta=10000.0)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Llama(CFG).eval()


@pytest.fixture(scope="module")
def x():
    return torch.randint(0, CFG.vocab_size, (3, 12), generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------------------------------------
# head masks
# ---------------------------------------------------------------------------------------------
def test_head_mask_of_ones_is_the_plain_forward(model, x):
    with torch.no_grad():
        a = model(x)[0]
        b = model(x, head_mask=torch.ones(CFG.n_layer, CFG.n_head))[0]
    assert torch.equal(a, b)


def test_head_mask_zero_changes_the_output(model, x):
    m = torch.ones(CFG.n_layer, CFG.n_head)
    m[1, 2] = 0
    with torch.no_grad():
        assert (model(x)[0] - model(x, head_mask=m)[0]).abs().max() > 1e-4


def test_masking_every_head_equals_removing_attention(model, x):
    """With every head of layer 0 masked, block 0 adds only its MLP: the same as zeroing o_proj."""
    import copy

    m = torch.ones(CFG.n_layer, CFG.n_head)
    m[0] = 0
    ref = copy.deepcopy(model)
    with torch.no_grad():
        ref.model.layers[0].self_attn.o_proj.weight.zero_()
        assert torch.allclose(model(x, head_mask=m)[0], ref(x)[0], atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_physical_removal_equals_the_mask(model, x, seed):
    keep = H.random_mask(CFG.n_layer, CFG.n_head, k=7, seed=seed)
    keep[2] = 0                      # a layer with no head left
    keep[1] = torch.tensor([0, 0, 0, 1, 1, 0.0])  # KV head 0 (query heads 0-2) loses all its heads
    pruned = H.prune_llama_heads(model, keep)
    with torch.no_grad():
        a = model(x, head_mask=keep)[0]
        b = pruned(x)[0]
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    att = pruned.model.layers[1].self_attn
    assert att.q_heads == [3, 4] and att.kv_heads == [1]
    assert att.k_proj.weight.shape == (CFG.head_dim, CFG.n_embd)  # one KV head left
    assert att.o_proj.weight.shape == (CFG.n_embd, 2 * CFG.head_dim)
    hs, C_ = CFG.head_dim, CFG.n_embd
    removed_q = int((keep == 0).sum())
    assert C.count_parameters(model) - C.count_parameters(pruned) >= removed_q * 2 * hs * C_


def test_pruned_attention_refuses_a_kv_cache(model, x):
    pruned = H.prune_llama_heads(model, H.random_mask(CFG.n_layer, CFG.n_head, 3))
    with pytest.raises(ValueError, match="kv_cache"):
        pruned(x[:, :4], kv_cache=pruned.new_kv_cache(3, 8))


def test_head_importance_is_the_mask_gradient(model, x):
    """Parity: the autograd score equals a central finite difference of the loss in one mask entry."""
    win = x[:1]
    imp = H.head_importance(model, win, normalize=False)
    assert imp.shape == (CFG.n_layer, CFG.n_head) and (imp >= 0).all()

    def loss(eps, l=1, h=3):
        m = torch.ones(CFG.n_layer, CFG.n_head, dtype=torch.float64)
        m[l, h] += eps
        with torch.no_grad():
            lg = model.double()(win[:, :-1], head_mask=m)[0]
        model.float()
        return F.cross_entropy(lg[0], win[0, 1:]).item()

    fd = abs(loss(1e-4) - loss(-1e-4)) / 2e-4
    assert abs(fd - imp[1, 3].item()) < 1e-4 * max(1.0, fd)
    assert all(p.requires_grad for p in model.parameters())  # restored
    n = H.head_importance(model, win)
    assert torch.allclose(n.norm(dim=1), torch.ones(CFG.n_layer), atol=1e-5)


@given(k=st.integers(0, CFG.n_layer * CFG.n_head), seed=st.integers(0, 10))
@settings(max_examples=20, deadline=None)
def test_masks_remove_exactly_k_heads(k, seed):
    r = H.random_mask(CFG.n_layer, CFG.n_head, k, seed=seed)
    s = torch.rand(CFG.n_layer, CFG.n_head, generator=torch.Generator().manual_seed(seed))
    lo = H.mask_lowest(s, k)
    assert int((r == 0).sum()) == k and int((lo == 0).sum()) == k
    if 0 < k < s.numel():
        assert s[lo == 0].max() <= s[lo == 1].min()  # the k lowest, no others


def test_head_bad_inputs(model, x):
    with pytest.raises(ValueError, match="head_mask"):
        model(x, head_mask=torch.ones(CFG.n_layer, CFG.n_head + 1))
    with pytest.raises(TypeError, match="head_mask"):
        model(x, head_mask=[[1.0] * CFG.n_head] * CFG.n_layer)
    with pytest.raises(TypeError, match="head_mask"):
        model(x, head_mask=torch.ones(CFG.n_layer, CFG.n_head, dtype=torch.long))
    with pytest.raises(ValueError, match="k must"):
        H.random_mask(CFG.n_layer, CFG.n_head, CFG.n_layer * CFG.n_head + 1)
    with pytest.raises(ValueError, match="k must"):
        H.mask_lowest(torch.rand(2, 3), -1)
    with pytest.raises(ValueError, match="keep"):
        H.prune_llama_heads(model, torch.full((CFG.n_layer, CFG.n_head), 0.5))
    with pytest.raises(TypeError, match="model"):
        H.prune_llama_heads(torch.nn.Linear(2, 2), torch.ones(CFG.n_layer, CFG.n_head))
    with pytest.raises(ValueError, match="windows"):
        H.head_importance(model, x.float())
    with pytest.raises(ValueError, match="windows"):
        H.head_importance(model, x + CFG.vocab_size)


# ---------------------------------------------------------------------------------------------
# top-k distillation
# ---------------------------------------------------------------------------------------------
def _logits(seed, shape=(2, 5, 11)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 2


@pytest.mark.parametrize("T", [1.0, 2.0])
def test_topk_loss_with_every_token_is_the_full_loss(T):
    s, t = _logits(0), _logits(1)
    V = s.shape[-1]
    lp = F.log_softmax(t, -1)
    top = lp.topk(V, dim=-1)
    got = topk_distillation_loss(s, top.indices, top.values, temperature=T)
    assert torch.allclose(got, distillation_loss(s, t, None, temperature=T, alpha=1.0), atol=1e-6)
    ref = F.kl_div(F.log_softmax(s / T, -1).reshape(-1, V), F.log_softmax(t / T, -1).reshape(-1, V),
                   reduction="batchmean", log_target=True) * T * T
    assert torch.allclose(got, ref, atol=1e-6)


@pytest.mark.parametrize("k", [1, 3, 7])
def test_topk_loss_is_kl_to_the_renormalised_top_k(k):
    """Hand computation with torch.nn.functional.kl_div: the teacher's top-k probabilities,
    renormalised, as a sparse target over the whole vocabulary."""
    s, t = _logits(2), _logits(3)
    V = s.shape[-1]
    top = F.log_softmax(t, -1).topk(k, dim=-1)
    p = torch.zeros_like(t).scatter(-1, top.indices, top.values.exp())
    p = p / p.sum(-1, keepdim=True)  # (B, T, V), zero outside the top k
    ref = F.kl_div(F.log_softmax(s, -1).reshape(-1, V), p.reshape(-1, V), reduction="batchmean")
    got = topk_distillation_loss(s, top.indices, top.values)
    assert torch.allclose(got, ref, atol=1e-6)
    y = torch.randint(0, V, s.shape[:-1], generator=torch.Generator().manual_seed(4))
    mix = topk_distillation_loss(s, top.indices, top.values, y, alpha=0.3)
    assert torch.allclose(mix, 0.3 * ref + 0.7 * F.cross_entropy(s.reshape(-1, V), y.reshape(-1)), atol=1e-6)
    assert torch.allclose(topk_distillation_loss(s, top.indices, top.values, y, alpha=0.0),
                          F.cross_entropy(s.reshape(-1, V), y.reshape(-1)))


def test_topk_loss_gradient_flows_to_the_student_only():
    s = _logits(5).requires_grad_(True)
    top = F.log_softmax(_logits(6), -1).topk(4, dim=-1)
    lp = top.values.clone().requires_grad_(True)
    topk_distillation_loss(s, top.indices, lp).backward()
    assert s.grad.abs().sum() > 0 and lp.grad is None


def test_topk_bad_inputs():
    s = _logits(0)
    top = F.log_softmax(_logits(1), -1).topk(3, dim=-1)
    with pytest.raises(ValueError, match="top_idx"):
        topk_distillation_loss(s, top.indices + 20, top.values)
    with pytest.raises(ValueError, match="top_logp"):
        topk_distillation_loss(s, top.indices, top.values[..., :2])
    with pytest.raises(TypeError, match="top_idx"):
        topk_distillation_loss(s, top.indices.float(), top.values)
    with pytest.raises(ValueError, match="top_idx"):
        topk_distillation_loss(s[:1], top.indices, top.values)
    with pytest.raises(ValueError, match="temperature"):
        topk_distillation_loss(s, top.indices, top.values, temperature=0)
    with pytest.raises(ValueError, match="targets"):
        topk_distillation_loss(s, top.indices, top.values, alpha=0.5)
    with pytest.raises(ValueError, match="alpha"):
        TopKDistiller(torch.nn.Linear(2, 2), alpha=1.5)


def test_teacher_topk_matches_log_softmax(model, x):
    idx, lp = teacher_topk(model, x, k=5, batch_size=2)
    with torch.no_grad():
        ref = F.log_softmax(model(x)[0], -1).topk(5, dim=-1)
    assert idx.shape == (3, 12, 5) and torch.equal(idx, ref.indices)
    assert torch.allclose(lp, ref.values, atol=1e-6)
    with pytest.raises(ValueError, match="k must"):
        teacher_topk(model, x, k=CFG.vocab_size + 1)


def test_cached_teacher_topk_round_trip(model, x, tmp_path, monkeypatch):
    monkeypatch.setenv("BMLIB_ARTIFACTS", str(tmp_path))
    a = L.cached_teacher_topk("tiny", model, x, 4)
    b = L.cached_teacher_topk("tiny", model, x, 4)  # read back from the cache
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert len(list((tmp_path / "data").glob("teacher_topk_tiny_k4_3x12_*.npz"))) == 1
    L.cached_teacher_topk("tiny", model, x[:2], 4)  # other windows: another file
    assert len(list((tmp_path / "data").glob("teacher_topk_tiny_k4_*.npz"))) == 2
    with pytest.raises(ValueError, match="name"):
        L.cached_teacher_topk("no spaces", model, x, 4)


def test_topk_data_and_distiller_protocol(model):
    from bmlib.train import TrainConfig, train

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, CFG.vocab_size, (8, 9), generator=g)
    idx, lp = teacher_topk(model, ids[:, :-1], k=4)
    data = TopKData(ids, idx, lp, ids[:2])
    xa, ya = data.get_batch("train", 3, torch.Generator().manual_seed(5))
    xb, yb = TopKData(ids, idx, lp, ids[:2]).get_batch("train", 3, torch.Generator().manual_seed(5))
    assert torch.equal(xa, xb) and torch.equal(ya["top_idx"], yb["top_idx"]) and xa.shape == (3, 8)
    assert ya["top_idx"].shape == (3, 8, 4) and set(data.get_batch("val", 2, g)[1]) == {"targets"}
    torch.manual_seed(0)
    student = Llama(LlamaConfig(vocab_size=CFG.vocab_size, block_size=16, n_layer=1, n_head=2, n_kv_head=1,
                                n_embd=16, intermediate_size=32, rope_theta=10000.0))
    scratch = TopKDistiller(student, alpha=0.0)
    logits, loss = scratch(xa, ya)
    assert torch.allclose(loss, F.cross_entropy(logits.reshape(-1, CFG.vocab_size), ya["targets"].reshape(-1)))
    d = TopKDistiller(student, alpha=1.0)
    assert torch.allclose(d(xa, ya)[1], topk_distillation_loss(logits, ya["top_idx"], ya["top_logp"]), atol=1e-6)
    res = train(d, data, TrainConfig(max_steps=3, batch_size=4, lr=1e-2, progress=False, eval_iters=1))
    assert np.isfinite(res.final_val_loss) and res.steps == 3
    with pytest.raises(ValueError, match="top_idx"):
        TopKData(ids, idx[:, :4], lp[:, :4], ids[:2])
    with pytest.raises(TypeError, match="y must"):
        d(xa, ya["targets"])


def test_vocab_map():
    lookup, kept = vocab_map(torch.tensor([5, 3, 5, 9]), 12)
    assert kept.tolist() == [3, 5, 9] and lookup[[3, 5, 9]].tolist() == [0, 1, 2]
    assert lookup[0].item() == 3 and lookup.shape == (12,)  # unknown id = len(kept)
    with pytest.raises(ValueError, match="used_ids"):
        vocab_map(torch.tensor([12]), 12)
    with pytest.raises(ValueError, match="vocab_size"):
        vocab_map(torch.tensor([1]), 0)


# ---------------------------------------------------------------------------------------------
# frozen bottom, LoRA on the top layers, the sentiment prompts
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [0, 2, 3])
def test_hidden_states_then_last_logits_is_the_forward(model, x, k):
    h = L.hidden_states(model, x, k, batch_size=2)
    with torch.no_grad():
        full = model(x)[0][:, -1]
        assert torch.allclose(L.last_logits(model, h, k), full, atol=1e-5)
        assert torch.allclose(L.last_logits(model, h, k, torch.tensor([4, 7])), full[:, [4, 7]], atol=1e-5)
    with pytest.raises(ValueError, match="n_layers"):
        L.hidden_states(model, x, CFG.n_layer + 1)
    with pytest.raises(ValueError, match="start"):
        L.last_logits(model, h, -1)
    with pytest.raises(ValueError, match="h must"):
        L.last_logits(model, h[..., :5], k)


def test_answer_scores_is_the_difference_of_two_last_logits_for_any_variant(model, x):
    ids = torch.tensor([4, 7])
    with torch.no_grad():
        ref = L.last_logits(model, L.hidden_states(model, x, 0), 0, ids)  # the frozen-stream path, (B, 2)
    s = L.answer_scores(model, x, ids, batch_size=2)  # batches of 2, 1 over 3 prompts
    assert s.shape == (3,) and s.dtype == np.float64
    np.testing.assert_allclose(s, (ref[:, 1] - ref[:, 0]).numpy(), atol=1e-5)
    q = C.dynamic_int8(model, per_channel=True)  # a variant whose lm_head has no .weight tensor
    assert L.answer_scores(q, x, ids).shape == (3,)
    with pytest.raises(ValueError, match="token_ids"):
        L.answer_scores(model, x, torch.tensor([4]))
    with pytest.raises(ValueError, match="prompts"):
        L.answer_scores(model, x[0], ids)
    with pytest.raises(ValueError, match="batch_size"):
        L.answer_scores(model, x, ids, batch_size=0)


def test_lora_on_top_layers_merges_exactly_and_trains_few_parameters(model, x):
    import copy

    top = 1
    targets = tuple(f"layers.{i}.self_attn.{p}" for i in range(CFG.n_layer - top, CFG.n_layer)
                    for p in ("q_proj", "v_proj"))
    m = C.add_lora(copy.deepcopy(model), targets=targets, r=2, alpha=4.0)
    lora = [mod for mod in m.modules() if isinstance(mod, C.LoRALinear)]
    assert len(lora) == 2 * top
    with torch.no_grad():
        for mod in lora:
            mod.lora_B.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))  # a non-zero update
    n_train = C.count_parameters(m, trainable_only=True)
    r, C_, hs = 2, CFG.n_embd, CFG.head_dim
    assert n_train == top * (r * (C_ + CFG.n_head * hs) + r * (C_ + CFG.n_kv_head * hs))  # r (in + out) each
    h = L.hidden_states(m, x, CFG.n_layer - top)
    out = L.last_logits(m, h, CFG.n_layer - top)
    out.sum().backward()
    assert all(mod.lora_A.grad is not None for mod in lora)
    assert all(p.grad is None for n, p in m.named_parameters() if "lora_" not in n)
    with torch.no_grad():
        before = m(x)[0]
        C.merge_lora(m)
        assert not any(isinstance(mod, C.LoRALinear) for mod in m.modules())
        assert torch.allclose(m(x)[0], before, atol=1e-5)
        assert (before - model(x)[0]).abs().max() > 1e-3  # the update did something


class _Tok:
    """A stand-in tokenizer: one id per character."""

    def encode(self, s):
        return [ord(c) % 97 for c in s]


def test_sentiment_prompts_fixed_length_and_skips_short_reviews():
    tok = _Tok()
    ids, kept = L.sentiment_prompts(tok, ["a fine tea", "bad", "tasty and cheap"], n_tokens=5)
    assert kept.tolist() == [0, 2]
    T = len(L.SENTIMENT_PREFIX) + 5 + len(L.SENTIMENT_SUFFIX)
    assert ids.shape == (2, T) and ids.dtype == torch.long
    assert ids[0, len(L.SENTIMENT_PREFIX):len(L.SENTIMENT_PREFIX) + 5].tolist() == tok.encode("a fin")
    with pytest.raises(ValueError, match="n_tokens"):
        L.sentiment_prompts(tok, ["x"], 0)
    with pytest.raises(ValueError, match="no review"):
        L.sentiment_prompts(tok, ["x"], 5)
    with pytest.raises(TypeError, match="texts"):
        L.sentiment_prompts(tok, "a single string", 2)
    with pytest.raises(ValueError, match="single tokens"):
        L.answer_ids(tok, ("ab", "c"))
    assert L.answer_ids(tok, ("a", "b")).tolist() == tok.encode("ab")


def test_top_layers_classifier_scores_answers_like_the_model(model, x):
    from bmlib.data.arrays import ArrayData
    from bmlib.train import TrainConfig, train

    ans = torch.tensor([3, 8])
    h = L.hidden_states(model, x, 2)
    clf = L.TopLayersClassifier(model, 2, ans)
    y = torch.tensor([0, 1, 1])
    logits, loss = clf(h, y)
    with torch.no_grad():
        ref = model(x)[0][:, -1][:, ans]
    assert torch.allclose(logits, ref, atol=1e-5)
    assert torch.allclose(loss, F.cross_entropy(ref, y), atol=1e-5)
    import copy

    m = C.add_lora(copy.deepcopy(model), targets=("layers.2.mlp.down_proj",), r=2)
    res = train(L.TopLayersClassifier(m, 2, ans), ArrayData(h, y, h, y),
                TrainConfig(max_steps=20, batch_size=3, lr=5e-2, weight_decay=0.0, progress=False, eval_iters=1))
    assert res.final_train_loss < loss.item()  # the adapter fits three examples
    with pytest.raises(ValueError, match="start"):
        L.TopLayersClassifier(model, CFG.n_layer, ans)
