"""Converters between bmlib models and Hugging Face ``transformers`` (weights map 1:1 by name)."""
from __future__ import annotations

import torch

from .gpt import GPT, GPTConfig

# HF GPT-2 uses Conv1D, whose weight is (in, out); nn.Linear's is (out, in).
_GPT2_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def gpt_to_hf(model: GPT):
    """A ``transformers.GPT2LMHeadModel`` with the same weights as ``model``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    c = model.config
    if not c.bias:
        raise ValueError("GPT-2 in transformers always has biases; cfg.bias must be True")
    # GPT-2's <|endoftext|> (id 50256) does not exist in a smaller vocabulary
    special = {} if c.vocab_size > 50256 else dict(bos_token_id=None, eos_token_id=None)
    hf_cfg = GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd,
                        n_layer=c.n_layer, n_head=c.n_head, resid_pdrop=c.dropout,
                        embd_pdrop=c.dropout, attn_pdrop=c.dropout,
                        layer_norm_epsilon=c.layer_norm_eps, activation_function="gelu_new",
                        tie_word_embeddings=True, **special)
    hf = GPT2LMHeadModel(hf_cfg)
    sd = {k: (v.t() if k.endswith(_GPT2_TRANSPOSED) else v) for k, v in model.state_dict().items()}
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    missing = [m for m in missing if not m.endswith("attn.bias") and m != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"GPT -> HF mapping incomplete: missing {missing}, unexpected {unexpected}")
    return hf.eval() if not model.training else hf


def gpt_from_hf(hf, attn_impl: str = "sdpa") -> GPT:
    """A bmlib :class:`GPT` with the weights of a ``GPT2LMHeadModel`` (e.g. from ``from_pretrained``)."""
    c = hf.config
    cfg = GPTConfig(vocab_size=c.vocab_size, block_size=c.n_positions, n_layer=c.n_layer,
                    n_head=c.n_head, n_embd=c.n_embd, dropout=0.0,
                    layer_norm_eps=c.layer_norm_epsilon, attn_impl=attn_impl)
    model = GPT(cfg)
    sd = {k: (v.t() if k.endswith(_GPT2_TRANSPOSED) else v) for k, v in hf.state_dict().items()
          if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    with torch.no_grad():
        missing, unexpected = model.load_state_dict(sd, strict=False)
    if [m for m in missing if m != "lm_head.weight"] or unexpected:
        raise RuntimeError(f"HF -> GPT mapping incomplete: missing {missing}, unexpected {unexpected}")
    return model.eval()


def _bert_hf_config(c):
    from transformers import BertConfig as HFBertConfig

    return HFBertConfig(vocab_size=c.vocab_size, hidden_size=c.n_embd, num_hidden_layers=c.n_layer,
                        num_attention_heads=c.n_head, intermediate_size=c.intermediate_size,
                        hidden_act="gelu", hidden_dropout_prob=c.dropout,
                        attention_probs_dropout_prob=c.dropout, max_position_embeddings=c.block_size,
                        type_vocab_size=c.type_vocab_size, layer_norm_eps=c.layer_norm_eps,
                        pad_token_id=c.pad_token_id, num_labels=c.num_labels,
                        tie_word_embeddings=True)


_HF_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")


def bert_to_hf(model):
    """A ``transformers.BertForMaskedLM`` (from a :class:`~bmlib.models.bert.BERT`) or
    ``BertForSequenceClassification`` (from a :class:`~bmlib.models.bert.BertClassifier`) with the
    same weights; the names already agree, so this is a plain ``load_state_dict``."""
    from transformers import BertForMaskedLM, BertForSequenceClassification

    from .bert import BERT, BertClassifier

    if isinstance(model, BERT):
        hf = BertForMaskedLM(_bert_hf_config(model.config))
    elif isinstance(model, BertClassifier):
        hf = BertForSequenceClassification(_bert_hf_config(model.config))
    else:
        raise TypeError(f"model must be a bmlib BERT or BertClassifier, got {type(model).__name__}")
    missing, unexpected = hf.load_state_dict(model.state_dict(), strict=False)
    missing = [m for m in missing if not m.endswith(_HF_BUFFERS)]
    if missing or unexpected:
        raise RuntimeError(f"BERT -> HF mapping incomplete: missing {missing}, unexpected {unexpected}")
    return hf.eval() if not model.training else hf


def bert_from_hf(hf, attn_impl: str = "sdpa"):
    """A bmlib :class:`~bmlib.models.bert.BERT` (from ``BertForMaskedLM``) or
    :class:`~bmlib.models.bert.BertClassifier` (from ``BertForSequenceClassification``)."""
    from .bert import BERT, BertClassifier, BertConfig

    kind = type(hf).__name__
    if kind not in ("BertForMaskedLM", "BertForSequenceClassification"):
        raise TypeError(f"hf must be a BertForMaskedLM or BertForSequenceClassification, got {kind}")
    c = hf.config
    if c.hidden_act != "gelu" or getattr(c, "position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"only hidden_act='gelu' with absolute positions is supported, got "
                         f"hidden_act={c.hidden_act!r}")
    cfg = BertConfig(vocab_size=c.vocab_size, block_size=c.max_position_embeddings,
                     type_vocab_size=c.type_vocab_size, n_layer=c.num_hidden_layers,
                     n_head=c.num_attention_heads, n_embd=c.hidden_size,
                     intermediate_size=c.intermediate_size, dropout=0.0,
                     layer_norm_eps=c.layer_norm_eps, pad_token_id=c.pad_token_id or 0,
                     num_labels=c.num_labels, attn_impl=attn_impl)
    model = (BERT if kind == "BertForMaskedLM" else BertClassifier)(cfg)
    sd = {k: v for k, v in hf.state_dict().items() if not k.endswith(_HF_BUFFERS)}
    with torch.no_grad():
        missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"HF -> BERT mapping incomplete: missing {missing}, unexpected {unexpected}")
    return model.eval()


def save_pretrained(model, folder, tokenizer=None):
    """Write ``model`` as a Hugging Face checkpoint (safetensors + ``config.json``) in ``folder``.

    A :class:`GPT` becomes a ``GPT2LMHeadModel``, so ``AutoModelForCausalLM.from_pretrained(folder)``
    and ``transformers.pipeline("text-generation", model=folder)`` load it; a BERT becomes
    ``BertForMaskedLM``/``BertForSequenceClassification``. ``tokenizer`` (a ``PreTrainedTokenizer``)
    is saved beside it and its bos/eos/pad ids are copied into the model's config. Returns the folder.
    """
    from pathlib import Path

    from .bert import BERT, BertClassifier

    if isinstance(model, GPT):
        hf = gpt_to_hf(model)
    elif isinstance(model, (BERT, BertClassifier)):
        hf = bert_to_hf(model)
    else:
        raise TypeError(f"model must be a bmlib GPT, BERT or BertClassifier, got {type(model).__name__}")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"folder must be a directory path, got the file {str(folder)!r}")
    if tokenizer is not None:
        if not hasattr(tokenizer, "save_pretrained"):
            raise TypeError(f"tokenizer must be a transformers tokenizer, got {type(tokenizer).__name__}")
        if len(tokenizer) > model.config.vocab_size:
            raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
                             f"{model.config.vocab_size}")
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            tid = getattr(tokenizer, name, None)
            if tid is not None:
                setattr(hf.config, name, tid)
                if getattr(hf, "generation_config", None) is not None:
                    setattr(hf.generation_config, name, tid)
    folder.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder
