"""A bad-input census: every public entry point of bmlib, called with bad arguments.

Each row of the table is ``(entry point, bad input, expected exception, argument name)``. The rule
(CONTRIBUTING.md): a bad call raises ``ValueError`` or ``TypeError`` (or a subclass) whose message
names the offending argument -- never a raw ``IndexError``/``RuntimeError`` from deep inside torch,
never a silent wrong answer. The config rows are generated from the dataclass fields, so a new
field is censused the day it is added. The test prints ``census: N bad calls, all rejected``
(visible with ``pytest -s``) and records ``N`` as the JUnit property ``census_cases``.

Not here: bench, sweep, hw, train, checkpoint and compress, whose argument checks their own tests
cover (issue #13 parts A and B).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from bmlib import attention as A
from bmlib import env, foundations, io, metrics, results, text
from bmlib import generate as G
from bmlib.data import arrays, corpus, digits, finance, medical, movielens, reviews, store, tokenizer, tokens
from bmlib.models import (bert, classifier, cnn, efficientnet, speech, gpt, hf, llama, mf, minilm, sasrec, tabular, timeseries,
                          vit)

NAN, INF = float("nan"), float("inf")
CASES: list[tuple[str, object, type, str]] = []  # (label, thunk, expected exception, name in message)


def case(label: str, exc: type, name: str, fn) -> None:
    CASES.append((label, fn, exc, name))


# ============================================================================ configs, field by field
CONFIGS = [gpt.GPTConfig, bert.BertConfig, vit.ViTConfig, cnn.CNNConfig, mf.MFConfig,
           sasrec.SASRecConfig, tabular.TabularConfig, timeseries.TimeSeriesConfig, llama.LlamaConfig,
           efficientnet.EfficientNetConfig, speech.SpeechTransformerConfig, speech.SpeechCNNConfig]
WRONG_TYPE = {"int": "4", "float": "0.1", "bool": "yes", "str": 3, "tuple": [32, 64]}
OUT_OF_RANGE = {"int": -1, "float": -1.0, "str": "nope", "tuple": (0,)}

for cls in CONFIGS:
    for f in dataclasses.fields(cls):
        t = f.type if isinstance(f.type, str) else f.type.__name__
        case(f"{cls.__name__}({f.name}={WRONG_TYPE[t]!r})", TypeError, f.name,
             lambda cls=cls, f=f, t=t: cls(**{f.name: WRONG_TYPE[t]}))
        if t in OUT_OF_RANGE:
            case(f"{cls.__name__}({f.name}={OUT_OF_RANGE[t]!r})", ValueError, f.name,
                 lambda cls=cls, f=f, t=t: cls(**{f.name: OUT_OF_RANGE[t]}))
        if t == "int":
            case(f"{cls.__name__}({f.name}=True)", TypeError, f.name,
                 lambda cls=cls, f=f: cls(**{f.name: True}))
        if t == "float":
            case(f"{cls.__name__}({f.name}=nan)", ValueError, f.name,
                 lambda cls=cls, f=f: cls(**{f.name: NAN}))

case("GPTConfig(n_embd=130, n_head=4)", ValueError, "n_embd", lambda: gpt.GPTConfig(n_embd=130, n_head=4))
case("GPTConfig(layer_norm_eps=0)", ValueError, "layer_norm_eps", lambda: gpt.GPTConfig(layer_norm_eps=0.0))
case("GPTConfig(dropout=1.0)", ValueError, "dropout", lambda: gpt.GPTConfig(dropout=1.0))
case("GPTConfig.preset('gpt5')", ValueError, "preset", lambda: gpt.GPTConfig.preset("gpt5"))
case("GPTConfig.preset('tiny', n_layr=2)", TypeError, "n_layr", lambda: gpt.GPTConfig.preset("tiny", n_layr=2))
case("BertConfig(pad_token_id=vocab)", ValueError, "pad_token_id", lambda: bert.BertConfig(pad_token_id=30522))
case("ViTConfig(patch_size=3)", ValueError, "patch_size", lambda: vit.ViTConfig(patch_size=3))
case("CNNConfig(image_size=6)", ValueError, "image_size", lambda: cnn.CNNConfig(image_size=6))
case("CNNConfig(channels=())", ValueError, "channels", lambda: cnn.CNNConfig(channels=()))
case("TabularConfig(n_outputs=1)", ValueError, "n_outputs", lambda: tabular.TabularConfig(n_outputs=1))
case("TabularConfig(ffn_mult=inf)", ValueError, "ffn_mult", lambda: tabular.TabularConfig(ffn_mult=INF))

# ============================================================================ models
def _fixtures():
    """Tiny models, built under a forked RNG so that importing this file leaves the global
    generator as it was."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        _GPT_CFG = gpt.GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16)
        _BERT_CFG = bert.BertConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16,
                                    intermediate_size=32, num_labels=3)
        return (_GPT_CFG, gpt.GPT(_GPT_CFG).eval(), _BERT_CFG, bert.BERT(_BERT_CFG).eval(),
                bert.BertClassifier(_BERT_CFG).eval(),
                vit.ViT(vit.ViTConfig(n_layer=1, n_head=2, n_embd=16, mlp_ratio=2)).eval(),
                cnn.SmallCNN(cnn.CNNConfig(channels=(4, 8))).eval(),
                mf.MF(mf.MFConfig(n_users=5, n_items=7, dim=4)),
                sasrec.SASRec(sasrec.SASRecConfig(n_items=7, max_len=8, n_embd=16, n_head=2)).eval(),
                tabular.TabularTransformer(tabular.TabularConfig(n_features=3, d_token=8, n_head=2,
                                                                 n_layer=1)).eval(),
                timeseries.TimeSeriesTransformer(timeseries.TimeSeriesConfig(block_size=8, n_embd=8,
                                                                             n_head=2, n_layer=1)).eval(),
                classifier.TextClassifier(bert.BertModel(_BERT_CFG), hidden_size=16, num_labels=2,
                                          pad_id=0).eval())


(_GPT_CFG, _GPT, _BERT_CFG, _BERT, _BERTC, _VIT, _CNN, _MF, _SAS, _TAB, _TS, _TXT) = _fixtures()
ids = torch.tensor([[1, 2, 3]])

for label, cls, cfg in [("GPT", gpt.GPT, {"n_layer": 2}), ("BERT", bert.BERT, _GPT_CFG),
                        ("BertClassifier", bert.BertClassifier, None), ("ViT", vit.ViT, _BERT_CFG),
                        ("SmallCNN", cnn.SmallCNN, "cnn"), ("MF", mf.MF, 3), ("SASRec", sasrec.SASRec, _GPT_CFG),
                        ("TabularTransformer", tabular.TabularTransformer, None),
                        ("TimeSeriesTransformer", timeseries.TimeSeriesTransformer, _GPT_CFG)]:
    case(f"{label}(cfg={type(cfg).__name__})", TypeError, "cfg", lambda cls=cls, cfg=cfg: cls(cfg))

case("GPT(idx=vocab)", ValueError, "idx", lambda: _GPT(torch.tensor([[1, 50]])))
case("GPT(idx=-1)", ValueError, "idx", lambda: _GPT(torch.tensor([[-1, 2]])))
case("GPT(idx float)", TypeError, "idx", lambda: _GPT(torch.tensor([[1.0, 2.0]])))
case("GPT(idx bool)", TypeError, "idx", lambda: _GPT(torch.tensor([[True]])))
case("GPT(idx 1-D)", ValueError, "idx", lambda: _GPT(torch.tensor([1, 2])))
case("GPT(idx list)", ValueError, "idx", lambda: _GPT([[1, 2]]))
case("GPT(T > block_size)", ValueError, "block_size", lambda: _GPT(torch.zeros(1, 17, dtype=torch.long)))
case("GPT(position_ids=block_size)", ValueError, "position_ids",
     lambda: _GPT(ids, position_ids=torch.tensor([0, 1, 16])))
case("GPT(position_ids=-1)", ValueError, "position_ids", lambda: _GPT(ids, position_ids=torch.tensor([-1, 0, 1])))
case("GPT(position_ids float)", TypeError, "position_ids",
     lambda: _GPT(ids, position_ids=torch.tensor([0.0, 1.0, 2.0])))
case("GPT(position_ids wrong shape)", ValueError, "position_ids", lambda: _GPT(ids, position_ids=torch.arange(4)))
case("GPT(targets=vocab)", ValueError, "targets", lambda: _GPT(ids, torch.tensor([[1, 2, 50]])))
case("GPT(targets float)", TypeError, "targets", lambda: _GPT(ids, torch.tensor([[1.0, 2.0, 3.0]])))
case("GPT(targets wrong shape)", ValueError, "targets", lambda: _GPT(ids, torch.tensor([[1, 2]])))
case("GPT(kv_cache batch 2, idx batch 1)", ValueError, "kv_cache",
     lambda: _GPT(ids, kv_cache=gpt.KVCache(_GPT_CFG, 2, 8)))
case("GPT(StaticKVCache batch 2, idx batch 1)", ValueError, "kv_cache",
     lambda: _GPT(ids, kv_cache=gpt.StaticKVCache(_GPT_CFG, 2, 8)))
case("GPT(mask float)", ValueError, "mask", lambda: _GPT(ids, mask=torch.ones(1, 1, 3, 3)))
case("GPT(mask wrong shape)", ValueError, "mask", lambda: _GPT(ids, mask=torch.ones(2, 1, 3, 4, dtype=torch.bool)))
case("GPT.flops_per_token(0)", ValueError, "seq_len", lambda: _GPT.flops_per_token(0))
case("KVCache(max_len=0)", ValueError, "max_len", lambda: gpt.KVCache(_GPT_CFG, 1, 0))
case("KVCache(max_len > block)", ValueError, "max_len", lambda: gpt.KVCache(_GPT_CFG, 1, 17))
case("KVCache(batch_size=0)", ValueError, "batch_size", lambda: gpt.KVCache(_GPT_CFG, 0))
case("KVCache(batch_size=1.5)", ValueError, "batch_size", lambda: gpt.KVCache(_GPT_CFG, 1.5))
case("KVCache(cfg=dict)", TypeError, "cfg", lambda: gpt.KVCache({}, 1))
case("StaticKVCache(max_len=0)", ValueError, "max_len", lambda: gpt.StaticKVCache(_GPT_CFG, 1, 0))
case("StaticKVCache(batch_size=0)", ValueError, "batch_size", lambda: gpt.StaticKVCache(_GPT_CFG, 0))

case("BERT(input_ids=vocab)", ValueError, "input_ids", lambda: _BERT(torch.tensor([[1, 50]])))
case("BERT(input_ids float)", TypeError, "input_ids", lambda: _BERT(torch.tensor([[1.0]])))
case("BERT(input_ids 1-D)", ValueError, "input_ids", lambda: _BERT(torch.tensor([1])))
case("BERT(T > block_size)", ValueError, "block_size", lambda: _BERT(torch.ones(1, 17, dtype=torch.long)))
case("BERT(token_type_ids=2)", ValueError, "token_type_ids", lambda: _BERT(ids, token_type_ids=torch.tensor([[0, 1, 2]])))
case("BERT(token_type_ids wrong shape)", ValueError, "token_type_ids",
     lambda: _BERT(ids, token_type_ids=torch.tensor([[0]])))
case("BERT(attention_mask wrong shape)", ValueError, "attention_mask", lambda: _BERT(ids, torch.ones(1, 2)))
case("BERT(attention_mask all zero)", ValueError, "attention_mask", lambda: _BERT(ids, torch.zeros(1, 3)))
case("BERT(labels=vocab)", ValueError, "labels", lambda: _BERT(ids, labels=torch.tensor([[1, -100, 50]])))
case("BERT(labels wrong shape)", ValueError, "labels", lambda: _BERT(ids, labels=torch.tensor([1])))
case("BertClassifier(labels=num_labels)", ValueError, "labels", lambda: _BERTC(ids, labels=torch.tensor([3])))
case("BertClassifier(labels float)", TypeError, "labels", lambda: _BERTC(ids, labels=torch.tensor([1.0])))
case("BertClassifier.from_mlm(GPT)", TypeError, "mlm", lambda: bert.BertClassifier.from_mlm(_GPT))
case("mask_tokens(float ids)", TypeError, "input_ids", lambda: bert.mask_tokens(torch.tensor([1.0]), 4, 50))
case("mask_tokens(mask_token_id=vocab)", ValueError, "mask_token_id", lambda: bert.mask_tokens(ids, 50, 50))
case("mask_tokens(p=0)", ValueError, "p", lambda: bert.mask_tokens(ids, 4, 50, p=0.0))
case("mask_tokens(ids >= vocab)", ValueError, "input_ids", lambda: bert.mask_tokens(torch.tensor([[60]]), 4, 50))

img = torch.zeros(2, 1, 8, 8)
case("ViT(x list)", TypeError, "x", lambda: _VIT([[0.0]]))
case("ViT(x wrong shape)", ValueError, "x", lambda: _VIT(torch.zeros(2, 3, 8, 8)))
case("ViT(x int)", TypeError, "x", lambda: _VIT(torch.zeros(2, 1, 8, 8, dtype=torch.long)))
case("ViT(y=n_classes)", ValueError, "y", lambda: _VIT(img, torch.tensor([0, 10])))
case("ViT(y float)", TypeError, "y", lambda: _VIT(img, torch.tensor([0.0, 1.0])))
case("ViT(y wrong shape)", ValueError, "y", lambda: _VIT(img, torch.tensor([0])))
case("ViT(impl='flash9')", ValueError, "impl", lambda: _VIT(img, impl="flash9"))
case("attention_rollout([])", ValueError, "maps", lambda: vit.attention_rollout([]))
case("SmallCNN(x wrong shape)", ValueError, "x", lambda: _CNN(torch.zeros(2, 8, 8)))
case("SmallCNN(y=n_classes)", ValueError, "y", lambda: _CNN(img, torch.tensor([0, 10])))
case("SmallCNN(y float)", TypeError, "y", lambda: _CNN(img, torch.tensor([0.0, 1.0])))
case("MF(users float)", TypeError, "users", lambda: _MF(torch.tensor([0.0])))
case("MF(users=n_users)", ValueError, "users", lambda: _MF(torch.tensor([5])))
case("MF(items > n_items)", ValueError, "items", lambda: _MF(torch.tensor([0]), torch.tensor([8])))
case("MF.score(candidates 1-D)", ValueError, "candidates", lambda: _MF.score(torch.tensor([0]), torch.tensor([1])))
case("SASRec(x float)", TypeError, "x", lambda: _SAS(torch.tensor([[1.0]])))
case("SASRec(x > n_items)", ValueError, "x", lambda: _SAS(torch.tensor([[1, 8]])))
case("SASRec(T > max_len)", ValueError, "x", lambda: _SAS(torch.ones(1, 9, dtype=torch.long)))
case("SASRec(y wrong shape)", ValueError, "y", lambda: _SAS(torch.tensor([[1, 2]]), torch.tensor([[1]])))
case("Tabular(x int)", ValueError, "x", lambda: _TAB(torch.zeros(2, 3, dtype=torch.long)))
case("Tabular(x wrong width)", ValueError, "x", lambda: _TAB(torch.zeros(2, 4)))
case("Tabular(x list)", TypeError, "x", lambda: _TAB([[0.0, 1.0, 2.0]]))
case("Tabular(y=n_outputs)", ValueError, "y", lambda: _TAB(torch.zeros(2, 3), torch.tensor([0, 2])))
case("TimeSeries(x int)", ValueError, "x", lambda: _TS(torch.zeros(2, 4, dtype=torch.long)))
case("TimeSeries(T > block_size)", ValueError, "block_size", lambda: _TS(torch.zeros(2, 9)))
case("TimeSeries(y wrong shape)", ValueError, "y", lambda: _TS(torch.zeros(2, 4), torch.zeros(3)))
case("TextClassifier(num_labels=1)", ValueError, "num_labels",
     lambda: classifier.TextClassifier(torch.nn.Identity(), 16, 1, 0))
case("TextClassifier(ids float)", TypeError, "ids", lambda: _TXT(torch.tensor([[1.0, 2.0]])))
case("TextClassifier(ids=vocab)", ValueError, "ids", lambda: _TXT(torch.tensor([[1, 50]])))
case("TextClassifier(labels=2)", ValueError, "labels", lambda: _TXT(ids, torch.tensor([2])))

case("gpt_to_hf(bias=False)", ValueError, "bias",
     lambda: hf.gpt_to_hf(gpt.GPT(gpt.GPTConfig(vocab_size=8, block_size=4, n_layer=1, n_head=1, n_embd=4, bias=False))))
case("gpt_from_hf(BERT)", TypeError, "hf", lambda: hf.gpt_from_hf(_BERT))
case("bert_to_hf(GPT)", TypeError, "model", lambda: hf.bert_to_hf(_GPT))
case("bert_from_hf(GPT)", TypeError, "hf", lambda: hf.bert_from_hf(_GPT))
case("save_pretrained(Linear)", TypeError, "model", lambda: hf.save_pretrained(torch.nn.Linear(2, 2), "/tmp/x"))
case("minilm.verify(path=file)", ValueError, "path", lambda: minilm.verify(__file__))
case("minilm.mean_pool(mask shape)", ValueError, "attention_mask",
     lambda: minilm.mean_pool(torch.zeros(2, 3, 4), torch.ones(2, 2)))
case("minilm.embed(str)", ValueError, "texts", lambda: minilm.embed("abc", None, None))
case("minilm.pack_states(mask shape)", ValueError, "mask",
     lambda: minilm.pack_states(torch.zeros(2, 3, 4), torch.ones(3, 3)))

# ============================================================================ attention
_G = torch.Generator().manual_seed(0)  # module-level tensors leave the global RNG alone
q = torch.randn(1, 2, 4, 8, generator=_G)
case("attention(impl='flash9')", ValueError, "impl", lambda: A.attention(q, q, q, impl="flash9"))
case("attention(q list)", TypeError, "q", lambda: A.attention([1.0], q, q))
case("attention(q 3-D)", ValueError, "q", lambda: A.attention(q[0], q, q))
case("attention(k, v shapes differ)", ValueError, "k and v", lambda: A.attention(q, q, q[:, :, :3]))
case("attention(head_dim differs)", ValueError, "head_dim", lambda: A.attention(q, q[..., :4], q[..., :4]))
case("attention(dtypes differ)", ValueError, "dtype", lambda: A.attention(q, q.double(), q.double()))
case("attention(mask float)", ValueError, "mask", lambda: A.attention(q, q, q, mask=torch.ones(4, 4)))
case("attention(mask wrong shape)", ValueError, "mask", lambda: A.attention(q, q, q, mask=torch.ones(3, 4, dtype=torch.bool)))
case("attention(dropout_p=1)", ValueError, "dropout_p", lambda: A.attention(q, q, q, dropout_p=1.0))
case("attention(causal, Tq > Tk)", ValueError, "Tq", lambda: A.attention(q, q[:, :, :2], q[:, :, :2], causal=True))
case("attention(impl=sdpa, mask float)", ValueError, "mask",
     lambda: A.attention(q, q, q, impl="sdpa", mask=torch.ones(4, 4)))
case("choose_impl(q list)", TypeError, "q", lambda: A.choose_impl([1], q))
case("causal_mask(3, 2)", ValueError, "tq", lambda: A.causal_mask(3, 2))
case("padding_mask(list)", TypeError, "lengths", lambda: A.padding_mask([1, 2], 4))
case("padding_mask(2-D)", ValueError, "lengths", lambda: A.padding_mask(torch.ones(1, 2), 4))
case("padding_mask(length > tk)", ValueError, "lengths", lambda: A.padding_mask(torch.tensor([5]), 4))
case("flash_attention_tiled(block_q=0)", ValueError, "block_q", lambda: A.flash_attention_tiled(q, q, q, block_q=0))
case("flash_attention_tiled(block_k=1.5)", ValueError, "block_k", lambda: A.flash_attention_tiled(q, q, q, block_k=1.5))
case("attention_scores_bytes(tk=0)", ValueError, "tk", lambda: A.attention_scores_bytes(1, 1, 1, 0))
case("sinusoidal_positions(T=0)", ValueError, "T", lambda: A.sinusoidal_positions(0, 8))
case("sinusoidal_positions(d odd)", ValueError, "d", lambda: A.sinusoidal_positions(4, 7))
case("sinusoidal_positions(base=1)", ValueError, "base", lambda: A.sinusoidal_positions(4, 8, base=1.0))
case("rope_cache(head_dim odd)", ValueError, "head_dim", lambda: A.rope_cache(4, 7))
case("rope_cache(positions 2-D)", ValueError, "positions", lambda: A.rope_cache(torch.zeros(2, 2), 8))
case("rope_cache(positions=0)", ValueError, "positions", lambda: A.rope_cache(0, 8))
case("apply_rope(x list)", TypeError, "x", lambda: A.apply_rope([1.0]))
case("apply_rope(cache wrong shape)", ValueError, "cache",
     lambda: A.apply_rope(q, cache=(torch.zeros(3, 8), torch.zeros(3, 8))))
case("MultiHeadAttention(d_model=10, n_head=3)", ValueError, "d_model", lambda: A.MultiHeadAttention(10, 3))
case("MultiHeadAttention(n_head=0)", ValueError, "n_head", lambda: A.MultiHeadAttention(8, 0))
case("MultiHeadAttention(impl='x')", ValueError, "impl", lambda: A.MultiHeadAttention(8, 2, impl="x"))
case("MultiHeadAttention(x wrong width)", ValueError, "x", lambda: A.MultiHeadAttention(8, 2)(torch.zeros(1, 3, 4)))
case("MultiHeadAttention(context batch)", ValueError, "context",
     lambda: A.MultiHeadAttention(8, 2)(torch.zeros(1, 3, 8), torch.zeros(2, 3, 8)))
case("mha_params(d_model=0)", ValueError, "d_model", lambda: A.mha_params(0, 1))
case("peak_live_bytes(3)", TypeError, "fn", lambda: A.peak_live_bytes(3))

# ============================================================================ generate
lg = torch.randn(2, 5, generator=_G)
case("sample_next(NaN logits)", ValueError, "logits", lambda: G.sample_next(torch.tensor([[0.0, NAN]])))
case("sample_next(NaN logits, greedy)", ValueError, "logits", lambda: G.sample_next(torch.tensor([[0.0, NAN]]), temperature=0))
case("sample_next(all -inf row)", ValueError, "logits", lambda: G.sample_next(torch.tensor([[-INF, -INF]])))
case("sample_next(+inf logit)", ValueError, "logits", lambda: G.sample_next(torch.tensor([[0.0, INF]])))
case("sample_next(int logits)", TypeError, "logits", lambda: G.sample_next(torch.tensor([[1, 2]])))
case("sample_next(1-D logits)", ValueError, "logits", lambda: G.sample_next(torch.randn(5)))
case("sample_next(list)", TypeError, "logits", lambda: G.sample_next([[1.0]]))
case("sample_next(temperature=-1)", ValueError, "temperature", lambda: G.sample_next(lg, temperature=-1.0))
case("sample_next(temperature=inf)", ValueError, "temperature", lambda: G.sample_next(lg, temperature=INF))
case("sample_next(top_k=0)", ValueError, "top_k", lambda: G.sample_next(lg, top_k=0))
case("sample_next(top_k=True)", ValueError, "top_k", lambda: G.sample_next(lg, top_k=True))
case("sample_next(top_p=0)", ValueError, "top_p", lambda: G.sample_next(lg, top_p=0.0))
case("sample_next(top_p=nan)", ValueError, "top_p", lambda: G.sample_next(lg, top_p=NAN))
case("filter_logits(top_k=2.5)", ValueError, "top_k", lambda: G.filter_logits(lg, top_k=2.5))
case("filter_logits(NaN)", ValueError, "logits", lambda: G.filter_logits(torch.tensor([[NAN, 1.0]]), top_k=1))
case("next_token_probs(top_p=1.5)", ValueError, "top_p", lambda: G.next_token_probs(lg, top_p=1.5))
case("left_pad([])", ValueError, "seqs", lambda: G.left_pad([]))
case("left_pad(empty row)", ValueError, "seqs", lambda: G.left_pad([[1], []]))
case("left_pad(float ids)", ValueError, "seqs", lambda: G.left_pad([[1.5]]))
case("left_pad(negative ids)", ValueError, "seqs", lambda: G.left_pad([[-2]]))
case("left_pad(str row)", TypeError, "seqs", lambda: G.left_pad(["ab"]))
case("left_pad(pad_id=-1)", ValueError, "pad_id", lambda: G.left_pad([[1]], pad_id=-1))
case("position_ids_from_mask(list)", ValueError, "attention_mask", lambda: G.position_ids_from_mask([1]))
case("generate(model=Linear)", TypeError, "model", lambda: G.generate(torch.nn.Linear(2, 2), ids, 2))
case("generate(idx float)", ValueError, "idx", lambda: G.generate(_GPT, ids.float(), 2))
case("generate(idx >= vocab)", ValueError, "idx", lambda: G.generate(_GPT, torch.tensor([[1, 50]]), 2))
case("generate(max_new_tokens=0)", ValueError, "max_new_tokens", lambda: G.generate(_GPT, ids, 0))
case("generate(max_new_tokens > block)", ValueError, "block_size", lambda: G.generate(_GPT, ids, 14))
case("generate(cache='paged')", ValueError, "cache", lambda: G.generate(_GPT, ids, 2, cache="paged"))
case("generate(top_k=0)", ValueError, "top_k", lambda: G.generate(_GPT, ids, 2, top_k=0))
case("generate(attention_mask wrong shape)", ValueError, "attention_mask",
     lambda: G.generate(_GPT, ids, 2, attention_mask=torch.ones(1, 2, dtype=torch.bool)))
case("generate(attention_mask right-padded)", ValueError, "attention_mask",
     lambda: G.generate(_GPT, ids, 2, attention_mask=torch.tensor([[True, True, False]])))
case("generate(attention_mask empty row)", ValueError, "attention_mask",
     lambda: G.generate(_GPT, ids, 2, attention_mask=torch.zeros(1, 3, dtype=torch.bool)))
case("generate(attention_mask=2)", ValueError, "attention_mask",
     lambda: G.generate(_GPT, ids, 2, attention_mask=torch.tensor([[0, 2, 1]])))
case("Decoder(model=Linear)", TypeError, "model", lambda: G.Decoder(torch.nn.Linear(2, 2), 1, 8))
case("Decoder(mode='turbo')", ValueError, "mode", lambda: G.Decoder(_GPT, 1, 8, mode="turbo"))
case("Decoder(max_len=1)", ValueError, "max_len", lambda: G.Decoder(_GPT, 1, 1))
case("Decoder(batch_size=0)", ValueError, "batch_size", lambda: G.Decoder(_GPT, 0, 8))
case("Decoder.prefill(batch 2)", ValueError, "idx", lambda: G.Decoder(_GPT, 1, 8).prefill(torch.zeros(2, 3, dtype=torch.long)))
case("Decoder.decode(n=0)", ValueError, "n", lambda: G.Decoder(_GPT, 1, 8).decode(0))
case("Decoder.generate(too long)", ValueError, "max_len", lambda: G.Decoder(_GPT, 1, 8).generate(ids, 6))
case("Decoder.generate(max_new_tokens=0)", ValueError, "max_new_tokens", lambda: G.Decoder(_GPT, 1, 8).generate(ids, 0))
case("decode_floor_ms(mem_bw=0)", ValueError, "mem_bw", lambda: G.decode_floor_ms(1e6, 0))
case("decode_floor_ms(weight_bytes=-1)", ValueError, "weight_bytes", lambda: G.decode_floor_ms(-1, 1e9))
case("decode_floor_ms(kv_bytes=nan)", ValueError, "kv_bytes", lambda: G.decode_floor_ms(1, 1e9, NAN))
case("weight_bytes('gpt2')", TypeError, "model", lambda: G.weight_bytes("gpt2"))

# ============================================================================ metrics
case("accuracy(length mismatch)", ValueError, "same length", lambda: metrics.accuracy([0, 1], [0]))
case("accuracy(None)", TypeError, "y_true", lambda: metrics.accuracy(None, [1]))
case("accuracy(empty)", ValueError, "y_true", lambda: metrics.accuracy([], []))
case("accuracy(2-D)", ValueError, "y_pred", lambda: metrics.accuracy([0, 1], [[0], [1]]))
case("accuracy(non-integral labels)", ValueError, "y_true", lambda: metrics.accuracy([0.5, 1], [0, 1]))
case("precision(label 2, binary)", ValueError, "y_true", lambda: metrics.precision([0, 2], [0, 1]))
case("recall(average='micro')", ValueError, "average", lambda: metrics.recall([0, 1], [0, 1], average="micro"))
case("f1(ragged)", ValueError, "y_pred", lambda: metrics.f1([0, 1], [[0], [1, 1]]))
case("confusion_matrix(labels missing)", ValueError, "labels", lambda: metrics.confusion_matrix([0, 2], [0, 1], labels=[0, 1]))
case("confusion_matrix(labels repeat)", ValueError, "labels", lambda: metrics.confusion_matrix([0, 1], [0, 1], labels=[0, 0, 1]))
case("roc_auc(one class)", ValueError, "y_true", lambda: metrics.roc_auc([1, 1], [0.1, 0.2]))
case("roc_auc(NaN score)", ValueError, "y_score", lambda: metrics.roc_auc([0, 1], [0.1, NAN]))
case("roc_auc(str)", TypeError, "y_score", lambda: metrics.roc_auc([0, 1], "ab"))
case("average_precision(length mismatch)", ValueError, "y_score", lambda: metrics.average_precision([0, 1], [0.1]))
case("roc_curve(labels 0/2)", ValueError, "y_true", lambda: metrics.roc_curve([0, 2], [0.1, 0.2]))
case("recall_at_specificity(1.5)", ValueError, "specificity", lambda: metrics.recall_at_specificity([0, 1], [0.1, 0.2], 1.5))
case("reliability_curve(n_bins=0)", ValueError, "n_bins", lambda: metrics.reliability_curve([0, 1], [0.1, 0.2], 0))
case("reliability_curve(prob 1.5)", ValueError, "y_prob", lambda: metrics.reliability_curve([0, 1], [0.1, 1.5]))
case("expected_calibration_error(3-D)", ValueError, "y_prob", lambda: metrics.expected_calibration_error([0], np.zeros((1, 1, 1))))
case("expected_calibration_error(label >= C)", ValueError, "y_true",
     lambda: metrics.expected_calibration_error([0, 3], np.full((2, 3), 1 / 3)))
case("perplexity(-0.1)", ValueError, "mean_nll", lambda: metrics.perplexity(-0.1))
case("perplexity(nan)", ValueError, "mean_nll", lambda: metrics.perplexity(NAN))
case("perplexity('1')", TypeError, "mean_nll", lambda: metrics.perplexity("1"))
case("perplexity(vector)", ValueError, "mean_nll", lambda: metrics.perplexity(torch.ones(2)))
case("bleu(tokenize='intl')", ValueError, "tokenize", lambda: metrics.bleu(["a"], ["a"], tokenize="intl"))
case("bleu(smooth='add-k')", ValueError, "smooth", lambda: metrics.bleu(["a"], ["a"], smooth="add-k"))
case("bleu(max_order=0)", ValueError, "max_order", lambda: metrics.bleu(["a"], ["a"], max_order=0))
case("bleu(hypotheses str)", TypeError, "hypotheses", lambda: metrics.bleu("a", ["a"]))
case("bleu(empty)", ValueError, "hypotheses", lambda: metrics.bleu([], []))
case("bleu(length mismatch)", ValueError, "references", lambda: metrics.bleu(["a"], ["a", "b"]))
case("bleu(non-string hypothesis)", TypeError, "hypotheses[0]", lambda: metrics.bleu([3], ["a"]))
case("rank_of_target(1-D scores)", ValueError, "scores", lambda: metrics.rank_of_target(np.zeros(3), [0]))
case("rank_of_target(NaN scores)", ValueError, "scores", lambda: metrics.rank_of_target(np.full((1, 2), NAN), [0]))
case("rank_of_target(target out of range)", ValueError, "target", lambda: metrics.rank_of_target(np.zeros((1, 2)), [2]))
case("rank_of_target(target masked)", ValueError, "target",
     lambda: metrics.rank_of_target(np.array([[-INF, 0.0]]), [0]))
case("hit_rate_at_k(k=0)", ValueError, "k", lambda: metrics.hit_rate_at_k(np.zeros((1, 2)), [0], 0))
case("ndcg_at_k(k=1.5)", ValueError, "k", lambda: metrics.ndcg_at_k(np.zeros((1, 2)), [0], 1.5))

# ============================================================================ foundations
x2 = torch.randn(3, 4, dtype=torch.float64, generator=_G)
case("sigmoid(list)", TypeError, "z", lambda: foundations.sigmoid([1.0]))
case("sigmoid(int tensor)", TypeError, "z", lambda: foundations.sigmoid(torch.tensor([1])))
case("logsumexp(list)", TypeError, "x", lambda: foundations.logsumexp([1.0]))
case("softmax(int tensor)", TypeError, "x", lambda: foundations.softmax(torch.tensor([1, 2])))
case("mse(shape mismatch)", ValueError, "pred", lambda: foundations.mse(torch.zeros(3), torch.zeros(4)))
case("cross_entropy(1-D logits)", ValueError, "logits", lambda: foundations.cross_entropy(torch.zeros(3), torch.tensor([0])))
case("cross_entropy(float targets)", ValueError, "targets", lambda: foundations.cross_entropy(x2, torch.zeros(3)))
case("cross_entropy(targets >= K)", ValueError, "targets", lambda: foundations.cross_entropy(x2, torch.tensor([0, 1, 4])))
case("bce(p > 1)", ValueError, "p", lambda: foundations.bce(torch.tensor([1.5]), torch.tensor([1.0])))
case("MLP2.init(d_hidden=0)", ValueError, "d_hidden", lambda: foundations.MLP2.init(2, 0, 1))
case("mlp_forward(params=dict)", TypeError, "params", lambda: foundations.mlp_forward({}, x2))
case("mlp_forward(x wrong width)", ValueError, "x", lambda: foundations.mlp_forward(foundations.MLP2.init(2, 3, 1), x2))

# ============================================================================ text
case("lexicon_scores(str)", ValueError, "texts", lambda: text.lexicon_scores("great"))
case("lexicon_scores([1])", ValueError, "texts", lambda: text.lexicon_scores([1]))
case("fit_threshold(length mismatch)", ValueError, "scores", lambda: text.fit_threshold([0.1, 0.2], [1]))
case("fit_threshold(empty)", ValueError, "scores", lambda: text.fit_threshold([], []))
case("PassageIndex(vectors/titles mismatch)", ValueError, "vectors", lambda: text.PassageIndex(np.zeros((2, 3)), ["a"]))
_IDX = text.PassageIndex(np.eye(3), ["a", "b", "c"])
case("PassageIndex.search(k=0)", ValueError, "k", lambda: _IDX.search(np.eye(3), 0))
case("PassageIndex.search(k > N)", ValueError, "k", lambda: _IDX.search(np.eye(3), 4))
case("PassageIndex.search(query width)", ValueError, "query_vectors", lambda: _IDX.search(np.zeros((1, 2)), 1))
case("PassageIndex.recall_at_k(relevant length)", ValueError, "relevant", lambda: _IDX.recall_at_k(np.eye(3), [{"a"}], 1))

# ============================================================================ results, env, io
case("committed_dir('huge')", ValueError, "for_scale", lambda: results.committed_dir("huge"))
case("results_dir('ci')", ValueError, "for_scale", lambda: results.results_dir("ci"))
case("save(chapter='Attention!')", ValueError, "chapter", lambda: results.save("Attention!", {"x": 1.0}))
case("save(figures={})", ValueError, "figures", lambda: results.save("attention", {}))
case("save(figure name CamelCase)", ValueError, "figure names", lambda: results.save("attention", {"Speedup": 1.0}))
case("save(figure str)", ValueError, "figures", lambda: results.save("attention", {"speedup": "2x"}))
case("save(figure nan)", ValueError, "figures", lambda: results.save("attention", {"speedup": NAN}))
case("save(rows dict)", ValueError, "rows", lambda: results.save("attention", {"speedup": 1.0}, rows={"a": 1}))
case("load(chapter='../x')", ValueError, "chapter", lambda: results.load("../x"))
case("rehearse_cap(n=-1)", ValueError, "n", lambda: env.rehearse_cap(-1))
case("rehearse_cap(cap=0)", ValueError, "cap", lambda: env.rehearse_cap(5, 0))
case("seed_everything(-1)", ValueError, "seed", lambda: env.seed_everything(-1))
case("seed_everything('0')", ValueError, "seed", lambda: env.seed_everything("0"))
case("atomic_write(mode='r')", ValueError, "mode", lambda: io.atomic_write("/tmp/x", mode="r").__enter__())
case("write_json(object())", TypeError, "JSON", lambda: io.write_json("/tmp/bmlib_census_never.json", object()))

# ============================================================================ data
case("digits.split(val_fraction=1.5)", ValueError, "val_fraction", lambda: digits.split(val_fraction=1.5))
case("digits.random_shift(max_shift=-1)", ValueError, "max_shift", lambda: digits.random_shift(torch.zeros(1, 1, 8, 8), -1))
case("digits.random_shift(x list)", TypeError, "x", lambda: digits.random_shift([[0.0]]))
case("digits.random_rotate(max_degrees=nan)", ValueError, "max_degrees",
     lambda: digits.random_rotate(torch.zeros(1, 1, 8, 8), NAN))
case("finance.returns(1-D with 1 price)", ValueError, "prices", lambda: finance.returns(np.array([1.0])))
case("finance.returns(non-positive)", ValueError, "prices", lambda: finance.returns(np.array([1.0, -1.0, 2.0])))
case("finance.make_windows(lookback=0)", ValueError, "lookback", lambda: finance.make_windows(np.zeros(20), 0))
case("finance.make_windows(target='x')", ValueError, "target", lambda: finance.make_windows(np.zeros(20), 3, target="x"))
case("finance.make_windows(horizon=0)", ValueError, "horizon", lambda: finance.make_windows(np.zeros(20), 3, horizon=0))
case("finance.chronological_split(fractions sum)", ValueError, "fractions",
     lambda: finance.chronological_split(np.zeros((10, 2)), np.zeros(10), np.arange(10), fractions=(0.5, 0.1, 0.1)))
case("finance.extreme_loss_labels(threshold=nan)", ValueError, "threshold",
     lambda: finance.extreme_loss_labels(np.zeros(5), NAN))
case("medical.stratified_split(fractions sum)", ValueError, "fractions",
     lambda: medical.stratified_split(np.array([0, 1] * 10), fractions=(0.5, 0.5, 0.5)))
case("movielens.pad_left(max_len=0)", ValueError, "max_len", lambda: movielens.pad_left([[1, 2]], 0))
case("reviews.pack_strings(str)", TypeError, "texts", lambda: reviews.pack_strings("abc"))
case("reviews.pack_strings([1])", TypeError, "texts", lambda: reviews.pack_strings([1]))
case("store.content_sha256(list)", TypeError, "arrays", lambda: store.content_sha256([1, 2]))
case("store.content_sha256(object array)", ValueError, "dtype object",
     lambda: store.content_sha256({"a": np.array([{}, 1], dtype=object)}))
case("store.cached(name='a/b')", ValueError, "name", lambda: store.cached("a/b", dict, "bmlib"))
case("tokenizer.train_bpe(vocab_size=0)", ValueError, "vocab_size", lambda: tokenizer.train_bpe("abc abc", 0))
case("tokenizer.train_bpe(text=3)", TypeError, "text", lambda: tokenizer.train_bpe(3, 300))
case("tokenizer.book_tokenizer(vocab_size=1.5)", ValueError, "vocab_size", lambda: tokenizer.book_tokenizer(1.5))
case("TokenData(block_size=0)", ValueError, "block_size", lambda: tokens.TokenData(np.arange(10), np.arange(10), 0))
case("TokenData(too few tokens)", ValueError, "train_ids", lambda: tokens.TokenData(np.arange(3), np.arange(10), 4))
case("TokenData(float ids)", ValueError, "train_ids", lambda: tokens.TokenData(np.linspace(0, 1, 10), np.arange(10), 4))
_TD = tokens.TokenData(np.arange(20), np.arange(20), 4)
case("TokenData.get_batch(split='test')", ValueError, "split", lambda: _TD.get_batch("test", 2, torch.Generator()))
case("TokenData.get_batch(batch_size=0)", ValueError, "batch_size", lambda: _TD.get_batch("train", 0, torch.Generator()))
case("ArrayData(rows mismatch)", ValueError, "y_train", lambda: arrays.ArrayData(np.zeros((3, 2)), np.zeros(2), np.zeros((1, 2)), np.zeros(1)))
case("ArrayData(empty val)", ValueError, "x_val", lambda: arrays.ArrayData(np.zeros((3, 2)), np.zeros(3), np.zeros((0, 2)), np.zeros(0)))
case("check_batch_args(split='test')", ValueError, "split", lambda: arrays.check_batch_args("test", 1))
case("check_batch_args(batch_size=True)", ValueError, "batch_size", lambda: arrays.check_batch_args("train", True))
case("corpus.is_val(val_fraction=1.5)", ValueError, "val_fraction", lambda: corpus.is_val("x", 1.5))
case("corpus.is_val(title=3)", TypeError, "title", lambda: corpus.is_val(3, 0.1))
case("corpus.cpython_split(val_fraction=-0.1)", ValueError, "val_fraction", lambda: corpus.cpython_split(-0.1))
case("corpus.cpython_docs(max_chars=0)", ValueError, "max_chars", lambda: corpus.cpython_docs(0))


# ============================================================================ the census
def _run(thunk):
    with torch.no_grad():
        return thunk()


def test_census(record_property):
    """Every bad call raises the expected error type naming its argument; prints the count."""
    problems = []
    for label, thunk, exc, name in CASES:
        try:
            out = _run(thunk)
        except (ValueError, TypeError) as e:
            if not isinstance(e, exc):
                problems.append(f"{label}: {type(e).__name__} (expected {exc.__name__}): {e}")
            elif name not in str(e):
                problems.append(f"{label}: the message does not name {name!r}: {e}")
            continue
        except Exception as e:  # a raw error from deep inside: the bug this census hunts
            problems.append(f"{label}: raw {type(e).__name__}: {e}")
            continue
        problems.append(f"{label}: accepted, returned {type(out).__name__}")
    n = len(CASES)
    record_property("census_cases", n)
    assert not problems, f"{len(problems)} of {n} bad calls not rejected properly:\n" + "\n".join(problems)
    print(f"census: {n} bad calls, all rejected")
    assert n > 300


def test_census_labels_are_unique():
    labels = [c[0] for c in CASES]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    assert not dup, dup


def test_good_calls_still_pass():
    """The census's fixtures accept valid input: a rejection above is about the bad argument."""
    with torch.no_grad():
        assert _GPT(ids, torch.tensor([[2, 3, -100]]))[1] is not None
        assert _GPT(ids, position_ids=torch.tensor([0, 1, 15]))[0].shape == (1, 3, 50)
        assert _BERT(ids, labels=torch.tensor([[1, -100, 49]]))[1] is not None
        assert _BERTC(ids, labels=torch.tensor([2]))[1] is not None
        assert _VIT(img, torch.tensor([0, 9]))[1] is not None
        assert _CNN(img, torch.tensor([0, 9]))[1] is not None
        assert _TXT(ids, torch.tensor([1]))[1] is not None
        kv = gpt.KVCache(_GPT_CFG, 1, 8)
        assert _GPT(ids, kv_cache=kv)[0].shape == (1, 3, 50) and kv.pos == 3
    assert G.sample_next(torch.tensor([[-INF, 0.0]])).item() == 1
    assert math.isinf(metrics.perplexity(1000.0))
    for cls in CONFIGS:
        cls()  # every default is valid
