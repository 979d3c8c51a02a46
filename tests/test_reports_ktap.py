"""KTAP out and KTAP/TAP in, against Documentation/dev-tools/ktap.rst, TAP 13 as tap.py (PyPI)
reads it, and kvmtest's own JUnit names (no KVM needed)."""

import unittest

import pytest
from ktap_rules import ktap_problems

from kvmtest import cli
from kvmtest.reports import ktap
from kvmtest.reports.results import Result, read_junit, read_tap

DEMO = """
import pytest

@pytest.mark.modes("real", "long64")
def test_pass(mode):
    pass

def test_fail():
    assert 0, "guest raised #GP(0) at rip=0x1000, expected #UD"

def test_skip():
    pytest.skip("needs KVM_CAP_NOTHING")

@pytest.mark.xfail(reason="KVM injects #GP, the SDM says #UD", strict=True)
def test_xfail():
    assert False

@pytest.mark.xfail(reason="maybe fixed", strict=False)
def test_xpass():
    pass

@pytest.fixture
def broken():
    raise RuntimeError("setup broke")

def test_error(broken):
    pass
"""


@pytest.fixture
def run(pytester, tmp_path):
    pytester.makepyfile(test_demo=DEMO)
    junit, ktap_path = tmp_path / "r.xml", tmp_path / "r.ktap"
    pytester.runpytest(f"--kvm-junit={junit}", f"--kvm-ktap={ktap_path}", "-p", "no:cacheprovider")
    return junit, ktap_path.read_text()


# --- KTAP out ---------------------------------------------------------------------------------


def test_kvmtest_ktap_follows_ktap_rst(run):
    """Two spaces a level, plans that match, numbering from 1, directives where ktap.rst puts
    them, a failing parent for a failing subtest, and each failure's reason before its line."""
    assert ktap_problems(run[1]) == [], run[1]


def test_the_ktap_rules_can_fail():
    four_spaces = "KTAP version 1\n1..1\n    KTAP version 1\n    1..1\n    ok 1 a\nok 1 s\n"
    assert any("indented" in p for p in ktap_problems(four_spaces))
    no_reason = "KTAP version 1\n1..1\nnot ok 1 a\n"
    assert ktap_problems(no_reason) == ["line 3: 'not ok' without its reason in a diagnostic line before it"]


def test_reasons_keep_their_hash_and_lose_pytest_prefix(run):
    lines = [line.strip() for line in run[1].splitlines()]
    assert "# AssertionError: guest raised #GP(0) at rip=0x1000, expected #UD" in lines
    assert lines[lines.index("# AssertionError: guest raised #GP(0) at rip=0x1000, expected #UD") + 1] \
        == "not ok 2 test_demo::test_fail"
    assert "ok 6 test_demo::test_xfail # XFAIL KVM injects #GP, the SDM says #UD" in lines
    assert "ok 5 test_demo::test_skip # SKIP needs KVM_CAP_NOTHING" in lines  # not "# SKIP Skipped: needs"
    assert any(line.startswith("not ok 1 test_demo::test_error # ERROR error in setup: RuntimeError") for line in lines)


def test_a_description_never_carries_a_hash_and_reads_back_whole():
    """ktap.rst: a description "can't include #"; kvmtest escapes it (and '%' and newlines) in its
    ids, and reading them back restores the id, spaces included."""
    ids = [("suites.a.test_x", "test_y[#GP]"), ("tests.test_asm", "t[1: dec ecx; jnz 1b  # loop]"),
           ("tests.test_b", "t[a\nb %23]")]
    text = ktap.render([Result(c, n, "passed") for c, n in ids])
    assert "ok 1 suites.a.test_x::test_y[%23GP]" in [line.strip() for line in text.splitlines()]
    assert ktap_problems(text) == []
    assert sorted((r.classname, r.name) for r in read_tap(text)) == sorted(ids)


def test_kvmtest_ktap_reads_back_with_the_junit_names(run):
    """Reading kvmtest's KTAP gives every test of its JUnit file, by the same classname and name,
    with the same status."""
    junit, text = run
    expected = {(r.classname, r.name): r.status for r in read_junit(junit)}
    back = {(r.classname, r.name): r.status for r in read_tap(text)}
    assert back == expected
    assert {r.name: r.message for r in read_tap(text)}["test_fail"] \
        == "AssertionError: guest raised #GP(0) at rip=0x1000, expected #UD"


def test_top_level_of_kvmtest_ktap_is_valid_tap(run, tmp_path):
    """ktap.rst: KTAP "should also form valid TAP output" (nested results may be lost): tap.py
    sees one result per area, failed when the area has a failure, and no TAP error."""
    from tap.loader import Loader

    path = tmp_path / "r.tap"
    path.write_text(run[1].replace("KTAP version 1", "TAP version 13", 1))
    result = unittest.TestResult()
    Loader().load_suite_from_file(str(path)).run(result)
    assert result.testsRun == 1 and len(result.failures) == 1
    assert result.failures[0][0].shortDescription() == "test_demo" and not result.errors


# --- KTAP / TAP in ----------------------------------------------------------------------------

CRASHED = "TAP version 13\n1..5\nok 1 - apic\nok 2 - emulator\nok 3 - smm\nBail out! qemu died\n"
NESTED_WITHOUT_SUBTEST_LINES = """KTAP version 1
1..2
  KTAP version 1
  1..2
    KTAP version 1
    1..2
    ok 1 inner_a
    # inner_b: expected 1, got 2
    not ok 2 inner_b
  not ok 1 middle
  ok 2 leaf # SKIP no hardware
# outer failed
not ok 1 outer
ok 2 lonely
"""


def _rows(results):
    return [(r.classname, r.name, r.status) for r in results]


def test_a_crashed_run_is_not_green():
    """A plan of 5, three oks, then 'Bail out!': the bail-out is an error, the two tests that never
    reported are failures."""
    results = read_tap(CRASHED, default_suite="kut")
    assert _rows(results) == [("kut", "apic", "passed"), ("kut", "emulator", "passed"), ("kut", "smm", "passed"),
                              ("kut", "Bail out!", "error"), ("kut", "test 4", "failed"), ("kut", "test 5", "failed")]
    assert "qemu died" in results[3].message and "1..5" in results[4].message


def test_nested_ktap_without_subtest_lines_counts_only_the_leaves():
    """Parents are named by their own result lines; those lines are not tests."""
    results = read_tap(NESTED_WITHOUT_SUBTEST_LINES)
    assert _rows(results) == [("outer::middle", "inner_a", "passed"), ("outer::middle", "inner_b", "failed"),
                              ("outer", "leaf", "skipped"), ("tap", "lonely", "passed")]


def test_diagnostics_and_skip_reasons_are_kept():
    results = {r.name: r for r in read_tap(NESTED_WITHOUT_SUBTEST_LINES)}
    assert results["inner_b"].message == "inner_b: expected 1, got 2"
    assert results["leaf"].message == "no hardware"
    kselftest = ("TAP version 13\n1..2\n# selftests: kvm: amx_test\n# SKIP: AMX not supported\n"
                 "ok 1 selftests: kvm: amx_test # SKIP\nok 2 selftests: kvm: smm_test # skipped: no SMM\n")
    assert [r.message for r in read_tap(kselftest)] == ["SKIP: AMX not supported", "no SMM"]
    whole_file = read_tap("TAP version 13\n1..0 # SKIP KVM_CAP_X86_SMM unavailable\n")
    assert _rows(whole_file) == [("tap", "all tests", "skipped")]
    assert whole_file[0].message == "KVM_CAP_X86_SMM unavailable"


def test_a_parent_that_fails_alone_is_a_failure():
    text = "KTAP version 1\n1..1\n  KTAP version 1\n  # Subtest: s\n  1..1\n  ok 1 a\nnot ok 1 s\n"
    assert _rows(read_tap(text)) == [("s", "a", "passed"), ("s", "s", "failed")]


TAP13 = [
    CRASHED,
    "TAP version 13\n1..3\nok 1 - apic (26 tests)\nnot ok 2 - emulator\nok 3 - smm # SKIP no SMM\n",
    "TAP version 13\n1..4\nok 1 a\nok 2 b\n",
    "TAP version 13\nok 1 a\nnot ok 2 b # TODO known\nok 3 c\n1..3\n",
    "TAP version 13\n1..2\nok 1 a\nok 2 b\n",
]


@pytest.mark.parametrize("text", TAP13, ids=["bail-out", "kvm-unit-tests", "short-plan", "todo-plan-last", "green"])
def test_tap13_verdicts_agree_with_tap_py(text, tmp_path):
    """For TAP 13 input, tap.py and kvmtest agree on passed, skipped and whether the run failed."""
    from tap.loader import Loader

    path = tmp_path / "in.tap"
    path.write_text(text)
    theirs = unittest.TestResult()
    Loader().load_suite_from_file(str(path)).run(theirs)
    ours = read_tap(text)
    their_passed = theirs.testsRun - len(theirs.failures) - len(theirs.errors) - len(theirs.skipped) \
        - len(theirs.expectedFailures) - len(theirs.unexpectedSuccesses)
    assert sum(r.status == "passed" for r in ours) == their_passed
    assert sum(r.status == "skipped" for r in ours) == len(theirs.skipped)
    assert any(r.status in ("failed", "error") for r in ours) == (not theirs.wasSuccessful())


def test_import_tap_of_a_crashed_run_reports_the_failures(tmp_path, capsys):
    src, out = tmp_path / "crash.tap", tmp_path / "crash.xml"
    src.write_text(CRASHED)
    assert cli.main(["import-tap", str(src), "-o", str(out), "--suite", "kvm-unit-tests"]) == 0
    assert "6 results (3 failed or errors)" in capsys.readouterr().out
    assert sorted(r.status for r in read_junit(out)) == ["error", "failed", "failed", "passed", "passed", "passed"]
    assert cli.main(["import-tap", str(tmp_path / "missing.tap"), "-o", str(out)]) == 2
    assert "missing.tap" in capsys.readouterr().err
