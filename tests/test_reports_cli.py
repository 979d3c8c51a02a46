"""`kvmtest compare` and `kvmtest run`'s pytest arguments (no KVM needed)."""

import json

import pytest

from kvmtest import cli
from kvmtest.reports import junit
from kvmtest.reports.compare import compare
from kvmtest.reports.results import Result

FP = {"host": "h", "kernel": {"release": "6.1"}}


def _results(statuses: dict) -> list[Result]:
    return [Result("suites.a.test_x", name, status, host="h") for name, status in statuses.items()]


def _write(path, statuses: dict):
    junit.write(path, [junit.suite_from_results(_results(statuses), "s", "h", {})])
    return str(path)


# --- compare ----------------------------------------------------------------------------------


def test_a_run_that_lost_its_coverage_regressed(tmp_path, capsys):
    """A real run against one that skipped everything (no /dev/kvm): every test that ran is lost
    coverage, and compare exits 1."""
    base = _write(tmp_path / "real.xml", {"t1": "passed", "t2": "xfailed", "t3": "xpassed"})
    new = _write(tmp_path / "nodev.xml", {"t1": "skipped", "t2": "skipped", "t3": "skipped"})
    assert cli.main(["compare", base, new, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["regressed"] and [row["id"].split("::")[1] for row in report["lost_coverage"]] == ["t1", "t2", "t3"]
    assert report["fixed"] == [] and report["new_failures"] == []
    assert cli.main(["compare", new, base]) == 0  # gaining coverage is no regression


def test_a_test_that_went_missing_is_lost_coverage():
    c = compare(_results({"t1": "passed", "t2": "passed"}), _results({"t1": "passed"}))
    assert [row[0].split("::")[1] for row in c.lost_coverage] == ["t2"] and c.regressed


@pytest.mark.parametrize("before", ["xpassed", "failed"])
def test_xpass_then_skipped_is_not_fixed(before):
    """A non-strict XPASS (xpassed) or a strict one (failed) that is now skipped was not fixed:
    it went untested."""
    c = compare(_results({"t": before}), _results({"t": "skipped"}))
    assert c.fixed == [] and [row[1:] for row in c.lost_coverage] == [(before, "skipped")] and c.regressed


def test_failed_then_xpassed_is_fixed():
    c = compare(_results({"t": "failed"}), _results({"t": "xpassed"}))
    assert [row[1:] for row in c.fixed] == [("failed", "xpassed")] and not c.regressed


# --- kvmtest run's pytest arguments -------------------------------------------------------------


def _argv(tmp_path, *words):
    args, extra = cli.build_parser().parse_known_args(["run", "--report-dir", str(tmp_path), *words])
    return cli.pytest_args(args, extra, FP)


@pytest.mark.parametrize("words,kept", [
    (["--kvm-modes", "long64"], ["--kvm-modes=long64"]),
    (["--kvm-guest-timeout", "5", "-k", "smoke", "-m", "not slow"], ["--kvm-guest-timeout=5", "-k", "smoke", "-m",
                                                                     "not slow"]),
    (["--kvm-no-known-issues", "-p", "no:cacheprovider"], ["--kvm-no-known-issues", "-p", "no:cacheprovider"]),
])
def test_an_option_value_written_with_a_space_is_no_test_path(tmp_path, words, kept):
    """`kvmtest run --kvm-X VALUE` runs the default suites with the option; VALUE is not a test path."""
    argv, _ = _argv(tmp_path, *words)
    assert argv[0] == cli._default_suites()
    assert argv[-len(kept):] == kept


def test_test_paths_replace_the_default_suites(tmp_path):
    argv, _ = _argv(tmp_path, "--kvm-modes", "real", "suites/smoke", "-k", "x")
    assert cli._default_suites() not in argv and argv[-1] == "suites/smoke" and "--kvm-modes=real" in argv


def test_report_options_given_as_kvm_options_are_the_ones_reported(tmp_path):
    """--kvm-junit/--kvm-report-dir among the pytest arguments name the files `kvmtest run` writes
    and prints (not a second, different set)."""
    argv, paths = _argv(tmp_path, "--kvm-junit", str(tmp_path / "mine.xml"), "--kvm-report-dir", str(tmp_path / "r"))
    assert paths["junit"] == tmp_path / "mine.xml" and paths["ktap"].parent == tmp_path / "r"
    assert [a for a in argv if a.startswith("--kvm-junit")] == [f"--kvm-junit={tmp_path / 'mine.xml'}"]


def test_xdist_disabled_gets_no_worker_count(tmp_path):
    argv, _ = _argv(tmp_path, "-p", "no:xdist")
    assert "-n" not in argv and argv[-2:] == ["-p", "no:xdist"]
    argv, _ = _argv(tmp_path, "-j", "3")
    assert argv[argv.index("-n") + 1] == "3"
