"""`kvmtest run -j N` on the host: N pytest processes claiming their tests one by one from a shared
counter (kvmtest.shard_claims), in place of pytest-xdist's workers.

Why: pytest-xdist sends every phase report of every test (three per test) through execnet to a
controller process, which deserializes, re-hooks and reports each one: on this project's 2-core
development host that was 8.5-11 s of a 7,637-check run's 60-64 s of CPU (measured side by side,
benchmarks/bench_speed.py, 2026-12-01). Shards share one counter while they run: each collects the
same tests in the same order (after -k/-m), claims the next unclaimed one, runs it, and so on, so
they end together whichever draws the slow tests (an every-N-th split ended up to 3 s apart); each
writes its own JUnit file; when all are done those are merged into the run's JUnit,
from which its KTAP and HTML are written (merge_junit: a shard that wrote none is an error naming it, its
tests rebuilt from the log it keeps, kvmtest.shard_log).
One more shard, started once the shards have collected any test marked `waits` (kvmtest.markers:
checks that mostly sleep on timers and timeouts), runs those: the N others keep the N CPUs busy
meanwhile. On the 2-CPU development host that took a whole-suite run from 29.2-30.5 s to 27.3-29.0 s
(alternating runs, 2026-12-01 10:24-10:27, batched output included).
Every shard's output reaches the console in whole lines, prefixed "[K/N]" ("[waits]"), batched every
0.1 s or so (kvmtest.batched_stdout; as a plain stdout when pytest does not capture fd 1: -s,
--capture=sys or tee-sys). Each shard runs in a process
group of its own and dies with `kvmtest run`: an interrupt (Ctrl-C, SIGINT, SIGTERM) reaches the
shards once, from `run`, so each ends its session and writes its report.

What xdist gives that shards do not (a debugger, stopping the whole run at the first failure,
re-running the last failures first) keeps xdist: see `shardable`.
"""

import contextlib
import datetime
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# pytest options that need one process to see every test (a debugger on the console, stop-at-first
# failure across the run, the cache's last-failed order, plain listings): with these, xdist stays.
_WHOLE_RUN_OPTIONS = ("--pdb", "--trace", "-x", "--exitfirst", "--maxfail", "--lf", "--last-failed", "--ff",
                      "--failed-first", "--nf", "--new-first", "--sw", "--stepwise", "--stepwise-skip", "--co",
                      "--collect-only", "--collectonly", "--setup-only", "--setup-plan", "--fixtures",
                      "--fixtures-per-test", "--markers", "--cache-show", "--cache-clear", "-h", "--help",
                      "--version", "-V", "--junitxml", "--junit-xml")  # pytest's own JUnit: one file, one writer


# pytest's one-letter options that take a value (-k EXPR, -kEXPR): letters after one are that value
_SHORT_WITH_VALUE = set("kmpcorWn")

WAITS_SHARD = "waits"  # the name of the shard that runs the tests marked `waits`


def _short_flags(flag: str) -> str:
    """The one-letter options in a single-dash argument: "-sx" -> "sx", "-kexpr" -> "k"."""
    letters = ""
    for ch in flag[1:]:
        letters += ch
        if ch in _SHORT_WITH_VALUE:
            break
    return letters


def shardable(options: list[tuple[str, str | None]]) -> bool:
    """Whether pytest options `options` ((flag, value) pairs, cli.split_pytest_args) allow a sharded
    run: none of them needs one process seeing every test (--pdb, -x, --lf, ... or -x among
    combined one-letter options such as -sx)."""
    for flag, _ in options:
        name = flag.split("=", 1)[0]
        if name in _WHOLE_RUN_OPTIONS:
            return False
        if not name.startswith("--") and ("x" in _short_flags(name) or "h" in _short_flags(name)):
            return False
    return True


def cpus() -> int:
    """The CPUs this process may use (its affinity mask), at least 1."""
    return max(1, len(os.sched_getaffinity(0)))


def shard_count(jobs: str) -> int:
    """`-j JOBS` as a number of shards: 'auto' is the CPUs this process may use."""
    return cpus() if jobs == "auto" else int(jobs)


# The shards write JUnit only, and only where told: the run's own files are the merge's.
_SHARD_DROPS = ("--kvm-junit=", "--kvm-ktap=", "--kvm-html=", "--kvm-report-dir=", "--kvm-baseline=")
_SHARD_ENV_DROPS = ("KVMTEST_JUNIT", "KVMTEST_KTAP", "KVMTEST_HTML", "KVMTEST_REPORT_DIR", "KVMTEST_BASELINE")


def without_workers(argv: list[str]) -> list[str]:
    """pytest arguments `argv` without xdist's `-n JOBS` (kvmtest run's own; a shard runs no xdist)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "-n":
            skip = True
        else:
            out.append(arg)
    return out


def shard_argv(argv: list[str], claims: Path, junit: Path, stem: Path) -> list[str]:
    """A shard's pytest arguments: `argv` (kvmtest run's command line, whose report options all
    have the --opt=value form) without xdist's -n and the report options, claiming its tests from
    the counter file `claims` (kvmtest.shard_claims), writing its JUnit to `junit` (intermediate,
    merged into `stem`.xml/.ktap/.html) and its log beside it (`junit` with .log: what merge_junit
    rebuilds from should the shard die). Its -v lines end without pytest's percentage done, which a
    shard cannot know (the command line may still ask for a style; "times" costs O(tests) a line)."""
    out = [arg for arg in without_workers(argv) if not arg.startswith(_SHARD_DROPS)]
    return ["-o", "console_output_style=classic", *out, "-p", "no:xdist", "-p", "kvmtest.shard_claims",
            f"--kvm-shard-claims={claims}", f"--kvm-shard-log={junit.with_suffix('.log')}", "-p",
            "kvmtest.kernelvm.progress", f"--kvm-vm-merged-into={stem}", f"--kvm-junit={junit}"]


def _pump(name: str, stream, lock: threading.Lock) -> None:
    """Copy shard `name`'s output to this process's stdout line by line, each prefixed "[name] "; a
    last line the shard did not end (it died mid-line) is ended here, not run into another's."""
    prefix = f"[{name}] "
    for line in stream:
        with lock:
            sys.stdout.write(prefix + line if line.endswith("\n") else f"{prefix}{line}\n")
            sys.stdout.flush()


def run(argv: list[str], n: int, paths: dict[str, Path], fp: dict, baseline=(), issues=list) -> int:
    """Run pytest `argv` (kvmtest run's command line) as `n` shards, and one more for the tests marked
    `waits` once the shards have collected any (kvmtest.shard_claims: it mostly sleeps), and write the
    run's reports to `paths` {"junit", "ktap", "html"} from theirs: the JUnit merged, KTAP and HTML
    (with `baseline`'s results compared, `issues()` the known-issue entries, asked for once the shards
    run) from it; `fp`: the host's fingerprint. Returns pytest's exit status for the whole run: a
    shard's 2, 3 or 4 (interrupted or a collection error, internal error, usage error; the highest),
    else vmrun.shard_exit's (1 when anything failed or a shard died, 5 only when no shard collected a
    test)."""
    from .shard_claims import COLLECTED_SUFFIX, MARKED_SUFFIX, WAITS_SUFFIX, read_collected

    started = time.monotonic()
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    stem = Path(paths["junit"]).with_suffix("")
    for report in paths.values():  # as the recorder does in one pytest: --junit/--html may name new folders
        Path(report).parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=".kvmtest-shards-", dir=Path(paths["junit"]).parent))
    # shards "1/n" .. "n/n", and "waits" for the tests marked so, should the shards collect any
    names = [f"{k}/{n}" for k in range(1, n + 1)]
    parts = [workdir / f"shard{k}.xml" for k in range(1, n + 1)]
    # the claims counter in the temporary directory, not beside the reports: O_APPEND must be atomic
    fd, claims = tempfile.mkstemp(prefix="kvmtest-claims-")
    os.close(fd)
    env = {key: value for key, value in os.environ.items() if key not in _SHARD_ENV_DROPS}
    env["KVMTEST_SHARD_PARENT"] = str(os.getpid())  # shard_main: die with this process
    lock = threading.Lock()
    procs: list[subprocess.Popen] = []
    pumps: list[threading.Thread] = []

    def start(name: str, part: Path, *role: str) -> None:
        # each shard in its own process group: a Ctrl-C reaches this process alone, which forwards
        # exactly one SIGINT (_stop); a second one could cut a shard's report short
        proc = subprocess.Popen([sys.executable, "-m", "kvmtest.host_shards",
                                 *shard_argv(argv, Path(claims), part, stem), *role],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env, errors="replace", process_group=0)
        procs.append(proc)
        pumps.append(threading.Thread(target=_pump, args=(name, proc.stdout, lock), daemon=True))
        pumps[-1].start()

    on_main = threading.current_thread() is threading.main_thread()
    old_term = signal.signal(signal.SIGTERM, _sigterm_interrupts) if on_main else None
    try:
        try:
            for name, part in zip(names, parts, strict=True):
                start(name, part, "--kvm-shard-role=main")
            entries = issues()  # for the HTML report, read while the shards run
            if _marked_tests(f"{claims}{MARKED_SUFFIX}", procs):
                names.append(WAITS_SHARD)
                parts.append(workdir / "waits.xml")
                start(names[-1], parts[-1], "--kvm-shard-role=waits")
            exits: list[int | None] = [proc.wait() for proc in procs]
        except KeyboardInterrupt:  # Ctrl-C, SIGINT or SIGTERM to this process: the shards write their reports
            exits, entries = _stop(procs), []
            exits += [None] * (len(parts) - len(exits))  # interrupted while starting them: the rest never ran
        finally:
            if on_main:
                signal.signal(signal.SIGTERM, old_term)
        for pump in pumps:
            pump.join()
        collected = read_collected(claims)
        return _finish(parts, names, exits, paths, fp, baseline, entries, started, date, collected)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        for suffix in ("", WAITS_SUFFIX, MARKED_SUFFIX, COLLECTED_SUFFIX):  # the counters, what was collected
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{claims}{suffix}")


def _marked_tests(path: str, procs: list) -> int:
    """How many of the collected tests are marked `waits`, as the first shard to get there wrote it to
    `path` once it had collected them (kvmtest.shard_claims); 0 if every shard of `procs` ended first
    (a collection or usage error) or wrote something else. Polls: it is there within a second."""
    while not os.path.exists(path):
        if all(proc.poll() is not None for proc in procs):
            return 0
        time.sleep(0.02)
    try:
        return int(Path(path).read_text())
    except (OSError, ValueError):
        return 0


def _sigterm_interrupts(signum, frame):
    raise KeyboardInterrupt  # a cancelled CI job or `timeout`: stop as for Ctrl-C, with reports


def _stop(procs: list) -> list:
    """Interrupt the shards still running (one SIGINT each: pytest then writes its report) and their
    exit statuses, death by that SIGINT as pytest's "interrupted" (2: a shard still importing kvmtest
    cannot handle it); asked to stop again meanwhile, kill those still running (they write none)."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    try:
        return [2 if code == -signal.SIGINT else code for code in (proc.wait() for proc in procs)]
    except KeyboardInterrupt:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        return [proc.wait() for proc in procs]


def _why(code: int | None) -> str:
    return ("never started: the run was interrupted first" if code is None else
            f"killed by signal {-code}" if code < 0 else f"exit status {code}")


def _lost_shard_case(name: str, code: int | None, logged: bool = False):
    """The error case of shard `name` ("K/N" or "waits"), which wrote no report."""
    from .reports import junit

    what = ("its tests are reported from its log, without details" if logged else
            "it claimed no test (its log names none)")
    return junit.testcase("kvmtest-shard", f"shard{name.replace('/', 'of')}", "error",
                          f"shard {name} wrote no report ({_why(code)}): {what}")


def _recovered_cases(log: Path, name: str, code: int | None) -> list:
    """The test cases a dead shard's log (kvmtest.shard_log) gives: each test it finished with its
    status and message (the details went with the shard), the one it died in and those it had
    claimed as errors naming that."""
    from .reports import junit
    from .shard_log import read_log

    done, running, waiting = read_log(log)
    died = f"shard {name} died ({_why(code)})"
    cases = [junit.testcase(*junit.split_nodeid(nodeid), status, message,
                            f"{message}\n\n(from the log of {died} before writing its report: details lost)")
             for nodeid, (status, message) in done.items()]
    cases += [junit.testcase(*junit.split_nodeid(nodeid), "error", f"{died} while this test ran")
              for nodeid in running]
    cases += [junit.testcase(*junit.split_nodeid(nodeid), "error", f"no result: {died} before this test started")
              for nodeid in waiting]
    return cases


def merge_junit(parts: list[Path], names: list[str], exits: list, out: Path, fp: dict,
                collected: list[str] | None = None) -> None:
    """The JUnit files `parts` of the shards `names` as one suite in `out`, test cases in test-id
    order; a shard that wrote none (it died) is one error case naming it, with what its log (beside
    its JUnit file) says of its tests; each test of `collected` (the ids the shards collected) that
    no case gives is an error saying so (a shard killed between claiming a test and logging it)."""
    import xml.etree.ElementTree as ET

    from .reports import junit

    cases, properties, base = [], None, None
    for part, name, code in zip(parts, names, exits, strict=True):
        try:
            suite = ET.parse(part).getroot().find("testsuite")
        except (OSError, ET.ParseError):
            suite = None
        if suite is None:
            recovered = _recovered_cases(part.with_suffix(".log"), name, code)
            cases += [_lost_shard_case(name, code, bool(recovered)), *recovered]
            continue
        base = base if base is not None else suite
        properties = properties or {e.get("name"): e.get("value") for e in suite.findall("properties/property")}
        cases += suite.findall("testcase")
    # a file that fails to collect is an error case in every shard's report: once here (tests, each
    # claimed by one shard, never repeat; a case that differs is kept, so no duplicate can hide). Only
    # cases whose names repeat are compared whole: serializing all 7,637 took 0.14 s of the run's tail.
    named: dict[tuple[str, str], list] = {}
    for case in cases:
        case.tail = None  # the shard file's indentation, no part of the case
        named.setdefault((case.get("classname", ""), case.get("name", "")), []).append(case)
    cases = []
    for same in named.values():
        if len(same) == 1:
            cases += same
            continue
        seen: set[bytes] = set()
        for case in same:
            key = ET.tostring(case)
            if key not in seen:
                seen.add(key)
                cases.append(case)
    reported = {(case.get("classname", ""), case.get("name", "")) for case in cases}
    for nodeid in collected or ():
        if junit.split_nodeid(nodeid) not in reported:
            cases.append(junit.testcase(*junit.split_nodeid(nodeid), "error", "no result: no shard reported this "
                                        "test (one that died may have claimed it just before)"))
    cases.sort(key=lambda c: (c.get("classname", ""), c.get("name", "")))
    name = (base.get("name") if base is not None else None) or f"kvmtest@{fp.get('host', '?')}"
    junit.write(out, [junit.testsuite(name, cases, hostname=fp.get("host"), properties=properties,
                                      timestamp=datetime.datetime.now().isoformat(timespec="seconds"))])


def _finish(parts, names, exits, paths, fp, baseline, issues, started: float, date: str, collected=None) -> int:
    from . import fingerprint as fpmod
    from .kernelvm.vmrun import shard_exit
    from .reports import html as html_report
    from .reports import ktap
    from .reports.results import read_junit
    from .shard_log import read_log

    merge_junit(parts, names, exits, Path(paths["junit"]), fp, collected)
    results = read_junit(paths["junit"])
    title = fpmod.short(fp) if fp.get("cpu") else fp.get("host", "")
    Path(paths["ktap"]).write_text(ktap.render(results, [f"kvmtest on {title}"]))
    comparison = None
    if baseline:
        from .reports.compare import compare
        from .reports.results import read_any

        comparison = compare(read_any(baseline), results)
    Path(paths["html"]).write_text(html_report.render(results, fp, comparison, title=f"kvmtest: {title}",
                                                      issues=issues, date=date))
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    order = ["failed", "error", "passed", "skipped", "xfailed", "xpassed"]  # pytest's summary order
    summary = ", ".join(f"{counts[k]} {k}" for k in sorted(counts, key=lambda k: (order + [k]).index(k)))
    for part, name, code in zip(parts, names, exits, strict=True):
        if not part.is_file():  # a shard that died: where, from its log (its last lines may not have shown)
            running = read_log(part.with_suffix(".log"))[1]
            where = f", in {running[-1]}" if running else ""
            print(f"kvmtest run: shard {name} wrote no report ({_why(code)}{where})", flush=True)
    shards = f"{len(parts) - 1} shards and the waits shard" if names[-1] == WAITS_SHARD else f"{len(parts)} shards"
    print(f"kvmtest run: {shards}: {summary or 'no tests'} in {time.monotonic() - started:.1f}s",
          flush=True)
    for kind, key in (("JUnit", "junit"), ("KTAP", "ktap"), ("HTML", "html")):
        print(f"kvmtest report: {kind} {paths[key]}", flush=True)
    stopped = [c for c in exits if c in (2, 3, 4)]
    if stopped:  # interrupted (or a collection error), internal or usage error: pytest's exit whatever
        return max(stopped)  # else failed, as one pytest gives it (--bisect: untestable, not a bad kernel)
    lost = any(code is None or code < 0 for code in exits)
    code = 1 if lost or any(r.status in ("failed", "error") for r in results) else 0
    return shard_exit(code, [c if c is not None and c >= 0 else 1 for c in exits])


class _Console:
    """A shard's pytest plugin: unless pytest captures fd 1 itself (--capture=fd, its default), a
    test's own writes to fd 1 (-s, --capture=sys or tee-sys: a subprocess, C code) would overtake the
    batched lines (kvmtest.batched_stdout), so the shard's stdout writes out at every flush then."""

    def __init__(self, out):
        self.out = out

    def pytest_configure(self, config):
        """pytest hook: batch the console lines only while pytest captures fd 1."""
        self.out.batching = config.getoption("capture", "no") == "fd"


def shard_main(argv: list[str]) -> None:
    """One shard's process (`python -m kvmtest.host_shards PYTEST_ARGS`): pytest.main, then exit
    without the interpreter's finalization, which frees every object of a whole-suite session one
    by one (1.2 s of a 28 s shard here) after pytest has written and closed everything; the exit
    handlers (pytest's temporary-directory lock removal among them) still run. Interrupted before
    pytest's session takes interrupts over (importing pytest, parsing its options), it exits 2 as
    pytest's "interrupted", not killed by SIGINT, which kvmtest run would report as a shard lost."""
    import atexit

    from .libc import die_with_parent

    # the shards run in process groups of their own: if `kvmtest run` dies (SIGKILL, OOM) nothing
    # else would stop them, so they go with it (PR_SET_PDEATHSIG; the parent check closes the race)
    die_with_parent(signal.SIGKILL)
    if os.environ.get("KVMTEST_SHARD_PARENT", str(os.getppid())) != str(os.getppid()):
        os._exit(1)
    # `kvmtest run` stops its shards with one SIGINT each (_stop), also for a SIGTERM it got: one started
    # where SIGINT is ignored (a script's background job) inherits SIG_IGN and would run on to the end
    signal.signal(signal.SIGINT, signal.default_int_handler)
    out = None
    try:
        import pytest

        from .batched_stdout import BatchedStdout

        # pytest's -v lines, batched; its errors too, which would otherwise overtake the lines held
        # (kvmtest run reads both from one pipe)
        plain_write_through = bool(getattr(sys.stdout, "write_through", False) or sys.stdout.line_buffering)
        sys.stdout = sys.stderr = out = BatchedStdout(1, sys.stdout.encoding, "backslashreplace", plain_write_through)
        code = int(pytest.main(argv, plugins=[_Console(out)]))
    except KeyboardInterrupt:
        print("kvmtest shard: interrupted while starting", flush=True)
        code = 2  # pytest.ExitCode.INTERRUPTED
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # done: an interrupt now would only cut the exit short
        if out is not None:
            out.batching = False  # what is written from here on (an uncaught exception's traceback) goes out at once
            out.flush_now()
    sys.stderr.flush()
    atexit._run_exitfuncs()
    os._exit(code)


if __name__ == "__main__":
    shard_main(sys.argv[1:])
