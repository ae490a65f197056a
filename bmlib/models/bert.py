"""BERT: a bidirectional transformer encoder with a masked-LM head (Devlin et al., 2019).

Parameter names follow Hugging Face's ``BertForMaskedLM`` (``bert.embeddings.word_embeddings``,
``bert.encoder.layer.0.attention.self.query``, ``cls.predictions.transform.dense`` ...) and
``BertForSequenceClassification`` (``bert.pooler.dense``, ``classifier``), so weights map 1:1 and
:mod:`bmlib.models.hf` converts without renaming. Unlike GPT-2, BERT is *post*-LayerNorm
(``LayerNorm(x + sublayer(x))``), uses the exact (erf) GELU and adds a segment ("token type")
embedding to the token and position embeddings.

:func:`mask_tokens` implements the masked-LM corruption: pick 15 % of the non-special tokens as
targets; replace 80 % of those by ``[MASK]``, 10 % by a random token and keep 10 % unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..attention import IMPLS, attention
from .config import (PresetConfig, check_choice, check_fractions, check_heads, check_positive_ints,
                     check_positive_numbers, check_ids)


@dataclass(frozen=True)
class BertConfig(PresetConfig):
    """Sizes use the GPT names (``n_layer``, ``n_head``, ``n_embd``); HF calls them
    ``num_hidden_layers``, ``num_attention_heads``, ``hidden_size``; ``block_size`` is HF's
    ``max_position_embeddings``."""

    vocab_size: int = 30522
    block_size: int = 512
    type_vocab_size: int = 2
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    intermediate_size: int = 3072
    dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    num_labels: int = 2
    attn_impl: str = "sdpa"

    def __post_init__(self):
        check_positive_ints(self, ("vocab_size", "block_size", "type_vocab_size", "n_layer", "n_head", "n_embd",
                     "intermediate_size", "num_labels"))
        check_heads(self)
        check_fractions(self)
        check_positive_numbers(self, ("layer_norm_eps",))
        if not (isinstance(self.pad_token_id, int) and 0 <= self.pad_token_id < self.vocab_size):
            raise ValueError(f"pad_token_id must lie in [0, vocab_size={self.vocab_size}), "
                             f"got {self.pad_token_id!r}")
        check_choice(self, "attn_impl", IMPLS)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


# Named sizes: ``tiny`` (~1.4M parameters, 4k vocabulary), ``mini`` (~14M), ``bert-base`` (110M).
PRESETS = {
    "tiny": BertConfig(vocab_size=4096, block_size=128, n_layer=4, n_head=4, n_embd=128,
                       intermediate_size=512),
    "mini": BertConfig(vocab_size=8192, block_size=256, n_layer=6, n_head=6, n_embd=384,
                       intermediate_size=1536),
    "bert-base": BertConfig(),  # bert-base-uncased: 110M
}


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.n_embd, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.n_embd)
        self.LayerNorm = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, input_ids, token_type_ids):
        T = input_ids.shape[1]
        pos = torch.arange(T, dtype=torch.long, device=input_ids.device)  # (T,)
        x = self.word_embeddings(input_ids) + self.position_embeddings(pos) \
            + self.token_type_embeddings(token_type_ids)  # (B, T, C)
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.cfg = cfg
        self.query = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.key = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.value = nn.Linear(cfg.n_embd, cfg.n_embd)

    def forward(self, x, mask=None):
        B, T, C = x.shape
        nh, hs = self.cfg.n_head, self.cfg.head_dim
        q = self.query(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = self.key(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = self.value(x).view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        p = self.cfg.dropout if self.training else 0.0
        y = attention(q, k, v, causal=False, mask=mask, impl=self.cfg.attn_impl, dropout_p=p)
        return y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)


class BertSelfOutput(nn.Module):
    """Projection, dropout, then the post-LN residual: ``LayerNorm(x + dropout(dense(h)))``."""

    def __init__(self, cfg: BertConfig, d_in: int):
        super().__init__()
        self.dense = nn.Linear(d_in, cfg.n_embd)
        self.LayerNorm = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, h, x):
        return self.LayerNorm(x + self.dropout(self.dense(h)))


class BertAttention(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(cfg)
        self.output = BertSelfOutput(cfg, cfg.n_embd)

    def forward(self, x, mask=None):
        return self.output(self.self(x, mask), x)


class BertIntermediate(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.n_embd, cfg.intermediate_size)

    def forward(self, x):
        return F.gelu(self.dense(x))  # exact (erf) GELU, as in BERT


class BertLayer(nn.Module):
    """One encoder layer: post-LN self-attention, then a post-LN MLP (C -> intermediate -> C)."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.attention = BertAttention(cfg)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertSelfOutput(cfg, cfg.intermediate_size)

    def forward(self, x, mask=None):
        x = self.attention(x, mask)  # LayerNorm(x + Attn(x))
        return self.output(self.intermediate(x), x)  # LayerNorm(x + MLP(x))


class BertEncoder(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(cfg) for _ in range(cfg.n_layer)])

    def forward(self, x, mask=None):
        for layer in self.layer:
            x = layer(x, mask)
        return x


class BertPooler(nn.Module):
    """``tanh(dense(h[:, 0]))``: the [CLS] summary the classification head reads."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.n_embd, cfg.n_embd)

    def forward(self, h):
        return torch.tanh(self.dense(h[:, 0]))


class BertModel(nn.Module):
    """Embeddings + encoder (+ optional pooler): ``(B, T)`` ids -> ``(B, T, C)`` hidden states."""

    def __init__(self, cfg: BertConfig, add_pooling_layer: bool = False):
        super().__init__()
        self.config = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)
        self.pooler = BertPooler(cfg) if add_pooling_layer else None

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        cfg = self.config
        check_ids(input_ids, "input_ids", cfg.vocab_size, batched=True)
        B, T = input_ids.shape
        if T > cfg.block_size:
            raise ValueError(f"input_ids has sequence length {T} > block_size {cfg.block_size}")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        elif not isinstance(token_type_ids, torch.Tensor) or token_type_ids.shape != input_ids.shape:
            raise ValueError(f"token_type_ids must have the shape of input_ids {(B, T)}, got "
                             f"{tuple(getattr(token_type_ids, 'shape', ())) or type(token_type_ids).__name__}")
        else:
            check_ids(token_type_ids, "token_type_ids", cfg.type_vocab_size)
        mask = None
        if attention_mask is not None:
            if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != (B, T):
                got = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else attention_mask
                raise ValueError(f"attention_mask must be a (B, T) = {(B, T)} tensor of 0/1, got {got}")
            mask = attention_mask.bool()
            if not mask.any(dim=1).all():
                raise ValueError("attention_mask must keep at least one token in every row")
            mask = mask[:, None, None, :]  # (B, 1, 1, T): hide padded keys from every query
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, C)
        return self.encoder(x, mask)


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.LayerNorm = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)

    def forward(self, h):
        return self.LayerNorm(F.gelu(self.dense(h)))


class BertLMPredictionHead(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.transform = BertPredictionHeadTransform(cfg)
        self.decoder = nn.Linear(cfg.n_embd, cfg.vocab_size)
        self.bias = self.decoder.bias  # HF keeps the output bias under both names

    def forward(self, h):
        return self.decoder(self.transform(h))


class BertOnlyMLMHead(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.predictions = BertLMPredictionHead(cfg)

    def forward(self, h):
        return self.predictions(h)


def _init_bert(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
            if isinstance(m, nn.Embedding) and m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _check_labels(labels, shape, name="labels"):
    if not isinstance(labels, torch.Tensor) or tuple(labels.shape) != tuple(shape):
        got = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {got}")


class BERT(nn.Module):
    """BERT with the masked-LM head (``BertForMaskedLM``); the decoder is tied to the token embeddings."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        if not isinstance(cfg, BertConfig):
            raise TypeError(f"cfg must be a BertConfig, got {type(cfg).__name__}")
        self.config = cfg
        self.bert = BertModel(cfg, add_pooling_layer=False)
        self.cls = BertOnlyMLMHead(cfg)
        _init_bert(self)
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight  # tying

    def num_params(self) -> int:
        """Parameter count, tied weights once."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None):
        """``(B, T)`` ids -> ``(logits (B, T, V), loss or None)``; ``labels`` use ``-100`` = ignore."""
        h = self.bert(input_ids, attention_mask, token_type_ids)  # (B, T, C)
        logits = self.cls(h)  # (B, T, V)
        loss = None
        if labels is not None:
            _check_labels(labels, input_ids.shape)
            check_ids(labels, "labels", self.config.vocab_size, ignore=-100)
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), labels.reshape(-1),
                                   ignore_index=-100)
        return logits, loss


class BertClassifier(nn.Module):
    """BERT with a sequence-classification head (``BertForSequenceClassification``):
    ``classifier(dropout(pooler(h)))``. ``num_labels == 1`` is regression (MSE loss)."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        if not isinstance(cfg, BertConfig):
            raise TypeError(f"cfg must be a BertConfig, got {type(cfg).__name__}")
        self.config = cfg
        self.bert = BertModel(cfg, add_pooling_layer=True)
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(cfg.n_embd, cfg.num_labels)
        _init_bert(self)

    @classmethod
    def from_mlm(cls, mlm: BERT, num_labels: int | None = None) -> "BertClassifier":
        """A classifier whose encoder starts from a (pre-trained) masked-LM :class:`BERT`;
        the pooler and the classifier are freshly initialised, as in BERT's fine-tuning."""
        if not isinstance(mlm, BERT):
            raise TypeError(f"mlm must be a BERT, got {type(mlm).__name__}")
        cfg = mlm.config if num_labels is None else replace(mlm.config, num_labels=num_labels)
        model = cls(cfg)
        missing, unexpected = model.bert.load_state_dict(mlm.bert.state_dict(), strict=False)
        assert not unexpected and all(m.startswith("pooler.") for m in missing), (missing, unexpected)
        return model

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None):
        """``(B, T)`` ids -> ``(logits (B, num_labels), loss or None)``."""
        h = self.bert(input_ids, attention_mask, token_type_ids)  # (B, T, C)
        logits = self.classifier(self.dropout(self.bert.pooler(h)))  # (B, num_labels)
        loss = None
        if labels is not None:
            _check_labels(labels, (input_ids.shape[0],))
            if self.config.num_labels == 1:
                loss = F.mse_loss(logits.float().squeeze(-1), labels.float())
            else:
                check_ids(labels, "labels", self.config.num_labels)
                loss = F.cross_entropy(logits.float(), labels)
        return logits, loss


def mask_tokens(input_ids, mask_token_id: int, vocab_size: int, special_ids=(), p: float = 0.15,
                generator: torch.Generator | None = None):
    """BERT's masked-LM corruption. Returns ``(inputs, labels)``, both shaped like ``input_ids``.

    Each non-special token becomes a target with probability ``p``; ``labels`` holds the original
    id there and ``-100`` elsewhere. Of the targets, 80 % are replaced by ``mask_token_id``, 10 % by a
    uniformly random id in ``[0, vocab_size)`` and 10 % are left unchanged (so the model cannot
    assume that an unmasked token is always correct). ``special_ids`` (padding, [CLS], [SEP] ...)
    are never selected.
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.long, torch.int):
        raise TypeError("input_ids must be an integer torch.Tensor")
    if not (isinstance(vocab_size, int) and vocab_size >= 1):
        raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
    if not (isinstance(mask_token_id, int) and 0 <= mask_token_id < vocab_size):
        raise ValueError(f"mask_token_id must lie in [0, vocab_size={vocab_size}), got {mask_token_id!r}")
    if not (isinstance(p, (int, float)) and 0.0 < p <= 1.0):
        raise ValueError(f"p must lie in (0, 1], got {p!r}")
    if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= vocab_size):
        raise ValueError(f"input_ids must lie in [0, vocab_size={vocab_size})")
    dev = input_ids.device
    u = torch.rand(input_ids.shape, generator=generator, device=dev)
    special = torch.zeros_like(input_ids, dtype=torch.bool)
    for s in special_ids:
        special |= input_ids == int(s)
    target = (u < p) & ~special
    labels = torch.where(target, input_ids, torch.full_like(input_ids, -100))
    r = torch.rand(input_ids.shape, generator=generator, device=dev)
    to_mask = target & (r < 0.8)
    to_random = target & (r >= 0.8) & (r < 0.9)
    random_ids = torch.randint(0, vocab_size, input_ids.shape, generator=generator, device=dev,
                               dtype=input_ids.dtype)
    inputs = torch.where(to_mask, torch.full_like(input_ids, mask_token_id), input_ids)
    inputs = torch.where(to_random, random_ids, inputs)
    return inputs, labels
