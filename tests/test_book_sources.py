"""Static checks of what the book commits: the notebooks and the markdown pages (no kernel, no build).

They catch, in seconds, mistakes that otherwise show only in the rendered book: display math glued
to a paragraph (MyST then prints the ``$$`` and the TeX as text), notebooks committed with errors,
or outputs that did not come from one top-to-bottom run.
"""
import re
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


# ============================================================================ page hygiene (issue #12)
# Their own patterns, not the runner's: a progress bar as a terminal leaves it, a path of the
# machine that ran the notebook, a NumPy scalar repr.
_FROZEN_BAR = re.compile(r"\d+%\|[^\n]*\||\d+/\d+ \[\d+:\d+")
_ABS_PATH = re.compile(r"(?<![\w.])(/work/|/home/[\w.-]+/|/Users/|/root/|/tmp/|/private/var/|"
                       r"[A-Z]:\\\\Users|site-packages/|\.venv/)")
_NP_REPR = re.compile(r"\bnp\.(float|int|uint|bool_?|complex)\d*\(")
_PROFILER_LOG = re.compile(r"(?m)^(?:USDT|STAGE):\d{4}-\d\d-\d\d .*\.cpp:\d+\]")
FOLD_TAGS = {"hide-output", "hide-cell", "remove-output", "remove-cell", "output_scroll"}
LONG_LISTING_LINES = 25


def _output_texts(cell) -> list[str]:
    texts = []
    for o in cell.get("outputs", []):
        if o.get("output_type") == "stream":
            texts.append(o.get("text", ""))
        elif o.get("output_type") in ("execute_result", "display_data"):
            for mime in ("text/plain", "text/html", "text/markdown"):
                if mime in o.get("data", {}):
                    v = o["data"][mime]
                    texts.append("".join(v) if isinstance(v, list) else v)
        elif o.get("output_type") == "error":
            texts.append("\n".join(o.get("traceback", [])))
    return ["".join(t) if isinstance(t, list) else t for t in texts]


def page_problems(nb) -> list[str]:
    """Frozen progress bars, machine paths, ``np.float64(...)`` reprs and unfolded long source
    listings in a notebook's committed outputs."""
    bad = []
    for k, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        for text in _output_texts(cell):
            for pat, what in ((_FROZEN_BAR, "a frozen progress bar"), (_ABS_PATH, "an absolute path"),
                              (_NP_REPR, "a NumPy scalar repr"), (_PROFILER_LOG, "a profiler log line")):
                m = pat.search(text)
                if m:
                    line = text[:m.end()].rsplit("\n", 1)[-1][-60:] + text[m.end():].split("\n", 1)[0][:40]
                    bad.append(f"cell {k}: {what}: {line.strip()!r}")
        tags = set(cell.get("metadata", {}).get("tags", []))
        if "getsource" in cell.source and not tags & FOLD_TAGS:
            n = sum(t.count("\n") for t in _output_texts(cell))
            if n > LONG_LISTING_LINES:
                bad.append(f"cell {k}: a {n}-line source listing without a 'hide-output' tag")
    return bad


def _nb(cells):
    nb = nbformat.v4.new_notebook()
    for src, outs, tags in cells:
        c = nbformat.v4.new_code_cell(src)
        c.outputs = outs
        if tags:
            c.metadata["tags"] = tags
        nb.cells.append(c)
    return nb


def _stream(text, name="stdout"):
    return nbformat.v4.new_output("stream", name=name, text=text)


def _result(text):
    return nbformat.v4.new_output("execute_result", data={"text/plain": text}, execution_count=1)


@pytest.mark.parametrize("outs, src, tags, what", [
    ([_stream("Loading weights: 100%|██████████| 101/101 [00:00<00:00, 812.41it/s]\n", "stderr")],
     "m = load()", None, "progress bar"),
    ([_stream("train:  40%|████      | 4/10 [00:01<00:02]", "stderr")], "train()", None, "progress bar"),
    ([_stream("saved to /work/main/artifacts/x.pt\n")], "save()", None, "absolute path"),
    ([_stream("/usr/lib/python3/site-packages/torch/nn.py:12: UserWarning: x\n", "stderr")], "f()", None,
     "absolute path"),
    ([_result("{'acc': np.float64(0.91)}")], "d", None, "NumPy scalar"),
    ([_stream("USDT:2026-12-03 14:45:32 9377:9377 SyncActivityProfilerHandler.cpp:52] profiler_start\n", "stderr")],
     "prof()", None, "profiler log"),
    ([_stream("def f():\n" + "    x = 1\n" * 40)], "print(inspect.getsource(f))", None, "source listing"),
])
def test_page_problems_are_found(outs, src, tags, what):
    bad = page_problems(_nb([(src, outs, tags)]))
    assert len(bad) == 1 and what in bad[0], bad


def test_clean_pages_pass():
    nb = _nb([("print(acc)", [_stream("accuracy 0.91 (50% of 1/2 the data) at 3/4 [batch]\n")], None),
              ("float(x)", [_result("0.91")], None),
              ("print(inspect.getsource(f))", [_stream("def f():\n" + "    x = 1\n" * 40)], ["hide-output"]),
              ("print(inspect.getsource(g))", [_stream("def g():\n    return 1\n")], None)])
    assert page_problems(nb) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_pages_are_clean(path):
    bad = page_problems(nbformat.read(path, as_version=4))
    assert not bad, f"{path.name}:\n  " + "\n  ".join(bad)


# ============================================================================ the reference GPU run section
_SHOW = re.compile(r"show_reference_run\(\s*[\"']([a-z0-9_\-]+)[\"']")
_SAVE = re.compile(r"\bsave\(\s*[\"']([a-z0-9_\-]+)[\"']")  # results.save(...) or save(...)


def reference_section_problems(nb) -> list[str]:
    """Every chapter ends with "## Reference GPU run" and a code cell calling
    ``show_reference_run("<name>")`` for the name its ``results.save`` writes."""
    cells = [c for c in nb.cells if c.source.strip()]
    heads = [k for k, c in enumerate(cells) if c.cell_type == "markdown"
             and re.search(r"^##\s+Reference GPU run\s*$", c.source, flags=re.M)]
    if not heads:
        return ["no '## Reference GPU run' section"]
    tail = cells[heads[-1]:]
    if any(c.cell_type == "markdown" and re.search(r"^#{1,2}\s", c.source, flags=re.M) for c in tail[1:]):
        return ["'## Reference GPU run' is not the last section"]
    shown = [m for c in tail if c.cell_type == "code" for m in _SHOW.findall(c.source)]
    if not shown:
        return ["the Reference GPU run section does not call show_reference_run(\"<chapter>\")"]
    saved = {m for c in nb.cells if c.cell_type == "code" for m in _SAVE.findall(c.source)}
    return [f"show_reference_run({s!r}) but the chapter saves {sorted(saved)}" for s in shown if s not in saved]


def test_reference_section_rule():
    good = _nb([('results.save("demo", figures=f)', [], None)])
    good.cells.append(nbformat.v4.new_markdown_cell("## Reference GPU run\n\nThe GPU figures."))
    good.cells.append(nbformat.v4.new_code_cell('from bmlib.results import show_reference_run\n'
                                                'show_reference_run("demo")'))
    assert reference_section_problems(good) == []
    wrong = nbformat.from_dict(nbformat.v4.new_notebook(cells=list(good.cells)))
    wrong.cells[-1] = nbformat.v4.new_code_cell('show_reference_run("other")')
    assert "saves" in reference_section_problems(wrong)[0]
    late = nbformat.from_dict(nbformat.v4.new_notebook(cells=list(good.cells)))
    late.cells.append(nbformat.v4.new_markdown_cell("## Afterword"))
    assert "not the last" in reference_section_problems(late)[0]
    assert "no '## Reference GPU run'" in reference_section_problems(_nb([("x = 1", [], None)]))[0]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_chapter_ends_with_its_reference_gpu_run(path):
    bad = reference_section_problems(nbformat.read(path, as_version=4))
    assert not bad, f"{path.name}: {bad}"


def checked_cells_that_glue(nb) -> list[int]:
    """Indices of code cells that nbval compares output for (``# NBVAL_CHECK_OUTPUT``) and that
    also glue: a glued float's repr may differ in its last digit between runs, failing nbval."""
    return [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
            and re.search(r"^\s*#\s*NBVAL_CHECK_OUTPUT\s*$", c.source, re.M)
            and re.search(r"^\s*glue\(", c.source, re.M)]


def test_checked_cells_that_glue_are_found():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("# NBVAL_CHECK_OUTPUT\nx = 1\nglue('x', x)"),
                                         nbformat.v4.new_code_cell("glue('y', 2)")])
    assert checked_cells_that_glue(nb) == [0]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_output_checked_cell_glues(path):
    bad = checked_cells_that_glue(nbformat.read(path, as_version=4))
    assert not bad, f"{path.name}: cells {bad} glue inside a NBVAL_CHECK_OUTPUT cell; glue in the next cell"
