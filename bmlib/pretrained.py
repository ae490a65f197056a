"""The book's trained GPT: one recipe per scale, trained once with a fixed seed and cached.

The training chapter runs :func:`train_pretrained`; the NLP, compression and inference chapters call
:func:`pretrained_gpt`, which loads the sha256-verified checkpoint from ``artifacts/pretrained/`` (or
trains it with the same recipe when it is missing), so every chapter uses the same model.
"""
from __future__ import annotations

from pathlib import Path

from .train import Result, TrainConfig, train

#: How the book's GPT is trained at each scale (the training chapter runs the same recipe).
PRETRAINED_RECIPES = {
    "cpu": {"model": dict(vocab_size=4096, block_size=64, n_layer=2, n_head=4, n_embd=128, dropout=0.0),
            "train": dict(max_steps=60, batch_size=8, lr=4e-3, min_lr=4e-4, warmup_steps=10, weight_decay=0.1,
                          grad_clip=1.0, eval_interval=30, eval_iters=4, seed=0)},
    "full": {"model": dict(vocab_size=4096, block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.2),
             "train": dict(max_steps=2500, batch_size=64, lr=1e-3, min_lr=1e-4, warmup_steps=100,
                           weight_decay=0.1, grad_clip=1.0, eval_interval=250, eval_iters=20, seed=0,
                           dtype="bf16", betas=(0.9, 0.99))},
}


def _recipe(size):
    from .env import scale

    size = scale() if size is None else size
    if size not in PRETRAINED_RECIPES:
        raise ValueError(f"size must be one of {sorted(PRETRAINED_RECIPES)}, got {size!r}")
    return size, PRETRAINED_RECIPES[size]


def _pretrained_dir(size: str, tok) -> Path:
    import hashlib
    import json

    from .data.tokenizer import tokenizer_fingerprint
    from .env import artifacts_dir

    r = PRETRAINED_RECIPES[size]
    key = json.dumps({"recipe": r, "tok": tokenizer_fingerprint(tok)}, sort_keys=True, default=str)
    return artifacts_dir("pretrained") / f"gpt-{size}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def train_pretrained(size: str | None = None, *, progress: bool = True, **overrides) -> Result:
    """Train the book's GPT on the CPython corpus with ``PRETRAINED_RECIPES[size]`` (fixed seed)
    and cache the checkpoint where :func:`pretrained_gpt` finds it. ``overrides`` change
    :class:`TrainConfig` fields (e.g. ``device``); they are not part of the cache key, so only pass
    ones that do not change the result (``device``, ``progress``, ``compile``)."""
    import shutil

    from .data.tokenizer import book_tokenizer
    from .data.tokens import corpus_token_data
    from .env import seed_everything
    from .models.gpt import GPT, GPTConfig

    size, r = _recipe(size)
    mcfg = GPTConfig(**r["model"])
    tok = book_tokenizer(mcfg.vocab_size)
    data = corpus_token_data(tok, block_size=mcfg.block_size)
    d = _pretrained_dir(size, tok)
    if d.exists():
        shutil.rmtree(d)
    seed_everything(r["train"]["seed"])
    model = GPT(mcfg)
    cfg = TrainConfig(**{**r["train"], "checkpoint_dir": str(d), "keep_checkpoints": 1, "progress": progress,
                         **overrides})
    return train(model, data, cfg)


def pretrained_gpt(size: str | None = None, *, progress: bool = True):
    """``(model, tokenizer, data)``: the book's GPT trained on the CPython corpus at ``size``
    (``"cpu"``: a 2-layer model trained for seconds on a CPU; ``"full"``: the training chapter's 6-layer
    model, minutes on an H100). The checkpoint is cached under ``artifacts/pretrained/`` and reused
    when present and valid (sha256-verified); otherwise it is trained with a fixed seed. The model
    is returned on the CPU in eval mode; move it with ``.to(device)``."""
    from . import checkpoint as ckpt
    from .data.tokenizer import book_tokenizer
    from .data.tokens import corpus_token_data
    from .models.gpt import GPT, GPTConfig

    size, r = _recipe(size)
    mcfg = GPTConfig(**r["model"])
    tok = book_tokenizer(mcfg.vocab_size)
    data = corpus_token_data(tok, block_size=mcfg.block_size)
    model = GPT(mcfg)
    try:
        ckpt.load_weights(_pretrained_dir(size, tok), model)
    except ckpt.CheckpointError:
        model = train_pretrained(size, progress=progress).model
    return model.to("cpu").eval(), tok, data
