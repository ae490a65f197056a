"""Text baselines and retrieval: a sentiment lexicon, and a dense/sparse passage index.

The lexicon classifier is the honest "no model" baseline of the NLP chapter; the index turns any
embedding function (all-MiniLM-L6-v2, TF-IDF) into a top-k retriever with recall@k.
"""
from __future__ import annotations

import re

import numpy as np
import torch

POSITIVE = frozenset("""
great excellent amazing awesome best love loved loves delicious tasty perfect wonderful favorite
favourite fantastic good nice yummy fresh recommend recommended happy pleased enjoy enjoyed
outstanding superb terrific addictive satisfied smooth healthy quality fabulous incredible
""".split())
NEGATIVE = frozenset("""
bad terrible awful horrible worst disappointed disappointing disappointment poor stale bland
gross disgusting waste refund return returned weak bitter expensive overpriced broken unfortunately
mediocre okay ok sadly nasty worse yuck tasteless problem cheap
""".split())
NEGATORS = frozenset("not no never n't isn't wasn't don't doesn't didn't won't can't hardly".split())
_WORD = re.compile(r"[a-z']+")


def lexicon_scores(texts, positive=POSITIVE, negative=NEGATIVE) -> np.ndarray:
    """Per text: (#positive - #negative words) / sqrt(#words); a negator flips the next word."""
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a list of strings")
    out = np.zeros(len(texts))
    for i, t in enumerate(texts):
        words = _WORD.findall(t.lower())
        s, flip = 0, False
        for w in words:
            v = (w in positive) - (w in negative)
            s += -v if flip else v
            flip = w in NEGATORS or w.endswith("n't")
        out[i] = s / max(1.0, np.sqrt(len(words)))
    return out


def fit_threshold(scores, labels) -> float:
    """The score threshold maximising training accuracy (predict 1 when score > threshold)."""
    scores, labels = np.asarray(scores, float), np.asarray(labels)
    if scores.shape != labels.shape or scores.ndim != 1 or len(scores) == 0:
        raise ValueError(f"scores and labels must be 1-D of equal length, got {scores.shape}, {labels.shape}")
    cands = np.unique(np.concatenate([scores, [scores.min() - 1]]))
    accs = [((scores > c) == labels).mean() for c in cands]
    return float(cands[int(np.argmax(accs))])


class PassageIndex:
    """Top-k retrieval by cosine similarity over L2-normalised passage vectors."""

    def __init__(self, vectors, titles):
        v = torch.as_tensor(np.asarray(vectors), dtype=torch.float32)
        if v.dim() != 2 or v.shape[0] != len(titles):
            raise ValueError(f"vectors must be (N, D) with N = len(titles) = {len(titles)}, got {tuple(v.shape)}")
        self.vectors = torch.nn.functional.normalize(v, dim=-1)
        self.titles = list(titles)

    def search(self, query_vectors, k: int = 5) -> list[list[int]]:
        """Indices of the ``k`` most similar passages for each query vector, best first."""
        if not (isinstance(k, int) and 1 <= k <= len(self.titles)):
            raise ValueError(f"k must be an int in [1, {len(self.titles)}], got {k!r}")
        q = torch.nn.functional.normalize(torch.as_tensor(np.asarray(query_vectors), dtype=torch.float32), dim=-1)
        if q.dim() != 2 or q.shape[1] != self.vectors.shape[1]:
            raise ValueError(f"query_vectors must be (Q, {self.vectors.shape[1]}), got {tuple(q.shape)}")
        return (q @ self.vectors.T).topk(k, dim=-1).indices.tolist()

    def recall_at_k(self, query_vectors, relevant: list, k: int) -> float:
        """Fraction of queries with at least one relevant passage title in the top ``k``.

        ``relevant[i]`` is a predicate ``title -> bool`` or a set of accepted title prefixes."""
        if len(relevant) != len(query_vectors):
            raise ValueError(f"relevant must have one entry per query ({len(query_vectors)}), got {len(relevant)}")
        hits = 0
        for rel, idx in zip(relevant, self.search(query_vectors, k)):
            ok = rel if callable(rel) else (lambda t, r=rel: any(t.startswith(p) for p in r))
            hits += any(ok(self.titles[j]) for j in idx)
        return hits / len(relevant)
