import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bmlib import text
from bmlib.models.bert import BertConfig, BertModel
from bmlib.models.classifier import TextClassifier


def test_lexicon_counts_and_negation():
    s = text.lexicon_scores(["great great", "terrible", "not good", "the food arrived", ""])
    assert s[0] == pytest.approx(2 / np.sqrt(2)) and s[1] == -1.0
    assert s[2] == pytest.approx(-1 / np.sqrt(2))  # "not" flips "good"
    assert s[3] == 0.0 and s[4] == 0.0
    with pytest.raises(ValueError, match="texts"):
        text.lexicon_scores("great")


def test_fit_threshold_maximises_accuracy():
    scores = np.array([-2.0, -1.0, 0.5, 1.0, 3.0])
    labels = np.array([0, 0, 1, 1, 1])
    thr = text.fit_threshold(scores, labels)
    assert ((scores > thr) == labels).all()
    with pytest.raises(ValueError, match="scores and labels"):
        text.fit_threshold(scores, labels[:3])


def test_passage_index_search_and_recall():
    vecs = np.eye(4)
    idx = text.PassageIndex(vecs, ["a#1", "b", "c", "d"])
    q = np.array([[1.0, 0.1, 0, 0], [0, 0, 0.2, 1.0]])
    assert idx.search(q, 2) == [[0, 1], [3, 2]]
    assert idx.recall_at_k(q, [["a"], ["c"]], 1) == 0.5  # prefix match on "a#1"; "c" only at rank 2
    assert idx.recall_at_k(q, [["a"], ["c"]], 2) == 1.0
    assert idx.recall_at_k(q, [lambda t: t == "b", lambda t: False], 2) == 0.5
    with pytest.raises(ValueError, match="k must"):
        idx.search(q, 0)
    with pytest.raises(ValueError, match="query_vectors"):
        idx.search(np.ones((1, 3)), 1)
    with pytest.raises(ValueError, match="vectors"):
        text.PassageIndex(np.ones((3, 2)), ["x"])
    with pytest.raises(ValueError, match="relevant"):
        idx.recall_at_k(q, [["a"]], 1)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 30), d=st.integers(2, 8), k=st.integers(1, 5), seed=st.integers(0, 10_000))
def test_recall_at_k_monotone_in_k(n, d, k, seed):
    g = np.random.default_rng(seed)
    titles = [f"t{i}" for i in range(n)]
    idx = text.PassageIndex(g.normal(size=(n, d)), titles)
    q = g.normal(size=(6, d))
    rel = [[f"t{g.integers(n)}"] for _ in range(6)]
    k = min(k, n - 1)
    assert idx.recall_at_k(q, rel, k) <= idx.recall_at_k(q, rel, k + 1)


def _clf(pad_id=0):
    torch.manual_seed(0)
    cfg = BertConfig.preset("tiny", dropout=0.0)
    return TextClassifier(BertModel(cfg), hidden_size=cfg.n_embd, num_labels=3, pad_id=pad_id, dropout=0.0)


def test_text_classifier_padding_invariance_and_loss():
    m = _clf().eval()
    ids = torch.tensor([[5, 6, 7, 0, 0], [8, 9, 10, 11, 12]])
    logits, loss = m(ids, torch.tensor([0, 2]))
    alone, _ = m(ids[:1, :3])
    assert torch.allclose(logits[0], alone[0], atol=1e-5)  # padding does not change the prediction
    z = logits.double()  # mean NLL of the labels 0 and 2, by hand in float64
    nll = ((torch.logsumexp(z[0], -1) - z[0, 0]) + (torch.logsumexp(z[1], -1) - z[1, 2])) / 2
    assert abs(loss.item() - nll.item()) < 1e-5
    p = m.predict(ids)
    assert p.shape == (2, 3) and torch.allclose(p.sum(-1), torch.ones(2))


def test_text_classifier_errors():
    m = _clf()
    with pytest.raises(ValueError, match="ids"):
        m(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="labels"):
        m(torch.tensor([[1, 2]]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="num_labels"):
        TextClassifier(torch.nn.Identity(), 4, 1, 0)
