"""tools/test_summary.py on fake stage results: a stage that checked nothing must fail, loudly."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "test_summary_tool", Path(__file__).resolve().parents[1] / "tools" / "test_summary.py")
ts = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = ts  # dataclasses look the module up
_SPEC.loader.exec_module(ts)


def junit(cases) -> str:
    """JUnit XML as pytest writes it; ``cases`` is a list of "pass" / "fail" / "error" / "skip"."""
    body = []
    for i, kind in enumerate(cases):
        inner = {"pass": "", "fail": '<failure message="boom">assert 0</failure>',
                 "error": '<error message="boom">E</error>',
                 "skip": '<skipped type="pytest.skip" message="no chromium">skip</skipped>'}[kind]
        body.append(f'<testcase classname="tests.test_x" name="test_{i}" file="tests/test_x.py" '
                    f'time="0.01">{inner}</testcase>')
    return ('<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" '
            f'tests="{len(cases)}">{"".join(body)}</testsuite></testsuites>')


def write_report(tmp_path: Path, **stages) -> Path:
    """Each keyword is a stage: ``(rc, cases)``; ``cases=None`` leaves no XML; for ``book``,
    ``cases`` is the log text."""
    for name, (rc, cases) in stages.items():
        (tmp_path / f"{name}.rc").write_text(f"{rc}\n")
        if name == "book":
            (tmp_path / "book.log").write_text(cases or "build succeeded.\n")
        elif cases is not None:
            (tmp_path / f"{name}.xml").write_text(junit(cases))
    return tmp_path


GOOD = dict(unit=(0, ["pass", "pass", "skip"]), notebooks=(0, ["pass"]), book=(0, "ok\n"),
            browser=(0, ["pass", "pass"]))


def by_name(stages):
    return {s.name: s for s in stages}


def test_all_good_passes(tmp_path, capsys):
    rep = write_report(tmp_path, **GOOD)
    assert ts.main([str(rep)]) == 0
    out = capsys.readouterr().out
    assert "all stages passed" in out and "DID NOT RUN" not in out
    assert out.strip().splitlines()[-1] == "6 passed, 0 failed"  # 3 + 1 + 1 (book) + 2; 1 skipped


def test_partly_skipped_stage_still_passes(tmp_path):
    rep = write_report(tmp_path, **{**GOOD, "unit": (0, ["pass", "skip", "skip"])})
    st = by_name(ts.summarise(rep))["unit"]
    assert st.ok and (st.passed, st.skipped) == (1, 2)


def test_no_tests_collected_fails(tmp_path, capsys):
    """pytest exits 5 when it collects nothing; that used to count as a pass."""
    rep = write_report(tmp_path, **{**GOOD, "notebooks": (5, [])})
    st = by_name(ts.summarise(rep))["notebooks"]
    assert not st.ok and st.failed == 1
    assert any("no tests collected" in n for n in st.notes)
    assert ts.main([str(rep)]) == 1
    out = capsys.readouterr().out
    assert "NOTEBOOKS (NBVAL, CPU SCALE) DID NOT RUN" in out
    assert "FAILED stages: notebooks" in out


def test_all_skipped_browser_stage_fails_loudly(tmp_path, capsys):
    rep = write_report(tmp_path, **{**GOOD, "browser": (0, ["skip"] * 4)})
    st = by_name(ts.summarise(rep))["browser"]
    assert not st.ok and st.skipped == 4 and st.passed == 0
    assert ts.main([str(rep)]) == 1
    out = capsys.readouterr().out
    banner = [line for line in out.splitlines() if "DID NOT RUN" in line]
    assert banner and "BROWSER CHECKS (CHROMIUM)" in banner[0] and "chromium" in banner[0]
    assert out.strip().splitlines()[-1].endswith("1 failed")


def test_all_skipped_unit_stage_fails(tmp_path):
    rep = write_report(tmp_path, **{**GOOD, "unit": (0, ["skip", "skip"])})
    assert not by_name(ts.summarise(rep))["unit"].ok


def test_empty_junit_with_rc0_fails(tmp_path):
    rep = write_report(tmp_path, **{**GOOD, "unit": (0, [])})
    st = by_name(ts.summarise(rep))["unit"]
    assert not st.ok and any("no test cases" in n for n in st.notes)


def test_missing_xml_with_rc0_fails(tmp_path):
    rep = write_report(tmp_path, **{**GOOD, "browser": (0, None)})
    st = by_name(ts.summarise(rep))["browser"]
    assert not st.ok and any("browser.xml" in n for n in st.notes)


def test_missing_stage_fails(tmp_path, capsys):
    good = dict(GOOD)
    del good["book"]
    rep = write_report(tmp_path, **good)
    st = by_name(ts.summarise(rep))["book"]
    assert not st.ok and "did not run" in st.notes
    assert ts.main([str(rep)]) == 1
    assert "BOOK BUILD (-W -N) DID NOT RUN" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["fail", "error"])
def test_failed_case_fails_and_is_named(tmp_path, kind):
    rep = write_report(tmp_path, **{**GOOD, "unit": (1, ["pass", kind])})
    st = by_name(ts.summarise(rep))["unit"]
    assert not st.ok and (st.passed, st.failed) == (1, 1)
    assert "FAILED tests.test_x::test_1" in st.notes


def test_nonzero_rc_without_failures_fails(tmp_path):
    """A crash after writing a clean XML (interrupted, internal error) is still a failure."""
    rep = write_report(tmp_path, **{**GOOD, "unit": (2, ["pass"])})
    st = by_name(ts.summarise(rep))["unit"]
    assert not st.ok and "exit status 2" in st.notes


def test_book_warnings_fail(tmp_path):
    rep = write_report(tmp_path, **{**GOOD, "book": (0, "WARNING: x\nWARNING: y\n")})
    st = by_name(ts.summarise(rep))["book"]
    assert not st.ok and "2 warning(s)" in st.notes


def test_unreadable_xml_fails(tmp_path):
    rep = write_report(tmp_path, **GOOD)
    (rep / "notebooks.xml").write_text("<testsuites><testcase")
    assert not by_name(ts.summarise(rep))["notebooks"].ok


def test_garbled_rc_counts_as_failure(tmp_path):
    rep = write_report(tmp_path, **GOOD)
    (rep / "unit.rc").write_text("oops")
    assert not by_name(ts.summarise(rep))["unit"].ok


def test_bad_report_dir(tmp_path):
    with pytest.raises(ValueError, match="report"):
        ts.summarise(tmp_path / "nope")
    assert ts.main([]) == 2
