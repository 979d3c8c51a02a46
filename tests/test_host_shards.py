"""kvmtest.host_shards: `kvmtest run -j N` as N pytest processes claiming tests from a shared counter
(kvmtest.shard_claims), their JUnit merged into the run's reports (no /dev/kvm needed: the demo tests
touch no KVM)."""

import os
import signal
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from kvmtest import host_shards
from kvmtest.reports.results import read_junit

DEMO = """import os, signal, pytest

def test_a_pass():
    pass

def test_b_fail():
    assert 1 == 2, "expected 2, observed 1"

def test_c_skip():
    pytest.skip("not here")

@pytest.mark.xfail(reason="known", strict=True)
def test_d_xfail():
    assert False

@pytest.mark.parametrize("i", range(4))
def test_e_param(i):
    if os.environ.get("DEMO_KILL") == str(i):
        os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("options,ok", [
    ([], True),
    ([("-k", "smoke"), ("-m", "not slow"), ("--kvm-modes", "long64"), ("-q", None), ("-v", None)], True),
    ([("-kexpr_with_x", None)], True),      # -k's value may hold any letter
    ([("-x", None)], False), ([("-sx", None)], False), ([("--exitfirst", None)], False),
    ([("--maxfail", "3")], False), ([("--pdb", None)], False), ([("--lf", None)], False),
    ([("--collect-only", None)], False), ([("--sw", None)], False),
])
def test_only_options_every_shard_can_honour_allow_shards(options, ok):
    assert host_shards.shardable(options) is ok


def test_a_shard_drops_xdist_and_the_report_options_and_claims_its_tests(tmp_path):
    argv = ["suites", "-v", "--kvm-junit=r/x.xml", "--kvm-ktap=r/x.ktap", "--kvm-html=r/x.html",
            "--kvm-report-dir=r", "--kvm-baseline=old.xml", "--kvm-device=/dev/kvm", "-n", "2", "-k", "smoke"]
    out = host_shards.shard_argv(argv, tmp_path / "claims", tmp_path / "s2.xml", Path("r/x"))
    assert out == ["-o", "console_output_style=classic", "suites", "-v", "--kvm-device=/dev/kvm", "-k", "smoke",
                   "-p", "no:xdist", "-p", "kvmtest.shard_claims", f"--kvm-shard-claims={tmp_path / 'claims'}",
                   f"--kvm-shard-log={tmp_path / 's2.log'}", "-p", "kvmtest.kernelvm.progress",
                   "--kvm-vm-merged-into=r/x", f"--kvm-junit={tmp_path / 's2.xml'}"]


def _run(tmp_path, monkeypatch, n, capsys):
    (tmp_path / "test_demo.py").write_text(DEMO)
    monkeypatch.chdir(tmp_path)
    paths = {kind: tmp_path / "r" / f"run.{suffix}" for kind, suffix in (("junit", "xml"), ("ktap", "ktap"),
                                                                          ("html", "html"))}
    code = host_shards.run(["test_demo.py", "-p", "no:cacheprovider", "-p", "no:randomly"], n, paths,
                           {"host": "demo-host", "kernel": {"release": "6.1"}})
    return code, paths, capsys.readouterr().out


def test_shards_run_every_test_once_and_the_reports_hold_them_all(tmp_path, monkeypatch, capsys):
    code, paths, out = _run(tmp_path, monkeypatch, 2, capsys)
    status = {f"{r.classname}::{r.name}": r.status for r in read_junit(paths["junit"])}
    assert status == {"test_demo::test_a_pass": "passed", "test_demo::test_b_fail": "failed",
                      "test_demo::test_c_skip": "skipped", "test_demo::test_d_xfail": "xfailed",
                      **{f"test_demo::test_e_param[{i}]": "passed" for i in range(4)}}
    assert code == 1  # a test failed
    assert "[1/2] " in out and "[2/2] " in out and "[waits] " not in out  # no test marked waits: no waits shard
    assert "kvmtest run: 2 shards: 1 failed, 5 passed, 1 skipped, 1 xfailed" in out
    assert "ok 1 " in paths["ktap"].read_text() and "test_b_fail" in paths["html"].read_text()
    suite = ET.parse(paths["junit"]).getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("8", "1", "2")
    assert not list(paths["junit"].parent.glob(".kvmtest-shards-*"))  # the shards' own files are gone


def test_a_shard_that_dies_is_an_error_naming_it_and_the_test_it_died_in(tmp_path, monkeypatch, capsys):
    """A shard killed outright (here by its own test, as a guest that takes the process down would)
    writes no report: the run fails with an error naming the shard, the test it died in is an error
    naming that, and every other test appears once, with the verdict its shard's log gave or, for one
    it had claimed and not started, an error; nothing is simply missing."""
    monkeypatch.setenv("DEMO_KILL", "1")
    code, paths, _ = _run(tmp_path, monkeypatch, 2, capsys)
    assert code == 1
    results = read_junit(paths["junit"])
    lost = [r for r in results if r.classname == "kvmtest-shard"]
    assert len(lost) == 1 and lost[0].status == "error"
    assert f"killed by signal {signal.SIGKILL}" in lost[0].message
    assert "its tests are reported from its log, without details" in lost[0].message
    tests = {r.name: (r.status, r.message) for r in results if r.classname != "kvmtest-shard"}
    assert len(tests) == len([r for r in results if r.classname != "kvmtest-shard"]) == 8
    assert tests["test_e_param[1]"][0] == "error"
    assert f"died (killed by signal {signal.SIGKILL}) while this test ran" in tests["test_e_param[1]"][1]
    expected = {"test_a_pass": "passed", "test_b_fail": "failed", "test_c_skip": "skipped",
                "test_d_xfail": "xfailed", "test_e_param[0]": "passed", "test_e_param[2]": "passed",
                "test_e_param[3]": "passed"}
    for name, status in expected.items():
        got, message = tests[name]
        assert got == status or (got == "error" and "before this test started" in message), (name, got, message)


WAITING = """import os, signal, time, pytest
from pathlib import Path

@pytest.mark.parametrize("i", range(6))
def test_busy(i):
    deadline = time.monotonic() + 60   # the shards wait here until the waits shard started a test
    while not Path("waits-started").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert Path("waits-started").exists()

@pytest.mark.waits
@pytest.mark.parametrize("i", range(2))
def test_sleeps(i):
    Path("waits-started").touch()
    if os.environ.get("DEMO_KILL_WAITING") == str(i):
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.2)
"""


def _run_waiting(tmp_path, monkeypatch, capsys):
    (tmp_path / "test_waiting.py").write_text(WAITING)
    monkeypatch.chdir(tmp_path)
    paths = {kind: tmp_path / "r" / f"run.{kind}" for kind in ("junit", "ktap", "html")}
    code = host_shards.run(["test_waiting.py", "-v", "-p", "no:cacheprovider"], 2, paths, {"host": "demo-host"})
    return code, {f"{r.classname}::{r.name}": (r.status, r.message) for r in read_junit(paths["junit"])}, \
        capsys.readouterr().out


def test_tests_marked_waits_run_in_the_waits_shard_beside_the_others(tmp_path, monkeypatch, capsys):
    """Two shards and the waits shard start together; the marked tests are the waits shard's (it
    claims them at once, while the others are busy with the rest: here, until one of them started),
    every test appears once."""
    code, results, out = _run_waiting(tmp_path, monkeypatch, capsys)
    assert code == 0
    assert {name: status for name, (status, _) in results.items()} == \
        {**{f"test_waiting::test_busy[{i}]": "passed" for i in range(6)},
         **{f"test_waiting::test_sleeps[{i}]": "passed" for i in range(2)}}
    waits_lines = [line.split()[1] for line in out.splitlines() if line.startswith("[waits] test_waiting.py::")]
    assert waits_lines == [f"test_waiting.py::test_sleeps[{i}]" for i in range(2)], out
    assert "kvmtest run: 2 shards and the waits shard: 8 passed" in out


def test_a_waits_shard_that_dies_is_named_and_its_tests_are_errors(tmp_path, monkeypatch, capsys):
    """The waits shard killed in its first test: an error names it, that test and the one it had
    claimed next are errors saying so, the other shards' tests keep their verdicts; the console
    names the shard and the test it died in."""
    monkeypatch.setenv("DEMO_KILL_WAITING", "0")
    code, results, out = _run_waiting(tmp_path, monkeypatch, capsys)
    assert code == 1
    lost = results.pop("kvmtest-shard::shardwaits", None)
    assert lost and lost[0] == "error", results
    assert lost[1].startswith(f"shard waits wrote no report (killed by signal {signal.SIGKILL})")
    died = f"shard waits died (killed by signal {signal.SIGKILL})"
    assert results.pop("test_waiting::test_sleeps[0]") == ("error", f"{died} while this test ran")
    assert results.pop("test_waiting::test_sleeps[1]") == ("error", f"no result: {died} before this test started")
    assert f"kvmtest run: shard waits wrote no report (killed by signal {signal.SIGKILL}, in " \
           "test_waiting.py::test_sleeps[0])" in out
    assert {name: status for name, (status, _) in results.items()} == \
        {f"test_waiting::test_busy[{i}]": "passed" for i in range(6)}


def test_a_collection_error_reports_each_test_once(tmp_path, monkeypatch, capsys):
    """Every shard stops on a collection error, as one pytest does (exit 2); the tests collected are
    errors in the merged report once each, not once per shard."""
    (tmp_path / "test_broken.py").write_text("import no_such_module_here\n")
    code, paths = _run_argv(tmp_path, monkeypatch, ["test_broken.py"])
    assert code == 2
    results = read_junit(paths["junit"])
    names = [r.name for r in results]
    assert sorted(names) == sorted(set(names)) and len(names) == 9  # demo's eight tests and the broken file, once
    broken = next(r for r in results if r.name == "test_broken.py")
    assert broken.status == "error" and "collection error" in broken.message and "no_such_module_here" in broken.message


def test_reports_may_go_to_folders_that_do_not_exist_yet(tmp_path, monkeypatch, capsys):
    (tmp_path / "test_demo.py").write_text(DEMO)
    monkeypatch.chdir(tmp_path)
    paths = {"junit": tmp_path / "a" / "run.xml", "ktap": tmp_path / "b" / "c" / "run.ktap",
             "html": tmp_path / "d" / "run.html"}
    host_shards.run(["test_demo.py", "-p", "no:cacheprovider"], 2, paths, {"host": "demo-host"})
    assert all(path.is_file() for path in paths.values())


def test_a_shard_that_never_started_is_named_so():
    case = host_shards._lost_shard_case("2/3", None)
    assert case.find("error").get("message") == \
        "shard 2/3 wrote no report (never started: the run was interrupted first): it claimed no test " \
        "(its log names none)"


MIXED = """import os, time, pytest
from pathlib import Path

@pytest.mark.parametrize("i", range(24))
def test_i(i):
    # both shards take tests: the first test of each waits until the other shard is in one too
    Path(os.environ["DEMO_PIDS"], str(os.getpid())).touch()
    deadline = time.monotonic() + 30
    while len(os.listdir(os.environ["DEMO_PIDS"])) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert i % 3, i
"""


def test_the_last_failures_cache_holds_every_shards_failures(tmp_path, monkeypatch, capsys):
    """pytest's --lf cache after a sharded run: every shard's failures, none of the tests that passed,
    and what an earlier run recorded for tests this one did not run (each shard writing its own view
    kept only the last one's)."""
    import json

    (tmp_path / "test_mixed.py").write_text(MIXED)
    (tmp_path / "pids").mkdir()
    monkeypatch.setenv("DEMO_PIDS", str(tmp_path / "pids"))
    cache = tmp_path / ".pytest_cache" / "v" / "cache"
    cache.mkdir(parents=True)
    (cache / "lastfailed").write_text(json.dumps({"test_other.py::test_not_run_now": True,
                                                  "test_mixed.py::test_i[1]": True}))
    monkeypatch.chdir(tmp_path)
    paths = {kind: tmp_path / "r" / f"run.{suffix}" for kind, suffix in (("junit", "xml"), ("ktap", "ktap"),
                                                                          ("html", "html"))}
    assert host_shards.run(["test_mixed.py", "-p", "no:randomly"], 2, paths, {"host": "demo-host"}) == 1
    assert len(list((tmp_path / "pids").iterdir())) == 2  # both shards ran tests
    failed = {f"test_mixed.py::test_i[{i}]" for i in range(0, 24, 3)}
    assert set(json.loads((cache / "lastfailed").read_text())) == failed | {"test_other.py::test_not_run_now"}


def _run_argv(tmp_path, monkeypatch, argv, n=2):
    (tmp_path / "test_demo.py").write_text(DEMO)
    monkeypatch.chdir(tmp_path)
    paths = {kind: tmp_path / "r" / f"run.{suffix}" for kind, suffix in (("junit", "xml"), ("ktap", "ktap"),
                                                                          ("html", "html"))}
    code = host_shards.run(["test_demo.py", "-p", "no:cacheprovider", *argv], n, paths, {"host": "demo-host"})
    return code, paths


def test_a_usage_error_of_the_shards_is_pytests_usage_error_not_a_failure(tmp_path, monkeypatch, capsys):
    """One pytest exits 4 on a usage error (kvmtest run --bisect: 125, untestable); the shards must too,
    not 1 (--bisect: a bad kernel) from the error cases of shards that wrote no report."""
    code, _ = _run_argv(tmp_path, monkeypatch, ["--tb=bogus"])
    assert code == 4
    assert "invalid choice: 'bogus'" in capsys.readouterr().out
    assert not list((tmp_path / "r").glob(".kvmtest-shards-*"))


def test_an_interrupted_shard_run_exits_as_pytest_interrupted_and_reports_unfinished_tests(tmp_path, monkeypatch,
                                                                                            capsys):
    """A shard interrupted (KeyboardInterrupt in a test, as Ctrl-C gives) exits 2 as one pytest does
    (--bisect: 125), not 1; every test appears once in the merged JUnit, and one that did not run to
    its end (the interrupted one, one its shard had claimed next, those nobody had claimed) is an
    error there, never green."""
    (tmp_path / "test_stop.py").write_text("def test_stop():\n    raise KeyboardInterrupt\n\n"
                                           + "".join(f"def test_after_{i}():\n    pass\n\n" for i in range(20)))
    code, paths = _run_argv(tmp_path, monkeypatch, ["test_stop.py"])  # demo's 8 tests, then these 21
    assert code == 2
    results = read_junit(paths["junit"])
    assert len(results) == len({r.name for r in results}) == 29
    status = {r.name: (r.status, r.message) for r in results}
    assert status["test_stop"][0] == "error"
    unrun = [name for name, (s, m) in status.items() if s == "error" and "no result: the run was interrupted" in m]
    assert unrun  # at least the test the stopped shard had claimed after test_stop
    assert all(s in ("passed", "error") for name, (s, _) in status.items() if name.startswith("test_after_"))


# Four: a shard claims the test after its own before running it, so with two the first shard could
# hold both and the second never start one.
SLOW = """import os, time
import pytest
from pathlib import Path

@pytest.mark.parametrize("i", range(4))
def test_slow(i):
    Path(os.environ["DEMO_PIDS"], str(os.getpid())).touch()
    time.sleep(60)
"""

CONTROLLER = """import sys
from pathlib import Path
from kvmtest import host_shards
r = Path("r")
paths = {"junit": r / "run.xml", "ktap": r / "run.ktap", "html": r / "run.html"}
sys.exit(host_shards.run(["test_slow.py", "-p", "no:cacheprovider"], 2, paths, {"host": "demo-host"}))
"""


def _start_controller(tmp_path, ignore_sigint=False):
    import os
    import subprocess
    import sys
    import time

    (tmp_path / "test_slow.py").write_text(SLOW)
    (tmp_path / "pids").mkdir()
    # TMPDIR: the claims counter a controller killed outright leaves behind stays in the test's directory
    proc = subprocess.Popen([sys.executable, "-c", CONTROLLER], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            env={**os.environ, "DEMO_PIDS": str(tmp_path / "pids"), "TMPDIR": str(tmp_path)},
                            preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint
                            else None)
    deadline = time.monotonic() + 60
    while len(list((tmp_path / "pids").iterdir())) < 2:  # both shards are in their test
        assert time.monotonic() < deadline and proc.poll() is None, "the shards never started their tests"
        time.sleep(0.05)
    return proc, [int(p.name) for p in (tmp_path / "pids").iterdir()]


@pytest.mark.parametrize("ignore_sigint", [False, True], ids=["sigint-default", "sigint-ignored"])
def test_sigterm_to_kvmtest_run_stops_the_shards_with_reports(tmp_path, ignore_sigint):
    """SIGTERM (a cancelled CI job, `timeout`) reaches `kvmtest run` alone: it must stop its shards
    and write the reports, the unfinished tests as errors, leaving no shard directory behind (it died
    at once, leaving the shards running and .kvmtest-shards-* in the report directory). Also when
    started with SIGINT ignored (a script's background job), which the shards inherited: they then
    ignored the one SIGINT `kvmtest run` sends and ran on to the end."""
    proc, _ = _start_controller(tmp_path, ignore_sigint)
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(timeout=30) == 2
    finally:
        proc.kill()  # and its shards with it (PR_SET_PDEATHSIG), should it still run
    status = {r.name: (r.status, r.message) for r in read_junit(tmp_path / "r" / "run.xml")}
    assert {name: s for name, (s, _) in status.items()} == {f"test_slow[{i}]": "error" for i in range(4)}
    assert not list((tmp_path / "r").glob(".kvmtest-shards-*"))


def test_shards_do_not_outlive_a_killed_kvmtest_run(tmp_path):
    """`kvmtest run` killed outright (SIGKILL, the OOM killer) takes its shards with it: they must not
    run the rest of the suite unseen."""
    import time

    proc, pids = _start_controller(tmp_path)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while any(_running(pid) for pid in pids):
        assert time.monotonic() < deadline, f"shard processes {pids} still run after their controller died"
        time.sleep(0.05)


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_merging_keeps_one_of_identical_cases_and_every_case_that_differs(tmp_path):
    """Identical cases from several shards (a collection error each reported) are kept once; cases
    with the same name that differ in anything are all kept, so no duplicate can hide a result."""
    from kvmtest.reports import junit

    def part(name, *cases):
        path = tmp_path / name
        junit.write(path, [junit.testsuite("s", list(cases))])
        return path

    broken = ("t_broken.py", "t_broken.py", "error", "collection error: boom")
    parts = [part("a.xml", junit.testcase(*broken), junit.testcase("m", "t1", "passed")),
             part("b.xml", junit.testcase(*broken), junit.testcase("m", "t2", "failed", "expected 1, observed 2")),
             part("c.xml", junit.testcase(*broken), junit.testcase("m", "t2", "passed"))]
    host_shards.merge_junit(parts, ["1/3", "2/3", "3/3"], [1, 1, 0], tmp_path / "run.xml", {"host": "h"})
    got = sorted((r.classname, r.name, r.status) for r in read_junit(tmp_path / "run.xml"))
    assert got == [("m", "t1", "passed"), ("m", "t2", "failed"), ("m", "t2", "passed"),
                   ("t_broken.py", "t_broken.py", "error")]


@pytest.mark.parametrize("capture", ["-s", "--capture=sys", "--capture=tee-sys"])
def test_unless_pytest_captures_fd_1_a_tests_own_writes_to_it_keep_their_order(tmp_path, monkeypatch, capsys,
                                                                               capture):
    """Under -s a test's output reaches the console as it writes it, whether through sys.stdout or
    straight to fd 1 (a subprocess, C code), and so do writes to fd 1 that --capture=sys lets through:
    the shards' batching of their lines is off then."""
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")  # tee-sys: the tee writes to stdout, flushed by this only
    (tmp_path / "test_out.py").write_text("import os\n\ndef test_out():\n    print('line A', flush=True)\n"
                                          "    os.write(1, b'line B\\n')\n    print('line C', flush=True)\n")
    monkeypatch.chdir(tmp_path)
    paths = {kind: tmp_path / "r" / f"run.{kind}" for kind in ("junit", "ktap", "html")}
    assert host_shards.run(["test_out.py", capture, "-p", "no:cacheprovider"], 2, paths, {"host": "demo-host"}) == 0
    lines = [line.split("] ", 1)[1] for line in capsys.readouterr().out.splitlines() if "line " in line]
    expected = ["line A", "line B", "line C"] if capture != "--capture=sys" else ["line B"]  # sys: prints captured
    assert [line[line.index("line "):] for line in lines] == expected, lines


def test_a_test_no_shard_reported_is_an_error_not_missing(tmp_path):
    """A shard killed between claiming a test and logging the claim leaves that test in no report
    and no log: the ids the shards collected name it, and the merged report has it as an error."""
    from kvmtest.reports import junit

    junit.write(tmp_path / "s1.xml", [junit.testsuite("s", [junit.testcase("t_a", "test_1", "passed")])])
    collected = ["t_a.py::test_1", "t_a.py::test_2"]
    host_shards.merge_junit([tmp_path / "s1.xml", tmp_path / "s2.xml"], ["1/2", "2/2"], [0, -9],
                            tmp_path / "run.xml", {"host": "h"}, collected)
    got = {(r.classname, r.name): (r.status, r.message) for r in read_junit(tmp_path / "run.xml")}
    assert got[("t_a", "test_1")][0] == "passed"
    assert got[("t_a", "test_2")] == ("error", "no result: no shard reported this test (one that died may have "
                                               "claimed it just before)")
    assert got[("kvmtest-shard", "shard2of2")] == \
        ("error", "shard 2/2 wrote no report (killed by signal 9): it claimed no test (its log names none)")


def test_a_line_a_shard_left_unended_does_not_run_into_the_next(capsys):
    """A shard that dies mid-line (a killed test's "... " before its verdict) leaves a last line
    without its newline: it is ended before any other shard's line follows."""
    import io
    import threading

    lock = threading.Lock()
    host_shards._pump("1/2", io.StringIO("first\nkilled mid-line"), lock)
    host_shards._pump("2/2", io.StringIO("other PASSED\n"), lock)
    assert capsys.readouterr().out == "[1/2] first\n[1/2] killed mid-line\n[2/2] other PASSED\n"


def test_a_role_in_the_pytest_arguments_does_not_make_every_shard_a_waits_shard(tmp_path, monkeypatch, capsys):
    """--kvm-shard-role=waits where kvmtest run would not see it (addopts, PYTEST_ADDOPTS; here the
    arguments host_shards is given) made every shard a waits shard, the unmarked tests run by none:
    each shard's own role comes last and wins."""
    (tmp_path / "test_two.py").write_text("import pytest\n\n@pytest.mark.waits\ndef test_marked():\n    pass\n\n"
                                          "def test_plain():\n    assert False\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTEST_ADDOPTS", "--kvm-shard-role=waits")
    paths = {kind: tmp_path / "r" / f"run.{kind}" for kind in ("junit", "ktap", "html")}
    code = host_shards.run(["test_two.py", "--kvm-shard-role=waits", "-p", "no:cacheprovider"], 2, paths,
                           {"host": "demo-host"})
    assert code == 1
    assert {r.name: r.status for r in read_junit(paths["junit"])} == {"test_marked": "passed", "test_plain": "failed"}


def test_a_test_claimed_by_a_shard_that_died_before_logging_it_is_an_error(tmp_path, monkeypatch, capsys):
    """A shard killed between claiming a test and logging the claim leaves that test in no report and
    no log: the ids the shards collected name it, and the merged report has it as an error."""
    (tmp_path / "conftest.py").write_text(
        "import os, signal\nimport kvmtest.shard_log as log\n\n_claimed = log.ShardLog.claimed\n\n"
        "def claimed(self, items, index):\n"
        "    if index is not None and items[index].name == 'test_victim':\n"
        "        os.kill(os.getpid(), signal.SIGKILL)  # claimed, not yet logged\n"
        "    return _claimed(self, items, index)\n\nlog.ShardLog.claimed = claimed\n")
    (tmp_path / "test_three.py").write_text("def test_a():\n    pass\n\ndef test_victim():\n    pass\n\n"
                                            "def test_z():\n    pass\n")
    monkeypatch.chdir(tmp_path)
    paths = {kind: tmp_path / "r" / f"run.{kind}" for kind in ("junit", "ktap", "html")}
    assert host_shards.run(["test_three.py", "-p", "no:cacheprovider"], 2, paths, {"host": "demo-host"}) == 1
    got = {r.name: (r.status, r.message) for r in read_junit(paths["junit"]) if r.classname != "kvmtest-shard"}
    assert got["test_victim"] == ("error", "no result: no shard reported this test (one that died may have "
                                           "claimed it just before)")
    assert len(got) == 3 and all(status in ("passed", "error") for status, _ in got.values()), got


def test_a_shard_interrupted_while_pytest_parses_its_options_exits_as_interrupted(tmp_path):
    """SIGINT (kvmtest run's one interrupt per shard) before pytest's session takes interrupts over
    (here: while it loads its plugins): exit 2, pytest's "interrupted", with no traceback; not death
    by SIGINT, which the run would report as a lost shard (and `--bisect` as a bad commit)."""
    import subprocess
    import sys

    (tmp_path / "test_one.py").write_text("def test_a():\n    pass\n")
    (tmp_path / "interrupting.py").write_text("def pytest_addoption(parser):\n    raise KeyboardInterrupt\n")
    claims = tmp_path / "claims"
    claims.touch()
    proc = subprocess.run([sys.executable, "-m", "kvmtest.host_shards", "test_one.py", "-p", "interrupting",
                           "-p", "kvmtest.shard_claims", f"--kvm-shard-claims={claims}"],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)}, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "kvmtest shard: interrupted while starting" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_shards_the_run_interrupted_are_interrupted_not_lost():
    """A shard that SIGINT ended before it could handle it (still importing kvmtest) exits by that
    signal: kvmtest run sent it, so it counts as pytest's "interrupted" (2), not as a shard lost."""
    class Shard:
        def __init__(self, code):
            self.code, self.signals = code, []

        def poll(self):
            return None

        def send_signal(self, sig):
            self.signals.append(sig)

        def wait(self):
            return self.code

    shards = [Shard(-signal.SIGINT), Shard(2), Shard(-signal.SIGKILL)]
    assert host_shards._stop(shards) == [2, 2, -signal.SIGKILL]
    assert all(shard.signals == [signal.SIGINT] for shard in shards)
