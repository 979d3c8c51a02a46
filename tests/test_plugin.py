"""The pytest plugin, driven through pytester: options, markers, skips, known issues, JUnit."""

import dataclasses
import textwrap

import pytest

ALWAYS = 'kernel_min = "0"'  # a host predicate every host satisfies


def _issue(tests, host=ALWAYS, extra=""):
    return textwrap.dedent(f"""\
        [[issue]]
        id = "demo"
        tests = {tests!r}
        reason = "demo deviation"
        {extra}
        [issue.host]
        {host}
        [issue.evidence]
        contract = "the documentation says x"
        observed = "the host did y"
        proof = "z"
        """).replace("'", '"')


@pytest.fixture
def run(pytester, monkeypatch):
    for var in ("KVMTEST_GUEST_TIMEOUT", "KVMTEST_DEVICE", "KVMTEST_KNOWN_ISSUES", "KVMTEST_MODES"):
        monkeypatch.delenv(var, raising=False)
    return pytester


SHOW_TIMEOUT = """
def test_show(pytestconfig):
    from kvmtest.plugin import settings
    print("TIMEOUT", settings(pytestconfig)["kvm_guest_timeout"])
"""


def test_default_timeout(run):
    run.makepyfile(SHOW_TIMEOUT)
    assert "TIMEOUT 10.0" in run.runpytest("-s").stdout.str()


def test_env_beats_ini_and_cli_beats_env(run, monkeypatch):
    run.makepyfile(SHOW_TIMEOUT)
    run.makeini("[pytest]\nkvm_guest_timeout = 5\n")
    assert "TIMEOUT 5.0" in run.runpytest("-s").stdout.str()
    monkeypatch.setenv("KVMTEST_GUEST_TIMEOUT", "3")
    assert "TIMEOUT 3.0" in run.runpytest("-s").stdout.str()
    assert "TIMEOUT 2.0" in run.runpytest("-s", "--kvm-guest-timeout=2").stdout.str()


def test_bad_value_names_value_and_source(run, monkeypatch):
    run.makepyfile(SHOW_TIMEOUT)
    monkeypatch.setenv("KVMTEST_GUEST_TIMEOUT", "soon")
    result = run.runpytest()
    result.stderr.fnmatch_lines(["*--kvm-guest-timeout='soon' (from environment KVMTEST_GUEST_TIMEOUT): not a number*"])
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_unknown_mode_in_option(run):
    run.makepyfile(SHOW_TIMEOUT)
    result = run.runpytest("--kvm-modes=long64,warp")
    result.stderr.fnmatch_lines(["*unknown CPU mode(s) warp*"])


def test_modes_marker_gives_readable_ids(run):
    run.makepyfile("""
        import pytest
        @pytest.mark.modes("real", "long64-cpl3")
        def test_m(mode):
            assert mode in ("real", "long64-cpl3")
    """)
    result = run.runpytest("-v", "--strict-markers")
    result.stdout.fnmatch_lines(["*test_m[[]real[]] PASSED*", "*test_m[[]long64-cpl3[]] PASSED*"])


def test_modes_option_filters(run):
    run.makepyfile("""
        import pytest
        @pytest.mark.modes("all")
        def test_m(mode):
            pass
    """)
    result = run.runpytest("-v", "--kvm-modes=real,pm32")
    result.assert_outcomes(passed=2)


def test_unknown_mode_in_marker_fails_collection(run):
    run.makepyfile("""
        import pytest
        @pytest.mark.modes("long128")
        def test_m(mode):
            pass
    """)
    result = run.runpytest()
    result.stdout.fnmatch_lines(["*unknown CPU mode 'long128'*"])


def test_missing_default_device_skips_with_the_reason(run, monkeypatch):
    """No KVM on the machine (the default device absent): every test needing it skips, saying so."""
    from kvmtest import options

    opts = [dataclasses.replace(o, default="/nonexistent/kvm") if o.name == "kvm_device" else o
            for o in options.OPTIONS]
    monkeypatch.setattr(options, "OPTIONS", opts)
    run.makepyfile("def test_k(kvm):\n    pass\n")
    result = run.runpytest("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*no /nonexistent/kvm (is KVM loaded?)*"])


@pytest.mark.parametrize("how", ["option", "environment"])
def test_named_missing_device_is_one_usage_error(run, monkeypatch, how):
    """A device the user named that does not exist: one usage error at start, not every test skipped."""
    run.makepyfile("def test_k(kvm):\n    pass\n")
    if how == "environment":
        monkeypatch.setenv("KVMTEST_DEVICE", "/nonexistent/kvm")
    result = run.runpytest(*(["--kvm-device=/nonexistent/kvm"] if how == "option" else []))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*'/nonexistent/kvm': no /nonexistent/kvm (is KVM loaded?): nothing can be tested*"])


def test_unopenable_device_is_one_usage_error(run, tmp_path):
    run.makepyfile("def test_k(kvm):\n    pass\n")
    result = run.runpytest(f"--kvm-device={tmp_path}")  # a directory: exists, cannot be opened read-write
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{tmp_path}: cannot open*"])


def test_requires_cap_skips_naming_the_capability(run):
    run.makepyfile("""
        import pytest
        @pytest.mark.requires_cap("KVM_CAP_S390_PSW_NOT_REAL", 1)
        def test_c():
            pass
    """)
    result = run.runpytest("-rs")
    result.stdout.fnmatch_lines(["*unknown capability*"])


def this_build() -> str:
    from kvmtest import fingerprint

    return fingerprint.build_id(fingerprint.collect("/nonexistent/kvm"))


def seen(build: str) -> str:
    return f'[[issue.seen]]\nbuild = "{build}"\ndate = "2026-11-30"\nresult = "1 of 1 tests failed"\n'


def test_known_issue_makes_a_strict_xfail(run):
    run.makepyfile(test_demo="def test_bad():\n    assert False\n\ndef test_good():\n    pass\n")
    issues = run.makefile(".toml", known=_issue(["test_demo.py::test_bad", "test_demo.py::test_good"])
                          + seen(this_build()))
    result = run.runpytest(f"--kvm-known-issues={issues}", "-rxX")
    result.assert_outcomes(xfailed=1, failed=1)  # test_good XPASSes, which strict turns into a failure
    result.stdout.fnmatch_lines(["*known issue demo: demo deviation*"])


def test_intermittent_known_issue_is_a_non_strict_xfail(run):
    run.makepyfile(test_demo="def test_bad():\n    assert False\n\ndef test_good():\n    pass\n")
    issues = run.makefile(".toml", known=_issue(["test_demo.py::test_bad", "test_demo.py::test_good"],
                                                extra="intermittent = true"))
    result = run.runpytest(f"--kvm-known-issues={issues}", "-rxX")
    result.assert_outcomes(xfailed=1, xpassed=1)  # a run where the host behaved passes
    result.stdout.fnmatch_lines(["*known issue demo: demo deviation (intermittent*"])


def test_intermittent_must_be_a_boolean(run):
    run.makepyfile("def test_x():\n    pass\n")
    issues = run.makefile(".toml", known=_issue(["test_x"], extra='intermittent = "sometimes"'))
    result = run.runpytest(f"--kvm-known-issues={issues}")
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*'intermittent' must be true or false*"])


def test_known_issue_for_another_host_does_not_apply(run):
    run.makepyfile(test_demo="def test_bad():\n    assert False\n")
    issues = run.makefile(".toml", known=_issue(["test_demo.py::*"], host='module = "kvm_nonexistent"'))
    run.runpytest(f"--kvm-known-issues={issues}").assert_outcomes(failed=1)


def test_known_issue_globs_treat_brackets_literally(run):
    run.makepyfile(test_demo="""
        import pytest
        @pytest.mark.modes("real", "long64")
        def test_m(mode):
            assert mode != "long64"
    """)
    issues = run.makefile(".toml", known=_issue(["test_demo.py::test_m[long64]"]))
    run.runpytest(f"--kvm-known-issues={issues}").assert_outcomes(passed=1, xfailed=1)


def test_malformed_known_issue_file_names_file_and_line(run):
    run.makepyfile("def test_x():\n    pass\n")
    text = _issue(["x"]).replace('proof = "z"\n', "")
    issues = run.makefile(".toml", known="# comment\n\n" + text)
    result = run.runpytest(f"--kvm-known-issues={issues}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*known-issue file {issues} line 3 (issue 'demo'): 'evidence.proof' must say*"])


def test_toml_syntax_error_names_the_line(run):
    run.makepyfile("def test_x():\n    pass\n")
    issues = run.makefile(".toml", known="[[issue]]\nid = \nreason = \"x\"\n")
    result = run.runpytest(f"--kvm-known-issues={issues}")
    result.stderr.fnmatch_lines([f"*known-issue file {issues}: *line 2*"])


def test_header_shows_the_fingerprint(run):
    run.makepyfile("def test_x():\n    pass\n")
    run.runpytest().stdout.fnmatch_lines(["kvmtest: kernel *, backend *, MMU *", "kvmtest: * known-issue entries*"])


def test_junit_carries_fingerprint_regression_and_mode(run, tmp_path):
    run.makepyfile(test_j="""
        import pytest
        @pytest.mark.regression(commit="abc123", cve="CVE-2021-38198")
        @pytest.mark.modes("real")
        def test_r(mode):
            assert 1 == 2, "expected 2, observed 1"
    """)
    junit = tmp_path / "out.xml"
    run.runpytest(f"--kvm-junit={junit}", "-p", "no:cacheprovider")
    xml = junit.read_text()
    assert 'name="test_r[real]"' in xml and 'classname="test_j"' in xml
    assert "regression_cve: CVE-2021-38198" in xml and "regression_commit: abc123" in xml
    assert "cpu_mode: real" in xml
    assert 'name="kvmtest.kernel.release"' in xml and 'name="kvmtest.mmu.mode"' in xml
    assert "expected 2, observed 1" in xml.split("<failure", 1)[1]
