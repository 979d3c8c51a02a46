"""A run cut short must not read as green, and a mode filter that empties a test's modes must not
break the run under xdist (findings of a fresh-eyes test of the reports)."""

import xml.etree.ElementTree as ET

import pytest


@pytest.fixture
def run(pytester, monkeypatch):
    monkeypatch.setenv("KVMTEST_PLUGIN", "1")
    return pytester


def _suite(path):
    root = ET.parse(path).getroot()
    return root if root.tag == "testsuite" else root[0]


def test_tests_an_interrupted_run_never_reached_are_errors_in_every_report(run, tmp_path):
    run.makepyfile(test_cut="""
        def test_a():
            pass

        def test_b():
            raise KeyboardInterrupt

        def test_c():
            pass
    """)
    junit, ktap = tmp_path / "r.xml", tmp_path / "r.ktap"
    run.runpytest_subprocess("-p", "no:cacheprovider", f"--kvm-junit={junit}", f"--kvm-ktap={ktap}")
    suite = _suite(junit)
    assert (suite.get("tests"), suite.get("errors")) == ("3", "2"), ET.tostring(suite)[:400]
    text = ktap.read_text()
    assert "not ok 3 test_cut::test_c # ERROR no result: the run was interrupted before this test finished" in text
    assert "\nnot ok 1 " in text  # the area is not ok


def test_a_mode_filter_that_leaves_a_test_no_mode_works_under_xdist(run, tmp_path):
    run.makepyfile(test_modes="""
        import pytest

        @pytest.mark.modes("real")
        def test_real_only(mode):
            pass

        @pytest.mark.modes("real", "long64")
        def test_both(mode):
            pass
    """)
    junit = tmp_path / "r.xml"
    result = run.runpytest_subprocess("-p", "no:cacheprovider", "-n", "1", "--kvm-modes=long64", f"--kvm-junit={junit}")
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    result.assert_outcomes(passed=1, skipped=1)
    assert "cpu_mode: long64" in junit.read_text()
