"""Token streams for language-model training: :class:`TokenData` and the book's tokenised corpus.

A language model learns from a long 1-D stream of token ids. A batch is ``B`` random windows of
``T = block_size`` consecutive tokens ``x = ids[i : i+T]`` and their next tokens
``y = ids[i+1 : i+T+1]`` — every position of a window is a training example, so one window gives
``T`` predictions. Sampling start positions uniformly (with a seeded ``torch.Generator``) is the
nanoGPT recipe; an "epoch" is then only a statistical notion (``len(ids) / (B*T)`` batches).
"""
from __future__ import annotations

import numpy as np
import torch


def _as_ids(ids, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(ids) if not isinstance(ids, torch.Tensor) else ids)
    if t.dim() != 1:
        raise ValueError(f"{name} must be a 1-D sequence of token ids, got shape {tuple(t.shape)}")
    if t.is_floating_point() or t.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer token ids, got dtype {t.dtype}")
    if t.numel() and int(t.min()) < 0:
        raise ValueError(f"{name} must hold non-negative token ids, got min {int(t.min())}")
    return t.long()


class TokenData:
    """Random ``(B, block_size)`` windows of a token stream with next-token targets.

    ``train_ids``/``val_ids``: 1-D integer arrays/tensors. Each split must hold at least
    ``block_size + 1`` tokens (one window plus its last target).
    """

    def __init__(self, train_ids, val_ids, block_size: int):
        if not (isinstance(block_size, int) and not isinstance(block_size, bool) and block_size >= 1):
            raise ValueError(f"block_size must be an int >= 1, got {block_size!r}")
        self.block_size = block_size
        self.ids = {"train": _as_ids(train_ids, "train_ids"), "val": _as_ids(val_ids, "val_ids")}
        for split, t in self.ids.items():
            if t.numel() < block_size + 1:
                raise ValueError(
                    f"{split}_ids has {t.numel()} tokens, too few for block_size={block_size}: need at "
                    f"least block_size + 1 = {block_size + 1} (use a smaller block_size or more text)")

    @property
    def vocab_needed(self) -> int:
        """The smallest vocabulary size that covers every id in both splits."""
        return int(max(int(t.max()) for t in self.ids.values())) + 1

    def num_tokens(self, split: str = "train") -> int:
        return int(self.ids[split].numel())

    def get_batch(self, split: str, batch_size: int, generator: torch.Generator):
        """``(x, y)``, both ``(batch_size, block_size)`` int64, ``y`` shifted one token left."""
        if split not in self.ids:
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        ids, T = self.ids[split], self.block_size
        starts = torch.randint(0, ids.numel() - T, (batch_size,), generator=generator)  # (B,)
        offs = torch.arange(T + 1)  # (T+1,)
        win = ids[starts[:, None] + offs[None, :]]  # (B, T+1)
        return win[:, :-1].contiguous(), win[:, 1:].contiguous()

    def __repr__(self) -> str:
        return (f"TokenData(train={self.num_tokens('train'):,} tokens, val={self.num_tokens('val'):,} "
                f"tokens, block_size={self.block_size})")


def encode_documents(docs, tokenizer, eot: bool = True) -> np.ndarray:
    """Concatenate the token ids of ``docs`` (a list of strings), separated by ``<|endoftext|>``."""
    eot_id = tokenizer.convert_tokens_to_ids("<|endoftext|>") if eot else None
    out = []
    enc = tokenizer(list(docs), add_special_tokens=False)["input_ids"]
    for ids in enc:
        out.extend(ids)
        if eot_id is not None:
            out.append(eot_id)
    return np.asarray(out, dtype=np.int32)


def corpus_token_data(tokenizer=None, block_size: int = 128, vocab_size: int = 4096,
                      val_fraction: float = 0.1) -> TokenData:
    """The CPython corpus (:func:`bmlib.data.corpus.cpython_corpus`), tokenised with the book's
    BPE tokenizer (:func:`bmlib.data.tokenizer.book_tokenizer`) and split by document.

    The ids are cached (checksummed) under ``artifacts/data/``."""
    from .corpus import cpython_split
    from .store import cached
    from .tokenizer import book_tokenizer, tokenizer_fingerprint

    tok = tokenizer if tokenizer is not None else book_tokenizer(vocab_size)
    if not (0 < val_fraction < 0.5):
        raise ValueError(f"val_fraction must lie in (0, 0.5), got {val_fraction!r}")
    name = f"cpython-tokens-{tokenizer_fingerprint(tok)[:12]}-val{int(round(val_fraction * 1000))}"

    def build():
        train_docs, val_docs = cpython_split(val_fraction)
        return {"train": encode_documents(train_docs, tok), "val": encode_documents(val_docs, tok)}

    arrays = cached(name, build, package="tokenizers")
    return TokenData(arrays["train"], arrays["val"], block_size)
