"""``results/<chapter>.json``: the headline figures a chapter measured, with provenance.

Schema (see the book's conventions page)::

    {"chapter": "training", "provenance": {...}, "figures": {"bmlib_train_mfu": 0.46, ...},
     "rows": [{"impl": "bmlib", ...}, ...]}

Full-scale runs write to ``results/`` (committed, read by the book's tables). ``cpu``-scale runs
write to ``artifacts/results/`` so that validating the notebooks never overwrites measured results.
``BMLIB_RESULTS_DIR`` overrides both.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from .env import artifacts_dir, provenance, repo_root, scale
from .io import write_json

_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")


def results_dir(for_scale: str | None = None) -> Path:
    if os.environ.get("BMLIB_RESULTS_DIR"):
        p = Path(os.environ["BMLIB_RESULTS_DIR"])
        p.mkdir(parents=True, exist_ok=True)
        return p
    s = for_scale or scale()
    if s == "full":
        p = repo_root() / "results"
        p.mkdir(parents=True, exist_ok=True)
        return p
    return artifacts_dir("results")


def _check_figures(figures: dict) -> None:
    if not isinstance(figures, dict) or not figures:
        raise ValueError("figures must be a non-empty dict of name -> number")
    for k, v in figures.items():
        if not (isinstance(k, str) and _NAME.fullmatch(k)):
            raise ValueError(f"figure names must be snake_case strings, got {k!r}")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            if not (hasattr(v, "item") and isinstance(v.item(), (int, float))):
                raise ValueError(f"figures[{k!r}] must be a number, got {type(v).__name__}")
            v = v.item()
        if not math.isfinite(float(v)):
            raise ValueError(f"figures[{k!r}] must be finite, got {v!r}")


def save(chapter: str, figures: dict, rows: list | None = None, prov: dict | None = None,
         extra: dict | None = None) -> Path:
    """Write ``results/<chapter>.json`` (atomically) and return its path."""
    if not (isinstance(chapter, str) and _NAME.fullmatch(chapter)):
        raise ValueError(f"chapter must be a lower-case name like 'attention', got {chapter!r}")
    _check_figures(figures)
    if rows is not None and not (isinstance(rows, list) and all(isinstance(r, dict) for r in rows)):
        raise ValueError("rows must be a list of dicts")
    prov = dict(prov or provenance())
    doc = {"chapter": chapter, "provenance": prov,
           "figures": {k: (v.item() if hasattr(v, "item") else v) for k, v in figures.items()},
           "rows": rows or []}
    if extra:
        doc.update(extra)
    path = results_dir(prov.get("scale")) / f"{chapter}.json"
    return write_json(path, doc)


def load(chapter: str, fallback_to_committed: bool = True) -> dict | None:
    """Read a chapter's results: this scale's folder first, then the committed ``results/``."""
    candidates = [results_dir() / f"{chapter}.json"]
    if fallback_to_committed:
        candidates.append(repo_root() / "results" / f"{chapter}.json")
    for p in candidates:
        if p.exists():
            return json.loads(p.read_text())
    return None


def load_all(folder: Path | None = None) -> list[dict]:
    """Every results file in ``folder`` (default: the committed ``results/``), sorted by name."""
    folder = Path(folder or repo_root() / "results")
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
