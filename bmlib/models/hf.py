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
    hf_cfg = GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd,
                        n_layer=c.n_layer, n_head=c.n_head, resid_pdrop=c.dropout,
                        embd_pdrop=c.dropout, attn_pdrop=c.dropout,
                        layer_norm_epsilon=c.layer_norm_eps, activation_function="gelu_new",
                        tie_word_embeddings=True)
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
