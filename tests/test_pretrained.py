"""The book's pretrained GPT: recipes, the cache, the unigram baseline."""
import math

import pytest
import torch

from bmlib import pretrained as P
from bmlib.data.tokens import TokenData
from bmlib.train import evaluate

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"tokenizer": "char",
        "model": dict(vocab_size=257, block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.0),
        "train": dict(max_steps=3, batch_size=4, lr=1e-3, eval_iters=1, seed=0)}


def test_unigram_loss_by_hand():
    data = TokenData([0, 0, 0, 1], [0, 1], block_size=1)
    # train counts + 1 = [4, 2] -> p = [2/3, 1/3]; val = [0, 1]
    assert P.unigram_loss(data) == pytest.approx(-(math.log(2 / 3) + math.log(1 / 3)) / 2, rel=1e-12)
    skewed = TokenData([0] * 50 + [1, 2], [0] * 9 + [2], block_size=1)
    assert P.unigram_loss(skewed) < math.log(3)  # knows the frequencies: beats a uniform guess


def test_pretrained_gpt_tiny_recipe_is_cached_and_reloads(monkeypatch):
    import shutil

    tok, _ = P._tokenizer_and_data(TINY)
    d = P._pretrained_dir("custom", tok, TINY)
    shutil.rmtree(d, ignore_errors=True)
    m1, tok, data = P.pretrained_gpt(progress=False, recipe=TINY)  # trains (3 steps), caches
    assert d.exists() and d.name.startswith("gpt-custom-")

    def no_training(*a, **k):
        raise AssertionError("the cached checkpoint was not used")

    monkeypatch.setattr(P, "train_pretrained", no_training)
    m2, _, _ = P.pretrained_gpt(progress=False, recipe=TINY)  # loads the verified checkpoint
    for (n, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), n
    assert len(tok) == 257 == m1.config.vocab_size and data.block_size == 16 and not m1.training
    assert tok.decode(tok("def f(x):\n    return x")["input_ids"]) == "def f(x):\n    return x"
    # a different recipe is a different cache entry
    other = {**TINY, "train": {**TINY["train"], "seed": 1}}
    assert P._pretrained_dir("custom", tok, other) != d
    monkeypatch.undo()
    shutil.rmtree(d)


def test_pretrained_bad_arguments():
    with pytest.raises(ValueError, match="size"):
        P.pretrained_gpt("huge")
    with pytest.raises(ValueError, match="recipe"):
        P.pretrained_gpt(recipe={"model": {}})
    with pytest.raises(ValueError, match="tokenizer"):
        P.pretrained_gpt(recipe={**TINY, "tokenizer": "words"})
    with pytest.raises(ValueError, match="vocab_size"):
        P.pretrained_gpt(recipe={**TINY, "model": {**TINY["model"], "vocab_size": 300}})
    with pytest.raises(ValueError, match="overrides"):
        P.train_pretrained("cpu", max_steps=1)


def test_recipes_are_char_models_that_fit_their_tokenizer():
    for size, r in P.PRETRAINED_RECIPES.items():
        assert r["tokenizer"] == "char" and r["model"]["vocab_size"] == 257, size
        assert r["train"]["seed"] == 0


@pytest.mark.slow
def test_pretrained_gpt_cpu_learns():
    m, tok, data = P.pretrained_gpt("cpu", progress=False)  # trains once (a minute or two), then cached
    loss = evaluate(m, data, iters=8, batch_size=16)
    assert loss <= 0.75 * P.unigram_loss(data)  # the training chapter's lesson
