"""Bad input to the `kvmtest` command is one error line naming what was wrong, before any test runs:
never a traceback after the run, never every test skipped, never a silently changed meaning."""

import re

import pytest

from kvmtest import cli
from kvmtest.kernelvm import KernelVmError, runner
from kvmtest.options import jobs_problem
from kvmtest.reports import junit
from kvmtest.reports.results import Result

UNWRITABLE = "/proc/kvmtest-no-such-dir"  # /proc takes no new directories, even from root


@pytest.fixture
def clean_env(monkeypatch):
    for var in ("KVMTEST_DEVICE", "KVMTEST_BASELINE", "KVMTEST_REPORT_DIR", "KVMTEST_VM_TIMEOUT",
                "KVMTEST_VM_STALL", "KVMTEST_MODES", "KVMTEST_HYPOTHESIS_PROFILE", "KVMTEST_GUEST_TIMEOUT",
                "KVMTEST_KNOWN_ISSUES", "KVMTEST_NO_KNOWN_ISSUES"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def probe_test(tmp_path):
    """A test file that leaves a file behind if it ran: the refused runs must not run it."""
    test = tmp_path / "test_probe.py"
    test.write_text(f"def test_probe():\n    open({str(tmp_path / 'ran')!r}, 'w').close()\n")
    return test


def _run(tmp_path, probe_test, *words):
    report_dir = [] if "--report-dir" in words else ["--report-dir", str(tmp_path / "reports")]
    return cli.main(["run", "-j", "0", *report_dir, *words, str(probe_test), "-p", "no:cacheprovider",
                     f"--rootdir={tmp_path}"])


def _one_error(capsys, *needles) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, err)
    return lines[0]


def _write_junit(path, host="h", kernel="6.1"):
    results = [Result("suites.a.test_x", "t1", "passed", host=host)]
    junit.write(path, [junit.suite_from_results(results, "s", host,
                                                {"kvmtest.host": host, "kvmtest.kernel.release": kernel})])
    return str(path)


# --- 1. report paths that cannot be written ---------------------------------------------------


@pytest.mark.parametrize("option", ["--report-dir", "--junit", "--ktap", "--html", "file-as-report-dir"])
def test_unwritable_report_path_is_refused_before_the_run(tmp_path, probe_test, capsys, clean_env, option):
    if option == "file-as-report-dir":
        regular = tmp_path / "a-file"
        regular.write_text("")
        words, named = ["--report-dir", str(regular)], str(regular)
    else:
        named = UNWRITABLE if option == "--report-dir" else f"{UNWRITABLE}/r.{option[2:]}"
        words = [option, named]
    assert _run(tmp_path, probe_test, *words) == 2
    _one_error(capsys, "kvmtest run:", named)
    assert not (tmp_path / "ran").exists()


def test_unwritable_report_path_with_bisect_is_untestable(tmp_path, probe_test, capsys, clean_env):
    assert _run(tmp_path, probe_test, "--bisect", "--junit", f"{UNWRITABLE}/r.xml") == cli.BISECT_SKIP
    _one_error(capsys, UNWRITABLE)


def test_plugin_refuses_an_unwritable_report_path_at_start(pytester):
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest(f"--kvm-junit={UNWRITABLE}/r.xml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--kvm-junit {UNWRITABLE}/r.xml: *"])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


@pytest.mark.parametrize("bisect", [False, True])
def test_kernel_run_refuses_an_unwritable_report_dir_before_booting(tmp_path, capsys, clean_env, bisect):
    words = ["run", "--kernel", str(tmp_path / "no-bzImage"), "--report-dir", UNWRITABLE]
    assert cli.main(words + (["--bisect"] if bisect else [])) == (cli.BISECT_SKIP if bisect else 2)
    _one_error(capsys, f"kvmtest run --kernel: --report-dir {UNWRITABLE}: ")


def test_kernel_run_refuses_a_bad_baseline_before_booting(tmp_path, capsys, clean_env):
    bad = _bad_baseline(tmp_path, "other xml")
    assert cli.main(["run", "--kernel", str(tmp_path / "no-bzImage"), "--report-dir", str(tmp_path / "r"),
                     "--baseline", bad]) == 2
    _one_error(capsys, "kvmtest run --kernel: --baseline:", bad)


# --- 2. a baseline that is no JUnit report ------------------------------------------------------


def _bad_baseline(tmp_path, kind) -> str:
    if kind == "text":
        (tmp_path / "notes.txt").write_text("hello\n")
        return str(tmp_path / "notes.txt")
    if kind == "empty dir":
        (tmp_path / "empty").mkdir()
        return str(tmp_path / "empty")
    if kind == "other xml":
        (tmp_path / "pom.xml").write_text("<project/>")
        return str(tmp_path / "pom.xml")
    return str(tmp_path / "missing.xml")


@pytest.mark.parametrize("kind", ["text", "missing", "empty dir", "other xml"])
@pytest.mark.parametrize("how", ["--baseline", "--kvm-baseline", "KVMTEST_BASELINE"])
def test_bad_baseline_is_refused_before_the_run(tmp_path, probe_test, capsys, clean_env, monkeypatch, kind, how):
    bad = _bad_baseline(tmp_path, kind)
    if how == "KVMTEST_BASELINE":
        monkeypatch.setenv(how, bad)
        words = []
    else:
        words = [how, bad]
    assert _run(tmp_path, probe_test, *words) == 2
    _one_error(capsys, "--baseline", bad)
    assert not (tmp_path / "ran").exists()


def test_plugin_refuses_a_bad_baseline_at_start(pytester, tmp_path):
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest(f"--kvm-html={tmp_path}/r.html", f"--kvm-baseline={tmp_path}/missing.xml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--kvm-baseline: {tmp_path}/missing.xml: no such file or directory*"])


# --- 3. merge and import-tap outputs ------------------------------------------------------------


@pytest.mark.parametrize("output", [f"{UNWRITABLE}/all.xml", "a directory"])
def test_merge_to_an_unwritable_output_is_one_error(tmp_path, capsys, output):
    a, b = _write_junit(tmp_path / "a.xml"), _write_junit(tmp_path / "b.xml")
    output = str(tmp_path) if output == "a directory" else output
    assert cli.main(["merge", a, b, "-o", output]) == 2
    _one_error(capsys, "kvmtest merge: -o", output)


def test_import_tap_to_an_unwritable_output_is_one_error(tmp_path, capsys):
    tap = tmp_path / "t.tap"
    tap.write_text("TAP version 13\n1..1\nok 1 - x\n")
    assert cli.main(["import-tap", str(tap), "-o", f"{UNWRITABLE}/y.xml"]) == 2
    _one_error(capsys, "kvmtest import-tap: -o", f"{UNWRITABLE}/y.xml")


@pytest.mark.parametrize("spelling", ["same", "other"])
def test_merging_one_file_twice_is_refused(tmp_path, capsys, spelling):
    a = _write_junit(tmp_path / "a.xml")
    b = _write_junit(tmp_path / "b.xml")
    again = a if spelling == "same" else str(tmp_path / "." / "a.xml")
    assert cli.main(["merge", a, b, again, "-o", str(tmp_path / "all.xml")]) == 2
    _one_error(capsys, "kvmtest merge:", again, "given twice")
    assert not (tmp_path / "all.xml").exists()
    assert cli.main(["merge", a, b, "-o", str(tmp_path / "all.xml")]) == 0


# --- 4, 5. a named device that is no KVM device ------------------------------------------------


@pytest.mark.parametrize("device, how", [("/nonexistent/kvm", "--device"), ("", "--device"),
                                         ("/dev/null", "--device"), ("/nonexistent/kvm", "--kvm-device"),
                                         ("", "KVMTEST_DEVICE"), ("/nonexistent/kvm", "KVMTEST_DEVICE")])
@pytest.mark.parametrize("bisect", [False, True])
def test_named_device_that_is_no_kvm_device_is_refused(tmp_path, probe_test, capsys, clean_env, monkeypatch,
                                                      device, how, bisect):
    """Exit 2 naming the device (not every test skipped and exit 0); with --bisect 125: nothing
    could be tested (not 1, which would call the kernel bad)."""
    if how == "KVMTEST_DEVICE":
        monkeypatch.setenv(how, device)
        words = []
    else:
        words = [how, device] if how == "--device" else [f"{how}={device}"]
    code = _run(tmp_path, probe_test, *words, *(["--bisect"] if bisect else []))
    assert code == (cli.BISECT_SKIP if bisect else 2)
    line = _one_error(capsys, repr(device), "nothing can be tested")
    assert (how if how != "KVMTEST_DEVICE" else "environment KVMTEST_DEVICE") in line
    assert not (tmp_path / "ran").exists()


# --- 6. --jobs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("jobs", ["-3", "1.5", "", "many"])
@pytest.mark.parametrize("command", [["run"], ["run", "--kernel", "debian"], ["known-issues", "verify"]])
def test_jobs_other_than_auto_or_a_count_is_refused(capsys, command, jobs):
    assert cli.main([*command, f"--jobs={jobs}"]) == 2
    err = capsys.readouterr().err
    assert f"argument -j/--jobs: {jobs!r}: expected 'auto'" in err and "Traceback" not in err


def test_jobs_auto_and_counts_are_accepted():
    for jobs in ("auto", "0", "3"):
        assert cli.build_parser().parse_args(["run", "-j", jobs]).jobs == jobs


def test_jobs_up_to_four_per_cpu_are_accepted_and_more_refused():
    assert jobs_problem("auto", 1, "w") == jobs_problem("0", 1, "w") == jobs_problem("8", 2, "w") == ""
    assert jobs_problem("9", 2, "this process may use 2 CPU(s)").startswith(
        "-j 9: more than 4 pytest processes per CPU, and this process may use 2 CPU(s): give at most 8, or 'auto'")


@pytest.mark.parametrize("bisect", [False, True])
def test_jobs_far_above_the_cpus_are_refused_before_the_run(tmp_path, probe_test, capsys, clean_env, monkeypatch,
                                                           bisect):
    """-j 100000 would start 100000 pytest sessions (a fork bomb), not run faster: one error, nothing run."""
    monkeypatch.setattr(cli.host_shards, "cpus", lambda: 2)
    words = ["run", "-j", "100000", "--report-dir", str(tmp_path / "r"), str(probe_test), f"--rootdir={tmp_path}"]
    assert cli.main(words + (["--bisect"] if bisect else [])) == (cli.BISECT_SKIP if bisect else 2)
    _one_error(capsys, "kvmtest run: -j 100000: more than 4 pytest processes per CPU, and this process may use 2 "
                       "CPU(s): give at most 8")
    assert not (tmp_path / "ran").exists()


def test_known_issue_verify_refuses_jobs_far_above_the_cpus(capsys, monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0})
    assert cli.main(["known-issues", "verify", "-j", "5"]) == 2
    _one_error(capsys, "kvmtest known-issues verify: -j 5: more than 4 pytest processes per CPU, and this process "
                       "may use 1 CPU(s): give at most 4")


def test_kernel_run_counts_jobs_against_the_vcpus_of_each_vm(tmp_path, capsys, clean_env, monkeypatch):
    """Under --kernel, -j is each VM's pytest-xdist workers: refused past four per vCPU, before any boot."""
    words = ["run", "--kernel", str(tmp_path / "bzImage"), "--accel", "tcg", "--vm-cpus", "2", "-j", "9",
             "--report-dir", str(tmp_path / "r")]
    monkeypatch.setattr(runner, "resolve", lambda kernel: None)  # no kernel or QEMU needed to get this far
    monkeypatch.setattr(runner, "find_tools", lambda: None)
    monkeypatch.setattr("kvmtest.kernelvm.vmrun.run_config", lambda *a: pytest.fail("a VM was booted"))
    assert cli.main(words) == 2
    _one_error(capsys, "kvmtest run --kernel: -j 9: more than 4 pytest processes per CPU, and each VM has 2 vCPU(s): "
                       "give at most 8")


@pytest.mark.parametrize("workers", [["-n3"], ["-nauto"], ["-n", "3"], ["--numprocesses=3"]])
def test_a_worker_count_of_the_users_own_is_xdist_not_shards(workers):
    """`kvmtest run -n3` is pytest-xdist with the user's count, as `-n 3` is: shards (which run with
    `-p no:xdist`) would each fail on the unknown -n3, and no -n of kvmtest's own is added."""
    args, extra = cli.build_parser().parse_known_args(["run", "-j", "2", *workers, "suites/smoke"])
    assert cli.shards_wanted(args, extra) == 0
    argv, _ = cli.pytest_args(args, extra, {"host": "h", "kernel": {"release": "6.18"}})
    assert argv.count("-n") == workers.count("-n")


@pytest.mark.parametrize("jobs, words, shards, workers", [
    ("1", [], 0, None),                       # one job: one pytest, not a controller with one worker
    ("0", [], 0, None),
    ("2", [], 2, "2"),                       # shards: each drops the -n (host_shards.shard_argv)
    ("2", ["--pdb"], 0, None),                # a debugger: one pytest (xdist refuses --pdb)
    ("2", ["--trace"], 0, None),
    ("2", ["--junitxml=out.xml"], 0, "2"),    # pytest's own JUnit: one writer, xdist's controller
    ("2", ["-x"], 0, "2"),
])
def test_jobs_and_options_choose_one_pytest_shards_or_xdist(jobs, words, shards, workers):
    args, extra = cli.build_parser().parse_known_args(["run", "-j", jobs, *words, "suites/smoke"])
    assert cli.shards_wanted(args, extra) == shards
    argv, _ = cli.pytest_args(args, extra, {"host": "h", "kernel": {"release": "6.18"}})
    assert (argv[argv.index("-n") + 1] if "-n" in argv else None) == workers


@pytest.mark.parametrize("words, shown", [
    (["-k", "foo("], "-k 'foo(': at column 5: expected identifier; got end of input"),
    (["-kfoo and"], "-k 'foo and': at column 8: expected not OR left parenthesis OR identifier"),
    (["-m", "waits or"], "-m 'waits or': at column 9: expected not OR left parenthesis OR identifier"),
])
@pytest.mark.parametrize("jobs", [["-j", "0"], ["-j", "2"], ["-j", "2", "--xdist"]])
def test_a_malformed_selection_expression_is_one_error_before_the_run(tmp_path, probe_test, capsys, clean_env,
                                                                     words, shown, jobs):
    """pytest refuses a malformed -k/-m only after collecting: sharded, every shard reported its tests
    as unrun errors; under pytest-xdist it was an INTERNALERROR. Now one line, exit 2, nothing run."""
    argv = ["run", *jobs, "--report-dir", str(tmp_path / "r"), *words, str(probe_test), f"--rootdir={tmp_path}"]
    assert cli.main(argv) == 2
    _one_error(capsys, f"kvmtest run: {shown}")
    assert not (tmp_path / "ran").exists() and not (tmp_path / "r").exists()


def test_well_formed_and_empty_selection_expressions_pass():
    assert cli.selection_problem([("-k", "real and not (hlt or mmio)"), ("-m", "waits"), ("-k", " "),
                                  ("-kreal", None), ("-p", "foo(")]) == ""


def test_only_the_expression_pytest_uses_is_checked():
    """pytest keeps the last -k and the last -m, PYTEST_ADDOPTS before the command line."""
    assert cli.selection_problem([("-k", "foo("), ("-k", "bar")]) == ""
    assert cli.selection_problem([("-k", "bar")], addopts="-m 'a or' -k 'foo('").startswith(
        "-m 'a or': at column 5: expected not OR left parenthesis OR identifier; got end of input")
    assert cli.selection_problem([("-m", "a")], addopts="-m 'a or'") == ""
    assert cli.selection_problem([], addopts="-k 'unbalanced") == ""  # pytest's own error, first thing


def test_a_malformed_selection_in_pytest_addopts_is_refused(tmp_path, probe_test, capsys, clean_env, monkeypatch):
    monkeypatch.setenv("PYTEST_ADDOPTS", "-kfoo(")
    argv = ["run", "-j", "2", "--report-dir", str(tmp_path / "r"), str(probe_test), f"--rootdir={tmp_path}"]
    assert cli.main(argv) == 2
    _one_error(capsys, "kvmtest run: -k 'foo(': at column 5")
    assert not (tmp_path / "ran").exists()


def test_kernel_run_refuses_a_test_path_that_does_not_exist_before_booting(tmp_path, capsys, clean_env, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "here.py").write_text("def test_x():\n    pass\n")
    assert cli.main(["run", "--kernel", str(tmp_path / "no-bzImage"), "--report-dir", str(tmp_path / "r"),
                     "suites/smoke", "here.py::test_x"]) == 2
    _one_error(capsys, f"kvmtest run --kernel: suites/smoke: no such test file or directory in {tmp_path}")


def test_kernel_run_refuses_a_malformed_selection_before_booting(tmp_path, capsys, clean_env):
    assert cli.main(["run", "--kernel", str(tmp_path / "no-bzImage"), "--report-dir", str(tmp_path / "r"),
                     "-m", "not"]) == 2
    _one_error(capsys, "kvmtest run --kernel: -m 'not': at column 4: expected not OR left parenthesis OR identifier")


def test_argparse_spellings_of_k_and_m_are_read_as_pytest_reads_them():
    """-k=EXPR is -k EXPR to argparse; pytest strips -k's leading blanks (its columns count without them)."""
    assert cli.selection_problem([("-k=closed_objects", None), ("-m=waits", None)]) == ""
    assert cli.selection_problem([("-k", "  a(")]).startswith("-k 'a(': at column 3: expected identifier")


def test_an_expression_too_deep_for_the_parser_is_one_error(tmp_path, probe_test, capsys, clean_env):
    deep = "not " * 1500 + "a"
    argv = ["run", "-j", "0", "--bisect", "--report-dir", str(tmp_path / "r"), "-k", deep, str(probe_test),
            f"--rootdir={tmp_path}"]
    assert cli.main(argv) == cli.BISECT_SKIP
    _one_error(capsys, "kvmtest run: -k 'not not", "nested too deeply for pytest's expression parser")


@pytest.mark.parametrize("words", [["-k"], ["-vk"], ["-m"], ["--maxfail"], ["--kvm-junit"], ["--kvm-modes"]])
def test_an_option_given_last_without_its_value_is_refused(tmp_path, probe_test, capsys, clean_env, words):
    """Passed on, it would have taken the test path kvmtest puts after the options as its value
    (`-k FILE`: every test deselected, exit 5)."""
    flag = "-k" if words == ["-vk"] else words[0]
    argv = ["run", "-j", "2", "--report-dir", str(tmp_path / "r"), str(probe_test), f"--rootdir={tmp_path}", *words]
    assert cli.main(argv) == 2
    _one_error(capsys, f"kvmtest run: {flag}: expected a value after it")
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("cluster, expected", [
    (["-vk", "probe"], [("-v", None), ("-k", "probe")]),
    (["-xs"], [("-x", None), ("-s", None)]),
    (["-vkprobe"], [("-v", None), ("-k", "probe")]),
    (["-vrA"], [("-v", None), ("-r", "A")]),
    (["-kprobe"], [("-kprobe", None)]),     # one option with its value attached: passed on as written
    (["-vZ"], [("-vZ", None)]),             # a letter pytest does not know: passed on for pytest to refuse
    (["-vn"], [("-vn", None)]),             # xdist's -n in a cluster: pytest refuses it, so it gets it whole
])
def test_one_letter_clusters_are_read_as_argparse_reads_them(cluster, expected):
    """`-vk EXPR` is -v and -k EXPR: read as one unknown word, EXPR became a test path and -vk took the
    next argument as its expression."""
    assert cli.split_pytest_args([*cluster, "t.py"]) == (expected, ["t.py"])


def test_a_cluster_with_x_runs_as_one_pytest(tmp_path):
    args, extra = cli.build_parser().parse_known_args(["run", "-j", "2", "-xs", "suites/smoke"])
    assert cli.shards_wanted(args, extra) == 0  # -x: only one process can stop the run at the first failure


def test_jobs_beside_the_users_own_worker_count_is_not_checked_but_that_count_is(monkeypatch):
    monkeypatch.setattr(cli.host_shards, "cpus", lambda: 2)
    args, extra = cli.build_parser().parse_known_args(["run", "-j", "9", "-n", "1", "suites/smoke"])
    assert cli.workers_problem(args, extra) == ""  # -j is not what decides the processes here
    for words in (["-n", "100000"], ["-n100000"], ["--numprocesses=100000"], ["-n=100000"], ["-n", " 100000"],
                  ["-n", "1_00000"], ["-n", "+100000"]):  # what pytest-xdist reads as 100000, with int()
        args, extra = cli.build_parser().parse_known_args(["run", *words, "suites/smoke"])
        flag = "--numprocesses" if words[0].startswith("--") else "-n"
        assert cli.workers_problem(args, extra).startswith(f"{flag} 100000: more than 4 pytest processes per CPU")
    for count in ("logical", "\u00b2"):  # xdist's own word; a digit int() refuses (xdist says so itself)
        args, extra = cli.build_parser().parse_known_args(["run", "-n", count, "suites/smoke"])
        assert cli.workers_problem(args, extra) == ""


# --- 7. --vm-timeout from the environment -------------------------------------------------------


@pytest.mark.parametrize("var", ["KVMTEST_VM_TIMEOUT", "KVMTEST_VM_STALL"])
@pytest.mark.parametrize("value", ["abc", "-1", "nan"])
def test_bad_vm_time_from_the_environment_names_the_variable(monkeypatch, clean_env, var, value):
    monkeypatch.setenv(var, value)
    args = cli.build_parser().parse_args(["run", "--kernel", "debian"])
    with pytest.raises(KernelVmError, match=re.escape(f"{var}={value!r}: expected seconds")):
        runner.check_vm_options(args)


def test_vm_times_from_the_environment_and_defaults(monkeypatch, clean_env):
    monkeypatch.setenv("KVMTEST_VM_TIMEOUT", "60")
    args = cli.build_parser().parse_args(["run", "--kernel", "debian"])
    runner.check_vm_options(args)
    assert (args.vm_timeout, args.vm_stall) == (60.0, 600.0)
    args = cli.build_parser().parse_args(["run", "--kernel", "debian", "--vm-timeout", "30"])
    runner.check_vm_options(args)
    assert args.vm_timeout == 30.0  # the flag beats the variable


# --- 8. KVMTEST_HYPOTHESIS_PROFILE --------------------------------------------------------------


def test_bad_hypothesis_profile_variable_is_one_usage_error(pytester, monkeypatch):
    monkeypatch.setenv("KVMTEST_HYPOTHESIS_PROFILE", "bogus")
    pytester.makepyfile("def test_a():\n    pass\n\ndef test_b():\n    pass\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*KVMTEST_HYPOTHESIS_PROFILE='bogus': expected kvmtest-fast or kvmtest-deep*"])


# --- 9. --kvm-param names the kernel reads as one -----------------------------------------------


def test_kvm_param_spelt_with_dash_and_underscore_is_one_parameter():
    with pytest.raises(KernelVmError, match="kvm_amd.npt given twice"):
        runner.param_matrix(["kvm-amd.npt=1", "kvm_amd.npt=0"])
    with pytest.raises(KernelVmError, match="given twice"):
        runner.param_matrix(["kvm.force_emulation_prefix=1", "kvm.force-emulation-prefix=0"])


# --- 10, 12. compare ----------------------------------------------------------------------------


def test_compare_usage_shows_base_new_first(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["compare", "--help"])
    usage = capsys.readouterr().out.split("\n\n")[0]
    assert usage.startswith("usage: kvmtest compare [-h] [--json] BASE NEW\n"), usage
    assert "BASE [BASE ...] --new NEW [NEW ...]" in usage


def test_compare_with_a_device_file_says_it_is_not_a_regular_file(tmp_path, capsys):
    a = _write_junit(tmp_path / "a.xml")
    assert cli.main(["compare", a, "/dev/null"]) == 2
    _one_error(capsys, "/dev/null: not a regular file")


# --- 11. the HTML's baseline comparison names this host as compare does --------------------------


def test_baseline_from_the_same_host_is_not_a_different_host(pytester, tmp_path):
    """The recorder labels its own results "host (kernel)" as read_junit labels the file it wrote:
    a baseline from an earlier run on this host compares as the same host."""
    pytester.makepyfile("def test_x():\n    pass\n")
    first = tmp_path / "first.xml"
    assert pytester.runpytest(f"--kvm-junit={first}").ret == 0
    html = tmp_path / "second.html"
    assert pytester.runpytest(f"--kvm-html={html}", f"--kvm-baseline={first}").ret == 0
    text = html.read_text()
    assert "different hosts" not in text
    from kvmtest.reports.compare import compare
    from kvmtest.reports.results import read_junit

    assert "different hosts" not in compare(read_junit(first), read_junit(first)).text()


# --- 12. --kvm-modes naming no mode --------------------------------------------------------------


@pytest.mark.parametrize("value", ["", ","])
def test_kvm_modes_naming_no_mode_is_refused(pytester, value):
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest(f"--kvm-modes={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--kvm-modes=*names no CPU mode*"])


# --- 13. --kvm-* values the plugin would refuse: refused by kvmtest run before its command line ---


MALFORMED_ISSUES = "[[issue]]\nid = 'x'\n"  # no tests, reason or evidence: the loader refuses it


def _bad_plugin_value(tmp_path, monkeypatch, case) -> list[str]:
    """The pytest words (or, for "env", the environment) of one bad value, as `kvmtest run` gets them."""
    if case == "env":
        monkeypatch.setenv("KVMTEST_GUEST_TIMEOUT", "-5")
        return []
    if case == "malformed":
        (tmp_path / "k.toml").write_text(MALFORMED_ISSUES)
        return [f"--kvm-known-issues={tmp_path / 'k.toml'}"]
    return case.split(" ")


BAD_PLUGIN_VALUES = [
    ("--kvm-modes=", "--kvm-modes='' (from command line): names no CPU mode"),
    ("--kvm-modes ,", "--kvm-modes=',' (from command line): names no CPU mode"),
    ("--kvm-modes=long64,bogus", "unknown CPU mode(s) bogus"),
    ("--kvm-guest-timeout=-5", "--kvm-guest-timeout='-5' (from command line): must be more than 0 seconds"),
    ("--kvm-guest-timeout soon", "--kvm-guest-timeout='soon' (from command line): not a number of seconds"),
    ("--kvm-known-issues=/nonexistent/k.toml", "no such file: /nonexistent/k.toml"),
    ("malformed", "k.toml"),
    ("env", "--kvm-guest-timeout='-5' (from environment KVMTEST_GUEST_TIMEOUT): must be more than 0"),
]


@pytest.mark.parametrize("case, needle", BAD_PLUGIN_VALUES)
@pytest.mark.parametrize("bisect", [False, True])
def test_a_kvm_value_the_plugin_would_refuse_is_one_line_before_the_pytest_command_line(
        tmp_path, probe_test, capsys, clean_env, monkeypatch, case, needle, bisect):
    """Not pytest's usage error (exit 4) after `kvmtest run: pytest ...` was printed: one line naming
    the value, exit 2 (125 with --bisect: nothing could be tested), nothing run."""
    words = _bad_plugin_value(tmp_path, monkeypatch, case)
    code = _run(tmp_path, probe_test, *words, *(["--bisect"] if bisect else []))
    assert code == (cli.BISECT_SKIP if bisect else 2)
    out = capsys.readouterr()
    assert "kvmtest run: pytest" not in out.out, out.out
    lines = [line for line in out.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("kvmtest run: ") and needle in lines[0], out.err
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("case, needle", BAD_PLUGIN_VALUES)
def test_kvmtest_run_refuses_a_value_with_the_plugins_own_words(pytester, tmp_path, monkeypatch, clean_env,
                                                               case, needle):
    """The same value given to plain pytest: the plugin's usage error carries the same text."""
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest(*_bad_plugin_value(tmp_path, monkeypatch, case))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert needle in result.stderr.str(), result.stderr.str()


def test_a_store_true_kvm_flag_given_a_value_is_one_line(tmp_path, probe_test, capsys, clean_env):
    assert _run(tmp_path, probe_test, "--kvm-no-known-issues=yes") == 2
    _one_error(capsys, "kvmtest run: --kvm-no-known-issues='yes'", "takes no value")
    assert not (tmp_path / "ran").exists()


def test_kernel_run_refuses_a_bad_kvm_value_before_booting(tmp_path, capsys, clean_env):
    assert cli.main(["run", "--kernel", str(tmp_path / "no-bzImage"), "--report-dir", str(tmp_path / "r"),
                     "--kvm-guest-timeout=-5"]) == 2
    _one_error(capsys, "kvmtest run --kernel: --kvm-guest-timeout='-5' (from command line)")


# --- no PytestAssertRewriteWarning ---------------------------------------------------------------


@pytest.mark.parametrize("how", ["console script", "python -m in the checkout"])
def test_a_run_prints_no_assert_rewrite_warning(tmp_path, probe_test, clean_env, how):
    """kvmtest.plugin imports kvmtest.fixtures; named in its pytest_plugins, pytest marked the module
    for rewriting only afterwards and warned on every run. And `python -m kvmtest.cli run` from the
    checkout (as the --kernel VM runs it, kernelvm/inner.py) finds the checkout's kvmtest.egg-info
    too: pytest marked the package `kvmtest`, which cli had imported, and warned twice a session
    (kvmtest/__init__.py: PYTEST_DONT_REWRITE). A child process: in this one, pytest's own warning
    capture would swallow the warning."""
    import subprocess
    import sys
    from pathlib import Path

    if how == "console script":
        script = Path(sys.executable).with_name("kvmtest")  # as a user runs it: the installed console script
        if not script.exists():
            pytest.skip(f"no kvmtest console script next to {sys.executable}")
        command, cwd = [str(script)], None
    else:
        command, cwd = [sys.executable, "-m", "kvmtest.cli"], Path(cli.__file__).resolve().parent.parent
    proc = subprocess.run([*command, "run", "-j", "0", "--report-dir", str(tmp_path / "r"),
                           str(probe_test), "-p", "no:cacheprovider", f"--rootdir={tmp_path}"],
                          capture_output=True, text=True, timeout=300, cwd=cwd)
    assert proc.returncode == 0 and (tmp_path / "ran").exists(), proc.stdout + proc.stderr
    assert "PytestAssertRewriteWarning" not in proc.stdout + proc.stderr


# --- 12. an assembler cache directory that cannot be written ---------------------------------------


def test_unwritable_cache_dir_is_one_warning_naming_it(pytester, monkeypatch):
    monkeypatch.setenv("KVMTEST_CACHE_DIR", UNWRITABLE)
    monkeypatch.delenv("KVMTEST_ASM_CACHE_MB", raising=False)
    pytester.makepyfile("def test_a():\n    pass\n\ndef test_b():\n    pass\n")
    result = pytester.runpytest()
    result.assert_outcomes(passed=2, warnings=1)
    result.stdout.fnmatch_lines([f"*KVMTEST_CACHE_DIR {UNWRITABLE}: *without the disk cache*"])


def test_checking_a_report_path_leaves_nothing_behind(tmp_path):
    from kvmtest.reports.recorder import unwritable

    assert unwritable(tmp_path / "a" / "b" / "r.xml") == "" and unwritable(tmp_path / "c" / "d", directory=True) == ""
    assert sorted(tmp_path.iterdir()) == []
    (tmp_path / "kept.xml").write_text("x")
    assert unwritable(tmp_path / "kept.xml") == "" and (tmp_path / "kept.xml").read_text() == "x"


def test_a_sharded_runs_command_line_shows_no_xdist_worker_count(tmp_path, probe_test, capsys, clean_env,
                                                                 monkeypatch):
    """The "kvmtest run: N shards of: pytest ..." line is meant to be pasted back: it must not carry the
    `-n JOBS` the shards never get (pasted, it would run pytest-xdist instead)."""
    from kvmtest import host_shards

    monkeypatch.setattr(host_shards, "run", lambda *a, **k: 0)
    assert cli.main(["run", "-j", "2", "--report-dir", str(tmp_path / "r"), str(probe_test)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("kvmtest run:"))
    assert line.startswith("kvmtest run: 2 shards of: pytest ") and " -n " not in line, line


@pytest.mark.parametrize("option", ["--kvm-shard-role=waits", "--kvm-shard-claims=/tmp/x", "--kvm-shard-log=/tmp/y"])
def test_the_shards_own_options_are_refused_by_kvmtest_run(option, capsys, tmp_path):
    """kvmtest run gives these to each of its shards; given by the user, --kvm-shard-role=waits made every
    shard a waits shard and the unmarked tests ran nowhere."""
    assert cli.main(["run", "-j", "2", "--report-dir", str(tmp_path), option, "suites/smoke"]) == 2
    err = capsys.readouterr().err
    assert f"{option.split('=')[0]}: set by kvmtest run on each of its own shards" in err
    assert not list(tmp_path.iterdir())  # refused before anything ran
