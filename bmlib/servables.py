"""The models the book's server serves, each behind one small interface.

A :class:`Classifier` turns a batch of texts into one ``{"label", "probs"}`` dict each (the server
batches its requests dynamically). A :class:`Generator` streams the text of new tokens for one
prompt at a time and stops early when asked to (a client that went away). :func:`build` makes the
named models the command line serves (``python -m bmlib serve --model minilm-sentiment``); tests and
the serving chapter build their own from small models.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch


@dataclass(frozen=True)
class Classifier:
    """``predict(texts) -> [{"label": str, "probs": {label: p}}]`` for a batch of texts."""

    name: str
    labels: tuple
    predict: Callable[[Sequence[str]], list]
    max_chars: int = 2000
    kind: str = "classify"


@dataclass(frozen=True)
class Generator:
    """``stream(prompt, max_new_tokens, temperature, seed, stop) -> iterator of text pieces``.

    ``stop()`` returns True when the caller no longer wants tokens; the stream then ends early.
    """

    name: str
    stream: Callable[..., Iterator[str]]
    max_chars: int = 2000
    max_new_tokens: int = 256
    kind: str = "generate"


# ----------------------------------------------------------------------------- a sentence classifier
def encoder_classifier(name: str, tokenizer, encoder, head: torch.nn.Linear, labels: Sequence[str],
                       max_length: int = 64) -> Classifier:
    """Mean-pooled, L2-normalised encoder states -> ``head`` -> softmax, one forward per batch."""
    from .models.minilm import mean_pool

    if head.out_features != len(labels):
        raise ValueError(f"labels must name the head's {head.out_features} classes, got {len(labels)}")
    labels = tuple(str(x) for x in labels)

    @torch.inference_mode()
    def predict(texts):
        enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        h = encoder(**enc).last_hidden_state  # (B, T, C)
        e = torch.nn.functional.normalize(mean_pool(h, enc["attention_mask"]), dim=-1)
        probs = torch.softmax(head(e).float(), -1).tolist()
        return [{"label": labels[int(np.argmax(p))], "probs": dict(zip(labels, p))} for p in probs]

    return Classifier(name, labels, predict)


def _sentiment_head(tokenizer, encoder, n_train: int, seed: int) -> dict:
    """Fit a logistic-regression head on MiniLM embeddings of ``n_train`` training reviews."""
    from sklearn.linear_model import LogisticRegression

    from .data.reviews import load_reviews
    from .models.minilm import embed

    d = load_reviews()
    x = embed(d["train_text"][:n_train], tokenizer, encoder, max_length=64).numpy()
    lr = LogisticRegression(C=10.0, max_iter=2000, random_state=seed).fit(x, d["train_label"][:n_train])
    # a two-class logistic regression as a 2-way softmax head: logits (0, w.x + b)
    w = np.stack([np.zeros_like(lr.coef_[0]), lr.coef_[0]]).astype(np.float32)
    b = np.array([0.0, lr.intercept_[0]], dtype=np.float32)
    return {"weight": w, "bias": b}


def sentiment_parts(n_train: int = 1000, seed: int = 0):
    """``(tokenizer, encoder, head)``: all-MiniLM-L6-v2 and its sentiment head (a 2-way
    ``torch.nn.Linear``), fitted once and cached under ``artifacts/data`` (the serving chapter
    exports these parts to ONNX)."""
    from .data.store import cached
    from .models.minilm import PACKAGE, load_minilm

    tok, enc = load_minilm()
    arrays = cached(f"minilm_sentiment_head_{n_train}_{seed}",
                    lambda: _sentiment_head(tok, enc, n_train, seed), package=PACKAGE)
    head = torch.nn.Linear(arrays["weight"].shape[1], 2)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(arrays["weight"]))
        head.bias.copy_(torch.from_numpy(arrays["bias"]))
    return tok, enc, head


def minilm_sentiment(n_train: int = 1000, seed: int = 0, max_length: int = 64) -> Classifier:
    """all-MiniLM-L6-v2 with a sentiment head fitted once (cached under ``artifacts/data``)."""
    tok, enc, head = sentiment_parts(n_train, seed)
    return encoder_classifier("minilm-sentiment", tok, enc, head, ("other", "great"), max_length=max_length)


# ----------------------------------------------------------------------------- a streaming generator
def gpt_generator(name: str, model, encode: Callable[[str], list], decode: Callable[[list], str]) -> Generator:
    """Stream tokens from one of the book's GPTs: prefill once, then one cached step per token."""
    from .generate import sample_next
    from .models.gpt import KVCache

    block = model.config.block_size

    @torch.inference_mode()
    def stream(prompt: str, max_new_tokens: int, temperature: float = 0.0, seed: int = 0,
               stop: Callable[[], bool] = lambda: False):
        ids = encode(prompt)[-(block - max_new_tokens):] or [0]
        idx = torch.tensor([ids], dtype=torch.long)  # (1, T)
        kv = KVCache(model.config, 1, len(ids) + max_new_tokens)
        g = torch.Generator().manual_seed(seed)
        logits, _ = model(idx, kv_cache=kv)  # prefill
        for _ in range(max_new_tokens):
            if stop():
                return
            nxt = sample_next(logits[:, -1].float(), temperature=temperature, generator=g)  # (1,)
            yield decode([int(nxt)])
            logits, _ = model(nxt[:, None], kv_cache=kv)  # one decode step

    return Generator(name, stream, max_new_tokens=block // 2)


def build(name: str, max_length: int = 64):
    """The named models of ``python -m bmlib serve --model NAME`` (``max_length``: tokens per text
    for classifiers)."""
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length must be an int >= 1, got {max_length!r}")
    if name == "minilm-sentiment":
        return minilm_sentiment(max_length=max_length)
    if name == "gpt-cpu":
        from .pretrained import pretrained_gpt

        model, tok, _ = pretrained_gpt("cpu", progress=False)
        return gpt_generator("gpt-cpu", model.eval(), tok.encode, tok.decode)
    raise ValueError(f"model must be one of {sorted(MODELS)}, got {name!r}")


MODELS = ("minilm-sentiment", "gpt-cpu")
