"""Hugging Face parity (both directions) for GPT and BERT, and the save_pretrained round trip."""
import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from bmlib.models.bert import BERT, BertClassifier, BertConfig  # noqa: E402
from bmlib.models.gpt import GPT, GPTConfig  # noqa: E402
from bmlib.models.hf import (bert_from_hf, bert_to_hf, gpt_from_hf, gpt_to_hf,  # noqa: E402
                             save_pretrained)

ATOL = 1e-5  # fp32


def _text() -> str:
    import collections, inspect, json as js, os as o, re  # noqa: E401

    return "\n".join(inspect.getdoc(m) for m in (collections, inspect, js, o, re, o.path))[:6000]


def make_tokenizer(vocab_size: int = 512):
    """The book's byte-level BPE trained on a few thousand characters of stdlib docstrings."""
    from bmlib.data.tokenizer import train_bpe

    return train_bpe(_text(), vocab_size)


@pytest.mark.parametrize("impl", ["math", "sdpa"])
def test_gpt_parity_both_directions(impl):
    torch.manual_seed(0)
    ours = GPT(GPTConfig.preset("tiny", attn_impl=impl)).eval()
    hf = gpt_to_hf(ours)
    idx = torch.randint(0, 4096, (2, 48))
    with torch.no_grad():
        a, b = ours(idx)[0], hf(idx).logits
        assert (a - b).abs().max() < ATOL
        back = gpt_from_hf(hf, attn_impl=impl)
        assert (back(idx)[0] - b).abs().max() < ATOL
    for k, v in ours.state_dict().items():
        assert torch.equal(back.state_dict()[k], v)
    if impl == "sdpa":
        return
    # and from a model HF initialised itself (its own init, nothing of ours)
    cfg = transformers.GPT2Config(vocab_size=300, n_positions=32, n_embd=48, n_layer=2, n_head=3)
    torch.manual_seed(1)
    hf2 = transformers.GPT2LMHeadModel(cfg).eval()
    x = torch.randint(0, 300, (3, 20))
    with torch.no_grad():
        assert (gpt_from_hf(hf2, attn_impl=impl)(x)[0] - hf2(x).logits).abs().max() < ATOL


@pytest.mark.parametrize("impl", ["math", "sdpa"])
def test_bert_parity_with_padding_both_directions(impl):
    torch.manual_seed(0)
    ours = BERT(BertConfig.preset("tiny", attn_impl=impl)).eval()
    hf = bert_to_hf(ours)
    assert type(hf).__name__ == "BertForMaskedLM"
    ids = torch.randint(1, 4096, (3, 24))
    am = torch.ones_like(ids)
    am[1, 15:] = 0
    am[2, 4:] = 0
    ids[am == 0] = 0
    tt = (torch.arange(24) >= 12).long().expand(3, 24)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=am, token_type_ids=tt).logits
        assert (ours(ids, am, tt)[0] - ref).abs().max() < ATOL
        back = bert_from_hf(hf, attn_impl=impl)
        assert (back(ids, am, tt)[0] - ref).abs().max() < ATOL
    # the MLM loss agrees too (-100 ignored on both sides)
    labels = torch.where(torch.rand(ids.shape) < 0.3, ids, torch.full_like(ids, -100))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, am, tt, labels)[1],
                                   hf(input_ids=ids, attention_mask=am, token_type_ids=tt, labels=labels).loss,
                                   atol=ATOL, rtol=1e-5)


def test_bert_classifier_parity():
    torch.manual_seed(0)
    ours = BertClassifier(BertConfig.preset("tiny", num_labels=3)).eval()
    hf = bert_to_hf(ours)
    assert type(hf).__name__ == "BertForSequenceClassification"
    ids = torch.randint(1, 4096, (2, 16))
    am = torch.ones_like(ids)
    am[0, 9:] = 0
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=am).logits
        assert (ours(ids, am)[0] - ref).abs().max() < ATOL
        assert (bert_from_hf(hf)(ids, am)[0] - ref).abs().max() < ATOL


def test_converter_errors():
    with pytest.raises(TypeError, match="model"):
        bert_to_hf(GPT(GPTConfig.preset("tiny")))
    with pytest.raises(TypeError, match="hf"):
        bert_from_hf(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="bias"):
        gpt_to_hf(GPT(GPTConfig.preset("tiny", bias=False)))
    with pytest.raises(TypeError, match="model"):
        save_pretrained(torch.nn.Linear(2, 2), "unused")


def _greedy(model, ids, n):
    with torch.no_grad():
        for _ in range(n):
            nxt = model(ids)[0][:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
    return ids


def test_save_pretrained_round_trip_and_pipeline(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    tok = make_tokenizer(512)
    torch.manual_seed(0)
    ours = GPT(GPTConfig.preset("tiny", vocab_size=len(tok), block_size=64)).eval()
    folder = save_pretrained(ours, tmp_path / "gpt", tokenizer=tok)
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "gpt2" and cfg["vocab_size"] == len(tok)
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    tok2 = AutoTokenizer.from_pretrained(folder)
    text = "Return the path of the module"
    ids = torch.tensor([tok2(text)["input_ids"]])
    assert ids.tolist() == [tok(text)["input_ids"]]
    with torch.no_grad():
        assert (hf(ids).logits - ours(ids)[0]).abs().max() < ATOL
    pipe = pipeline("text-generation", model=str(folder), device="cpu")
    out = pipe(text, max_new_tokens=8, do_sample=False, return_tensors=True)[0]["generated_token_ids"]
    assert list(out) == _greedy(ours, ids, 8)[0].tolist()
    with pytest.raises(ValueError, match="vocab_size"):
        save_pretrained(GPT(GPTConfig.preset("tiny", vocab_size=100)), tmp_path / "x", tokenizer=tok)


def test_save_pretrained_bert(tmp_path):
    from transformers import AutoModelForMaskedLM

    torch.manual_seed(0)
    ours = BERT(BertConfig.preset("tiny")).eval()
    folder = save_pretrained(ours, tmp_path / "bert")
    hf = AutoModelForMaskedLM.from_pretrained(folder).eval()
    ids = torch.randint(0, 4096, (2, 10))
    with torch.no_grad():
        assert (hf(input_ids=ids).logits - ours(ids)[0]).abs().max() < ATOL
