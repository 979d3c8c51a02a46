"""The `kvmtest` command: `info` (host fingerprint) and `run` (the suites, with reports)."""

import argparse
import importlib.util
import json
import os
import shlex
import sys
import textwrap
from pathlib import Path

from . import fingerprint as fpmod
from . import host_shards, known_issue_verify
from .bytecode import keep_bytecode_outside_the_tree
from .kernelvm import KernelVmError
from .kernelvm import runner as kernelvm  # stdlib only: QEMU and virtme-ng are needed only by --kernel
from .options import jobs_problem, jobs_value
from .reports.recorder import report_stem, unwritable  # the plugin's --kvm-report-dir names files alike

REPO_SUITES = Path(__file__).resolve().parent.parent / "suites"


def cmd_info(args) -> int:
    """`kvmtest info [--json]`: the host fingerprint (kvmtest.fingerprint.collect on `args.device`),
    as a summary or, with --json, all of it. Returns the exit status (0)."""
    fp = fpmod.collect(args.device)
    if args.json:
        json.dump(fp, sys.stdout, indent=2, sort_keys=True)
        print()
        return 0
    print(fpmod.short(fp))
    print(f"  kernel:   {fp['kernel']['release']} {fp['kernel']['version']}")
    print(f"  build:    {fpmod.build_id(fp)}  (what known-issue entries record as seen)")
    print(f"  cmdline:  {fp['kernel']['cmdline']}")
    cpu = fp["cpu"]
    flags = " ".join(f for f, on in cpu["flags"].items() if on)
    print(f"  cpu:      {cpu['vendor']} {cpu['model_name']} family {cpu['family']} model {cpu['model']} "
          f"stepping {cpu['stepping']}; flags: {flags}")
    if fp.get("kvm"):
        print("\n".join(_guest_cpu_lines(args.device)))
    print(f"  modules:  {', '.join(fp['modules']) or 'none'}")
    print(f"  mmu:      {fp['mmu']['mode']} ({fp['mmu']['how']}); behaviour: "
          f"{fp['mmu'].get('probe_behaviour', '-')} ({fp['mmu'].get('probe_evidence', 'not probed')})")
    if fp.get("kvm"):
        kvm = fp["kvm"]
        on = sorted(k for k, v in kvm["capabilities"].items() if v)
        print(f"  api:      {kvm['api_version']}; supported CPUID sha256 {kvm['supported_cpuid_sha256'][:16]}...")
        print(f"  caps:     {len(on)} present: {', '.join(c.removeprefix('KVM_CAP_') for c in on)}")
    else:
        print(f"  kvm:      unavailable: {fp.get('kvm_error')}")
    return 0


def _guest_cpu_lines(device: str) -> list[str]:
    """What KVM lets a guest have next to the host's flags (kvmtest.cpu_support)."""
    from . import cpu_support
    from .kvm import Kvm

    try:
        with Kvm(device) as kvm:
            supported, emulated = cpu_support.kvm_features(kvm)
    except OSError as e:
        return [f"  guest cpu: KVM_GET_SUPPORTED_CPUID failed: {e}"]
    return cpu_support.lines(cpu_support.host_flags(), supported, emulated)


def _default_suites() -> str:
    if REPO_SUITES.is_dir():
        return str(REPO_SUITES)
    if Path("suites").is_dir():
        return "suites"
    raise SystemExit("kvmtest run: no suites/ directory found (run from a kvmtest checkout or name the tests)")


# pytest's and pytest-xdist's options that take their value as the next argument (`-k EXPR`,
# `-p no:xdist`, `-n 4`): that value is no test path. Any other option takes its value as
# `--option=value`.
PYTEST_VALUE_OPTIONS = frozenset({
    "-k", "-m", "-p", "-c", "-o", "-r", "-W", "-n", "--tb", "--maxfail", "--deselect", "--ignore", "--ignore-glob",
    "--rootdir", "--basetemp", "--confcutdir", "--override-ini", "--config-file", "--junitxml", "--junit-xml",
    "--junit-prefix", "--durations", "--durations-min", "--capture", "--import-mode", "--show-capture", "--color",
    "--code-highlight", "--verbosity", "--assert", "--pdbcls", "--doctest-glob", "--doctest-report",
    "--log-level", "--log-format", "--log-date-format", "--log-cli-level", "--log-cli-format",
    "--log-cli-date-format", "--log-file", "--log-file-mode", "--log-file-level", "--log-file-format",
    "--log-file-date-format", "--log-disable", "--numprocesses", "--maxprocesses", "--dist", "--tx",
    "--max-worker-restart", "--rsyncdir", "--rsyncignore", "--report-log",
})
# pytest's and pytest-xdist's one-letter options that take no value: argparse lets them lead a
# cluster (`-vk EXPR` is -v and -k EXPR, `-xs` is -x and -s).
PYTEST_SHORT_FLAGS = frozenset({"-v", "-q", "-s", "-x", "-l", "-h", "-V"})
# ... and those that take a value. pytest-xdist's -n, -d and -f are left out of clusters: pytest itself
# refuses `-vn 3` ("ignored explicit argument"), so such a word is passed on whole for it to refuse.
PYTEST_SHORT_VALUE_OPTIONS = frozenset({"-k", "-m", "-p", "-c", "-o", "-r", "-W"})
# kvmtest's own options that `kvmtest run` sets itself: given as --kvm-*, they replace its own
_RUN_SETTINGS = {"--kvm-report-dir": "report_dir", "--kvm-junit": "junit", "--kvm-ktap": "ktap",
                 "--kvm-html": "html", "--kvm-device": "device"}


def _plugin_options() -> dict[str, bool]:
    """--kvm-* flag -> whether it takes a value (the plugin's OPTIONS)."""
    from .options import OPTIONS

    return {o.flag: o.kind != "bool" for o in OPTIONS}


def split_pytest_args(extra: list[str]) -> tuple[list[tuple[str, str | None]], list[str]]:
    """(options as (flag, value or None), test paths), reading each option's value where it is one."""
    kvm = _plugin_options()
    options: list[tuple[str, str | None]] = []
    targets: list[str] = []
    i = 0
    while i < len(extra):
        arg = extra[i]
        if arg == "--":  # pytest: everything after it is a test path
            targets += extra[i + 1:]
            break
        if not arg.startswith("-") or arg == "-":
            targets.append(arg)
        elif arg[:2] in PYTEST_SHORT_FLAGS and len(arg) > 2 and not arg.startswith("--"):
            i += _split_cluster(arg, extra[i + 1:], options)
        elif "=" in arg and arg.startswith("--"):
            flag, _, value = arg.partition("=")
            options.append((flag, value))
        elif (kvm.get(arg) or arg in PYTEST_VALUE_OPTIONS) and i + 1 < len(extra):
            options.append((arg, extra[i + 1]))
            i += 1
        else:
            options.append((arg, None))
        i += 1
    return options, targets


def _split_cluster(arg: str, rest: list[str], options: list) -> int:
    """Append to `options` the options of the one-letter cluster `arg` (`-vk`, `-xsvk`, `-vkEXPR`),
    as argparse reads it: flags until one that takes a value, whose value is the rest of the word or
    else the next argument (`rest`'s first). Returns how many arguments of `rest` it took (0 or 1); a
    cluster with a letter pytest does not know stays one word, as before."""
    for j in range(1, len(arg)):
        flag = "-" + arg[j]
        if flag in PYTEST_SHORT_FLAGS:
            continue
        if flag in PYTEST_SHORT_VALUE_OPTIONS:
            options.extend((f"-{c}", None) for c in arg[1:j])
            if j + 1 < len(arg):
                options.append((flag, arg[j + 1:]))
                return 0
            options.append((flag, rest[0] if rest else None))
            return 1 if rest else 0
        options.append((arg, None))  # a letter kvmtest does not know: pytest will say what it is
        return 0
    options.extend((f"-{c}", None) for c in arg[1:])
    return 0


def absorb_run_settings(args, extra: list[str]) -> list[str]:
    """--kvm-report-dir, --kvm-junit, --kvm-ktap, --kvm-html, --kvm-device and --kvm-baseline among
    the pytest arguments become `kvmtest run`'s own settings (which it passes on); the rest stays."""
    options, targets = split_pytest_args(extra)
    rest = []
    for flag, value in options:
        if flag in _RUN_SETTINGS and value is not None:
            setattr(args, _RUN_SETTINGS[flag], value)
            if flag == "--kvm-device":
                args.device_source = flag
        elif flag == "--kvm-baseline" and value is not None:
            args.baseline = list(args.baseline) + [p.strip() for p in value.split(",") if p.strip()]
        else:
            rest += [flag] if value is None else [f"{flag}={value}"] if flag.startswith("--") else [flag, value]
    return rest + (["--"] if any(t.startswith("-") for t in targets) else []) + targets


# the options kvmtest.host_shards gives each shard: given to `kvmtest run`, every shard would get them
# twice (--kvm-shard-role=waits: every shard a waits shard, the unmarked tests run by none)
_SHARD_INTERNAL = ("--kvm-shard-claims", "--kvm-shard-log", "--kvm-shard-role")


def selection_problem(options: list[tuple[str, str | None]], addopts: str = "") -> str:
    """The -k or -m expression pytest would use (the last of each, PYTEST_ADDOPTS `addopts` read first,
    as pytest does) if pytest would refuse it, named as pytest names it; else "". pytest refuses it only
    after collecting: in every shard, which each reported every test it collected as unrun, or in every
    pytest-xdist worker (INTERNALERROR). Checked with pytest's own expression parser; where that private
    module is gone, pytest checks. (What only the collected tests can tell, a -k name called with
    arguments or a -m marker --strict-markers does not know, is still pytest's to refuse.)"""
    try:
        from _pytest.mark import expression
    except ImportError:
        return ""
    try:
        early, _ = split_pytest_args(shlex.split(addopts))
    except ValueError:
        early = []  # pytest refuses unbalanced quotes in PYTEST_ADDOPTS itself, first thing
    chosen: dict[str, str] = {}
    for flag, value in early + options:
        if flag in ("-k", "-m") and value is not None:
            chosen[flag] = value
        elif flag[:2] in ("-k", "-m") and len(flag) > 2:
            text = flag[2:]
            chosen[flag[:2]] = text[1:] if text.startswith("=") else text  # argparse: -kEXPR, -k=EXPR
    malformed = (SyntaxError, getattr(expression, "ParseError", SyntaxError))  # ParseError up to pytest 8
    for flag, text in chosen.items():
        if flag == "-k":
            text = text.lstrip()  # as pytest reads -k (so that columns match its own message)
        if not text.strip():
            continue  # pytest selects everything for an empty expression
        try:
            expression.Expression.compile(text)
        except malformed as e:
            column = getattr(e, "offset", None) or getattr(e, "column", "?")
            why = getattr(e, "msg", None) or getattr(e, "message", None) or str(e)
            return (f"{flag} {text!r}: at column {column}: {why} (pytest's syntax: names joined by and, or, not "
                    "and parentheses; -m also takes name(key=value))")
        except RecursionError:
            return f"{flag} {text[:60]!r}...: nested too deeply for pytest's expression parser"
    return ""


def dangling_option_problem(options: list[tuple[str, str | None]]) -> str:
    """A pytest or kvmtest option that takes a value given last, with none (`kvmtest run suites -k`,
    `... --kvm-junit`), or "": passed on, it would take whatever kvmtest put after it (a test path)
    as its value (a --kvm-junit given that way wrote its report over the test file)."""
    takes_value = _plugin_options()
    for flag, value in options:
        if value is None and (flag in PYTEST_VALUE_OPTIONS or takes_value.get(flag)):
            return f"{flag}: expected a value after it (pytest: argument {flag}: expected one argument)"
    return ""


def plugin_option_problem(argv: list[str], environ=None) -> str:
    """What kvmtest's pytest plugin would refuse at start in the pytest arguments `argv` and, unless
    `environ` is given ({}: none), the KVMTEST_* variables, or "": a --kvm-* value (checked by the
    plugin's own kvmtest.options.check_given) or a --kvm-known-issues file the loader refuses; and a
    -k/-m expression pytest would refuse (selection_problem). Found here, it is one line before the
    pytest command line is printed, not pytest's exit 4 after it."""
    import pytest

    from . import known_issues as ki
    from .options import check_given

    options, _ = split_pytest_args(argv)
    addopts = (os.environ if environ is None else environ).get("PYTEST_ADDOPTS", "")
    if problem := dangling_option_problem(options) or selection_problem(options, addopts):
        return problem
    for flag, _value in options:
        if flag.split("=", 1)[0] in _SHARD_INTERNAL:
            return (f"{flag.split('=', 1)[0]}: set by kvmtest run on each of its own shards (kvmtest.shard_claims), "
                    "not an option to give it")
    try:
        values = check_given(options, environ)
        if values.get("kvm_known_issues") and not values.get("kvm_no_known_issues"):
            ki.load_all(values["kvm_known_issues"])  # as the plugin's pytest_configure loads them
    except (pytest.UsageError, ki.KnownIssueError) as e:
        return str(e)
    return ""


def known_issue_entries(argv: list[str]) -> list:
    """The known-issue entries the plugin would load for pytest arguments `argv` (and the KVMTEST_*
    variables): for the HTML report of a sharded run, which names their reasons and evidence."""
    from . import known_issues as ki
    from .options import check_given

    values = check_given(split_pytest_args(argv)[0])
    if values.get("kvm_no_known_issues"):
        return []
    return ki.load_all(values.get("kvm_known_issues") or [str(p) for p in ki.builtin_files()])


def _xdist_wanted(args, options) -> bool:
    if host_shards.shard_count(args.jobs) <= 1 or importlib.util.find_spec("xdist") is None:
        return False  # -j 0 or 1 (or auto on one CPU): one pytest, not a controller with one worker
    for flag, value in options:
        if flag.split("=", 1)[0] in ("--pdb", "--trace"):
            return False  # a debugger needs the console: one pytest (xdist refuses them)
        if flag in ("-n", "--numprocesses", "--dist") or flag.startswith("-n") and not flag.startswith("--"):
            return False  # the user's own choice (-n 3, or -n3 / -nauto written as one argument)
        if (flag, value) == ("-p", "no:xdist") or flag in ("-pno:xdist", "-p=no:xdist"):
            return False  # xdist disabled: -n would be an unknown option
    return True


def shards_wanted(args, extra: list[str]) -> int:
    """How many shards `kvmtest run` runs (kvmtest.host_shards), 0 for one pytest process: more
    than one job, xdist not chosen (--xdist) or turned off, and no option only one process can honour."""
    options, _ = split_pytest_args(extra)
    if args.xdist or not _xdist_wanted(args, options) or not host_shards.shardable(options):
        return 0
    n = host_shards.shard_count(args.jobs)
    return n if n > 1 else 0


def pytest_args(args, extra: list[str], fp: dict) -> tuple[list[str], dict]:
    """The pytest command line `kvmtest run` builds from its own `args` and the `extra` arguments it
    passes through, and the report paths {"junit", "ktap", "html"} it chose (named after the host and
    kernel in `fp`, the fingerprint). Adds the default suites when `extra` names no test path, and
    `-n JOBS` unless `extra` chooses -n/--dist itself or disables xdist."""
    extra = absorb_run_settings(args, extra)
    options, targets = split_pytest_args(extra)
    stem = report_stem(args.report_dir, fp)
    paths = {"junit": Path(args.junit or f"{stem}.xml"), "ktap": Path(args.ktap or f"{stem}.ktap"),
             "html": Path(args.html or f"{stem}.html")}
    out = [] if targets else [_default_suites()]
    out += ["-v", "-ra", f"--kvm-junit={paths['junit']}", f"--kvm-ktap={paths['ktap']}",
            f"--kvm-html={paths['html']}", f"--kvm-report-dir={args.report_dir}", f"--kvm-device={args.device}"]
    if args.baseline:
        out.append(f"--kvm-baseline={','.join(args.baseline)}")
    if _xdist_wanted(args, options):
        out += ["-n", args.jobs]
    return out + extra, paths


BISECT_GOOD, BISECT_BAD, BISECT_SKIP = 0, 1, 125


def bisect_code(pytest_code: int, junit: Path) -> int:
    """git bisect run's contract: 0 good, 1 bad, 125 untestable; never >= 128 (that aborts the bisect)."""
    from .reports.results import RAN, ReportError, read_junit

    if pytest_code in (2, 3, 4, 5):  # interrupted, internal error, usage error, no tests collected
        return BISECT_SKIP
    try:
        results = read_junit(junit)
    except ReportError:
        return BISECT_SKIP
    if not any(r.status in RAN for r in results):
        return BISECT_SKIP  # everything skipped, e.g. no /dev/kvm
    return BISECT_BAD if pytest_code == 1 else BISECT_GOOD


def resolve_device(args) -> None:
    """`run --device` unset: KVMTEST_DEVICE, else /dev/kvm. `args.device_source` says who named the
    device ("" for the default), for refusing a named device that is no KVM device (run_problem)."""
    if args.device is not None:
        args.device_source = "--device"
    elif "KVMTEST_DEVICE" in os.environ:
        args.device, args.device_source = os.environ["KVMTEST_DEVICE"], "environment KVMTEST_DEVICE"
    else:
        args.device, args.device_source = "/dev/kvm", ""


def run_baseline(args) -> list[str]:
    """The baseline runs `kvmtest run` compares with: --baseline/--kvm-baseline, else KVMTEST_BASELINE."""
    if args.baseline:
        return list(args.baseline)
    return [p.strip() for p in os.environ.get("KVMTEST_BASELINE", "").split(",") if p.strip()]


def run_problem(args, paths: dict, fp: dict) -> str:
    """What makes this `kvmtest run` pointless before it starts, or "": a report path that cannot be
    written, a baseline that is no JUnit report, a named device (or, with --bisect, any device) on
    which KVM cannot be opened. Checked up front: the run would otherwise end in a traceback or in
    every test skipped."""
    from .reports.recorder import load_baseline
    from .reports.results import ReportError

    source = getattr(args, "device_source", "")
    if fp.get("kvm") is None and (source or args.bisect):
        why = "empty device path" if not args.device else fp.get("kvm_error")
        return f"{source or '--device'} {args.device!r}: {why}: nothing can be tested"
    checks = [("--report-dir", unwritable(args.report_dir, directory=True))]
    checks += [(f"--{kind}", unwritable(path)) for kind, path in paths.items()]
    for flag, problem in checks:
        if problem:
            return f"{flag} {problem}"
    baseline = run_baseline(args)
    try:
        if baseline:
            load_baseline(baseline)  # cached: the plugin's recorder uses these results
    except ReportError as e:
        return f"--baseline: {e}"
    return ""


def workers_problem(args, extra: list[str]) -> str:
    """-j, where it decides how many pytest processes run (shards or xdist workers; not beside the
    user's own -n, --pdb, ...), or the user's own -n count, far above this process's CPUs
    (options.jobs_problem); else "". Checked before anything starts: the run would run out of memory."""
    options, _ = split_pytest_args(extra)
    cpus = host_shards.cpus()
    where = f"this process may use {cpus} CPU(s)"
    if shards_wanted(args, extra) or _xdist_wanted(args, options):
        if problem := jobs_problem(args.jobs, cpus, where):
            return problem
    for flag, value in options:
        if flag in ("-n", "--numprocesses") and value is not None:
            count = value
        elif flag.startswith("-n") and not flag.startswith("--") and len(flag) > 2:
            count, flag = flag[2:].removeprefix("="), "-n"  # -n3, -n=3: argparse's spellings of -n 3
        else:
            continue
        if problem := jobs_problem(count, cpus, where, flag):
            return problem
    return ""


def cmd_run(args, extra) -> int:
    """`kvmtest run [pytest args]`: fingerprint the device, run pytest in this process, and return
    pytest's exit status, or with --bisect the git bisect code (bisect_code). Bad input (a --kvm-*
    value the plugin would refuse, plugin_option_problem; run_problem) is one line and exit 2 (125
    with --bisect) before the pytest command line is printed."""
    import pytest

    if problem := dangling_option_problem(split_pytest_args(extra)[0]):  # before kvmtest adds its own arguments
        print(f"kvmtest run: {problem}", file=sys.stderr)
        return BISECT_SKIP if args.bisect else 2
    extra = absorb_run_settings(args, extra)  # --kvm-device among them names the device to fingerprint
    fp = fpmod.collect(args.device)
    try:
        argv, paths = pytest_args(args, extra, fp)
    except SystemExit as e:
        if args.bisect:
            print(e, file=sys.stderr)
            return BISECT_SKIP
        raise
    problem = plugin_option_problem(argv) or workers_problem(args, extra) or run_problem(args, paths, fp)
    if problem:
        print(f"kvmtest run: {problem}", file=sys.stderr)
        return BISECT_SKIP if args.bisect else 2
    keep_bytecode_outside_the_tree()  # PYTHONDONTWRITEBYTECODE: every process would compile everything
    shards = shards_wanted(args, extra)
    # the host line and the report paths come from the plugin (header, "kvmtest report:" lines);
    # shards run without xdist's -n (host_shards.shard_argv), so the line does not show it
    shown = host_shards.without_workers(argv) if shards else argv
    print(f"kvmtest run: {f'{shards} shards of: ' if shards else ''}pytest {shlex.join(shown)}",
          flush=True)  # quoted: the line can be pasted back
    try:
        if shards:
            code = host_shards.run(argv, shards, paths, fp, run_baseline(args), lambda: known_issue_entries(argv))
        else:
            code = int(pytest.main(argv))
    except Exception as e:  # an internal error must not look like a bad kernel to git bisect
        if not args.bisect:
            raise
        print(f"kvmtest run: internal error: {e}", file=sys.stderr)
        return BISECT_SKIP
    return bisect_code(code, paths["junit"]) if args.bisect else code


def cmd_compare(args) -> int:
    """`kvmtest compare BASE NEW [--json]`: two runs' JUnit files or directories compared
    (kvmtest.reports.compare). Returns 1 when a test newly fails or coverage was lost, 2 when a report
    cannot be read, else 0."""
    from .reports.compare import compare
    from .reports.results import ReportError, read_any

    try:
        result = compare(read_any(args.base), read_any(args.new))
    except ReportError as e:
        print(f"kvmtest compare: {e}", file=sys.stderr)
        return 2
    if args.json:
        json.dump(result.as_dict(), sys.stdout, indent=2)
        print()
    else:
        print(result.text())
    return 1 if result.regressed else 0


def cmd_merge(args) -> int:
    """Several JUnit files into one, one <testsuite> per host."""
    import xml.etree.ElementTree as ET
    from collections import defaultdict

    from .reports import junit
    from .reports.results import ReportError, read_junit

    by_host: defaultdict[str, list] = defaultdict(list)
    props: dict[str, dict] = {}  # host (kernel) -> its suite's properties
    real = [os.path.realpath(p) for p in args.inputs]  # one file twice would count its results twice
    again = next((p for i, p in enumerate(args.inputs) if real[i] in real[:i]), None)
    if again is not None:
        print(f"kvmtest merge: {again} is given twice (as the same file): its results would count twice",
              file=sys.stderr)
        return 2
    problem = unwritable(args.output)
    if problem:
        print(f"kvmtest merge: -o {problem}", file=sys.stderr)
        return 2
    try:
        for path in args.inputs:
            for r in read_junit(path):
                by_host[r.host or "unknown host"].append(r)
            root = ET.parse(path).getroot()
            for suite in ([root] if root.tag == "testsuite" else root.findall("testsuite")):
                p = {e.get("name"): e.get("value") for e in suite.findall("properties/property")}
                host = p.get("kvmtest.host") or suite.get("hostname") or "unknown host"
                kernel = p.get("kvmtest.kernel.release")
                props.setdefault(f"{host} ({kernel})" if kernel else host, p)
    except (ReportError, ET.ParseError) as e:
        print(f"kvmtest merge: {e}", file=sys.stderr)
        return 2
    suites = [junit.suite_from_results(rs, f"kvmtest@{host}", host.split(" ")[0], props.get(host, {}))
              for host, rs in sorted(by_host.items())]
    try:
        junit.write(args.output, suites)
    except OSError as e:
        print(f"kvmtest merge: -o {args.output}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(f"kvmtest merge: {sum(len(r) for r in by_host.values())} results from {len(args.inputs)} files, "
          f"{len(suites)} host(s) -> {args.output}")
    return 0


def cmd_import_tap(args) -> int:
    """KTAP (kernel KVM selftests) or TAP 13 (kvm-unit-tests) output -> JUnit."""
    from .reports import junit
    from .reports.results import read_tap

    problem = unwritable(args.output)
    if problem:
        print(f"kvmtest import-tap: -o {problem}", file=sys.stderr)
        return 2
    try:
        text = sys.stdin.read() if args.input == "-" else Path(args.input).read_text(errors="replace")
    except OSError as e:
        print(f"kvmtest import-tap: {args.input}: {e.strerror}", file=sys.stderr)
        return 2
    results = read_tap(text, args.input, args.suite)
    if not results:
        print(f"kvmtest import-tap: no TAP/KTAP result lines in {args.input}", file=sys.stderr)
        return 2
    try:
        junit.write(args.output, [junit.suite_from_results(results, args.suite, args.host, {"source": args.input})])
    except OSError as e:
        print(f"kvmtest import-tap: -o {args.output}: {e.strerror or e}", file=sys.stderr)
        return 2
    bad = sum(r.status in ("failed", "error") for r in results)
    print(f"kvmtest import-tap: {len(results)} results ({bad} failed or errors) -> {args.output}")
    return 0


def _plugin_options_help() -> str:
    """The pytest plugin's --kvm-* options, for `kvmtest run --help` (generated: never stale)."""
    from .options import OPTIONS

    lines = ["kvmtest's pytest options (passed to pytest; each also has a KVMTEST_* variable and an ini key):"]
    for opt in OPTIONS:
        flag = opt.flag if opt.kind == "bool" else f"{opt.flag}=VALUE"
        lines.append(f"  {flag}")
        lines += textwrap.wrap(f"{opt.help} (env {opt.env_name})", 88, initial_indent=" " * 8,
                               subsequent_indent=" " * 8)
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of every `kvmtest` subcommand (info, run, compare, merge, import-tap,
    kernel, known-issues)."""
    p = argparse.ArgumentParser(prog="kvmtest", description="KVM conformance suite and harness")
    sub = p.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="print the host fingerprint")
    info.add_argument("--json", action="store_true", help="the whole fingerprint as JSON")
    info.add_argument("--device", default=os.environ.get("KVMTEST_DEVICE", "/dev/kvm"))
    run = sub.add_parser("run", help="run the conformance suites (extra arguments go to pytest)",
                         description=textwrap.fill(
                             "Run kvmtest's suites with pytest over all CPUs and write JUnit, KTAP and HTML "
                             "reports. Every argument not listed below goes to pytest unchanged: test paths "
                             "(default: the suites), -k EXPR, -x, -p no:xdist, and the --kvm-* options at the "
                             "end of this help.", 88),
                         epilog=_plugin_options_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--report-dir", default=os.environ.get("KVMTEST_REPORT_DIR", "reports"),
                     help="directory for the JUnit, KTAP and HTML reports (default reports; env KVMTEST_REPORT_DIR)")
    run.add_argument("--junit", default="", help="JUnit path (default: reports/kvmtest-<host>-<kernel>-<time>.xml)")
    run.add_argument("--device", default=None,  # resolve_device: a named device must be one
                     help="the KVM device to test (default /dev/kvm; env KVMTEST_DEVICE); a named device "
                          "that is no KVM device is an error, where /dev/kvm missing skips every test")
    run.add_argument("--ktap", default="", help="KTAP path (default: reports/kvmtest-<host>-<kernel>-<time>.ktap)")
    run.add_argument("--html", default="", help="HTML path (default: reports/kvmtest-<host>-<kernel>-<time>.html)")
    run.add_argument("--baseline", action="append", default=[], help="JUnit file/dir to compare with in the HTML")
    run.add_argument("--bisect", action="store_true",
                     help="git-bisect exit codes: 0 pass/xfail, 1 real failure, 125 nothing could be tested")
    run.add_argument("-j", "--jobs", default="auto", type=jobs_value,
                     help="pytest processes: 'auto' (one per CPU) or a number (0 or 1: one pytest). More than one runs "
                          "as shards claiming tests one at a time (and one more for any tests marked waits), "
                          "reports merged at the end (kvmtest.host_shards); "
                          "with --xdist, or pytest options a shard cannot honour (--pdb, -x, --lf, ...), as "
                          "pytest-xdist workers")
    run.add_argument("--xdist", action="store_true",
                     help="run -j JOBS as pytest-xdist workers rather than shards")
    kernelvm.add_run_arguments(run)  # --kernel, --kvm-param, --accel, --vm-*
    kernelvm.add_kernel_parser(sub)  # kvmtest kernel fetch debian
    cmp_ = sub.add_parser("compare", help="compare two runs (JUnit files or directories); exit 1 on regressions",
                          usage="kvmtest compare [-h] [--json] BASE NEW\n"
                                "       kvmtest compare [-h] [--json] BASE [BASE ...] --new NEW [NEW ...]\n"
                                "(a run in several files: list them all before --new, the new run's after it)")
    cmp_.add_argument("base", nargs="+", help="baseline JUnit file(s) or directories; end with --")
    cmp_.add_argument("--new", nargs="+", required=True, help="the new run's JUnit file(s) or directories")
    cmp_.add_argument("--json", action="store_true")
    merge = sub.add_parser("merge", help="merge JUnit files into one, one suite per host")
    merge.add_argument("inputs", nargs="+")
    merge.add_argument("-o", "--output", required=True)
    imp = sub.add_parser("import-tap", help="convert KTAP/TAP output (kselftest, kvm-unit-tests) to JUnit")
    imp.add_argument("input", help="a file, or - for standard input")
    imp.add_argument("-o", "--output", required=True)
    imp.add_argument("--suite", default="tap", help="suite name for results outside any subtest")
    imp.add_argument("--host", default="", help="host name to record")
    known_issue_verify.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """The `kvmtest` command: parse `argv` (default sys.argv[1:]), run the subcommand and return its
    exit status. `kvmtest compare BASE NEW` is accepted as the short form of `--new NEW`; with
    `run --bisect`, a usage error is 125 (untestable), never argparse's 2."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if argv[:1] == ["compare"] and "--new" not in argv:
        positional = [a for a in argv[1:] if not a.startswith("-")]
        if len(positional) == 2:  # the short form: kvmtest compare BASE NEW [--json]
            flags = [a for a in argv[1:] if a.startswith("-")]
            argv = ["compare", positional[0], "--new", positional[1], *flags]
    bisect = "--bisect" in argv and argv[:1] == ["run"]
    try:
        args, extra = parser.parse_known_args(argv)
    except SystemExit as e:
        # argparse exits with an int (0 after --help, 2 on a usage error); Python turns any other
        # non-None code into exit status 1.
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        return BISECT_SKIP if bisect and code != 0 else code
    if args.command == "run":
        resolve_device(args)
        if args.kernel is not None:
            return kernelvm.cmd_run_kernel(args, extra)
        try:
            kernelvm.refuse_vm_options_without_kernel(args)
        except KernelVmError as e:
            print(f"kvmtest run: {e}", file=sys.stderr)
            return 2
        return cmd_run(args, extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return {"info": cmd_info, "compare": cmd_compare, "merge": cmd_merge, "import-tap": cmd_import_tap,
            "known-issues": known_issue_verify.main, "kernel": kernelvm.cmd_kernel}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
