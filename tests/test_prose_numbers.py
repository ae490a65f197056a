"""Every number in a chapter's prose comes from its run, or from a cited source (issue #12).

A number in a markdown cell of a chapter notebook must be one of:

1. **glued** from the executed outputs: ``{glue:text}`name:.2f``` (or ``{glue}``/``{glue:md}``),
   after ``from myst_nb import glue; glue("name", float(x), display=False)`` in a code cell;
2. **cited**: its value is listed in ``book/cited_numbers.yml`` with its source (a paper's result,
   a datasheet peak), optionally restricted to some notebooks;
3. **a constant the code sets**: the same value appears as a numeric literal in one of the
   notebook's code cells (a configuration, a threshold an ``assert`` checks), also counting
   ``50%`` for a literal ``0.5`` and a literal scaled by a power of 1000 (``2.9`` TB/s for
   ``2.9e12``);
4. **not a quantity**, which the rule recognises and skips: numbers inside code spans, math
   (``$...$``, ``$$...$$``), MyST roles (``{cite}``, ``{doc}``, ``{glue}``...), link targets and
   URLs; part of a name (``fp32``, ``GPT-2``, ``H100``, ``e4m3``, ``SmolLM2-135M``) or a ratio
   (``2:4``); heading and list numbering; references (``chapter 4``, ``chapters 6, 11 and 12``,
   ``section 3``, ``Figure 2``, ``issue #12``, ``eq. 3``); years (1900-2099); versions
   (``3.12.1``, ``Python 3.12``, ``torch 2.13``); ordinals (``1st``, ``3rd``); ``2D``/``3D``;
   bit widths (``8-bit``, ``4 bits``).

Anything else -- ``val 6.68 vs 6.64 nats``, ``0.63``, ``a 12.5-point gap``, ``+0.001%``, ``2.4x``,
``839`` -- fails the test with the notebook, cell and the sentence around it.
A second test checks that every glued name is produced by the committed outputs.
"""
from __future__ import annotations

import io
import json
import re
import tokenize
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CITED_FILE = ROOT / "book" / "cited_numbers.yml"

_CODE_DIRECTIVES = {"code", "code-block", "code-cell", "math", "eval-rst", "raw", "glue:figure",
                    "glue:math"}
_FENCE = re.compile(r"^\s*(`{3,}|~{3,}|:{3,})\s*(\{([\w:\-]+)\})?")
_REF_WORDS = (r"chapters?|ch\.|sections?|§|figures?|figs?\.|tables?|equations?|eqs?\.|issues?|"
              r"appendix|parts?|python|torch|pytorch|cuda|transformers|versions?|v")
_REF = re.compile(rf"(?i)(?<![\w])(?:{_REF_WORDS})\s*#?\s*\d+(?:\.\d+)*"
                  r"(?:(?:\s*,\s*|\s+and\s+|\s+or\s+|\s*[-–]\s*|\s+to\s+)\d+(?:\.\d+)*)*")
_NUM = re.compile(r"(?<![\w.])(?<!\w[-−/])(?P<sign>[+\-−±]?)(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
                  r"(?P<exp>[eE][+-]?\d+)?(?P<after>[\w%]*)")


# ============================================================================ the rule
def strip_non_prose(md: str) -> str:
    """The markdown with everything that is not running prose removed (see the module docstring)."""
    md = re.sub(r"<!--.*?-->", " ", md, flags=re.S)
    out, fence, keep_body, skip_para = [], None, False, False
    for line in md.split("\n"):
        m = _FENCE.match(line)
        if fence is None and m:
            fence, name = m.group(1), m.group(3)
            keep_body = bool(name) and name not in _CODE_DIRECTIVES  # an admonition's body is prose
            out.append("")
            continue
        if fence is not None:
            if line.strip().startswith(fence[:3]) and line.strip().strip(fence[0]) == "":
                fence = None
                out.append("")
            elif keep_body and not re.match(r"^\s*:[\w\-]+:", line):
                out.append(line)
            else:
                out.append("")
            continue
        if re.match(r"^\s*\*\*Time\*\*", line):
            skip_para = True                                         # the planned time: a plan
        if not line.strip():
            skip_para = False
        if skip_para:
            out.append("")
            continue
        line = re.sub(r"^\s*#+\s*(\d+(\.\d+)*\.?\s)?", "", line)   # heading (and its number)
        line = re.sub(r"^\s*\d+[.)]\s", "", line)                   # numbered list item
        line = re.sub(r"^\s*\([\w\-:]+\)=\s*$", "", line)            # MyST target (label)=
        out.append(line)
    s = "\n".join(out)
    s = re.sub(r"\{[\w:\-]+\}`[^`]*`", " ", s)                       # roles: glue, cite, doc, ...
    s = re.sub(r"`+[^`]*`+", " ", s)                                 # code spans
    s = re.sub(r"\$\$.*?\$\$", " ", s, flags=re.S)                   # display math
    s = re.sub(r"\\\[.*?\\\]|\\\(.*?\\\)", " ", s, flags=re.S)
    s = re.sub(r"(?<!\\)\$(?:[^$\n]|\n(?!\s*\n))+?\$", " ", s)        # inline math (may wrap)
    s = re.sub(r"\]\([^)]*\)", "]", s)                               # link targets
    s = re.sub(r"https?://\S+|<[^>\n]+>", " ", s)                    # URLs, HTML tags, autolinks
    s = re.sub(r"\[\^[^\]]*\]|\[@[^\]]*\]", " ", s)                  # footnotes, [@cite]
    return s


def prose_numbers(md: str) -> list[tuple[str, float, bool, str]]:
    """``(text, value, is_percent, context)`` for every number in running prose that is a
    quantity (rule 4 of the module docstring already applied)."""
    s = strip_non_prose(md)
    s = _REF.sub(" ", s)
    s = re.sub(r"\b\d+:\d+\b", " ", s)                               # ratios: 2:4, 16:9
    s = re.sub(r"\b\d+\.\d+\.\d+\b", " ", s)                         # versions 3.12.1
    s = re.sub(r"#\d+", " ", s)                                      # issue numbers
    found = []
    for m in _NUM.finditer(s):
        start = m.start()
        if m.group("sign") == "-" and start > 0 and s[start - 1].isalnum():
            continue                                                 # GPT-2, SmolLM2-135M
        after = m.group("after")
        if after and not after.startswith("%"):
            if re.fullmatch(r"(st|nd|rd|th|D)", after):
                continue                                             # 1st, 3rd, 2D
            if not re.fullmatch(r"[xX×]|k|K|M|B|G|T|ms|s|us|µs|ns|GB|MB|KB|TB|GiB|MiB", after):
                continue                                             # part of a name (4o, 3b1b)
        num = m.group("num").replace(",", "")
        tail = s[m.end():m.end() + 6]
        if re.match(r"\s?-?\s?bits?\b", tail) and num in {"1", "2", "4", "8", "16", "32", "64"}:
            continue                                                 # 8-bit, 4 bits
        if (re.fullmatch(r"(19|20)\d\d", m.group("num")) and not m.group("sign") and not after):
            continue                                                 # a year
        try:
            value = float(num + (m.group("exp") or ""))
        except ValueError:
            continue
        if m.group("sign") in ("-", "−"):
            value = -value
        ctx = s[max(0, start - 40):m.end() + 40].replace("\n", " ").strip()
        found.append((m.group(0), value, after.startswith("%"), ctx))
    return found


def code_literals(sources: list[str]) -> set[float]:
    """Every numeric literal in the code cells (and its negation)."""
    vals: set[float] = set()
    for src in sources:
        src = "\n".join(ln for ln in src.split("\n") if not ln.lstrip().startswith(("%", "!")))
        try:
            toks = [t.string for t in tokenize.generate_tokens(io.StringIO(src).readline)
                    if t.type == tokenize.NUMBER]
        except (tokenize.TokenError, IndentationError, SyntaxError):
            toks = re.findall(r"(?<![\w.])\d[\d_]*(?:\.\d*)?(?:[eE][+-]?\d+)?", src)
        for t in toks:
            try:
                v = float(t.replace("_", "")) if not t.lower().startswith(("0x", "0o", "0b")) else float(int(t, 0))
            except ValueError:
                continue
            vals.update({v, -v})
    return vals


def _close(a: float, b: float) -> bool:
    return a == b or abs(a - b) <= 1e-9 * max(abs(a), abs(b))


def is_code_constant(value: float, percent: bool, literals: set[float]) -> bool:
    candidates = [value * 1000.0 ** k for k in range(-4, 5)]
    if percent:
        candidates.append(value / 100)
    return any(_close(c, lit) for c in candidates for lit in literals)


def load_cited(path: Path = CITED_FILE) -> list[dict]:
    """The allow-list: ``[{value, source, notebooks?}]``; every entry must name its source."""
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    entries = doc.get("numbers") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path.name}: expected a non-empty 'numbers' list")
    for e in entries:
        if not (isinstance(e, dict) and isinstance(e.get("value"), (int, float))
                and isinstance(e.get("source"), str) and e["source"].strip()):
            raise ValueError(f"{path.name}: every entry needs a numeric 'value' and a 'source': {e!r}")
        if "notebooks" in e and not (isinstance(e["notebooks"], list)
                                     and all(isinstance(n, str) for n in e["notebooks"])):
            raise ValueError(f"{path.name}: 'notebooks' must be a list of names: {e!r}")
    return entries


def unglued_numbers(nb: dict, name: str, cited: list[dict]) -> list[str]:
    """Every prose number of a notebook that is neither glued, cited nor a code constant."""
    cells = nb["cells"]
    lits = code_literals([_src(c) for c in cells if c["cell_type"] == "code"])
    allowed = [float(e["value"]) for e in cited
               if "notebooks" not in e or any(name.startswith(n) for n in e["notebooks"])]
    bad = []
    for k, cell in enumerate(cells):
        if cell["cell_type"] != "markdown":
            continue
        for text, value, pct, ctx in prose_numbers(_src(cell)):
            if any(_close(value, a) or _close(abs(value), a) for a in allowed):
                continue
            if is_code_constant(value, pct, lits):
                continue
            bad.append(f"cell {k}: {text!r} in '...{ctx}...'")
    return bad


def glue_references(md: str) -> list[str]:
    """The names that ``{glue}``/``{glue:text}``/``{glue:md}`` roles refer to."""
    return [m.group(1) for m in re.finditer(r"\{glue(?::\w+)?\}`([^`:]+)(?::[^`]*)?`", md)]


def glued_names(nb: dict) -> set[str]:
    """The names ``myst_nb.glue`` recorded in a notebook's executed outputs."""
    names = set()
    for cell in nb["cells"]:
        for out in cell.get("outputs", []) if cell["cell_type"] == "code" else []:
            meta = out.get("metadata", {}).get("scrapbook")
            if isinstance(meta, dict) and "name" in meta:
                names.add(meta["name"])
    return names


def _src(cell) -> str:
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else s


# ============================================================================ the rule, tested
def _synthetic(markdown: list[str], code: list[str] = ()) -> dict:
    cells = [{"cell_type": "code", "source": c, "outputs": [], "metadata": {}} for c in code]
    cells += [{"cell_type": "markdown", "source": m, "metadata": {}} for m in markdown]
    return {"cells": cells, "metadata": {}}


@pytest.mark.parametrize("sentence", [
    "The GPT ends at val 6.68 vs 6.64 nats for the unigram model.",
    "Fine-tuned MiniLM scores 0.63.",
    "LoRA closes a 12.5-point gap.",
    "int4 costs +0.001% perplexity.",
    "The fused kernel is 2.4x faster.",
    "A model at perplexity 839 cannot tell.",
    "- MFU reaches 0.46 on the H100 (chapter 4 explains).",
    "```{note}\nThe gap is 3.7 points.\n```",
    "| impl | ms |\n|---|---|\n| bmlib | 1.73 |",
    "It reads 100,004 ratings.",
])
def test_unglued_run_numbers_fail(sentence):
    bad = unglued_numbers(_synthetic([sentence], ["CFG = dict(steps=400, lr=3e-3)"]), "99_x", [])
    assert bad, f"not flagged: {sentence!r}"


@pytest.mark.parametrize("sentence", [
    "Chapter 4 trained it; chapters 6, 11 and 12 reuse it (see section 3 and Figure 2).",
    "Kaplan et al. (2020) and Hoffmann et al., 2022, fit it; issue #12 asked for it.",
    "The loss is {glue:text}`val_loss:.2f` nats, {glue}`speedup` faster.",
    "Inline `x = 839` code, math $e^{-89}$ and $$a = 6.68$$ are not prose.",
    "fp32, bf16, int8, GPT-2, H100, SmolLM2-135M, e4m3 and 2:4 sparsity are names.",
    "A 4-layer, 128-wide GPT trains for 400 steps at lr 3e-3 (3e-3 in code, 50% of 0.5).",
    "Python 3.12 and torch 2.13, version 3.12.1; the 1st and 3rd layers; 2D grids; 8-bit and 4 bits.",
    "## 3. Matmul\n\n1. first item\n2. second item",
    "See [the paper](https://arxiv.org/abs/2203.15556) {cite}`hoffmann2022`.",
    "The datasheet says 989 TFLOP/s.",
])
def test_glued_cited_constants_and_non_quantities_pass(sentence):
    code = ["CFG = dict(n_layer=4, n_embd=128, steps=400, lr=3e-3, frac=0.5)"]
    cited = [{"value": 989, "source": "NVIDIA H100 datasheet"}]
    assert unglued_numbers(_synthetic([sentence], code), "99_x", cited) == []


def test_cited_numbers_can_be_restricted_to_notebooks():
    cited = [{"value": 794.5, "source": "a paper", "notebooks": ["13_"]}]
    nb = _synthetic(["The best published bf16 GEMM is 794.5 TFLOP/s."])
    assert unglued_numbers(nb, "13_gpu_benchmark", cited) == []
    assert unglued_numbers(nb, "04_training", cited)


def test_the_test_fails_on_a_synthetic_notebook_file(tmp_path):
    """End to end on a file, as the per-notebook test reads it: one unglued number fails."""
    p = tmp_path / "99_demo.ipynb"
    p.write_text(json.dumps(_synthetic(["Validation loss {glue:text}`v:.2f`, unigram 6.64 nats."],
                                       ["from myst_nb import glue\nglue('v', 6.68, display=False)"])))
    bad = unglued_numbers(json.loads(p.read_text()), p.stem, load_cited())
    assert len(bad) == 1 and "6.64" in bad[0]


def test_cited_numbers_file_is_well_formed(tmp_path):
    entries = load_cited()
    assert all(e["source"].strip() for e in entries)
    bad = tmp_path / "c.yml"
    bad.write_text("numbers:\n  - value: 3.35\n")
    with pytest.raises(ValueError, match="source"):
        load_cited(bad)


def test_glue_references_and_names():
    md = "A {glue:text}`acc:.3f`, B {glue}`speedup` and C {glue:md}`table`."
    assert glue_references(md) == ["acc", "speedup", "table"]
    nb = {"cells": [{"cell_type": "code", "source": "", "outputs": [
        {"output_type": "display_data", "data": {}, "metadata": {"scrapbook": {"name": "acc"}}}]}]}
    assert glued_names(nb) == {"acc"}


# ============================================================================ the committed chapters
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_prose_number_is_glued_or_cited(path):
    bad = unglued_numbers(json.loads(path.read_text(encoding="utf-8")), path.stem, load_cited())
    assert not bad, (f"{path.name}: numbers in prose that are neither glued nor in "
                     f"book/cited_numbers.yml nor set by the code:\n  " + "\n  ".join(bad))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_glued_name_is_in_the_outputs(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    refs = {r for c in nb["cells"] if c["cell_type"] == "markdown" for r in glue_references(_src(c))}
    missing = sorted(refs - glued_names(nb))
    assert not missing, f"{path.name}: glued in prose but not in the committed outputs: {missing}"
