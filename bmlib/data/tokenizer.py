"""Byte-level BPE tokenizers trained locally with Hugging Face ``tokenizers``.

Byte-level BPE (Radford et al., 2019; Sennrich et al., 2016) starts from the 256 byte values — so
any string can be encoded, nothing is ever "unknown" — and repeatedly merges the most frequent
adjacent pair into a new token until the vocabulary has ``vocab_size`` entries. GPT-2's
pre-tokenizer first splits text into words/spaces/punctuation so merges never cross word
boundaries. ``<|endoftext|>`` separates documents.

:func:`book_tokenizer` trains one on the CPython corpus and caches it as JSON under
``artifacts/tokenizers/`` (with the corpus checksum in its name), so every chapter gets the same one.
"""
from __future__ import annotations

import hashlib
import json
from typing import Iterable

EOT = "<|endoftext|>"
N_BYTES = 256


def train_bpe(text, vocab_size: int, *, min_frequency: int = 2, special_tokens: Iterable[str] = (EOT,),
              chunk_chars: int = 10_000):
    """Train a byte-level BPE tokenizer on ``text`` (a string or a list of documents).

    Returns a ``transformers.PreTrainedTokenizerFast`` with exactly ``vocab_size`` tokens
    (256 bytes + merges + ``special_tokens``); raises ``ValueError`` when the text is too small to
    learn that many merges.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special_tokens = list(special_tokens)
    if EOT not in special_tokens:
        special_tokens.insert(0, EOT)
    if not (isinstance(vocab_size, int) and not isinstance(vocab_size, bool)):
        raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
    floor = N_BYTES + len(special_tokens)
    if vocab_size <= floor:
        raise ValueError(f"vocab_size must exceed 256 bytes + {len(special_tokens)} special tokens "
                         f"= {floor}, got {vocab_size}")
    if isinstance(text, str):
        docs = [text]
    elif isinstance(text, (list, tuple)) and all(isinstance(t, str) for t in text):
        docs = list(text)
    else:
        raise TypeError(f"text must be a str or a list of str, got {type(text).__name__}")
    if not any(docs):
        raise ValueError("text must not be empty")
    chunks = [d[i:i + chunk_chars] for d in docs for i in range(0, len(d), chunk_chars)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=special_tokens, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(chunks, trainer=trainer, length=len(chunks))
    got = tok.get_vocab_size()
    if got < vocab_size:
        n_chars = sum(len(d) for d in docs)
        raise ValueError(f"text of {n_chars:,} characters is too small for vocab_size={vocab_size}: only "
                         f"{got} tokens could be learned with min_frequency={min_frequency}; use more "
                         "text or a smaller vocab_size")
    return _wrap(tok)


def _wrap(tok):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOT, bos_token=EOT, unk_token=EOT,
                                   pad_token=EOT, model_max_length=1_000_000,
                                   clean_up_tokenization_spaces=False)


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of a tokenizer's serialised vocabulary and merges (identifies it in cache names)."""
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode("utf-8")).hexdigest()


def book_tokenizer(vocab_size: int = 4096):
    """The book's BPE tokenizer trained on :func:`bmlib.data.corpus.cpython_corpus`, cached."""
    from tokenizers import Tokenizer

    from ..env import artifacts_dir
    from ..io import atomic_write
    from .corpus import cpython_split, documents

    if not (isinstance(vocab_size, int) and vocab_size > N_BYTES + 1):
        raise ValueError(f"vocab_size must be an int > {N_BYTES + 1}, got {vocab_size!r}")
    docs = documents()
    corpus_sha = hashlib.sha256(json.dumps(docs).encode("utf-8")).hexdigest()[:12]
    path = artifacts_dir("tokenizers") / f"cpython-bpe-{vocab_size}-{corpus_sha}.json"
    if path.exists():
        try:
            return _wrap(Tokenizer.from_file(str(path)))
        except Exception:
            pass  # corrupt cache: retrain below
    train_docs, _ = cpython_split()  # the tokenizer never sees validation text
    tok = train_bpe(train_docs, vocab_size)
    with atomic_write(path, "w") as f:
        f.write(tok.backend_tokenizer.to_str())
    return tok


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable-character table (the alphabet of the ``ByteLevel`` pre-tokenizer)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(N_BYTES):
        if b not in bs:
            bs.append(b)
            cs.append(N_BYTES + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def char_tokenizer():
    """A character-level tokenizer: one token per UTF-8 byte, id == byte value, plus ``<|endoftext|>``
    (id 256), so ``len(tok) == 257``. For the CPython corpus — ASCII but for a few hundred of its
    two million characters — a token is a character.

    It is a byte-level BPE with no merges (the same ``tokenizers`` machinery as :func:`train_bpe`),
    so it encodes any string (nothing is unknown), decodes exactly, and works wherever the BPE does.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    b2u = _bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(N_BYTES)}
    vocab[EOT] = N_BYTES
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.add_special_tokens([EOT])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return _wrap(tok)
