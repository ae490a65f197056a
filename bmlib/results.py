"""``results/<chapter>.json``: the headline figures a chapter measured, with provenance.

Schema (see the book's conventions page)::

    {"chapter": "training", "provenance": {...}, "figures": {"bmlib_train_mfu": 0.46, ...},
     "rows": [{"impl": "bmlib", ...}, ...]}

Where :func:`save` writes (first match wins):

* ``BMLIB_RESULTS_DIR`` if set (tests);
* a rehearsal (``BMLIB_REHEARSE=1``): ``artifacts/results/rehearse/`` -- never committed;
* ``full`` scale: ``results/<chapter>.json`` (committed; read by each chapter's "Reference GPU run"
  section through :func:`show_reference_run` and by the landing page);
* ``cpu`` scale inside ``python -m bmlib run-notebooks`` (which sets ``BMLIB_RUN_NOTEBOOKS=1`` for
  its kernels): ``results/cpu/<chapter>.json`` (committed: the figures of the committed outputs);
* ``cpu`` scale anywhere else (tests, nbval, a reader's Jupyter): ``artifacts/results/``, so
  validating a notebook never overwrites a committed figure.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from .env import artifacts_dir, provenance, rehearsing, repo_root, scale
from .io import write_json

_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")
RUNNER_VAR = "BMLIB_RUN_NOTEBOOKS"
NO_REFERENCE_RUN = "No full-scale GPU run of this chapter has been committed yet."


def _in_runner() -> bool:
    value = os.environ.get(RUNNER_VAR, "").strip()
    if value not in ("", "0", "1"):
        raise ValueError(f"{RUNNER_VAR} must be '1', '0' or unset, got {value!r}")
    return value == "1"


def committed_dir(for_scale: str) -> Path:
    """The committed folder of a scale: ``results/`` for ``full``, ``results/cpu/`` for ``cpu``."""
    if for_scale == "full":
        return repo_root() / "results"
    if for_scale == "cpu":
        return repo_root() / "results" / "cpu"
    raise ValueError(f"for_scale must be 'cpu' or 'full', got {for_scale!r}")


def results_dir(for_scale: str | None = None) -> Path:
    """The folder :func:`save` writes to now (see the module docstring), created."""
    if os.environ.get("BMLIB_RESULTS_DIR"):
        p = Path(os.environ["BMLIB_RESULTS_DIR"])
        p.mkdir(parents=True, exist_ok=True)
        return p
    if rehearsing():
        return artifacts_dir("results", "rehearse")
    s = for_scale or scale()
    if s == "full" or (s == "cpu" and _in_runner()):
        p = committed_dir(s)
        p.mkdir(parents=True, exist_ok=True)
        return p
    if s != "cpu":
        raise ValueError(f"for_scale must be 'cpu' or 'full', got {s!r}")
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
    """Read a chapter's results at this scale: the folder :func:`save` writes to first, then the
    committed folder of the same scale (``results/cpu/`` or ``results/``). Never mixes scales."""
    if not (isinstance(chapter, str) and _NAME.fullmatch(chapter)):
        raise ValueError(f"chapter must be a lower-case name like 'attention', got {chapter!r}")
    candidates = [results_dir() / f"{chapter}.json"]
    if fallback_to_committed:
        candidates.append(committed_dir(scale()) / f"{chapter}.json")
    for p in candidates:
        if p.exists():
            return json.loads(p.read_text())
    return None


def load_all(folder: Path | None = None) -> list[dict]:
    """Every results file in ``folder`` (default: the committed ``results/``), sorted by name."""
    folder = Path(folder or repo_root() / "results")
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def load_reference_run(chapter: str, folder: str | Path | None = None) -> dict | None:
    """The committed full-scale results of ``chapter`` (``results/<chapter>.json``), or ``None``.

    Raises ``ValueError`` when the file exists but is not a full-scale, non-rehearsal run with a
    provenance and figures: a committed reference run must be what it says it is.
    """
    if not (isinstance(chapter, str) and _NAME.fullmatch(chapter)):
        raise ValueError(f"chapter must be a lower-case name like 'attention', got {chapter!r}")
    path = Path(folder if folder is not None else committed_dir("full")) / f"{chapter}.json"
    if not path.exists():
        return None
    doc = json.loads(path.read_text(encoding="utf-8"))
    prov = doc.get("provenance") if isinstance(doc, dict) else None
    if not isinstance(prov, dict) or not isinstance(doc.get("figures"), dict):
        raise ValueError(f"{path.name} has no 'provenance' and 'figures' maps")
    if prov.get("scale") != "full" or prov.get("rehearse"):
        raise ValueError(f"{path.name} is not a full-scale GPU run (provenance scale "
                         f"{prov.get('scale')!r}, rehearse {prov.get('rehearse', False)!r})")
    return doc


def describe_reference_run(prov: dict) -> str:
    """``"NVIDIA H200, 2026-12-02, git abc1234, torch 2.11.0"`` from a provenance map."""
    parts = [str(prov.get("device", "unknown device")), str(prov.get("date", "unknown date")),
             f"git {prov.get('git', 'unknown')}"]
    if prov.get("torch"):
        parts.append(f"torch {prov['torch']}")
    return ", ".join(parts)


def show_reference_run(chapter: str, plot=None, *, folder: str | Path | None = None) -> dict | None:
    """The body of every chapter's last section, "Reference GPU run".

    Reads the committed full-scale ``results/<chapter>.json`` and displays where it ran (device,
    date, commit), its figures as a table, its ``rows`` as a second table, and -- when ``plot`` is
    given -- calls ``plot(doc)`` to draw a figure from the loaded document. Without a committed run
    it prints :data:`NO_REFERENCE_RUN` and returns ``None``; otherwise it returns the document.
    ``folder`` (default: the repository's ``results/``) exists for tests.
    """
    if plot is not None and not callable(plot):
        raise TypeError(f"plot must be a callable taking the results dict, or None, got "
                        f"{type(plot).__name__}")
    doc = load_reference_run(chapter, folder)
    if doc is None:
        print(NO_REFERENCE_RUN)
        return None
    import pandas as pd

    from IPython.display import display

    print(f"Reference GPU run of '{chapter}': {describe_reference_run(doc['provenance'])}")
    figs = pd.DataFrame({"value": [f"{float(v):.4g}" for v in doc["figures"].values()]},
                        index=pd.Index(list(doc["figures"]), name="figure"))
    display(figs)
    if doc.get("rows"):
        display(pd.DataFrame(doc["rows"]))
    if plot is not None:
        plot(doc)
    return doc
