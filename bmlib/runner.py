"""Execute the book's notebooks top to bottom (``python -m bmlib run-notebooks``).

This is what produces the outputs committed with the book (``cpu`` scale) and the reference GPU run
(``full`` scale, ``tools/gpu_run.sh``). Each notebook runs in a fresh kernel in its own folder, with
``BMLIB_SCALE`` set for the kernel and ``BMLIB_RUN_NOTEBOOKS=1`` (so :func:`bmlib.results.save`
writes ``results/cpu/`` at cpu scale). A failing notebook is reported, not fatal, and its partial
outputs are saved beside it as ``<name>.failed.ipynb`` so the committed notebook is never replaced by
a broken run. After a successful run, frozen progress bars are stripped from the outputs.

Each chapter's plan lives in its notebook metadata (``metadata.bmlib``)::

    {"timing": true, "planned_full_s": 60, "after": ["04_training"]}

* ``timing``: the chapter measures speed, so it runs alone (``--jobs`` never overlaps it);
* ``planned_full_s``: its planned seconds at full scale on one H100/H200 (the summary table shows
  them next to the actual seconds; the whole book must plan <= :data:`FULL_SESSIONS` GPU sessions
  of :data:`FULL_BUDGET_S` each, see :func:`sessions_needed`);
* ``planned_cpu_s`` (optional): the same at cpu scale on 2 CPU cores;
* ``after``: notebooks (stems) that must finish first (e.g. the one that trains a shared model).

``--budget S`` refuses to start a chapter that no longer fits in what is left of ``S`` seconds and
caps every cell's timeout by it. ``--rehearse`` runs the full configurations on the CPU for their
first steps (``BMLIB_REHEARSE=1``, see :func:`bmlib.env.rehearse_cap`) and writes the executed
copies to ``artifacts/rehearse/`` -- never over the committed notebooks.
"""
from __future__ import annotations

import json
import math
import os
import re
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from .env import SCALES, artifacts_dir, repo_root
from .io import atomic_write

#: The book's seconds in one GPU session on one H100/H200 (a 15-minute session less start-up, transfers
#: and the smoke test). Issue #12 asked for the whole book in one; the first H200 run (2026-12-04,
#: results/timings/full.json) measured chapters 1.5-3x their plans, so with plans raised to the
#: measured seconds the book takes two sessions (``--budget`` stops a session, ``book <nb ...>`` runs the rest).
FULL_BUDGET_S = 480.0
FULL_SESSIONS = 2
PLAN_KEYS = ("timing", "planned_full_s", "planned_cpu_s", "after")

# A tqdm / transformers progress bar as a terminal leaves it: "desc:  40%|████  | 4/10 [00:01<...]".
_BAR = re.compile(r"\d+%\|.*\||\|\s*\d+/\d+\s*\[|\[\d+:\d+(?:<[\d:?]+)?,|\d(?:it/s|s/it)\]")
# the profiler library's own log lines (kineto writes them to stderr when a torch.profiler starts/stops)
_PROFILER_LOG = re.compile(r"^(?:USDT|STAGE):\d{4}-\d\d-\d\d [\d:]+ \d+:\d+ \w+\.cpp:\d+\]")


@dataclass(frozen=True)
class Plan:
    """A chapter's entry in the run plan (``metadata.bmlib`` of its notebook)."""

    timing: bool = False
    planned_full_s: float | None = None
    planned_cpu_s: float | None = None
    after: tuple[str, ...] = ()

    def __post_init__(self):
        if not isinstance(self.timing, bool):
            raise ValueError(f"timing must be true or false, got {self.timing!r}")
        for k in ("planned_full_s", "planned_cpu_s"):
            v = getattr(self, k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0):
                raise ValueError(f"{k} must be a positive number of seconds, got {v!r}")
        if not (isinstance(self.after, tuple) and all(isinstance(a, str) for a in self.after)):
            raise ValueError(f"after must be a list of notebook names, got {self.after!r}")

    def planned(self, scale: str) -> float | None:
        return self.planned_full_s if scale == "full" else self.planned_cpu_s


@dataclass(frozen=True)
class RunResult:
    notebook: str
    seconds: float
    ok: bool
    error: str = ""
    planned_s: float | None = None
    skipped: bool = False
    stripped_bars: int = 0
    plan: Plan = field(default_factory=Plan)

    @property
    def status(self) -> str:
        if self.skipped:
            return f"SKIPPED  {self.error}"
        return "ok" if self.ok else f"FAILED  {self.error[:100]}"


def default_notebooks() -> list[Path]:
    """``notebooks/NN_*.ipynb``, without the ``*.failed.ipynb`` copies a failed run leaves."""
    return sorted(p for p in (repo_root() / "notebooks").glob("[0-9][0-9]_*.ipynb")
                  if not p.name.endswith(".failed.ipynb"))


def read_plan(path) -> Plan:
    """The :class:`Plan` in a notebook's ``metadata.bmlib`` (defaults where absent)."""
    meta = json.loads(Path(path).read_text(encoding="utf-8")).get("metadata", {}).get("bmlib", {})
    if not isinstance(meta, dict):
        raise ValueError(f"{Path(path).name}: metadata.bmlib must be a map, got {meta!r}")
    unknown = set(meta) - set(PLAN_KEYS)
    if unknown:
        raise ValueError(f"{Path(path).name}: unknown metadata.bmlib keys {sorted(unknown)}; "
                         f"expected some of {PLAN_KEYS}")
    kw = {k: meta[k] for k in PLAN_KEYS if k in meta}
    if "after" in kw:
        kw["after"] = tuple(kw["after"]) if isinstance(kw["after"], list) else kw["after"]
    return Plan(**kw)


def write_plan(path, **plan) -> Plan:
    """Set keys of a notebook's ``metadata.bmlib`` in one atomic read-modify-write (only the
    metadata changes; the json layout stays ``indent=1``, ``ensure_ascii=False``)."""
    path = Path(path)
    unknown = set(plan) - set(PLAN_KEYS)
    if unknown:
        raise ValueError(f"unknown plan keys {sorted(unknown)}; expected some of {PLAN_KEYS}")
    nb = json.loads(path.read_text(encoding="utf-8"))
    meta = dict(nb.setdefault("metadata", {}).get("bmlib", {}))
    meta.update({k: (list(v) if isinstance(v, tuple) else v) for k, v in plan.items()})
    Plan(**{k: (tuple(v) if k == "after" else v) for k, v in meta.items()})  # validate first
    nb["metadata"]["bmlib"] = meta
    with atomic_write(path, "w") as f:
        f.write(json.dumps(nb, indent=1, ensure_ascii=False, sort_keys=True) + "\n")
    return read_plan(path)


def _visible(line: str) -> str:
    """What a terminal shows of a line with carriage returns: its last non-empty segment."""
    segs = [seg for seg in line.split("\r") if seg.strip()]
    return segs[-1] if segs else ""


def is_progress_bar(text: str) -> bool:
    """True when every non-empty line of ``text`` (as a terminal shows it: the part after the
    last carriage return) is a progress bar."""
    lines = [_visible(ln) for ln in text.split("\n")]
    lines = [ln for ln in lines if ln.strip()]
    return bool(lines) and all(_BAR.search(ln) for ln in lines)


def strip_progress_bars(nb) -> int:
    """Remove frozen progress bars from a notebook's outputs in place; returns how many lines went.

    Drops progress-bar widgets and, in ``stream`` outputs, every line that is a progress bar or a
    profiler library's log line (other lines -- warnings, prints -- stay); an output left empty is
    removed.
    """
    removed = 0
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        kept = []
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if "application/vnd.jupyter.widget-view+json" in data:
                removed += 1
                continue
            if out.get("output_type") == "stream":
                text = out.get("text", "")
                text = "".join(text) if isinstance(text, list) else text
                lines, keep = text.split("\n"), []
                for ln in lines:
                    if ln.strip() and (is_progress_bar(ln) or _PROFILER_LOG.match(ln)):
                        removed += 1
                    else:
                        keep.append(_visible(ln) if "\r" in ln else ln)
                new = "\n".join(keep)
                if not new.strip():
                    continue
                out["text"] = new
            kept.append(out)
        cell["outputs"] = kept
    return removed


def run_notebook(path, scale: str, timeout: int = 600, kernel: str = "python3", *,
                 rehearse: bool = False, out_dir=None, deadline: float | None = None) -> RunResult:
    """Execute one notebook at ``scale``; returns how long it took and whether it passed.

    The executed notebook replaces ``path`` (or goes to ``out_dir``); a failed one goes beside it
    as ``<name>.failed.ipynb``. ``deadline`` (a ``time.time()``) caps each cell's timeout; past it
    the notebook is skipped. ``rehearse`` runs with ``BMLIB_REHEARSE=1`` (``scale`` must be full).
    """
    import nbformat
    from nbclient import NotebookClient

    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if not (isinstance(timeout, int) and timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds per cell, got {timeout!r}")
    if rehearse and scale != "full":
        raise ValueError(f"rehearse runs the full configurations: scale must be 'full', got {scale!r}")
    path = Path(path)
    if not path.exists() or path.suffix != ".ipynb":
        raise ValueError(f"path must be an existing .ipynb file, got {str(path)!r}")
    plan = read_plan(path)
    planned = plan.planned(scale)
    target = Path(out_dir) / path.name if out_dir is not None else path
    if deadline is not None:
        left = deadline - time.time()
        if left < 1 or (planned is not None and planned > left):
            return RunResult(path.name, 0.0, False, f"budget: {max(left, 0):.0f} s left, "
                             f"planned {planned or 0:.0f} s", planned, skipped=True, plan=plan)
        timeout = max(1, min(timeout, int(left)))
    nb = nbformat.read(path, as_version=4)
    # The kernel inherits this process's environment: the scale, the runner flag, the rehearsal
    # flag and matplotlib's inline backend (a non-interactive MPLBACKEND such as Agg, common in
    # CI, would silently drop every figure).
    env = {"BMLIB_SCALE": scale, "BMLIB_RUN_NOTEBOOKS": "1",
           "MPLBACKEND": "module://matplotlib_inline.backend_inline",
           "BMLIB_REHEARSE": "1" if rehearse else "0"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    t0 = time.perf_counter()
    try:
        client = NotebookClient(nb, timeout=timeout, kernel_name=kernel,
                                resources={"metadata": {"path": str(path.parent)}})
        client.execute()
        ok, err = True, ""
    except Exception as e:  # CellExecutionError, timeouts, dead kernels: reported in the summary
        msg = str(e).strip()
        ok, err = False, f"{type(e).__name__}: {msg.splitlines()[-1] if msg else ''}"
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    secs = time.perf_counter() - t0
    stripped = 0
    if ok:
        stripped = strip_progress_bars(nb)
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, target)
    else:
        nbformat.write(nb, target.with_suffix(".failed.ipynb"))
    return RunResult(path.name, secs, ok, err, planned, stripped_bars=stripped, plan=plan)


def _check_after(paths: list[Path], plans: dict[str, Plan]) -> None:
    names = {p.stem for p in paths}
    for p in paths:
        for a in plans[p.stem].after:
            if a not in names:
                continue  # a prerequisite not in this run is assumed done (its cache exists)
            if paths.index(next(q for q in paths if q.stem == a)) > paths.index(p):
                raise ValueError(f"{p.name} runs after {a}, which comes later in the list")


def sessions_needed(plans: dict, jobs: int = 1) -> int:
    """GPU sessions of :data:`FULL_BUDGET_S` the planned full-scale wall time needs (at least 1)."""
    return max(1, math.ceil(planned_wall_s(plans, jobs) / FULL_BUDGET_S))


def planned_wall_s(plans: dict, jobs: int = 1, scale: str = "full") -> float:
    """The wall seconds :func:`run_notebooks` would take if every chapter took its planned seconds.

    ``plans`` maps chapter stems to :class:`Plan` in run order. It follows the runner's schedule:
    up to ``jobs`` non-timing chapters at once, a timing chapter alone, ``after`` lists respected.
    Chapters that share the device are assumed not to slow each other (the non-timing chapters
    are small models that leave most of the GPU idle); a chapter without a plan counts 0 s.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive int, got {jobs!r}")
    if not isinstance(plans, dict) or not all(isinstance(v, Plan) for v in plans.values()):
        raise TypeError("plans must be a dict of chapter name -> Plan")
    t, pending, running, done = 0.0, list(plans), {}, set()
    while pending or running:
        for n in list(pending):  # the same start rule as run_notebooks
            if len(running) >= jobs or any(plans[r].timing for r in running):
                break
            if not all(a in done or a not in plans for a in plans[n].after):
                continue
            if plans[n].timing and running:
                break
            pending.remove(n)
            running[n] = t + (plans[n].planned(scale) or 0.0)
            if plans[n].timing:
                break
        if not running:
            raise ValueError(f"cannot schedule {pending}: their 'after' chapters never run")
        n = min(running, key=running.get)
        t = running.pop(n)
        done.add(n)
    return t


def run_notebooks(paths=None, scale: str = "cpu", timeout: int = 600, *, jobs: int = 1,
                  budget: float | None = None, rehearse: bool = False,
                  out_dir=None) -> list[RunResult]:
    """Run several notebooks with a progress bar; returns one :class:`RunResult` each, in order.

    ``jobs`` > 1 runs that many non-timing chapters at once (timing chapters always run alone, and a
    chapter waits for its ``after`` list). ``budget`` is the seconds the whole run may take.
    At full scale the executed copies go to ``out_dir`` (default ``artifacts/full-run/``, or
    ``artifacts/rehearse/`` for a rehearsal): committed notebooks carry cpu-scale outputs only, and
    a full run's figures are committed as ``results/<chapter>.json``. At cpu scale ``out_dir=None``
    executes in place.
    """
    from tqdm.auto import tqdm

    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive int, got {jobs!r}")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float))
                               or budget <= 0):
        raise ValueError(f"budget must be a positive number of seconds, got {budget!r}")
    if rehearse and scale != "full":
        raise ValueError(f"rehearse runs the full configurations: scale must be 'full', got {scale!r}")
    paths = [Path(p) for p in (paths or default_notebooks())]
    if not paths:
        raise ValueError("no notebooks to run: pass paths or add notebooks/NN_*.ipynb")
    for p in paths:
        if not p.exists() or p.suffix != ".ipynb":
            raise ValueError(f"paths must be existing .ipynb files, got {str(p)!r}")
    if out_dir is None and scale == "full":
        # committed notebooks carry cpu-scale outputs only: a full run's executed copies go aside
        out_dir = artifacts_dir("rehearse" if rehearse else "full-run")
    plans = {p.stem: read_plan(p) for p in paths}
    _check_after(paths, plans)
    deadline = time.time() + budget if budget is not None else None
    kw = dict(rehearse=rehearse, out_dir=out_dir, deadline=deadline)
    bar = tqdm(total=len(paths), desc=f"notebooks ({scale}{', rehearse' if rehearse else ''})",
               unit="nb")
    results: dict[str, RunResult] = {}
    if jobs == 1:
        for p in paths:
            bar.set_postfix_str(p.name)
            results[p.stem] = run_notebook(p, scale, timeout, **kw)
            bar.update()
    else:
        pending, running = list(paths), {}
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            while pending or running:
                for p in list(pending):  # start, in order, whatever may start now
                    if len(running) >= jobs or any(plans[q.stem].timing for q in running.values()):
                        break  # full, or a timing chapter is running alone
                    if not all(a in results or a not in plans for a in plans[p.stem].after):
                        continue  # waits for a prerequisite
                    if plans[p.stem].timing and running:
                        break  # a timing chapter waits to be alone; nothing jumps ahead of it
                    pending.remove(p)
                    running[pool.submit(run_notebook, p, scale, timeout, **kw)] = p
                    if plans[p.stem].timing:
                        break
                if not running:  # pragma: no cover - _check_after rules this out
                    raise RuntimeError(f"cannot schedule {[p.name for p in pending]}")
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for f in done:
                    p = running.pop(f)
                    results[p.stem] = f.result()
                    bar.set_postfix_str(p.name)
                    bar.update()
    bar.close()
    return [results[p.stem] for p in paths]


def summary_table(results: list[RunResult]) -> str:
    """Planned and actual seconds per chapter, with totals."""
    w = max([len(r.notebook) for r in results] + [8])
    lines = [f"{'notebook':<{w}}  {'timing':>6}  {'planned s':>9}  {'actual s':>8}  status",
             f"{'-' * w}  {'-' * 6}  {'-' * 9}  {'-' * 8}  ------"]
    for r in results:
        planned = f"{r.planned_s:9.0f}" if r.planned_s is not None else f"{'-':>9}"
        lines.append(f"{r.notebook:<{w}}  {'yes' if r.plan.timing else '':>6}  {planned}  "
                     f"{r.seconds:8.1f}  {r.status}")
    total_planned = sum(r.planned_s or 0 for r in results)
    unplanned = sum(r.planned_s is None for r in results)
    lines.append(f"{'total':<{w}}  {'':>6}  {total_planned:9.0f}  "
                 f"{sum(r.seconds for r in results):8.1f}"
                 + (f"  ({unplanned} without a plan)" if unplanned else ""))
    n_ok = sum(r.ok for r in results)
    n_skip = sum(r.skipped for r in results)
    lines.append(f"{n_ok} passed, {len(results) - n_ok - n_skip} failed"
                 + (f", {n_skip} skipped" if n_skip else ""))
    return "\n".join(lines)


def timings_path(scale: str, rehearse: bool = False) -> Path:
    """Where a run's measured seconds per chapter are kept: ``results/timings/<scale>.json``
    (committed, so the next plan is measured), or ``artifacts/rehearse/timings.json``."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if rehearse:
        return artifacts_dir("rehearse") / "timings.json"
    return repo_root() / "results" / "timings" / f"{scale}.json"


def write_timings(results: list[RunResult], scale: str, rehearse: bool = False, path=None) -> Path:
    """Record planned and actual seconds per chapter with the run's provenance (atomically).
    Chapters of earlier runs that this run did not execute keep their entries."""
    from .env import provenance
    from .io import write_json

    path = Path(path) if path is not None else timings_path(scale, rehearse)
    doc = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"chapters": {}}
    for r in results:
        doc["chapters"][Path(r.notebook).stem] = {
            "planned_s": r.planned_s, "actual_s": round(r.seconds, 1),
            "status": "ok" if r.ok else ("skipped" if r.skipped else "failed"), "timing": r.plan.timing}
    doc["provenance"] = provenance()
    doc["provenance"]["scale"] = scale
    return write_json(path, doc)
