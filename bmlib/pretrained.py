"""The book's trained GPT: one recipe per scale, trained once with a fixed seed and cached.

The training chapter runs :func:`train_pretrained`; the NLP, compression and inference chapters call
:func:`pretrained_gpt`, which loads the sha256-verified checkpoint from ``artifacts/pretrained/`` (or
trains it with the same recipe when it is missing), so every chapter uses the same model.

The model reads characters (:func:`bmlib.data.tokenizer.char_tokenizer`, 257 tokens): at the size a
CPU trains in a minute or two, a character model has far fewer embedding parameters to learn than a
4,096-token BPE model, and it learns the corpus's spelling, words and layout — its validation loss
falls well below the unigram model's (:func:`unigram_loss`), which is the lesson the training chapter
asserts.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from .train import Result, TrainConfig, train

#: How the book's GPT is trained at each scale (the training chapter runs the same recipe).
#: ``tokenizer``: ``"char"`` (:func:`~bmlib.data.tokenizer.char_tokenizer`) or ``"bpe"``
#: (:func:`~bmlib.data.tokenizer.book_tokenizer` with the model's ``vocab_size``).
PRETRAINED_RECIPES = {
    "cpu": {"tokenizer": "char",
            "model": dict(vocab_size=257, block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0),
            "train": dict(max_steps=600, batch_size=16, lr=2e-3, min_lr=2e-4, warmup_steps=20, weight_decay=0.1,
                          grad_clip=1.0, eval_interval=150, eval_iters=8, seed=0)},
    "full": {"tokenizer": "char",
             "model": dict(vocab_size=257, block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.1),
             "train": dict(max_steps=2000, batch_size=64, lr=1e-3, min_lr=1e-4, warmup_steps=100,
                           weight_decay=0.1, grad_clip=1.0, eval_interval=250, eval_iters=20, seed=0,
                           dtype="bf16", betas=(0.9, 0.99))},
}
TOKENIZERS = ("char", "bpe")


def _recipe(size, recipe=None):
    from .env import scale

    if recipe is not None:
        if not (isinstance(recipe, dict) and {"tokenizer", "model", "train"} <= set(recipe)):
            raise ValueError("recipe must be a dict with keys 'tokenizer', 'model' and 'train' like "
                             f"PRETRAINED_RECIPES['cpu'], got {recipe!r}")
        if recipe["tokenizer"] not in TOKENIZERS:
            raise ValueError(f"recipe['tokenizer'] must be one of {TOKENIZERS}, got {recipe['tokenizer']!r}")
        return ("custom" if size is None else size), recipe
    size = scale() if size is None else size
    if size not in PRETRAINED_RECIPES:
        raise ValueError(f"size must be one of {sorted(PRETRAINED_RECIPES)}, got {size!r}")
    return size, _rehearsal_recipe(PRETRAINED_RECIPES[size])


def _rehearsal_recipe(r: dict) -> dict:
    """``r`` itself, or during a rehearsal (:func:`bmlib.env.rehearsing`) a copy whose training is
    capped to its first steps (:func:`bmlib.env.rehearse_cap`): same model, batch and dtype. The cap
    changes the recipe, so the rehearsal's checkpoint is cached under its own name."""
    from .env import rehearse_cap, rehearsing

    if not rehearsing():
        return r
    t = r["train"]
    steps = rehearse_cap(t["max_steps"])
    train_ = {**t, "max_steps": steps, "warmup_steps": min(t["warmup_steps"], steps),
              "eval_interval": steps, "eval_iters": rehearse_cap(t["eval_iters"])}
    return {**r, "train": train_}


def _tokenizer_and_data(r):
    from .data.tokenizer import book_tokenizer, char_tokenizer
    from .data.tokens import corpus_token_data

    tok = char_tokenizer() if r["tokenizer"] == "char" else book_tokenizer(r["model"]["vocab_size"])
    if len(tok) != r["model"]["vocab_size"]:
        raise ValueError(f"recipe model vocab_size={r['model']['vocab_size']} does not match the "
                         f"{r['tokenizer']!r} tokenizer's {len(tok)} tokens")
    return tok, corpus_token_data(tok, block_size=r["model"]["block_size"])


def _pretrained_dir(size: str, tok, r: dict) -> Path:
    from .data.tokenizer import tokenizer_fingerprint
    from .env import artifacts_dir

    key = json.dumps({"recipe": r, "tok": tokenizer_fingerprint(tok)}, sort_keys=True, default=str)
    return artifacts_dir("pretrained") / f"gpt-{size}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def unigram_loss(data) -> float:
    """Cross-entropy (nats/token) of ``data``'s validation tokens under the token frequencies of its
    training tokens (add-one smoothed over ``data.vocab_needed`` ids): the loss of a model that knows
    only how often each token occurs. A language model has learned something when it beats this."""
    v = data.vocab_needed
    counts = np.bincount(data.ids["train"].numpy(), minlength=v).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[data.ids["val"].numpy()].mean())


def train_pretrained(size: str | None = None, *, progress: bool = True, recipe: dict | None = None,
                     **overrides) -> Result:
    """Train the book's GPT on the CPython corpus with ``PRETRAINED_RECIPES[size]`` (or ``recipe``,
    a dict of the same form) with a fixed seed, and cache the checkpoint where :func:`pretrained_gpt`
    finds it. ``overrides`` change :class:`TrainConfig` fields; they are not part of the cache key,
    so only pass ones that do not change the result (``device``, ``compile``)."""
    import shutil

    from .env import seed_everything
    from .models.gpt import GPT, GPTConfig

    size, r = _recipe(size, recipe)
    unknown = set(overrides) - {"device", "compile"}
    if unknown:
        raise ValueError(f"overrides may only set 'device' or 'compile' (they are not in the cache key), got "
                         f"{sorted(unknown)}; pass a recipe to change the training itself")
    tok, data = _tokenizer_and_data(r)
    d = _pretrained_dir(size, tok, r)
    if d.exists():
        shutil.rmtree(d)
    seed_everything(r["train"]["seed"])
    model = GPT(GPTConfig(**r["model"]))
    cfg = TrainConfig(**{**r["train"], "checkpoint_dir": str(d), "keep_checkpoints": 1, "progress": progress,
                         **overrides})
    return train(model, data, cfg)


def pretrained_gpt(size: str | None = None, *, progress: bool = True, recipe: dict | None = None):
    """``(model, tokenizer, data)``: the book's GPT trained on the CPython corpus at ``size``
    (``"cpu"``: a 4-layer, 128-wide character model trained in a minute or two on a CPU; ``"full"``:
    a 6-layer, 384-wide one trained on a GPU). ``recipe`` replaces the recipe (the tests use a tiny
    one). The checkpoint is cached under ``artifacts/pretrained/`` (named by a hash of the recipe and
    the tokenizer) and reused when present and valid (sha256-verified); otherwise it is trained with
    the recipe's seed. The model is returned on the CPU in eval mode; move it with ``.to(device)``."""
    from . import checkpoint as ckpt
    from .models.gpt import GPT, GPTConfig

    size, r = _recipe(size, recipe)
    tok, data = _tokenizer_and_data(r)
    model = GPT(GPTConfig(**r["model"]))
    try:
        ckpt.load_weights(_pretrained_dir(size, tok, r), model)
    except ckpt.CheckpointError:
        model = train_pretrained(size, progress=progress, recipe=recipe).model
    return model.to("cpu").eval(), tok, data
