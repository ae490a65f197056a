import hashlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bmlib.data import corpus
from bmlib.data.tokenizer import EOT, book_tokenizer, char_tokenizer, tokenizer_fingerprint, train_bpe
from bmlib.data.tokens import TokenData, corpus_token_data, encode_documents


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- corpus


def test_corpus_size_and_content():
    text = corpus.cpython_corpus()
    assert 1_500_000 < len(text) < 4_000_000  # ~2 M characters of English
    docs = corpus.documents()
    assert len(docs) > 3000
    titles = [t for t, _ in docs]
    assert len(set(titles)) > 0.9 * len(titles)
    assert titles[0].startswith("topic:") and any(t.startswith("json") for t in titles)
    assert len({hashlib.sha256(d.encode()).digest() for _, d in docs}) == len(docs)  # deduplicated
    assert all(len(d) >= corpus.MIN_DOC_CHARS and d == d.strip() for _, d in docs)
    assert "\r" not in text and "\t" not in text
    assert "Python Software Foundation" in corpus.LICENSE
    assert text.count(" the ") > 10_000  # English prose, not code


@pytest.mark.slow
def test_corpus_is_deterministic():
    built = corpus._build()  # a fresh build from the stdlib equals the cached copy
    docs = corpus.documents()
    raw, off = built["text"].tobytes(), built["offsets"]
    assert len(off) - 1 == len(docs)
    assert raw[off[0]:off[1]].decode() == docs[0][1]
    assert raw[off[-2]:off[-1]].decode() == docs[-1][1]
    assert [str(t) for t in built["titles"]] == [t for t, _ in docs]


def test_split_by_document():
    train, val = corpus.cpython_split(0.1)
    assert len(train) + len(val) == len(corpus.documents())
    assert 0.05 < len(val) / (len(train) + len(val)) < 0.15
    assert not set(train) & set(val)
    assert corpus.cpython_split(0.1) == (train, val)  # deterministic
    with pytest.raises(ValueError, match="val_fraction"):
        corpus.cpython_split(1.5)


def test_passages():
    docs = corpus.cpython_docs(max_chars=800)
    assert all(len(t) <= 800 for _, t in docs)
    assert len(docs) > len(corpus.documents())
    assert any(title.endswith("#2") for title, _ in docs)
    with pytest.raises(ValueError, match="max_chars"):
        corpus.cpython_docs(10)


# ---------------------------------------------------------------- tokenizer

SMALL = None


def _small_tok():
    global SMALL
    if SMALL is None:
        SMALL = train_bpe(corpus.cpython_corpus()[:200_000], 400)
    return SMALL


def test_train_bpe_vocab_and_special_token():
    tok = _small_tok()
    assert len(tok) == 400
    eot = tok.convert_tokens_to_ids(EOT)
    assert tok.eos_token == EOT and tok.decode([eot]) == EOT
    ids = tok("the function returns", add_special_tokens=False)["input_ids"]
    assert len(ids) < len("the function returns")  # merges happened


@settings(max_examples=40, deadline=None)
@given(st.text(max_size=60))
def test_round_trip_any_text(s):
    tok = _small_tok()
    assert tok.decode(tok(s, add_special_tokens=False)["input_ids"]) == s


def test_train_bpe_is_deterministic():
    text = corpus.cpython_corpus()[:50_000]
    assert tokenizer_fingerprint(train_bpe(text, 300)) == tokenizer_fingerprint(train_bpe(text, 300))


def test_train_bpe_errors():
    with pytest.raises(ValueError, match="too small for vocab_size"):
        train_bpe("tiny text " * 5, 1000)
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe("some text", 200)
    with pytest.raises(TypeError, match="vocab_size"):
        train_bpe("some text", 300.0)
    with pytest.raises(TypeError, match="text"):
        train_bpe(b"bytes", 300)
    with pytest.raises(ValueError, match="empty"):
        train_bpe("", 300)


def test_book_tokenizer_cached_and_efficient():
    a, b = book_tokenizer(4096), book_tokenizer(4096)
    assert len(a) == 4096 and tokenizer_fingerprint(a) == tokenizer_fingerprint(b)
    _, val = corpus.cpython_split()
    sample = "\n\n".join(val[:50])
    n = len(a(sample, add_special_tokens=False)["input_ids"])
    assert len(sample) / n > 3.0  # > 3 characters per token on held-out text
    assert a.decode(a(sample)["input_ids"]) == sample


# ---------------------------------------------------------------- TokenData


@settings(max_examples=30, deadline=None)
@given(B=st.integers(1, 8), T=st.integers(1, 32), n=st.integers(0, 100))
def test_token_data_shapes(B, T, n):
    ids = torch.arange(T + 1 + n) % 97
    d = TokenData(ids, ids, T)
    x, y = d.get_batch("train", B, torch.Generator().manual_seed(n))
    assert x.shape == y.shape == (B, T) and x.dtype == torch.long
    assert torch.equal(y[:, :-1], x[:, 1:])  # targets are the inputs shifted by one
    assert torch.equal(y[:, -1], (x[:, -1] + 1) % 97)


def test_token_data_deterministic_given_generator():
    ids = np.arange(1000, dtype=np.int32)
    d = TokenData(ids, ids, 16)
    a = d.get_batch("val", 4, torch.Generator().manual_seed(3))
    b = d.get_batch("val", 4, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert d.vocab_needed == 1000


def test_token_data_errors():
    ids = torch.arange(10)
    with pytest.raises(ValueError, match="train_ids has 10 tokens, too few for block_size=10"):
        TokenData(ids, torch.arange(100), 10)
    with pytest.raises(ValueError, match="val_ids"):
        TokenData(torch.arange(100), ids, 16)
    with pytest.raises(ValueError, match="block_size"):
        TokenData(ids, ids, 0)
    with pytest.raises(ValueError, match="1-D"):
        TokenData(torch.zeros(4, 4, dtype=torch.long), ids, 2)
    with pytest.raises(ValueError, match="integer"):
        TokenData(torch.zeros(20), ids, 2)
    with pytest.raises(ValueError, match="non-negative"):
        TokenData(-torch.ones(20, dtype=torch.long), ids, 2)
    d = TokenData(ids, ids, 4)
    with pytest.raises(ValueError, match="split"):
        d.get_batch("test", 2, torch.Generator())
    with pytest.raises(ValueError, match="batch_size"):
        d.get_batch("train", 0, torch.Generator())


def test_corpus_token_data():
    tok = book_tokenizer(4096)
    d = corpus_token_data(tok, block_size=64)
    assert 300_000 < d.num_tokens("train") < 1_500_000
    assert d.num_tokens("val") > 20_000 and d.vocab_needed <= 4096
    eot = tok.convert_tokens_to_ids(EOT)
    ids = encode_documents(["a b", "c"], tok)
    assert ids[-1] == eot and (ids == eot).sum() == 2


# ---------------------------------------------------------------- character tokenizer


def test_char_tokenizer_ids_are_bytes():
    tok = char_tokenizer()
    assert len(tok) == 257 and tok.convert_tokens_to_ids(EOT) == 256
    text = "Return x.\n  def f(a, b):  # ü €"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == list(text.encode("utf-8"))  # one id per UTF-8 byte, id == byte value
    with_eot = tok("ab" + EOT + "c", add_special_tokens=False)["input_ids"]
    assert with_eot == [97, 98, 256, 99]
    assert tokenizer_fingerprint(tok) == tokenizer_fingerprint(char_tokenizer())  # deterministic
    assert tokenizer_fingerprint(tok) != tokenizer_fingerprint(book_tokenizer(4096))


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=200))
def test_char_tokenizer_round_trips_any_text(s):
    tok = _CHAR
    ids = tok(s, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(s.encode("utf-8")) and tok.decode(ids) == s


_CHAR = char_tokenizer()


def test_char_corpus_token_data():
    data = corpus_token_data(_CHAR, block_size=32)
    n_chars = sum(len(d.encode("utf-8")) + 1 for d in corpus.cpython_split(0.1)[0])  # + one EOT each
    assert data.num_tokens("train") == n_chars and data.vocab_needed <= 257

