"""The rendered book, checked the way a reader sees it: every page in headless Chromium.

The HTML comes from ``_build/html`` (``make test`` builds it with warnings as errors just before
running these tests; ``BOOK_HTML_DIR`` points elsewhere). It is served on 127.0.0.1 from a thread
and every page is opened in Debian's ``/usr/bin/chromium`` driven by Playwright (never a downloaded
browser). Checked on every page: no console errors and no uncaught exceptions, no request leaves
127.0.0.1, every image decodes, every same-origin link answers 200 and every ``#anchor`` exists,
math is typeset by the locally served MathJax, and notebook code cells and outputs are visible.
Screenshots of the landing page and one chapter go to ``_build/screenshots/``; the landing one is
also copied to ``book/images/rendered-book.png`` (the README shows it) when
``BMLIB_UPDATE_README_SCREENSHOT=1`` is set.

The first tests need no browser: they unit-test the book's local Sphinx extension
(``book/_ext/book_results.py``) and check the static HTML for remote scripts.
Without Chromium the browser tests skip with a message saying how to install it.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "book" / "_ext"))
import book_results  # noqa: E402  (the book's local Sphinx extension)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOTS = ROOT / "_build" / "screenshots"
README_IMAGE = ROOT / "book" / "images" / "rendered-book.png"
PAGE_TIMEOUT_MS = 30_000


# ============================================================================ extension helpers
PROV_LINE = ("device: CPU (AMD EPYC, 2 cores) | torch: 2.13.0+cpu | transformers: 5.23.0 | "
             "python: 3.11.7 | scale: cpu | date: 2026-11-23 | git: ec094a7 | chapter: nlp | seed: 0")


def test_parse_provenance_line():
    p = book_results.parse_provenance_line(PROV_LINE)
    assert p["device"] == "CPU (AMD EPYC, 2 cores)"
    assert (p["scale"], p["date"], p["git"], p["chapter"]) == ("cpu", "2026-11-23", "ec094a7", "nlp")
    assert book_results.parse_provenance_line("loss: 3.2 at step 10") is None  # no device/scale
    assert book_results.parse_provenance_line("just some text") is None
    with pytest.raises(TypeError, match="line"):
        book_results.parse_provenance_line(None)


def _nb(outputs):
    return {"cells": [{"cell_type": "markdown", "source": "# T"},
                      {"cell_type": "code", "source": "x", "outputs": outputs}]}


def test_notebook_provenance_reads_first_code_cells(tmp_path):
    warn = {"output_type": "stream", "name": "stderr", "text": ["TqdmWarning: ...\n"]}
    line = {"output_type": "stream", "name": "stdout", "text": [PROV_LINE + "\n"]}
    assert book_results.notebook_provenance(_nb([warn, line]))["scale"] == "cpu"
    assert book_results.notebook_provenance(_nb([warn])) is None
    assert book_results.notebook_provenance(_nb([])) is None
    p = tmp_path / "x.ipynb"
    p.write_text(json.dumps(_nb([line])))
    assert book_results.notebook_provenance(p)["git"] == "ec094a7"
    with pytest.raises(ValueError, match="nb must be a notebook"):
        book_results.notebook_provenance({"no": "cells"})


def test_load_results_reports_bad_files_instead_of_hiding_them(tmp_path):
    assert book_results.load_results(tmp_path / "missing") == []
    assert book_results.load_results(tmp_path) == []
    good = {"chapter": "training", "provenance": {"device": "NVIDIA H100 80GB HBM3", "scale": "full"},
            "figures": {"bmlib_train_mfu": 0.46}, "rows": []}
    (tmp_path / "training.json").write_text(json.dumps(good))
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "nofigs.json").write_text(json.dumps({"chapter": "x", "provenance": {}}))
    docs = book_results.load_results(tmp_path)
    assert [d["file"] for d in docs] == ["broken.json", "nofigs.json", "training.json"]
    assert "error" in docs[0] and "error" in docs[1] and "error" not in docs[2]
    assert docs[2]["figures"] == {"bmlib_train_mfu": 0.46}


@pytest.mark.parametrize("value, text", [(0.4567891, "0.4568"), (531000.4, "531,000"), (2.5e12, "2.500e+12"), (1234.5678, "1235"),
                                         (12, "12"), (1234567, "1,234,567"), (0.0, "0"),
                                         (2.5e-5, "2.500e-05"), (float("nan"), "nan"), ("x", "x")])
def test_format_figure(value, text):
    assert book_results.format_figure(value) == text


def _doc(chapter, scale, **figures):
    return {"chapter": chapter, "file": f"{chapter}.json", "figures": figures,
            "provenance": {"device": "NVIDIA H200" if scale == "full" else "CPU (2 cores)",
                           "scale": scale, "date": "2026-12-02", "git": "abc1234"}}


def test_side_by_side_pairs_cpu_and_gpu_runs_per_chapter():
    rows = book_results.side_by_side(
        [_doc("training", "cpu", val_loss=1.9), _doc("attention", "cpu", err=1e-6)],
        [_doc("training", "full", val_loss=1.1), _doc("bench-h200", "full", gemm_bf16_tflops=771.0)])
    assert [r["chapter"] for r in rows] == ["attention", "bench-h200", "training"]
    att, bench, train = rows
    assert att["gpu"] is None and bench["cpu"] is None
    assert train["cpu"]["figures"] == {"val_loss": 1.9} and train["gpu"]["figures"] == {"val_loss": 1.1}
    assert book_results.describe_figures(att["gpu"], book_results.NO_GPU_RUN) == \
        "no full-scale GPU run committed yet"
    assert book_results.describe_figures(train["gpu"], "-") == "val_loss = 1.1"
    assert book_results.describe_source(train["gpu"]) == "NVIDIA H200, 2026-12-02, git abc1234"


def test_side_by_side_never_mixes_scales():
    rows = book_results.side_by_side([_doc("training", "full", v=1.0)], [_doc("nlp", "cpu", v=2.0)])
    assert all("expected" in book_results.describe_figures(r["cpu"] or r["gpu"], "-") for r in rows)


def test_describe_run_names_device_scale_date_and_commit():
    s = book_results.describe_run(book_results.parse_provenance_line(PROV_LINE))
    for part in ("cpu-scale", "CPU (AMD EPYC, 2 cores)", "2026-11-23", "ec094a7", "2.13.0+cpu"):
        assert part in s


# ============================================================================ the built HTML
def _build_book(out_root: Path) -> None:
    jb = Path(sys.executable).with_name("jupyter-book")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    r = subprocess.run([str(jb), "build", str(ROOT), "--builder", "html"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    if r.returncode != 0 or not (out_root / "index.html").exists():
        pytest.fail("could not build the book for the browser checks:\n" + r.stdout[-3000:] + r.stderr[-3000:])


@pytest.fixture(scope="session")
def html_dir() -> Path:
    override = os.environ.get("BOOK_HTML_DIR")
    d = Path(override) if override else ROOT / "_build" / "html"
    if not (d / "index.html").exists():
        if override:
            pytest.fail(f"BOOK_HTML_DIR={override} holds no index.html")
        _build_book(d)
    return d


def _pages(html_dir: Path) -> list[str]:
    return sorted(p.relative_to(html_dir).as_posix() for p in html_dir.rglob("*.html")
                  if not p.relative_to(html_dir).parts[0].startswith(("_", ".")))


class _Scan(HTMLParser):
    """Collects ids/names (anchor targets), script sources and inline script bodies."""

    def __init__(self):
        super().__init__()
        self.ids, self.script_srcs, self.inline, self._in_script = set(), [], [], False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for k in ("id", "name"):
            if a.get(k):
                self.ids.add(a[k])
        if tag == "script":
            if a.get("src"):
                self.script_srcs.append(a["src"])
            self._in_script = True

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.inline.append(data)


@functools.lru_cache(maxsize=None)
def _scan_file(path: str) -> _Scan:
    s = _Scan()
    s.feed(Path(path).read_text(encoding="utf-8", errors="replace"))
    return s


@pytest.mark.browser  # needs the built book
def test_static_html_loads_nothing_remote(html_dir):
    pages = _pages(html_dir)
    assert pages, f"no HTML pages under {html_dir}"
    bad = []
    for rel in pages:
        s = _scan_file(str(html_dir / rel))
        bad += [f"{rel}: <script src={src}>" for src in s.script_srcs if "://" in src or src.startswith("//")]
        bad += [f"{rel}: inline script names {body.strip()[:80]!r}" for body in s.inline
                if "https://" in body or "http://" in body]
    assert not bad, "remote scripts in the built book:\n" + "\n".join(bad[:20])


@pytest.mark.browser  # needs the built book
def test_mathjax_is_served_locally(html_dir):
    assert (html_dir / "_static" / "mathjax" / "tex-chtml.js").exists(), \
        "sphinx-mathjax-offline did not copy MathJax into _static/mathjax"
    s = _scan_file(str(html_dir / "book" / "intro.html"))
    # (a rebuild over an existing _build adds a cache-busting "?v=..." to the src)
    assert any(src.split("?")[0].endswith("_static/mathjax/tex-chtml.js") for src in s.script_srcs), s.script_srcs


@pytest.mark.browser  # needs the built book
def test_landing_page_has_results_at_a_glance(html_dir):
    text = (html_dir / "book" / "intro.html").read_text(encoding="utf-8")
    assert "Results at a glance" in text
    assert "What each chapter page shows" in text
    assert "CPU run and GPU run, side by side" in text
    results = sorted((ROOT / "results").glob("*.json"))
    if html_dir == ROOT / "_build" / "html" and not results:
        assert "results/ holds no full-scale results file yet" in text


@pytest.mark.browser  # needs the built book
def test_every_chapter_page_names_its_provenance(html_dir):
    chapters = sorted((html_dir / "notebooks").glob("[0-9][0-9]_*.html"))
    if not chapters:
        pytest.skip("no chapter pages in this build")
    missing = [c.name for c in chapters if "Where the numbers on this page come from" not in
               c.read_text(encoding="utf-8") and "carries no executed provenance line" not in
               c.read_text(encoding="utf-8")]
    assert not missing, f"chapter pages without a provenance banner: {missing}"


# ============================================================================ the browser
class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def server(html_dir):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(html_dir)))
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()
    srv.server_close()


# What the chapter screenshots centre on: a display equation typeset by MathJax, a plot from a cell.
# (selectors in order of preference)
SHOT_TARGETS = {"math": ["mjx-container[display='true']", "div.math mjx-container", "mjx-container"],
                "plot": ["div.cell_output img"]}

_PAGE_PROBE = """() => {
  const vis = el => { const r = el.getBoundingClientRect(); const s = getComputedStyle(el);
                      return r.width > 0 && r.height > 0 && s.visibility !== 'hidden' && s.display !== 'none'; };
  const hiddenByTag = el => !!el.closest('.tag_hide-input, .tag_hide-output, .tag_hide-cell, .tag_remove-input, details:not([open])');
  const imgs = [...document.images].map(i => ({src: i.currentSrc || i.src, ok: i.complete && i.naturalWidth > 0}));
  const links = [...document.querySelectorAll('a[href]')].map(a => a.href);
  const cells = [...document.querySelectorAll('div.cell')];
  const inputs = [...document.querySelectorAll('div.cell div.cell_input')];
  const outputs = [...document.querySelectorAll('div.cell div.cell_output')];
  return {
    title: document.title,
    imgs, links,
    mathNodes: document.querySelectorAll('.math').length,
    mjx: document.querySelectorAll('mjx-container').length,
    mjxErrors: document.querySelectorAll('mjx-merror').length,
    rawTex: [...document.querySelectorAll('.math')].filter(e => !e.querySelector('mjx-container') && /\\\\\\(|\\$\\$|\\\\\\[/.test(e.textContent)).length,
    mathjaxSrc: [...document.scripts].map(s => s.src).filter(s => s.includes('mathjax')),
    // TeX that reached the reader as text: prose (math and code removed) with $$, $\\cmd, ^/_ next to $, \\cmd
    leakedTex: [...(document.querySelector('article') || document.body).querySelectorAll('p, li, td, dd, h1, h2, h3')]
      .map(e => { const c = e.cloneNode(true);
                  c.querySelectorAll('pre, code, script, style, mjx-container, .math').forEach(x => x.remove());
                  return c.textContent.replace(/\\s+/g, ' ').trim(); })
      .filter(t => /\\$\\s*\\$|\\$\\s*[\\\\^_{]|[\\\\^_}]\\s*\\$|\\\\[a-zA-Z]{2,}/.test(t)).map(t => t.slice(0, 100)),
    cells: cells.length,
    hiddenInputs: inputs.filter(e => !hiddenByTag(e) && !vis(e)).length,
    hiddenOutputs: outputs.filter(e => !hiddenByTag(e) && !vis(e)).length,
    outputs: outputs.length,
  };
}"""


@pytest.fixture(scope="session")
def browser_report(html_dir, server):
    """Open every page once; collect what the tests below assert on."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed: `apt-get install -y chromium` to run the browser "
                    "checks (.ci/run does this on CI)")
    sync_api = pytest.importorskip("playwright.sync_api")
    pages = _pages(html_dir)
    report = {}
    external = []
    origin = urllib.parse.urlsplit(server)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        ctx = browser.new_context(viewport={"width": 1280, "height": 800}, service_workers="block")

        def route(r):
            u = urllib.parse.urlsplit(r.request.url)
            if u.scheme in ("data", "blob", "about") or u.netloc == origin.netloc:
                return r.continue_()
            external.append(r.request.url)
            return r.abort()

        ctx.route("**/*", route)
        page = ctx.new_page()
        for rel in pages:
            errors, failed = [], []
            on_console = (lambda m, e=errors: e.append(f"console.{m.type}: {m.text}")
                          if m.type == "error" else None)
            on_pageerror = lambda exc, e=errors: e.append(f"uncaught: {exc}")  # noqa: E731
            on_failed = lambda req, f=failed: f.append(f"{req.url} ({req.failure})")  # noqa: E731
            page.on("console", on_console)
            page.on("pageerror", on_pageerror)
            page.on("requestfailed", on_failed)
            resp = page.goto(f"{server}/{rel}", wait_until="load", timeout=PAGE_TIMEOUT_MS)
            if 'http-equiv="refresh"' in (html_dir / rel).read_text(encoding="utf-8", errors="replace").lower():
                # a redirect page (index.html -> book/intro.html): follow it, check where it lands
                page.wait_for_url(lambda u, r=rel: not u.endswith("/" + r), timeout=PAGE_TIMEOUT_MS)
                page.wait_for_load_state("load")
            page.evaluate("""async () => {
                for (const i of document.images) { i.loading = 'eager'; }
                await Promise.all([...document.images].map(i => i.decode().catch(() => null)));
                if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
                    await MathJax.startup.promise;
                    if (MathJax.typesetPromise) { await MathJax.typesetPromise(); }
                }
            }""")
            probe = page.evaluate(_PAGE_PROBE)
            probe.update(status=resp.status if resp else None, errors=errors, failed=failed)
            report[rel] = probe
            if rel == "book/intro.html":
                SCREENSHOTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(SCREENSHOTS / "landing.png"))
            elif (rel.startswith("notebooks/") and "chapter" not in report.get("_shots", {})
                  and probe["mjx"] and any(i["ok"] and "_images/" in i["src"] for i in probe["imgs"])):
                # the first chapter with typeset math and a plot: its top, its first equation, its first figure
                SCREENSHOTS.mkdir(parents=True, exist_ok=True)
                stem = Path(rel).stem
                page.screenshot(path=str(SCREENSHOTS / f"chapter-{stem}.png"))
                for kind, sels in SHOT_TARGETS.items():
                    found = page.evaluate("""ss => { for (const s of ss) for (const e of document.querySelectorAll(s))
                        if (e.getBoundingClientRect().height > 0) { e.scrollIntoView({block: 'center'}); return true; }
                        return false; }""", sels)
                    assert found, f"{rel}: no visible {kind} to photograph"
                    page.screenshot(path=str(SCREENSHOTS / f"chapter-{stem}-{kind}.png"))
                page.evaluate("() => window.scrollTo(0, 0)")
                report.setdefault("_shots", {})["chapter"] = rel
            page.remove_listener("console", on_console)
            page.remove_listener("pageerror", on_pageerror)
            page.remove_listener("requestfailed", on_failed)
        browser.close()
    shots = report.pop("_shots", {})
    return {"pages": report, "external": external, "chapter_shot": shots.get("chapter")}


@pytest.mark.browser
def test_every_page_loads_without_console_errors(browser_report):
    pages = browser_report["pages"]
    assert pages
    bad = {p: r["errors"] for p, r in pages.items() if r["errors"] or r["status"] != 200}
    assert not bad, json.dumps(bad, indent=1)[:4000]


@pytest.mark.browser
def test_no_request_leaves_the_machine(browser_report):
    assert not browser_report["external"], sorted(set(browser_report["external"]))[:20]
    failed = {p: r["failed"] for p, r in browser_report["pages"].items() if r["failed"]}
    assert not failed, json.dumps(failed, indent=1)[:4000]


@pytest.mark.browser
def test_every_image_loads(browser_report):
    n = sum(len(r["imgs"]) for r in browser_report["pages"].values())
    bad = [(p, i["src"]) for p, r in browser_report["pages"].items() for i in r["imgs"] if not i["ok"]]
    assert not bad, f"{len(bad)} of {n} images did not load: {bad[:20]}"


@pytest.mark.browser
def test_every_internal_link_resolves(browser_report, server, html_dir):
    status: dict[str, int] = {}
    bad = []
    n = 0
    for page, r in browser_report["pages"].items():
        for href in r["links"]:
            u = urllib.parse.urlsplit(href)
            if f"{u.scheme}://{u.netloc}" != server:
                continue
            n += 1
            target = urllib.parse.urlunsplit((u.scheme, u.netloc, u.path, u.query, ""))
            if target not in status:
                try:
                    with urllib.request.urlopen(target, timeout=10) as resp:
                        status[target] = resp.status
                except urllib.error.HTTPError as e:
                    status[target] = e.code
            if status[target] != 200:
                bad.append(f"{page}: {href} -> HTTP {status[target]}")
                continue
            frag = urllib.parse.unquote(u.fragment)
            if frag and u.path.endswith((".html", "/")):
                path = u.path + ("index.html" if u.path.endswith("/") else "")
                local = html_dir / urllib.parse.unquote(path).lstrip("/")
                if frag not in _scan_file(str(local)).ids:
                    bad.append(f"{page}: {href} -> no element with id {frag!r}")
    assert n > 0, "no internal links found"
    assert not bad, f"{len(bad)} of {n} internal links are broken:\n" + "\n".join(bad[:30])


@pytest.mark.browser
def test_math_is_typeset_by_local_mathjax(browser_report, server):
    pages = browser_report["pages"]
    with_math = {p: r for p, r in pages.items() if r["mathNodes"]}
    assert with_math, "no page has math: the book's pages should (conventions, chapters)"
    bad = {p: {k: r[k] for k in ("mathNodes", "mjx", "mjxErrors", "rawTex")} for p, r in with_math.items()
           if r["mjx"] < r["mathNodes"] or r["mjxErrors"] or r["rawTex"]}
    assert not bad, f"math not typeset: {bad}"
    leaked = {p: r["leakedTex"] for p, r in pages.items() if r["leakedTex"]}
    assert not leaked, f"TeX shown as text (a $$ block glued to its paragraph?): {leaked}"
    for p, r in with_math.items():
        assert r["mathjaxSrc"] and all(s.startswith(server) for s in r["mathjaxSrc"]), (p, r["mathjaxSrc"])


@pytest.mark.browser
def test_code_cells_and_outputs_are_visible(browser_report):
    nb_pages = {p: r for p, r in browser_report["pages"].items() if p.startswith("notebooks/")}
    if not nb_pages:
        pytest.skip("no notebook pages in this build")
    bad = []
    for p, r in nb_pages.items():
        if r["cells"] == 0:
            bad.append(f"{p}: no code cells rendered")
        elif r["outputs"] == 0:
            bad.append(f"{p}: no cell outputs rendered (notebook committed without executed outputs?)")
        if r["hiddenInputs"] or r["hiddenOutputs"]:
            bad.append(f"{p}: {r['hiddenInputs']} code cells and {r['hiddenOutputs']} outputs are invisible")
    assert not bad, "\n".join(bad)


@pytest.mark.browser
def test_screenshots_saved(browser_report, html_dir):
    landing = SCREENSHOTS / "landing.png"
    assert landing.exists() and landing.stat().st_size > 10_000
    assert landing.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the chapters have math and plots, so a chapter screenshot with both must exist
    assert browser_report["chapter_shot"], "no chapter page has both typeset math and a loaded plot"
    stem = Path(browser_report["chapter_shot"]).stem
    for suffix in ("", "-math", "-plot"):
        shot = SCREENSHOTS / f"chapter-{stem}{suffix}.png"
        assert shot.stat().st_size > 10_000, shot
    # Refresh the README's picture only on request, so `make test` leaves the working tree clean.
    if html_dir == ROOT / "_build" / "html" and os.environ.get("BMLIB_UPDATE_README_SCREENSHOT"):
        README_IMAGE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(landing, README_IMAGE)
