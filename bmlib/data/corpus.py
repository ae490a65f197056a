"""An offline corpus of real English text: CPython's own documentation.

Every Python installation ships about two million characters of carefully written English about
programming: the language reference topics that ``help()`` shows (``pydoc_data.topics``) and the
docstrings of the standard library's modules, classes and functions. That is enough text to train
a small GPT and a BPE tokenizer without downloading anything, and it is the same on every machine
with the same Python version.

* Source: the Python standard library of the running interpreter (read with :mod:`ast`, nothing is
  imported or executed), minus test suites. Licence: Python Software Foundation License
  (PSF-2.0); the text is © Python Software Foundation.
* Order: pydoc topics sorted by name, then stdlib files sorted by path, docstrings in source order;
  exact duplicates are dropped (keeping the first), whitespace is normalised.
* A normalised copy (UTF-8 bytes, document offsets and titles) is cached with its sha256 under
  ``artifacts/data/`` via :func:`bmlib.data.store.cached`; a machine without the same stdlib (the GPU
  box) uses that copy.
* Split: by document, decided by a hash of the document's title (stable when documents are added).
"""
from __future__ import annotations

import ast
import hashlib
import re
import sys
import sysconfig
from functools import lru_cache
from pathlib import Path

import numpy as np

LICENSE = "Python Software Foundation License (PSF-2.0); text (c) Python Software Foundation"
_SKIP_DIRS = {"test", "tests", "site-packages", "dist-packages", "idle_test", "__pycache__", "lib2to3",
              "unittest_test"}
MIN_DOC_CHARS = 40


def _normalise(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\t", "    ")
    text = re.sub(r"[ \u00a0]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def _iter_documents():
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield f"topic:{name}", topics[name]
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part in _SKIP_DIRS for part in rel.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        yield from _docstrings(tree, module)


def _docstrings(tree, prefix: str):
    doc = ast.get_docstring(tree)
    if doc:
        yield prefix, doc
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from _docstrings(node, f"{prefix}.{node.name}")


def _build() -> dict:
    titles, texts, seen = [], [], set()
    for title, text in _iter_documents():
        text = _normalise(text)
        if len(text) < MIN_DOC_CHARS:
            continue
        h = hashlib.sha256(text.encode("utf-8")).digest()
        if h in seen:
            continue
        seen.add(h)
        titles.append(title)
        texts.append(text)
    blobs = [t.encode("utf-8") for t in texts]
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    return {"text": np.frombuffer(b"".join(blobs), dtype=np.uint8), "offsets": offsets,
            "titles": np.asarray(titles, dtype=f"U{max(len(t) for t in titles)}")}


@lru_cache(maxsize=1)
def _documents() -> tuple:
    from .store import cached

    name = f"cpython-docs-py{sys.version_info.major}{sys.version_info.minor}"
    arrays = cached(name, _build, package=f"python{sys.version_info.major}.{sys.version_info.minor} stdlib")
    raw, off = arrays["text"].tobytes(), arrays["offsets"]
    texts = [raw[off[i]:off[i + 1]].decode("utf-8") for i in range(len(off) - 1)]
    return tuple(zip([str(t) for t in arrays["titles"]], texts))


def documents() -> list[tuple[str, str]]:
    """All ``(title, text)`` documents of the corpus, in the corpus's deterministic order."""
    return list(_documents())


def cpython_corpus() -> str:
    """The whole corpus as one string, documents separated by a blank line (~2 M characters)."""
    return "\n\n".join(text for _, text in _documents())


def is_val(title: str, val_fraction: float) -> bool:
    """Whether the document called ``title`` belongs to the validation split."""
    if not isinstance(title, str):
        raise TypeError(f"title must be a string, got {type(title).__name__}")
    if isinstance(val_fraction, bool) or not (isinstance(val_fraction, (int, float)) and 0 <= val_fraction <= 1):
        raise ValueError(f"val_fraction must lie in [0, 1], got {val_fraction!r}")
    h = int.from_bytes(hashlib.sha256(title.encode("utf-8")).digest()[:8], "big")
    return (h % 10_000) < round(val_fraction * 10_000)


def cpython_split(val_fraction: float = 0.1) -> tuple[list[str], list[str]]:
    """``(train_docs, val_docs)``: document texts split by a hash of their title."""
    if not (isinstance(val_fraction, (int, float)) and 0 < val_fraction < 1):
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction!r}")
    train, val = [], []
    for title, text in _documents():
        (val if is_val(title, val_fraction) else train).append(text)
    return train, val


def cpython_docs(max_chars: int = 1500) -> list[tuple[str, str]]:
    """Passages for retrieval: ``(title, text)`` with long documents cut at paragraph breaks into
    pieces of at most about ``max_chars`` characters (titles get ``#1``, ``#2`` ... suffixes)."""
    if not (isinstance(max_chars, int) and max_chars >= 100):
        raise ValueError(f"max_chars must be an int >= 100, got {max_chars!r}")
    out = []
    for title, text in _documents():
        if len(text) <= max_chars:
            out.append((title, text))
            continue
        parts, cur = [], ""
        for para in text.split("\n\n"):
            while len(para) > max_chars:  # one huge paragraph: hard cut
                if cur:
                    parts.append(cur)
                    cur = ""
                parts.append(para[:max_chars])
                para = para[max_chars:]
            if cur and len(cur) + 2 + len(para) > max_chars:
                parts.append(cur)
                cur = para
            else:
                cur = f"{cur}\n\n{para}" if cur else para
        if cur:
            parts.append(cur)
        out.extend((f"{title}#{i + 1}", p) for i, p in enumerate(parts))
    return out
