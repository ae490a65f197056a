"""Local Sphinx extension: say, on every page, which run produced the numbers shown.

Two things, both computed at build time from files in the repository (nothing is typed by hand):

* ``{results-at-a-glance}`` (a directive used on the landing page) renders two tables: per chapter,
  the headline figures of the committed cpu run (``results/cpu/*.json``, written by
  ``python -m bmlib run-notebooks``) next to those of the committed full-scale GPU run
  (``results/*.json``), each with device, date and git; and, per chapter, the device/scale/date of
  the outputs committed inside the notebook (read from the provenance line that
  ``bmlib.env.notebook_header`` prints in each chapter's first code cell). When no GPU run is
  committed it says so plainly.
* A provenance banner at the top of every chapter page built from a notebook: "the outputs on this
  page come from a <scale>-scale run on <device>, <date>, git <commit>", with a caveat for ``cpu``
  runs and a warning when a notebook carries no executed provenance line.

The parsing helpers are plain functions (no Sphinx needed) so ``tests/test_book_browser.py`` can
unit-test them.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import directives

PROV_KEYS = ("device", "scale", "date", "git")


# ============================================================================ pure helpers
def parse_provenance_line(line: str) -> dict | None:
    """``"device: X | torch: 2.13 | scale: cpu | ..."`` -> ``{"device": "X", ...}``; ``None`` if the
    line is not a provenance line (it must name at least ``device`` and ``scale``)."""
    if not isinstance(line, str):
        raise TypeError(f"line must be a str, got {type(line).__name__}")
    out = {}
    for part in line.strip().split(" | "):
        key, sep, value = part.partition(": ")
        if not sep or not key or " " in key.strip():
            return None
        out[key.strip()] = value.strip()
    return out if {"device", "scale"} <= out.keys() else None


def _stream_text(output: dict) -> str:
    if output.get("output_type") == "stream":
        t = output.get("text", "")
    elif output.get("output_type") in ("execute_result", "display_data"):
        t = output.get("data", {}).get("text/plain", "")
    else:
        return ""
    return "".join(t) if isinstance(t, list) else str(t)


def notebook_provenance(nb: dict | str | Path) -> dict | None:
    """The provenance printed by the first code cells of a notebook (a path or a loaded dict);
    ``None`` when no executed cell printed one."""
    if isinstance(nb, (str, Path)):
        nb = json.loads(Path(nb).read_text(encoding="utf-8"))
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise ValueError("nb must be a notebook (a dict with a 'cells' list) or a path to one")
    code_cells = [c for c in nb["cells"] if c.get("cell_type") == "code"]
    for cell in code_cells[:3]:
        for out in cell.get("outputs", []) or []:
            for line in _stream_text(out).splitlines():
                prov = parse_provenance_line(line)
                if prov:
                    return prov
    return None


def load_results(folder: str | Path) -> list[dict]:
    """Every ``*.json`` in ``folder`` that looks like a results file, sorted by file name. A file
    that does not parse or lacks ``figures``/``provenance`` is returned with an ``error`` key so
    the landing page shows it instead of hiding it."""
    folder = Path(folder)
    docs = []
    if not folder.is_dir():
        return docs
    for p in sorted(folder.glob("*.json")):
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
            if not isinstance(doc, dict) or not isinstance(doc.get("figures"), dict):
                raise ValueError("no 'figures' map")
            if not isinstance(doc.get("provenance"), dict):
                raise ValueError("no 'provenance' map")
        except (ValueError, OSError) as e:  # json.JSONDecodeError is a ValueError
            docs.append({"file": p.name, "chapter": p.stem, "error": str(e), "figures": {},
                         "provenance": {}})
            continue
        doc = dict(doc)
        doc["file"] = p.name
        doc.setdefault("chapter", p.stem)
        docs.append(doc)
    return docs


def side_by_side(cpu_docs: list[dict], gpu_docs: list[dict]) -> list[dict]:
    """One row per chapter found in either folder: ``{"chapter", "cpu", "gpu"}`` with the results
    document of each scale or ``None``, sorted by chapter name. A file whose provenance names the
    wrong scale is kept, with an ``error`` key, so the page shows it instead of mixing scales."""
    def index(docs, want):
        out = {}
        for d in docs:
            d = dict(d)
            got = d.get("provenance", {}).get("scale")
            if not d.get("error") and got != want:
                d["error"] = f"provenance says scale {got!r}, expected {want!r}"
            out[d.get("chapter") or Path(d["file"]).stem] = d
        return out
    cpu, gpu = index(cpu_docs, "cpu"), index(gpu_docs, "full")
    return [{"chapter": c, "cpu": cpu.get(c), "gpu": gpu.get(c)} for c in sorted(set(cpu) | set(gpu))]


def describe_figures(doc: dict | None, missing: str) -> str:
    """``"name = value; ..."`` for a results document, its error, or ``missing``."""
    if doc is None:
        return missing
    if doc.get("error"):
        return f"unreadable: {doc['error']}"
    return "; ".join(f"{k} = {format_figure(v)}" for k, v in doc.get("figures", {}).items()) or "(none)"


def describe_source(doc: dict | None) -> str:
    """``"device, date, git abc1234"`` for a results document, or ``"-"``."""
    if doc is None:
        return "-"
    prov = doc.get("provenance", {})
    return f"{prov.get('device', '?')}, {prov.get('date', '?')}, git {prov.get('git', '?')}"


NO_GPU_RUN = "no full-scale GPU run committed yet"
NO_CPU_RUN = "no cpu run recorded (python -m bmlib run-notebooks writes results/cpu/)"


def format_figure(value) -> str:
    """A headline number at 4 significant figures (ints stay ints; non-numbers are shown as is)."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) >= 1e9 or abs(value) < 1e-3):
            return f"{value:.3e}"
        if abs(value) >= 1e4:
            return f"{value:,.0f}"
        return f"{value:.4g}"
    return str(value)


def describe_run(prov: dict) -> str:
    """One sentence naming where a run happened."""
    scale = prov.get("scale", "?")
    parts = [f"a {scale}-scale run on {prov.get('device', 'an unknown device')}"]
    if prov.get("date"):
        parts.append(f"on {prov['date']}")
    if prov.get("git"):
        parts.append(f"at git {prov['git']}")
    if prov.get("torch"):
        parts.append(f"with torch {prov['torch']}")
    return ", ".join(parts)


CI_CAVEAT = ("At cpu scale models and data are small enough that every chapter runs in about a "
             "minute on two CPU cores; the lessons are asserted at this scale, and timings, "
             "throughputs and accuracies are this CPU's. Full-scale GPU figures appear only in each "
             "chapter's last section, \"Reference GPU run\", once a GPU run is committed. Run the "
             "full scale on a GPU with ")
CI_COMMAND = "python -m bmlib run-notebooks --scale full"


def _ci_caveat(prefix: str = "") -> "nodes.paragraph":
    return _para(prefix + CI_CAVEAT, nodes.literal(text=CI_COMMAND), ".")


# ============================================================================ docutils helpers
def _para(*children) -> nodes.paragraph:
    p = nodes.paragraph()
    for c in children:
        p += nodes.Text(c) if isinstance(c, str) else c
    return p


def _table(header: list[str], rows: list[list], widths: list[int], classes=()) -> nodes.table:
    table = nodes.table(classes=["results-at-a-glance", *classes])
    tgroup = nodes.tgroup(cols=len(header))
    table += tgroup
    for w in widths:
        tgroup += nodes.colspec(colwidth=w)
    thead = nodes.thead()
    tgroup += thead
    hrow = nodes.row()
    for h in header:
        hrow += nodes.entry("", _para(h))
    thead += hrow
    tbody = nodes.tbody()
    tgroup += tbody
    for r in rows:
        row = nodes.row()
        for cell in r:
            entry = nodes.entry()
            if isinstance(cell, nodes.paragraph):
                entry += cell
            elif isinstance(cell, nodes.Node):
                entry += _para(cell)
            else:
                entry += _para(str(cell))
            row += entry
        tbody += row
    return table


def _doc_link(docname: str):
    from sphinx import addnodes

    ref = addnodes.pending_xref("", refdomain="std", reftype="doc", reftarget="/" + docname,
                                refexplicit=False, refwarn=True)
    ref += nodes.inline("", docname)
    return _para(ref)


# ============================================================================ directive
def _chapter_docs(env) -> list[str]:
    return sorted(d for d in env.found_docs if d.startswith("notebooks/") and
                  Path(d).name[:2].isdigit())


try:
    from sphinx.util.docutils import SphinxDirective
except ImportError:  # pragma: no cover - only without Sphinx (unit tests of the helpers)
    SphinxDirective = object  # type: ignore[misc,assignment]


class ResultsAtAGlance(SphinxDirective):  # type: ignore[misc,valid-type]
    """Tables of committed results and of each chapter's output provenance."""

    has_content = False
    option_spec = {"results-dir": directives.unchanged, "cpu-results-dir": directives.unchanged}

    def run(self):
        env = self.env
        env.metadata[env.docname]["results_at_a_glance"] = True
        root = Path(env.srcdir)
        folder = root / self.options.get("results-dir", env.config.book_results_dir)
        out: list[nodes.Node] = []

        # 1. headline figures: the committed cpu run next to the committed full-scale GPU run
        cpu_folder = root / self.options.get("cpu-results-dir", env.config.book_results_cpu_dir)
        gpu_docs, cpu_docs = load_results(folder), load_results(cpu_folder)
        for f in (folder, cpu_folder):
            for p in sorted(f.glob("*.json")) if f.is_dir() else []:
                env.note_dependency(str(p))
        out.append(nodes.rubric(text="Headline figures: CPU run and GPU run, side by side"))
        rows = side_by_side(cpu_docs, gpu_docs)
        if not gpu_docs:
            out.append(_para(
                "results/ holds no full-scale results file yet: no GPU run of this book has been "
                "committed, so every figure below comes from the cpu-scale run that produced the "
                "committed pages (results/cpu/)."))
        if not rows:
            out.append(_para("Neither results/cpu/ nor results/ holds a results file yet."))
        else:
            out.append(_table(
                ["chapter", "CPU run (results/cpu/)", "CPU figures", "GPU run (results/)", "GPU figures"],
                [[r["chapter"], describe_source(r["cpu"]), describe_figures(r["cpu"], NO_CPU_RUN),
                  describe_source(r["gpu"]), describe_figures(r["gpu"], NO_GPU_RUN)] for r in rows],
                [12, 16, 30, 16, 30]))

        # 2. what each chapter page shows
        out.append(nodes.rubric(text="What each chapter page shows"))
        chapters = _chapter_docs(env)
        if not chapters:
            out.append(_para("No chapter notebooks were found in notebooks/."))
            return out
        rows = []
        for doc in chapters:
            path = Path(env.doc2path(doc))
            env.note_dependency(str(path))
            try:
                prov = notebook_provenance(path)
            except (ValueError, OSError):
                prov = None
            if prov is None:
                rows.append([_doc_link(doc), "no executed provenance line", "-", "-", "-"])
            else:
                rows.append([_doc_link(doc), prov.get("device", "?"), prov.get("scale", "?"),
                             prov.get("date", "?"), prov.get("git", "?")])
        out.append(_table(["chapter", "outputs produced on", "scale", "date", "git"], rows,
                          [30, 34, 8, 14, 10]))
        scales = {r[2] for r in rows}
        if "cpu" in scales:
            out.append(_ci_caveat("Chapters whose outputs come from the cpu scale show CPU "
                                  "smoke-test numbers. "))
        return out


# ============================================================================ per-chapter banner
def _insert_banner(app, doctree) -> None:
    env = app.env
    docname = env.docname
    if not docname.startswith("notebooks/"):
        return
    path = Path(env.doc2path(docname))
    if path.suffix != ".ipynb":
        return
    try:
        prov = notebook_provenance(path)
    except (ValueError, OSError):
        prov = None
    if prov is None:
        adm = nodes.warning()
        adm += _para("This page carries no executed provenance line: its outputs were not produced "
                     "by python -m bmlib run-notebooks, so treat any number shown as unverified.")
    else:
        adm = nodes.admonition(classes=["note", "bmlib-provenance"])
        adm += nodes.title(text="Where the numbers on this page come from")
        adm += _para("The outputs below come from " + describe_run(prov) + ".")
        if prov.get("scale") == "cpu":
            adm += _ci_caveat()
    section = next(iter(doctree.findall(nodes.section)), None)
    if section is None:
        doctree.insert(0, adm)
        return
    idx = 1 if section.children and isinstance(section.children[0], nodes.title) else 0
    section.insert(idx, adm)


def _always_reread(app, env, added, changed, removed):
    """Pages with the directive read other files (results, notebooks): rebuild them every time."""
    return [d for d, meta in env.metadata.items() if meta.get("results_at_a_glance")]


def _drop_remote_scripts(app, pagename, templatename, context, doctree):
    """Keep the HTML offline: drop any script that loads or names a remote URL (sphinx-thebe's
    ``THEBE_JS_URL`` constant points at unpkg.com; the book has no launch buttons)."""
    scripts = context.get("script_files")
    if not scripts:
        return
    kept = []
    for js in scripts:
        src = str(js)
        body = getattr(js, "attributes", {}).get("body", "")
        if src.startswith(("http://", "https://", "//")) or "://" in body:
            continue
        kept.append(js)
    context["script_files"] = kept


def setup(app):
    app.add_config_value("book_results_dir", "results", "env")
    app.add_config_value("book_results_cpu_dir", "results/cpu", "env")
    app.add_directive("results-at-a-glance", ResultsAtAGlance)
    app.connect("doctree-read", _insert_banner)
    app.connect("env-get-outdated", _always_reread)
    app.connect("html-page-context", _drop_remote_scripts)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
