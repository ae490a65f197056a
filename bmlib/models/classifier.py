"""A sequence classifier over any encoder: mean-pooled token states -> linear head.

Works with a Hugging Face encoder (``AutoModel``, e.g. all-MiniLM-L6-v2: its output has
``last_hidden_state``) and with bmlib's own :class:`bmlib.models.bert.BertModel` (which returns the
states directly). It follows the book's training protocol, ``model(ids, labels) -> (logits, loss)``,
so :func:`bmlib.train.train` fine-tunes it; the attention mask is derived from ``pad_id``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import check_ids


class TextClassifier(nn.Module):
    def __init__(self, encoder: nn.Module, hidden_size: int, num_labels: int, pad_id: int,
                 dropout: float = 0.1):
        super().__init__()
        if not (isinstance(num_labels, int) and num_labels >= 2):
            raise ValueError(f"num_labels must be an int >= 2, got {num_labels!r}")
        if not (isinstance(hidden_size, int) and hidden_size >= 1):
            raise ValueError(f"hidden_size must be a positive int, got {hidden_size!r}")
        if not (0.0 <= dropout < 1.0):
            raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
        self.encoder = encoder
        self.pad_id = int(pad_id)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, num_labels)

    def forward(self, ids, labels=None):
        """``ids`` (B, T) right-padded with ``pad_id`` -> ``(logits (B, num_labels), loss or None)``."""
        vocab = getattr(getattr(self.encoder, "config", None), "vocab_size", None)
        check_ids(ids, "ids", vocab if isinstance(vocab, int) else 2 ** 62, batched=True)
        mask = (ids != self.pad_id).long()  # (B, T)
        out = self.encoder(input_ids=ids, attention_mask=mask)
        h = out.last_hidden_state if hasattr(out, "last_hidden_state") else out  # (B, T, C)
        m = mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, C)
        logits = self.head(self.dropout(pooled))
        loss = None
        if labels is not None:
            if not isinstance(labels, torch.Tensor) or labels.shape != (ids.shape[0],):
                raise ValueError(f"labels must have shape ({ids.shape[0]},), got "
                                 f"{tuple(getattr(labels, 'shape', ())) or type(labels).__name__}")
            check_ids(labels, "labels", self.head.out_features)
            loss = F.cross_entropy(logits.float(), labels)
        return logits, loss

    @torch.no_grad()
    def predict(self, ids, batch_size: int = 64) -> torch.Tensor:
        """Class probabilities (N, num_labels) in eval mode."""
        was = self.training
        self.eval()
        dev = next(self.parameters()).device
        probs = [torch.softmax(self(ids[i:i + batch_size].to(dev))[0].float(), -1).cpu()
                 for i in range(0, len(ids), batch_size)]
        self.train(was)
        return torch.cat(probs)


def tokenize_padded(texts, tokenizer, max_length: int = 128) -> torch.Tensor:
    """(N, T) right-padded token ids for a list of strings (T = the longest, at most ``max_length``)."""
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a list of strings")
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length,
                    return_tensors="pt")
    return enc["input_ids"]
