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


def _refuse(field: str, value, supported: str, family: str):
    raise ValueError(f"{field}={value!r} is not implemented by bmlib's {family} (supported: "
                     f"{supported}); converting would silently change the model's outputs")


def _check_tied(hf, family: str) -> None:
    out, emb = hf.get_output_embeddings(), hf.get_input_embeddings()
    if out is not None and out.weight is not emb.weight and not torch.equal(out.weight, emb.weight):
        _refuse("tie_word_embeddings", False, "an output layer tied to the token embeddings", family)


# GPT-2 configurations bmlib's GPT computes exactly; anything else is refused by name.
_GPT2_GELU = ("gelu_new", "gelu_pytorch_tanh")  # both the tanh approximation bmlib's MLP uses


def check_gpt2_config(c) -> None:
    """Raise ``ValueError`` naming the first field of a ``GPT2Config`` that :class:`GPT` does not
    implement: another activation, an untied output layer, unscaled or layer-scaled attention,
    an MLP width other than ``4 n_embd``, cross-attention."""
    if c.activation_function not in _GPT2_GELU:
        _refuse("activation_function", c.activation_function, " or ".join(_GPT2_GELU), "GPT")
    if not getattr(c, "tie_word_embeddings", True):
        _refuse("tie_word_embeddings", False, "True", "GPT")
    if not getattr(c, "scale_attn_weights", True):
        _refuse("scale_attn_weights", False, "True (scores divided by sqrt(head_dim))", "GPT")
    if getattr(c, "scale_attn_by_inverse_layer_idx", False):
        _refuse("scale_attn_by_inverse_layer_idx", True, "False", "GPT")
    if getattr(c, "n_inner", None) not in (None, 4 * c.n_embd):
        _refuse("n_inner", c.n_inner, f"None or 4 * n_embd = {4 * c.n_embd}", "GPT")
    if getattr(c, "add_cross_attention", False):
        _refuse("add_cross_attention", True, "False", "GPT")


def gpt_from_hf(hf, attn_impl: str = "sdpa") -> GPT:
    """A bmlib :class:`GPT` with the weights of a ``GPT2LMHeadModel`` (e.g. from ``from_pretrained``).
    A configuration :class:`GPT` does not compute exactly is refused (:func:`check_gpt2_config`)."""
    if type(hf).__name__ != "GPT2LMHeadModel":
        raise TypeError(f"hf must be a transformers GPT2LMHeadModel, got {type(hf).__name__}")
    c = hf.config
    check_gpt2_config(c)
    _check_tied(hf, "GPT")
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


def check_bert_config(c, kind: str = "BertForMaskedLM") -> None:
    """Raise ``ValueError`` naming the first field of a ``BertConfig`` that bmlib's BERT does not
    implement: another activation, relative positions, a decoder (causal) or cross-attention
    stack, an untied MLM decoder, a multi-label loss."""
    if c.hidden_act != "gelu":
        _refuse("hidden_act", c.hidden_act, "'gelu' (exact erf GELU)", "BERT")
    pet = getattr(c, "position_embedding_type", "absolute")
    if pet != "absolute":
        _refuse("position_embedding_type", pet, "'absolute'", "BERT")
    if getattr(c, "is_decoder", False):
        _refuse("is_decoder", True, "False (bidirectional attention)", "BERT")
    if getattr(c, "add_cross_attention", False):
        _refuse("add_cross_attention", True, "False", "BERT")
    if kind == "BertForMaskedLM" and not getattr(c, "tie_word_embeddings", True):
        _refuse("tie_word_embeddings", False, "True", "BERT")
    if kind == "BertForSequenceClassification" and getattr(c, "problem_type", None) not in (
            None, "single_label_classification", "regression"):
        _refuse("problem_type", c.problem_type, "None, 'single_label_classification' or 'regression'",
                "BERT")


def bert_from_hf(hf, attn_impl: str = "sdpa"):
    """A bmlib :class:`~bmlib.models.bert.BERT` (from ``BertForMaskedLM``) or
    :class:`~bmlib.models.bert.BertClassifier` (from ``BertForSequenceClassification``)."""
    from .bert import BERT, BertClassifier, BertConfig

    kind = type(hf).__name__
    if kind not in ("BertForMaskedLM", "BertForSequenceClassification"):
        raise TypeError(f"hf must be a BertForMaskedLM or BertForSequenceClassification, got {kind}")
    c = hf.config
    check_bert_config(c, kind)
    if kind == "BertForMaskedLM":
        _check_tied(hf, "BERT")
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


# ---------------------------------------------------------------------------- Llama
_ROPE_KEYS = {"rope_type", "rope_theta"}


def llama_config_from_hf(c, attn_impl: str = "sdpa"):
    """The :class:`~bmlib.models.llama.LlamaConfig` of a Hugging Face ``LlamaConfig``, or a
    ``ValueError`` naming the first field bmlib's Llama does not implement: an activation other
    than SiLU, attention or MLP biases, any RoPE scaling (``rope_type`` other than ``"default"``,
    partial rotary), a ``head_dim`` other than ``hidden_size / num_attention_heads``, attention
    dropout, a sliding window."""
    from .llama import LlamaConfig

    if getattr(c, "model_type", None) != "llama":
        _refuse("model_type", getattr(c, "model_type", None), "'llama'", "Llama")
    if c.hidden_act != "silu":
        _refuse("hidden_act", c.hidden_act, "'silu' (SwiGLU)", "Llama")
    for field in ("attention_bias", "mlp_bias"):
        if getattr(c, field, False):
            _refuse(field, True, "False", "Llama")
    rope = dict(getattr(c, "rope_parameters", None) or {})
    legacy = getattr(c, "rope_scaling", None)  # transformers < 5 kept scaling here
    if legacy:
        rope = {**rope, **legacy}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        _refuse("rope_parameters.rope_type", rope.get("rope_type", rope.get("type")),
                "'default' (no RoPE scaling)", "Llama")
    extra = sorted(set(rope) - _ROPE_KEYS - {"type"})
    if extra:
        _refuse(f"rope_parameters.{extra[0]}", rope[extra[0]], "only rope_type and rope_theta", "Llama")
    theta = rope.get("rope_theta", getattr(c, "rope_theta", None))
    if theta is None:
        raise ValueError("the config gives no rope_theta (rope_parameters['rope_theta'])")
    hd = c.hidden_size // c.num_attention_heads
    if getattr(c, "head_dim", None) not in (None, hd):
        _refuse("head_dim", c.head_dim, f"hidden_size / num_attention_heads = {hd}", "Llama")
    if getattr(c, "attention_dropout", 0.0):
        _refuse("attention_dropout", c.attention_dropout, "0.0", "Llama")
    if getattr(c, "sliding_window", None) is not None:
        _refuse("sliding_window", c.sliding_window, "None (full causal attention)", "Llama")
    nkv = c.num_key_value_heads if getattr(c, "num_key_value_heads", None) else c.num_attention_heads
    return LlamaConfig(vocab_size=c.vocab_size, block_size=c.max_position_embeddings,
                       n_layer=c.num_hidden_layers, n_head=c.num_attention_heads, n_kv_head=nkv,
                       n_embd=c.hidden_size, intermediate_size=c.intermediate_size,
                       rope_theta=float(theta), rms_norm_eps=float(c.rms_norm_eps),
                       tie_word_embeddings=bool(c.tie_word_embeddings), attn_impl=attn_impl)


def llama_from_hf(hf, attn_impl: str = "sdpa"):
    """A bmlib :class:`~bmlib.models.llama.Llama` with the weights (same names, same layout) and
    dtype of a ``transformers.LlamaForCausalLM``; unsupported configurations are refused
    (:func:`llama_config_from_hf`)."""
    from .llama import Llama

    if type(hf).__name__ != "LlamaForCausalLM":
        raise TypeError(f"hf must be a transformers LlamaForCausalLM, got {type(hf).__name__}")
    cfg = llama_config_from_hf(hf.config, attn_impl=attn_impl)
    if cfg.tie_word_embeddings:
        _check_tied(hf, "Llama")
    p = hf.get_input_embeddings().weight
    model = Llama.empty(cfg, device=p.device, dtype=p.dtype)  # every weight is overwritten below
    with torch.no_grad():
        missing, unexpected = model.load_state_dict(hf.state_dict(), strict=False)
    missing = [m for m in missing if not (cfg.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"HF -> Llama mapping incomplete: missing {missing}, unexpected {unexpected}")
    return model.eval()


def llama_to_hf(model):
    """A ``transformers.LlamaForCausalLM`` with the weights of a bmlib Llama (names map 1:1)."""
    from transformers import LlamaConfig as HFLlamaConfig, LlamaForCausalLM

    from .llama import Llama

    if not isinstance(model, Llama):
        raise TypeError(f"model must be a bmlib Llama, got {type(model).__name__}")
    c = model.config
    special = dict(bos_token_id=None, eos_token_id=None, pad_token_id=None)
    hf_cfg = HFLlamaConfig(vocab_size=c.vocab_size, hidden_size=c.n_embd,
                           intermediate_size=c.intermediate_size, num_hidden_layers=c.n_layer,
                           num_attention_heads=c.n_head, num_key_value_heads=c.n_kv_head,
                           head_dim=c.head_dim, hidden_act="silu",
                           max_position_embeddings=c.block_size, rms_norm_eps=c.rms_norm_eps,
                           tie_word_embeddings=c.tie_word_embeddings,
                           rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
                           attention_bias=False, mlp_bias=False, attention_dropout=0.0, **special)
    p = model.model.embed_tokens.weight
    hf = LlamaForCausalLM(hf_cfg).to(device=p.device, dtype=p.dtype)
    missing, unexpected = hf.load_state_dict(model.state_dict(), strict=False)
    missing = [m for m in missing if not (c.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"Llama -> HF mapping incomplete: missing {missing}, unexpected {unexpected}")
    return hf.eval() if not model.training else hf


def save_pretrained(model, folder, tokenizer=None):
    """Write ``model`` as a Hugging Face checkpoint (safetensors + ``config.json``) in ``folder``.

    A :class:`GPT` becomes a ``GPT2LMHeadModel``, so ``AutoModelForCausalLM.from_pretrained(folder)``
    and ``transformers.pipeline("text-generation", model=folder)`` load it; a BERT becomes
    ``BertForMaskedLM``/``BertForSequenceClassification``. ``tokenizer`` (a ``PreTrainedTokenizer``)
    is saved beside it and its bos/eos/pad ids are copied into the model's config. Returns the folder.
    """
    from pathlib import Path

    from .bert import BERT, BertClassifier

    from .llama import Llama

    if isinstance(model, GPT):
        hf = gpt_to_hf(model)
    elif isinstance(model, Llama):
        hf = llama_to_hf(model)
    elif isinstance(model, (BERT, BertClassifier)):
        hf = bert_to_hf(model)
    else:
        raise TypeError(f"model must be a bmlib GPT, Llama, BERT or BertClassifier, got {type(model).__name__}")
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


# ---------------------------------------------------------------------------- the training protocol
class HFCausalLM(torch.nn.Module):
    """A Hugging Face causal LM (e.g. ``GPT2LMHeadModel``) behind the book's ``model(x, y) ->
    (logits, loss)`` protocol, with the same loss (mean next-token cross-entropy in fp32 over
    pre-shifted targets) and the same FLOP count as :meth:`bmlib.models.gpt.GPT.flops_per_token`."""

    def __init__(self, hf):
        super().__init__()
        self.hf = hf
        c = hf.config
        self.n_layer, self.n_embd = c.n_layer, c.n_embd
        self.vocab_size, self.block_size = c.vocab_size, c.n_positions

    def forward(self, x, y=None):
        logits = self.hf(input_ids=x).logits  # (B, T, V)
        loss = None
        if y is not None:
            loss = torch.nn.functional.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1),
                                                     ignore_index=-100)
        return logits, loss

    def flops_per_token(self, seq_len: int, training: bool = True) -> float:
        from .. import flops

        emb = self.hf.transformer.wte.weight.numel() + self.hf.transformer.wpe.weight.numel()
        N = flops.gpt_matmul_params(self.n_layer, self.n_embd, self.vocab_size,
                                    sum(p.numel() for p in self.hf.parameters()) - emb)
        return flops.transformer_flops_per_token(N, self.n_layer, seq_len, self.n_embd, training=training)


def as_protocol_model(model):
    """``model`` if it follows the book's protocol (a module with ``flops_per_token``), a Hugging Face
    ``GPT2LMHeadModel`` wrapped in :class:`HFCausalLM`, else a TypeError."""
    if isinstance(model, torch.nn.Module) and hasattr(model, "flops_per_token"):
        return model
    cfg = getattr(model, "config", None)
    if cfg is not None and getattr(cfg, "model_type", None) == "gpt2":
        return HFCausalLM(model)
    raise TypeError(f"model must be a bmlib GPT-like module with flops_per_token or a Hugging Face "
                    f"GPT2LMHeadModel, got {type(model).__name__}")
