"""kvmtest's JUnit files as CI systems read them: Jenkins' junit-10.xsd rules, GitLab's rules, and
real consumer libraries (junitparser, junit2html). No KVM needed."""

import os
import xml.etree.ElementTree as ET

import pytest
from junit_rules import gitlab_problems, jenkins_problems

from kvmtest import cli
from kvmtest.reports.results import read_junit

DEMO = """
import os
import pytest

@pytest.mark.modes("real", "long64")
def test_pass(mode):
    pass

def test_fail():
    assert 1 == 2, "expected 2, observed 1"

def test_skip():
    pytest.skip("needs KVM_CAP_NOTHING")

@pytest.mark.xfail(reason="known host deviation", strict=True)
def test_xfail():
    assert False

@pytest.mark.xfail(reason="the host may not deviate", strict=False)
def test_xpass():
    pass

@pytest.mark.xfail(reason="deviation gone", strict=True)
def test_xpass_strict():
    pass

@pytest.fixture
def noisy_teardown():
    yield
    print("teardown says hello")

def test_fail_with_teardown_output(noisy_teardown):
    print("guest said \\x00\\x1b bytes")  # not XML 1.0 characters: the file must stay readable
    assert False, "failed in call"
"""


@pytest.fixture
def junit(pytester, tmp_path):
    pytester.makepyfile(test_demo=DEMO)
    path = tmp_path / "demo.xml"
    pytester.runpytest(f"--kvm-junit={path}", "-p", "no:cacheprovider")
    return path


def test_jenkins_junit10_accepts_kvmtest_junit(junit, tmp_path):
    """Every element and attribute is one junit-10.xsd allows where it stands (no `status` on
    <testcase>, no `disabled` on <testsuite(s)>), with its required attributes."""
    assert jenkins_problems(ET.parse(junit).getroot()) == []
    merged, imported, tap = tmp_path / "merged.xml", tmp_path / "imported.xml", tmp_path / "in.tap"
    assert cli.main(["merge", str(junit), "-o", str(merged)]) == 0
    tap.write_text("TAP version 13\n1..3\nok 1 - apic\nnot ok 2 - emulator\nok 3 - smm # SKIP no SMM\n")
    assert cli.main(["import-tap", str(tap), "-o", str(imported)]) == 0
    for path in (merged, imported):
        assert jenkins_problems(ET.parse(path).getroot()) == [], path.name


def test_the_jenkins_rules_can_fail_and_accept_pytest_own_junit(pytester, tmp_path):
    """The rule check is not vacuous: it refuses the attributes Jenkins refuses, and accepts
    pytest's own --junitxml, which Jenkins reads (without user properties: pytest writes those as
    <properties> inside <testcase>, which junit-10.xsd refuses)."""
    bad = ET.fromstring('<testsuites disabled="0"><testsuite name="s" tests="1" failures="0" errors="0" '
                        'time="1e-06"><testcase name="t" status="passed"/></testsuite></testsuites>')
    assert len(jenkins_problems(bad)) == 3
    pytester.makepyfile(test_demo=DEMO.replace('@pytest.mark.modes("real", "long64")\ndef test_pass(mode):',
                                               '@pytest.mark.parametrize("kind", ["real", "long64"])\n'
                                               'def test_pass(kind):'))
    own = tmp_path / "pytest.xml"
    pytester.runpytest(f"--junitxml={own}", "-p", "no:cacheprovider")
    assert jenkins_problems(ET.parse(own).getroot()) == []


def test_gitlab_reads_each_result_from_its_content(junit):
    """GitLab keys tests by classname+name and reads failure/skipped text from the element body."""
    assert gitlab_problems(ET.parse(junit).getroot()) == []


def test_junitparser_reads_outcomes_as_pytest_has_them(junit):
    """junitparser (PyPI) sees pytest's verdicts: xfail as <skipped type="pytest.xfail">, skip as
    type="pytest.skip", a non-strict XPASS passed, a strict XPASS failed, and the counts."""
    from junitparser import Failure, JUnitXml, Skipped

    suites = list(JUnitXml.fromfile(str(junit)))
    assert len(suites) == 1
    suite = suites[0]
    cases = {case.name: case for case in suite}
    kinds = {name: [(type(r).__name__, r.type, r.message) for r in case.result] for name, case in cases.items()}
    assert kinds["test_xfail"] == [("Skipped", "pytest.xfail", "known host deviation")]
    assert kinds["test_skip"] == [("Skipped", "pytest.skip", "needs KVM_CAP_NOTHING")]
    assert kinds["test_xpass"] == [] and cases["test_xpass"].is_passed
    assert [type(r) for r in cases["test_xpass_strict"].result] == [Failure]
    assert isinstance(cases["test_fail"].result[0], Failure)
    assert "expected 2, observed 1" in cases["test_fail"].result[0].text
    assert not any(isinstance(r, Skipped) for r in cases["test_pass[real]"].result)
    assert (suite.tests, suite.failures, suite.errors, suite.skipped) == (8, 3, 0, 2)


def test_junit2html_renders_every_test(junit, tmp_path):
    """junit2html (PyPI) parses the file and renders each test with its outcome."""
    from junit2htmlreport import parser

    report = parser.Junit(str(junit))
    outcomes = {case.name: case.outcome() for suite in report.suites for case in suite.all()}
    assert outcomes["test_fail"] == "failed" and outcomes["test_xpass_strict"] == "failed"
    assert outcomes["test_xpass"] == "passed" and outcomes["test_skip"] == "skipped"
    assert "test_fail_with_teardown_output" in report.html()


def test_failure_diagnostics_survive_the_teardown_report(junit):
    """The sections a failure adds in its call phase (here kvmtest's ioctl trace) stay in the
    test's system-out after the teardown report, next to the teardown's own output."""
    from junitparser import JUnitXml

    case = next(c for s in JUnitXml.fromfile(str(junit)) for c in s if c.name == "test_fail_with_teardown_output")
    out = case.system_out
    assert "--- kvmtest trace ---" in out, out
    assert "teardown says hello" in out and "guest said \\x00\\x1b bytes" in out, out


def test_readers_agree_with_pytest_on_every_status(junit):
    statuses = {r.name: r.status for r in read_junit(junit)}
    assert statuses == {"test_pass[real]": "passed", "test_pass[long64]": "passed", "test_fail": "failed",
                        "test_skip": "skipped", "test_xfail": "xfailed", "test_xpass": "xpassed",
                        "test_xpass_strict": "failed", "test_fail_with_teardown_output": "failed"}


def test_report_dir_writes_all_three_reports(pytester, tmp_path):
    """--kvm-report-dir alone writes JUnit, KTAP and HTML there, under one name."""
    pytester.makepyfile(test_demo="def test_a():\n    pass\n")
    out = tmp_path / "out"
    pytester.runpytest(f"--kvm-report-dir={out}", "-p", "no:cacheprovider")
    files = sorted(os.listdir(out))
    assert [f.rsplit(".", 1)[1] for f in files] == ["html", "ktap", "xml"], files
    assert len({f.rsplit(".", 1)[0] for f in files}) == 1 and files[0].startswith("kvmtest-")
    assert [r.status for r in read_junit(out / files[2])] == ["passed"]
