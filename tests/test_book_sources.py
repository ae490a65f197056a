"""Static checks of what the book commits: the notebooks and the markdown pages (no kernel, no build).

They catch, in seconds, mistakes that otherwise show only in the rendered book: display math glued
to a paragraph (MyST then prints the ``$$`` and the TeX as text), notebooks committed with errors,
or outputs that did not come from one top-to-bottom run.
"""
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PAGES = sorted((ROOT / "book").glob("*.md"))


def glued_display_math(text: str) -> list[int]:
    """Line numbers (1-based) of ``$$`` blocks that share a paragraph with the text around them.

    MyST's dollarmath parses ``$$ ... $$`` as display math only when it is a paragraph of its own:
    a blank line (or the start/end of the text) before the opening and after the closing ``$$``.
    """
    lines = text.split("\n")
    bad, i = [], 0
    while i < len(lines):
        if lines[i].strip().startswith("$$"):
            j = i
            while j < len(lines) and not (lines[j].rstrip().endswith("$$")
                                          and (j > i or lines[j].strip().count("$$") >= 2)):
                j += 1
            if j == len(lines):
                bad.append(i + 1)  # never closed
                break
            if (i > 0 and lines[i - 1].strip()) or (j + 1 < len(lines) and lines[j + 1].strip()):
                bad.append(i + 1)
            i = j + 1
        else:
            if "$$" in lines[i]:
                bad.append(i + 1)  # opens mid-line, after text
            i += 1
    return bad


@pytest.mark.parametrize("text, expected", [
    ("Intro:\n\n$$a = b$$\n\nAfter.", []),
    ("$$a = b$$", []),
    ("Intro:\n$$a = b$$\n\nAfter.", [2]),                  # glued to the paragraph before
    ("Intro:\n\n$$a = \\\\\nb$$\nAfter.", [3]),            # multi-line block glued to the one after
    ("The attention is $$a = b$$ here.", [1]),             # opens mid-line
    ("Intro:\n\n$$a = b\n", [3]),                           # never closed
])
def test_glued_display_math_detector(text, expected):
    assert glued_display_math(text) == expected


def test_there_is_something_to_check():
    assert len(NOTEBOOKS) >= 14 and PAGES


@pytest.mark.parametrize("path", NOTEBOOKS + PAGES, ids=lambda p: p.name)
def test_display_math_is_its_own_paragraph(path):
    if path.suffix == ".ipynb":
        cells = nbformat.read(path, as_version=4).cells
        sources = [(f"cell {k}", c.source) for k, c in enumerate(cells) if c.cell_type == "markdown"]
    else:
        sources = [("page", path.read_text(encoding="utf-8"))]
    bad = [f"{where}, line {n}" for where, src in sources for n in glued_display_math(src)]
    assert not bad, f"{path.name}: $$ blocks need a blank line before and after: {bad}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_outputs_come_from_one_clean_run(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    counts = [c.execution_count for c in code]
    # executed top to bottom in one kernel: every code cell ran, in order, exactly once
    assert counts == list(range(1, len(code) + 1)), f"{path.name}: execution counts {counts}"
    errors = [k for k, c in enumerate(code) for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{path.name}: committed error outputs in code cells {errors}"
    first = "".join(o.get("text", "") for c in code[:2] for o in c.outputs if o.output_type == "stream")
    assert "scale" in first and "torch" in first, f"{path.name}: the first cells print no provenance"
