"""BERT encoder: config validation, parameter counts, padding, losses and the 80/10/10 masking rule."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from bmlib.models.bert import BERT, BertClassifier, BertConfig, mask_tokens


def bert_param_formula(c: BertConfig) -> int:
    """Embeddings (V + T + types)·C + LN 2C; per layer 4C²+4C (q,k,v,o) + 2·C·I + I + C (MLP)
    + 2·2C (two LayerNorms); MLM head: C²+C (transform) + 2C (LN) + V (output bias; weight tied)."""
    V, T, S, L, C, I = c.vocab_size, c.block_size, c.type_vocab_size, c.n_layer, c.n_embd, c.intermediate_size
    per_layer = 4 * C * C + 4 * C + 2 * C * I + I + C + 4 * C
    return (V + T + S) * C + 2 * C + L * per_layer + C * C + C + 2 * C + V


@pytest.mark.parametrize("name", ["tiny", "mini", "bert-base"])
def test_presets_param_count(name):
    cfg = BertConfig.preset(name)
    with torch.device("meta"):
        model = BERT(cfg)
    assert model.num_params() == bert_param_formula(cfg)
    if name == "bert-base":
        assert 109e6 < model.num_params() < 111e6  # "BERT-base, 110M"
    if name == "tiny":
        assert 1e6 < model.num_params() < 1.5e6


@pytest.mark.parametrize("kw, field", [
    (dict(n_embd=100, n_head=3), "n_embd"),
    (dict(n_layer=-2), "n_layer"),
    (dict(intermediate_size=0), "intermediate_size"),
    (dict(attn_impl="fast"), "attn_impl"),
    (dict(dropout=-0.1), "dropout"),
    (dict(pad_token_id=30522), "pad_token_id"),
    (dict(num_labels=0), "num_labels"),
])
def test_bad_config_names_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        BertConfig(**kw)
    with pytest.raises(ValueError, match="preset"):
        BertConfig.preset("bert-huge")


def _model(impl="math", seed=0, cls=BERT, **kw):
    torch.manual_seed(seed)
    return cls(BertConfig.preset("tiny", attn_impl=impl, **kw)).eval()


def test_padding_does_not_change_real_tokens():
    m = _model()
    ids = torch.randint(5, 4096, (1, 10))
    padded = torch.cat([ids, torch.zeros(1, 6, dtype=torch.long)], dim=1)
    am = torch.cat([torch.ones(1, 10), torch.zeros(1, 6)], dim=1).long()
    with torch.no_grad():
        a = m(ids)[0]
        b = m(padded, attention_mask=am)[0][:, :10]
        c = m(padded)[0][:, :10]  # without the mask, padding leaks into every token
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert (a - c).abs().max() > 1e-3


def test_math_and_sdpa_agree_with_padding():
    m, s = _model("math"), _model("sdpa")
    ids = torch.randint(0, 4096, (3, 12))
    am = torch.ones(3, 12, dtype=torch.long)
    am[1, 7:] = 0
    with torch.no_grad():
        torch.testing.assert_close(m(ids, am)[0], s(ids, am)[0], atol=1e-5, rtol=1e-5)


def test_mlm_loss_ignores_minus_100_and_token_types_matter():
    m = _model()
    ids = torch.randint(5, 4096, (2, 8))
    labels = torch.full_like(ids, -100)
    labels[0, 3] = 17
    logits, loss = m(ids, labels=labels)
    # only the one labelled position counts: its NLL, by hand in float64
    z = logits[0, 3].double()
    assert abs(loss.item() - (torch.logsumexp(z, -1) - z[17]).item()) < 1e-5
    with torch.no_grad():
        assert (m(ids, token_type_ids=torch.ones_like(ids))[0] - logits).abs().max() > 1e-4
    assert m.cls.predictions.decoder.weight is m.bert.embeddings.word_embeddings.weight  # tied


def test_classifier_losses_and_from_mlm():
    mlm = _model()
    clf = BertClassifier.from_mlm(mlm, num_labels=3).eval()
    for k, v in mlm.bert.state_dict().items():
        assert torch.equal(clf.bert.state_dict()[k], v)
    ids = torch.randint(0, 4096, (4, 9))
    y = torch.tensor([0, 2, 1, 2])
    logits, loss = clf(ids, labels=y)
    assert logits.shape == (4, 3)
    z = logits.double()  # mean NLL by hand in float64
    nll = (torch.logsumexp(z, -1) - z.gather(-1, y[:, None]).squeeze(-1)).mean()
    assert abs(loss.item() - nll.item()) < 1e-5
    reg = _model(cls=BertClassifier, num_labels=1)
    logits, loss = reg(ids, labels=torch.ones(4))
    torch.testing.assert_close(loss, ((logits.squeeze(-1) - 1) ** 2).mean())
    with pytest.raises(ValueError, match="labels"):
        clf(ids, labels=torch.zeros(4, 9, dtype=torch.long))
    with pytest.raises(TypeError, match="mlm"):
        BertClassifier.from_mlm(clf)


def test_bad_inputs():
    m = _model()
    with pytest.raises(ValueError, match="input_ids"):
        m(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="block_size"):
        m(torch.zeros(1, 129, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        m(torch.zeros(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="attention_mask"):
        m(torch.zeros(2, 5, dtype=torch.long), attention_mask=torch.zeros(2, 5))
    with pytest.raises(ValueError, match="token_type_ids"):
        m(torch.zeros(2, 5, dtype=torch.long), token_type_ids=torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        m(torch.zeros(2, 5, dtype=torch.long), labels=torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="cfg"):
        BERT(dict(n_layer=1))


def test_mask_tokens_80_10_10():
    V, mask_id, special = 1000, 3, (0, 1, 2, 3)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, V, (400, 250), generator=g)
    ids[:, 0] = 1  # [CLS]
    ids[:, -20:] = 0  # padding
    inputs, labels = mask_tokens(ids, mask_id, V, special, p=0.15, generator=g)
    target = labels != -100
    assert not target[:, 0].any() and not target[:, -20:].any()  # special tokens never chosen
    assert torch.equal(labels[target], ids[target])
    eligible = (ids != 0) & (ids != 1)
    n = target.sum().item()
    assert abs(n / eligible.sum().item() - 0.15) < 0.005  # 15 % of the eligible tokens (~14k targets)
    masked = (inputs == mask_id) & target
    kept = (inputs == ids) & target
    assert abs(masked.sum().item() / n - 0.8) < 0.01
    assert abs(kept.sum().item() / n - (0.1 + 0.1 / V)) < 0.01  # random draws may hit the same id
    assert torch.equal(inputs[~target], ids[~target])  # non-targets untouched


@pytest.mark.parametrize("kw, arg", [
    (dict(mask_token_id=5000), "mask_token_id"),
    (dict(p=0.0), "p"),
    (dict(p=1.5), "p"),
    (dict(vocab_size=0), "vocab_size"),
])
def test_mask_tokens_bad_args(kw, arg):
    args = dict(mask_token_id=3, vocab_size=100) | kw
    with pytest.raises(ValueError, match=arg):
        mask_tokens(torch.zeros(2, 3, dtype=torch.long), **args)
    with pytest.raises(TypeError, match="input_ids"):
        mask_tokens(torch.zeros(2, 3), 3, 100)


@settings(max_examples=15, deadline=None)
@given(L=st.integers(1, 2), nh=st.integers(1, 3), hs=st.integers(1, 8), I=st.integers(1, 32),
       V=st.integers(4, 50), B=st.integers(1, 3), T=st.integers(1, 12), data=st.data())
def test_config_space(L, nh, hs, I, V, B, T, data):
    cfg = BertConfig(vocab_size=V, block_size=12, n_layer=L, n_head=nh, n_embd=nh * hs,
                     intermediate_size=I, attn_impl="math", dropout=0.0)
    m = BERT(cfg).eval()
    assert m.num_params() == bert_param_formula(cfg)
    ids = torch.randint(0, V, (B, T))
    lengths = torch.tensor(data.draw(st.lists(st.integers(1, T), min_size=B, max_size=B)))
    am = (torch.arange(T)[None] < lengths[:, None]).long()
    with torch.no_grad():
        logits, _ = m(ids, am)
        assert logits.shape == (B, T, V) and torch.isfinite(logits).all()
        for b in range(B):  # each row equals the unpadded row run alone
            n = int(lengths[b])
            torch.testing.assert_close(logits[b, :n], m(ids[b:b + 1, :n])[0][0], atol=1e-5, rtol=1e-4)
