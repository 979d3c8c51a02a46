"""Known issues against drifting hosts: strict only on the builds an entry was verified on, never
covering a harness error, and `kvmtest known-issues verify` re-checking and recording them."""

import re
from pathlib import Path

import pytest
from test_plugin import _issue, seen, this_build

from kvmtest import known_issue_verify as kv
from kvmtest import known_issues as ki

BOTH = ["test_demo.py::test_bad", "test_demo.py::test_good"]
DEMO = "def test_bad():\n    assert False\n\ndef test_good():\n    pass\n"


@pytest.fixture
def run(pytester, monkeypatch):
    """pytester with none of the environment that would change the plugin's settings (as test_plugin's)."""
    for var in ("KVMTEST_GUEST_TIMEOUT", "KVMTEST_DEVICE", "KVMTEST_KNOWN_ISSUES", "KVMTEST_MODES"):
        monkeypatch.delenv(var, raising=False)
    return pytester


def test_on_a_build_the_entry_was_never_verified_on_a_pass_is_a_visible_xpass(run):
    run.makepyfile(test_demo=DEMO)
    issues = run.makefile(".toml", known=_issue(BOTH) + seen("5.10.0-other #1 SMP"))
    result = run.runpytest(f"--kvm-known-issues={issues}", "-rxX")
    result.assert_outcomes(xfailed=1, xpassed=1)
    result.stdout.fnmatch_lines([
        "XPASS of demo: the host did not deviate in 1 test(s), e.g. test_demo.py::test_good",
        "*1 entries apply to this host but were never verified on its build*: demo",
        "*kvmtest known-issues verify --write*",
        "*not verified on this build; seen on: 5.10.0-other #1 SMP*",
    ])
    assert result.ret == 0


@pytest.mark.parametrize("body,harness_error", [
    ("raise TypeError('a kvmtest bug')", "TypeError"),
    ("from kvmtest.errors import AssemblyError\n    raise AssemblyError('g.S:1: bad line')", "AssemblyError"),
    ("from kvmtest.errors import DeviceError\n    raise DeviceError('/dev/kvm: cannot open: EACCES')", "DeviceError"),
])
def test_a_known_issue_never_covers_a_harness_error(run, body, harness_error):
    run.makepyfile(test_demo=f"def test_bad():\n    {body}\n")
    issues = run.makefile(".toml", known=_issue(["test_demo.py::test_bad"]) + seen(this_build()))
    result = run.runpytest(f"--kvm-known-issues={issues}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*{harness_error}*"])


@pytest.mark.parametrize("body", [
    "assert 1 == 2, 'expected 2, observed 1'",
    "from kvmtest.errors import KvmError\n    raise KvmError(22, 'KVM_SET_SREGS', 'vm0/vcpu0')",
    "from kvmtest.errors import GuestTimeout\n    raise GuestTimeout('vm0/vcpu0: still running')",
    "from kvmtest.errors import GuestFailure\n    raise GuestFailure('guest: #UD at 0x8000')",
])
def test_what_a_host_deviation_raises_is_covered(run, body):
    run.makepyfile(test_demo=f"def test_bad():\n    {body}\n")
    issues = run.makefile(".toml", known=_issue(["test_demo.py::test_bad"]) + seen(this_build()))
    run.runpytest(f"--kvm-known-issues={issues}").assert_outcomes(xfailed=1)


def test_an_unopenable_device_is_an_error_even_in_a_known_issue_test(run, tmp_path):
    run.makepyfile(test_demo="def test_bad(kvm):\n    assert False\n")
    issues = run.makefile(".toml", known=_issue(["test_demo.py::test_bad"]) + seen(this_build()))
    result = run.runpytest(f"--kvm-known-issues={issues}", f"--kvm-device={tmp_path}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR  # refused at start: no test runs, none can xfail
    result.stderr.fnmatch_lines([f"*{tmp_path}: cannot open*"])


def test_verify_option_runs_only_the_entries_tests_without_xfail(run):
    run.makepyfile(test_demo=DEMO + "\ndef test_other():\n    pass\n")
    issues = run.makefile(".toml", known=_issue(BOTH) + seen(this_build()))
    result = run.runpytest(f"--kvm-known-issues={issues}", "--kvm-verify-known-issues=demo")
    result.assert_outcomes(failed=1, passed=1, deselected=1)


def test_verify_option_names_an_unknown_entry(run):
    run.makepyfile(test_demo=DEMO)
    issues = run.makefile(".toml", known=_issue(BOTH))
    result = run.runpytest(f"--kvm-known-issues={issues}", "--kvm-verify-known-issues=nope")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--kvm-verify-known-issues: no entry nope applies to this host; applying: demo*"])


@pytest.mark.parametrize("record,message", [
    ('build = "b"\ndate = "30.11.2026"\nresult = "r"', "date '30.11.2026' is not YYYY-MM-DD"),
    ('build = "b"\ndate = "2026-11-30"', "needs exactly ['build', 'date', 'result']"),
    ('build = ""\ndate = "2026-11-30"\nresult = "r"', "build must be non-empty strings"),
])
def test_malformed_seen_record_is_named(tmp_path, record, message):
    path = tmp_path / "k.toml"
    path.write_text(_issue(["x"]) + "[[issue.seen]]\n" + record + "\n")
    with pytest.raises(ki.KnownIssueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        ki.load(path)


def _entry(intermittent=False):
    text = _issue(["t::a", "t::b"], extra="intermittent = true" if intermittent else "")
    return ki.load_text(text, Path("k.toml"))[0]


def test_a_strict_entry_is_verified_only_when_every_test_that_ran_failed():
    entry = kv.EntryResult(_entry(), runs=1, failing_runs=1, outcomes={"t::a": ["failed"], "t::b": ["skipped"]})
    assert entry.verified and not entry.problems() and entry.result_text() == "1 of 1 tests failed (1 skipped here)"
    drifted = kv.EntryResult(_entry(), runs=1, failing_runs=1, outcomes={"t::a": ["failed"], "t::b": ["passed"]})
    assert not drifted.verified and drifted.problems() == ["t::b: passed (the host did not deviate)"]
    setup_error = kv.EntryResult(_entry(), runs=1, outcomes={"t::a": ["error"], "t::b": ["failed"]})
    assert not setup_error.verified  # an error outside the test body is not the host's deviation
    nothing = kv.EntryResult(_entry(), runs=1, outcomes={"t::a": ["skipped"], "t::b": ["skipped"]})
    assert not nothing.verified and "nothing to verify" in nothing.problems()[0]


def test_an_intermittent_entry_gets_its_measured_rate():
    entry = kv.EntryResult(_entry(True), runs=20, failing_runs=3, outcomes={"t::a": ["passed"] * 17 + ["failed"] * 3})
    assert entry.verified and entry.result_text() == "failed in 3 of 20 runs"
    never = kv.EntryResult(_entry(True), runs=20, failing_runs=0, outcomes={"t::a": ["passed"] * 20})
    assert not never.verified and never.problems() == ["not reproduced in 20 runs"]


def test_write_seen_records_and_replaces_this_build_keeping_the_file(tmp_path):
    path = tmp_path / "k.toml"
    original = "# header comment kept\n\n" + _issue(["t::a"]) + "\n" + _issue(["t::b"]).replace('"demo"', '"other"')
    path.write_text(original)
    entry = kv.EntryResult(ki.load(path)[0], runs=1, failing_runs=1, outcomes={"t::a": ["failed"]})
    kv.write_seen(path, [entry], "6.1.0-test #1", "2026-11-30")
    kv.write_seen(path, [entry], "6.1.0-test #1", "2026-12-01")  # same build again: replaced, not added
    demo, other = ki.load(path)
    assert demo.seen == ({"build": "6.1.0-test #1", "date": "2026-12-01", "result": "1 of 1 tests failed"},)
    assert other.seen == ()
    text = path.read_text()
    assert text.startswith("# header comment kept\n") and "\n\n[[issue]]" in text


def test_a_non_strict_xpass_passes_in_every_report_and_a_strict_one_fails(run, tmp_path):
    from kvmtest.reports.results import read_junit

    run.makepyfile(test_demo=DEMO, test_strict=DEMO)
    issues = run.makefile(".toml", known=_issue(["test_demo.py::*"]) + seen("5.10.0-other #1 SMP") + "\n"
                          + _issue(["test_strict.py::*"]).replace('"demo"', '"strict"') + seen(this_build()))
    junit, ktap = tmp_path / "r.xml", tmp_path / "r.ktap"
    run.runpytest(f"--kvm-known-issues={issues}", f"--kvm-junit={junit}", f"--kvm-ktap={ktap}")
    status = {r.id: r.status for r in read_junit(junit)}
    assert status == {"test_demo::test_bad": "xfailed", "test_demo::test_good": "xpassed",
                      "test_strict::test_bad": "xfailed", "test_strict::test_good": "failed"}
    xml = junit.read_text()
    assert xml.count("<failure") == 1 and "XPASS(strict)" in xml.split("<failure", 1)[1]
    lines = ktap.read_text().splitlines()
    assert "ok 2 test_demo::test_good" in [line.strip() for line in lines]
    assert any(line.strip().startswith("# XPASS: known issue demo") for line in lines)
    assert "not ok 2 test_strict::test_good" in [line.strip() for line in lines]


def test_an_entry_that_is_not_run_skips_its_tests_naming_it(run):
    run.makepyfile(test_demo=DEMO)
    issues = run.makefile(".toml", known=_issue(["test_demo.py::test_bad"], extra="run = false"))
    result = run.runpytest(f"--kvm-known-issues={issues}", "-rs")
    result.assert_outcomes(skipped=1, passed=1)
    result.stdout.fnmatch_lines(["*known issue demo, not run on this host (it would take the host down)*"])


def test_accelerator_predicate_matches_the_fingerprint():
    assert ki.host_matches({"accelerator": "tcg"}, {"accelerator": "tcg"})
    assert not ki.host_matches({"accelerator": "tcg"}, {"accelerator": "kvm"})
    assert not ki.host_matches({"accelerator": "tcg"}, {})  # an older fingerprint: a run on the host itself
    assert ki.host_matches({"accelerator": "none"}, {})


def test_not_run_and_intermittent_together_are_refused(tmp_path):
    path = tmp_path / "k.toml"
    path.write_text(_issue(["x"], extra="run = false\nintermittent = true"))
    with pytest.raises(ki.KnownIssueError, match="an entry that is not run cannot be intermittent"):
        ki.load(path)


def test_a_device_that_is_not_kvm_is_an_error_even_in_a_known_issue_test(run):
    # /dev/null opens read-write; every KVM ioctl on it fails with ENOTTY, which must not read as a
    # host deviation (it did: 65 XFAILs in suites/debug with --kvm-device /dev/null).
    run.makepyfile(test_demo="def test_bad(kvm):\n    kvm.create_vm()\n")
    issues = run.makefile(".toml", known=_issue(["test_demo.py::test_bad"]) + seen(this_build()))
    result = run.runpytest(f"--kvm-known-issues={issues}", "--kvm-device=/dev/null")
    assert result.ret == pytest.ExitCode.USAGE_ERROR  # refused at start: no test runs, none can xfail
    result.stderr.fnmatch_lines(["*/dev/null is not a KVM device: KVM_GET_API_VERSION failed with ENOTTY*"])


@pytest.mark.parametrize("host,message", [
    ('kernel_min = 7', "'host.kernel_min' must be a non-empty string, not 7"),
    ('kernel_min = "banana"', "'host.kernel_min' 'banana' is not a kernel version"),
    ('kernel_max = "banana"', "'host.kernel_max' 'banana' is not a kernel version"),
    ('mmu = "banana"', "'host.mmu' 'banana' is none of"),
    ('accelerator = "qemu"', "'host.accelerator' 'qemu' is none of"),
])
def test_host_predicate_values_are_checked(tmp_path, host, message):
    path = tmp_path / "k.toml"
    path.write_text(_issue(["x"], host=host))
    with pytest.raises(ki.KnownIssueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ki.load(path)


def test_a_seen_record_must_say_the_deviation_showed(tmp_path):
    path = tmp_path / "k.toml"
    path.write_text(_issue(["x"]) + seen("b").replace("1 of 1 tests failed", "did not reproduce: 0 of 1 tests failed"))
    with pytest.raises(ki.KnownIssueError, match="does not say the deviation showed"):
        ki.load(path)


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "k.toml"
    path.write_bytes(b"# \xff\xfe\n")
    with pytest.raises(ki.KnownIssueError, match="not UTF-8 text"):
        ki.load(path)


def test_an_entry_whose_test_passed_is_not_reported_as_all_failed():
    entry = kv.EntryResult(_entry(), runs=1, failing_runs=0, outcomes={"t::a": ["passed"], "t::b": ["failed"]})
    assert entry.result_text() == "1 of 2 tests failed"


@pytest.mark.parametrize("release,applies", [("6.1.0-57-amd64", True), ("6.10.14", True), ("6.10", True),
                                             ("6.11.0", False), ("6.18.44-fc-v669", False)])
def test_kernel_max_covers_every_release_of_the_version_it_names(release, applies):
    assert ki.host_matches({"kernel_max": "6.10"}, {"kernel": {"release": release}}) is applies


def test_verify_runs_with_the_default_guest_timeout_whatever_the_environment_says(monkeypatch):
    # KVMTEST_GUEST_TIMEOUT=0.001 made a passing test time out, and verify called that "verified".
    from kvmtest.vcpu import DEFAULT_RUN_TIMEOUT

    monkeypatch.setenv("KVMTEST_GUEST_TIMEOUT", "0.001")
    args = kv._common(["k.toml"], "/dev/kvm", ["demo"])
    assert f"--kvm-guest-timeout={DEFAULT_RUN_TIMEOUT}" in args  # the command line beats the environment


HANG_DEMO = """import pathlib, pytest

@pytest.mark.guest_timeout(2)
def test_bad(guest_timeout):
    pathlib.Path("bad.txt").write_text(repr(guest_timeout))
    assert False, "the guest never completed"

@pytest.mark.guest_timeout(2)
def test_good(guest_timeout):
    pathlib.Path("good.txt").write_text(repr(guest_timeout))
"""


def test_a_hang_entry_shortens_the_guest_timeout_of_its_tests_only(run):
    run.makepyfile(test_demo=HANG_DEMO)
    issues = run.makefile(".toml", known=_issue(["test_demo.py::test_bad"], extra="hang_timeout = 0.2")
                          + seen(this_build()))
    run.runpytest(f"--kvm-known-issues={issues}").assert_outcomes(xfailed=1, passed=1)
    assert (run.path / "bad.txt").read_text() == "0.2"   # over the test's own marker
    assert (run.path / "good.txt").read_text() == "2.0"


def test_verifying_a_hang_entry_waits_the_tests_own_timeout(run):
    run.makepyfile(test_demo=HANG_DEMO)
    issues = run.makefile(".toml", known=_issue(["test_demo.py::test_bad"], extra="hang_timeout = 0.2")
                          + seen(this_build()))
    run.runpytest(f"--kvm-known-issues={issues}", "--kvm-verify-known-issues=demo").assert_outcomes(failed=1)
    assert (run.path / "bad.txt").read_text() == "2.0"


@pytest.mark.parametrize("extra,message", [
    ("hang_timeout = 0", "'hang_timeout' must be a number of seconds above 0 and at most 5, got 0"),
    ("hang_timeout = -1.5", "got -1.5"),
    ("hang_timeout = 6", "got 6"),
    ("hang_timeout = true", "got True"),
    ('hang_timeout = "0.2"', "got '0.2'"),
    ("hang_timeout = 0.2\nrun = false", "an entry that is not run cannot have a 'hang_timeout'"),
])
def test_a_bad_hang_timeout_is_refused_naming_it(tmp_path, extra, message):
    path = tmp_path / "k.toml"
    path.write_text(_issue(["x"], extra=extra))
    with pytest.raises(ki.KnownIssueError, match=f"issue 'demo'.*{re.escape(message)}"):
        ki.load(path)


def test_verify_with_an_unknown_id_names_it_and_lists_the_applying_ids_one_per_line(tmp_path, monkeypatch, capsys):
    """`--id nosuch`: exit 2, one line per unknown id saying why it cannot be verified here, then how
    many entries apply and their ids one per line (not every id on one line of thousands of characters)."""
    from kvmtest import cli, fingerprint

    fp = fingerprint.collect("/nonexistent/kvm")
    fp["kvm"] = {"api_version": 12}  # stands in for a usable KVM: verify stops before opening anything
    monkeypatch.setattr(kv.fpmod, "collect", lambda device: fp)
    ids = [f"demo-entry-{n:02}-with-a-name-as-long-as-the-real-ones" for n in range(12)]
    entries = [_issue(["t::x"]).replace('"demo"', f'"{i}"') for i in ids]
    entries.append(_issue(["t::y"], host='kernel_max = "2.6"').replace('"demo"', '"elsewhere"'))
    entries.append(_issue(["t::z"], extra="run = false").replace('"demo"', '"down"'))
    path = tmp_path / "k.toml"
    path.write_text("\n".join(entries))
    argv = ["known-issues", "verify", "--file", str(path), "--id", "nosuch", "--id", "elsewhere", "--id", "down"]
    assert cli.main(argv) == 2
    lines = capsys.readouterr().err.splitlines()
    assert re.fullmatch(r"kvmtest known-issues verify: --id down: the entry \(k\.toml:\d+\) is not run here "
                        r"\(it would take the host down\)", lines[0]), lines
    assert re.fullmatch(r"kvmtest known-issues verify: --id elsewhere: the entry \(k\.toml:\d+\) does not apply "
                        r"to this host", lines[1]), lines
    assert lines[2] == "kvmtest known-issues verify: --id nosuch: no such entry in the known-issue files", lines
    assert lines[3:] == ["12 entries apply to this host and can be verified:", *[f"  {i}" for i in sorted(ids)]]


ENTRY_TESTS = """import pytest

def test_bad():
    assert False

@pytest.mark.skip(reason="no such feature here")
def test_skipped_by_marker():
    assert False

def test_skipped_in_its_body():
    pytest.skip("no such feature here")

def test_deselected():
    assert False
"""


@pytest.mark.parametrize("workers", [["-p", "no:xdist"], ["-n", "2"]])
def test_never_verified_entries_are_listed_only_when_one_of_their_tests_ran(run, workers):
    """The summary asks to re-verify only entries a test of which ran here: `known-issues verify` has
    nothing to verify for one whose tests all skipped (or were deselected). Under pytest-xdist the
    controller sees the workers' reports, not the items."""
    run.makepyfile(test_demo=ENTRY_TESTS)
    entries = [_issue(["test_demo.py::test_bad"]).replace('"demo"', '"ran"'),
               _issue(["test_demo.py::test_skipped_*"]).replace('"demo"', '"all-skipped"'),
               _issue(["test_demo.py::test_deselected"]).replace('"demo"', '"deselected"')]
    issues = run.makefile(".toml", known="\n".join(entries))
    result = run.runpytest(f"--kvm-known-issues={issues}", "-k", "not deselected", *workers)
    result.assert_outcomes(xfailed=1, skipped=2, deselected=0 if "-n" in workers else 1)  # xdist: on the workers
    result.stdout.fnmatch_lines(["1 entries apply to this host but were never verified on its build *: ran",
                                 "re-verify them on this host with: kvmtest known-issues verify --write"])
    assert "all-skipped" not in result.stdout.str()


def test_an_empty_or_padded_unknown_id_is_shown_quoted():
    text = kv.unknown_ids_text(["", " x"], [], [], {})
    assert text.splitlines()[:2] == ["kvmtest known-issues verify: --id '': no such entry in the known-issue files",
                                     "kvmtest known-issues verify: --id ' x': no such entry in the known-issue files"]
