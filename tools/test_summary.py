"""Summarise the stages of ``make test`` and exit non-zero if any failed.

    python tools/test_summary.py REPORT_DIR

``REPORT_DIR`` holds, per stage ``<name>``: ``<name>.rc`` (the stage's exit status) and, for pytest
stages, ``<name>.xml`` (JUnit XML); the book stage leaves ``book.log`` (its warnings are counted).
Stages, in order: ``unit`` (unit tests), ``notebooks`` (nbval at cpu scale), ``book`` (the strict
Jupyter Book build), ``browser`` (the rendered book in headless Chromium). A stage fails when it is
missing, exits non-zero (pytest's exit 5, "no tests collected", included), has a failed test, left
no JUnit XML (pytest stages), or ran no test at all (every test skipped): a stage that checked
nothing must not read as a pass. A browser stage that did not run (no Chromium) is also announced
in a banner under the table. The last line reads ``N passed, M failed`` (counted over test cases;
the book build counts as one) so CI tooling can pick it up.
"""
from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

STAGES = (("unit", "unit tests"), ("notebooks", "notebooks (nbval, cpu scale)"),
          ("book", "book build (-W -n)"), ("browser", "browser checks (Chromium)"))
NO_TESTS_COLLECTED = 5  # pytest's exit status when nothing was collected


@dataclass
class Stage:
    name: str
    label: str
    rc: int | None = None
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    notes: list = field(default_factory=list)

    ran_nothing: bool = False  # collected no test, or skipped every one

    @property
    def ok(self) -> bool:
        return self.rc == 0 and self.failed == 0 and not self.ran_nothing


def read_junit(path: Path) -> tuple[int, int, int, list[str], set[str], set[str]]:
    """(passed, failed, skipped, failed test ids, files seen, files with a failure) of a JUnit file."""
    root = ET.parse(path).getroot()
    passed = failed = skipped = 0
    failures, files, bad_files = [], set(), set()
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        fname = case.get("file") or case.get("classname", "").split("::")[0]
        files.add(fname)
        if case.find("failure") is not None or case.find("error") is not None:
            failed += 1
            failures.append(name)
            bad_files.add(fname)
        elif case.find("skipped") is not None:
            skipped += 1
        else:
            passed += 1
    return passed, failed, skipped, failures, files, bad_files


def _rc(report: Path, name: str) -> int | None:
    f = report / f"{name}.rc"
    if not f.exists():
        return None
    try:
        return int(f.read_text().strip() or "1")
    except ValueError:
        return 1


def summarise(report: Path) -> list[Stage]:
    if not report.is_dir():
        raise ValueError(f"report must be a folder of stage results, got {str(report)!r}")
    stages = []
    for name, label in STAGES:
        st = Stage(name, label, rc=_rc(report, name))
        if st.rc is None:
            st.notes.append("did not run")
            st.failed = max(st.failed, 1)
            stages.append(st)
            continue
        xml = report / f"{name}.xml"
        if name == "book":
            log = report / "book.log"
            text = log.read_text(errors="replace") if log.exists() else ""
            warnings = len(re.findall(r"WARNING:", text))
            st.notes.append(f"{warnings} warning(s)")
            if st.rc == 0 and warnings == 0:
                st.passed = 1
            else:
                st.failed = 1
        elif xml.exists():
            try:
                p, f, s, failures, files, bad_files = read_junit(xml)
            except ET.ParseError as e:
                p, f, s, failures, files, bad_files = 0, 1, 0, [f"unreadable {xml.name}: {e}"], set(), set()
            st.passed, st.failed, st.skipped = p, f, s
            if p == 0 and f == 0:
                st.ran_nothing = True
                st.notes.append(f"every test was skipped ({s})" if s else "no test cases in the report")
                if name == "browser":
                    st.notes.append("is /usr/bin/chromium installed?")
            if name == "notebooks":
                st.notes.append(f"{len(files) - len(bad_files)} of {len(files)} notebooks validated")
            for fid in failures[:10]:
                st.notes.append(f"FAILED {fid}")
            if len(failures) > 10:
                st.notes.append(f"... and {len(failures) - 10} more")
        elif st.rc == 0:
            st.ran_nothing = True
            st.notes.append(f"no {xml.name}: the stage left no test results")
        if st.rc == NO_TESTS_COLLECTED:
            st.ran_nothing = True
            st.notes.append("no tests collected (pytest exit status 5)")
        elif st.rc != 0 and st.failed == 0:
            st.failed = 1  # crashed before writing results (collection error, interrupted...)
            st.notes.append(f"exit status {st.rc}")
        if st.ran_nothing:
            st.failed = max(st.failed, 1)  # a stage that checked nothing counts as one failure
        stages.append(st)
    return stages


def did_not_run(stages: list[Stage]) -> list[Stage]:
    """The stages that checked nothing: missing, no tests collected, or every test skipped."""
    return [s for s in stages if s.rc is None or s.ran_nothing]


def render(stages: list[Stage]) -> str:
    w = max(len(s.label) for s in stages)
    lines = ["", "=" * (w + 44), f"{'stage':<{w}}  {'passed':>7} {'failed':>7} {'skipped':>8}  status",
             "-" * (w + 44)]
    for s in stages:
        lines.append(f"{s.label:<{w}}  {s.passed:>7} {s.failed:>7} {s.skipped:>8}  "
                     f"{'ok' if s.ok else 'FAILED'}")
        for n in s.notes:
            lines.append(f"{'':<{w}}    {n}")
    lines.append("-" * (w + 44))
    passed = sum(s.passed for s in stages)
    failed = sum(s.failed for s in stages)
    bad = [s.label for s in stages if not s.ok]
    for s in did_not_run(stages):
        lines += ["", "!" * (w + 44),
                  f"!!! {s.label.upper()} DID NOT RUN: {'; '.join(s.notes) or 'no results'}",
                  "!" * (w + 44), ""]
    lines.append(f"make test: {'all stages passed' if not bad else 'FAILED stages: ' + ', '.join(bad)}")
    lines.append(f"{passed} passed, {failed} failed")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    stages = summarise(Path(argv[0]))
    print(render(stages))
    return 0 if all(s.ok for s in stages) else 1


if __name__ == "__main__":
    sys.exit(main())
