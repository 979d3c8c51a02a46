"""`kvmtest run --kernel` and `kvmtest kernel fetch`: the command-line side of kernelvm.

One configuration per combination of `--kvm-param` values (vmrun.py boots it, and boots again
after a crash); the exit code follows pytest's, or git bisect's with --bisect: 0 good, 1 bad,
125 when the kernel does not boot, has no usable KVM, or only QEMU itself failed.
"""

import argparse
import itertools
import os
import re
import shutil
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from . import KernelVmError
from .boot import default_cpus, default_shards, detect_accelerator, find_tools
from .kernel import resolve

# vmrun (and the progress plugin it imports) loads only for --kernel: imported here, the plugin
# module would already be in sys.modules when pytest loads it with -p, and pytest warns about that
if TYPE_CHECKING:
    from .vmrun import Boot

BISECT_GOOD, BISECT_BAD, BISECT_SKIP = 0, 1, 125
BAD_KINDS = ("panic", "bug", "oops", "stall", "timeout", "vm-exit")  # the kernel under test misbehaved
UNTESTABLE_KINDS = ("no-boot", "no-kvm", "qemu-abort")              # nothing could be said about it


def add_run_arguments(run: argparse.ArgumentParser) -> None:
    """Add `kvmtest run`'s --kernel option group (--kernel, --kvm-param, --accel, --vm-timeout,
    --vm-stall, --vm-max-crashes, --vm-cpus, --vm-memory) to the `run` parser."""
    g = run.add_argument_group("kernel under test (boots it in QEMU with virtme-ng and runs the suites inside)")
    g.add_argument("--kernel", default=None, metavar="PATH|debian",
                   help="bzImage/vmlinuz, a built kernel tree, or 'debian' (after `kvmtest kernel fetch debian`)")
    g.add_argument("--kvm-param", action="append", default=[], metavar="MODULE.PARAM=V1[,V2]",
                   help="module parameter values; one boot per combination (e.g. kvm_amd.npt=0,1)")
    g.add_argument("--accel", choices=("auto", "kvm", "tcg"), default=None,
                   help="what runs the VM: nested KVM, or QEMU's TCG with -cpu max (auto: KVM when nested is on)")
    # None unless given: check_vm_options reads KVMTEST_VM_TIMEOUT/_STALL, naming the variable if bad
    g.add_argument("--vm-timeout", type=float, default=None,
                   help="seconds one boot may take in all, boot and tests (default 10800; env KVMTEST_VM_TIMEOUT)")
    g.add_argument("--vm-stall", type=float, default=None,
                   help="seconds without any VM output before the VM is declared stuck (default 600; "
                        "env KVMTEST_VM_STALL)")
    g.add_argument("--vm-max-crashes", type=int, default=5,
                   help="tests that may kill the VM before the run stops resuming in fresh VMs (default 5)")
    g.add_argument("--vm-cpus", type=int, default=None,
                   help="vCPUs of the VM (default: 1 under TCG, where QEMU's multi-threaded TCG can livelock an "
                        "SMP kernel that patches its own code, see boot.TCG_CPUS; 2 under nested KVM)")
    g.add_argument("--vm-memory", default="2G", help="memory of the VM (default 2G)")
    g.add_argument("--vm-shards", type=int, default=None,
                   help="VMs each configuration is split over, running at once, each every N-th test (default: "
                        "under TCG one per host CPU the memory allows, see boot.default_shards; 1 under nested KVM)")


def add_kernel_parser(sub) -> None:
    """Add `kvmtest kernel fetch debian [--no-update] [--package P]` to the subcommand parsers `sub`."""
    k = sub.add_parser("kernel", help="kernels for `kvmtest run --kernel`")
    ksub = k.add_subparsers(dest="kernel_command", required=True)
    f = ksub.add_parser("fetch", help="fetch Debian's current linux-image-*-amd64 through apt into the cache "
                                      "(KVMTEST_KERNEL_CACHE, default ~/.cache/kvmtest/kernels)")
    f.add_argument("distro", choices=("debian",))
    f.add_argument("--no-update", action="store_true", help="use apt's package lists as they are")
    f.add_argument("--package", help="another Debian kernel: a metapackage (linux-image-6.12-amd64) or an image "
                                     "package (linux-image-6.12.100+deb12-amd64) instead of linux-image-amd64's")


def cmd_kernel(args) -> int:
    """`kvmtest kernel fetch debian`: fetch Debian's current kernel package into the cache through
    apt (fetch.fetch_debian). Returns 0, or 1 naming what failed."""
    from .fetch import fetch_debian

    try:
        kernel = fetch_debian(update=not args.no_update, package=args.package)
    except (KernelVmError, OSError) as e:
        print(f"kvmtest kernel fetch: {e}", file=sys.stderr)
        return 1
    print(f"kvmtest kernel fetch: {kernel.source}: --kernel debian boots {kernel.image}")
    return 0


# what goes on the kernel command line and into report file names: word characters only
# (module and parameter names are C identifiers, the kernel treats - and _ alike)
_NAME = re.compile(r"[A-Za-z0-9_-]+")
_VALUE = re.compile(r"[A-Za-z0-9_.:+-]+")
VM_ONLY_OPTIONS = ("kvm_param", "accel", "vm_cpus", "vm_shards")  # None (or []) unless given


def param_matrix(specs: list[str]) -> list[tuple[str, ...]]:
    """['kvm_amd.npt=0,1', 'kvm.force_emulation_prefix=1'] -> one tuple of settings per boot."""
    axes, seen = [], set()
    for spec in specs:
        name, sep, values = spec.partition("=")
        module, dot, param = name.partition(".")
        if not sep or not dot or not module or not param or not values or "" in values.split(","):
            raise KernelVmError(f"--kvm-param {spec!r}: expected MODULE.PARAM=V1[,V2...], e.g. kvm_amd.npt=0,1")
        if not _NAME.fullmatch(module) or not _NAME.fullmatch(param):
            raise KernelVmError(f"--kvm-param {spec!r}: module and parameter names are letters, digits, _ and -")
        bad = [v for v in values.split(",") if not _VALUE.fullmatch(v)]
        if bad:
            raise KernelVmError(f"--kvm-param {spec!r}: value {bad[0]!r} is not one kernel command-line word "
                                "(letters, digits, and . : + _ -)")
        if len(set(values.split(","))) != len(values.split(",")):
            raise KernelVmError(f"--kvm-param {spec!r}: a value is listed twice (each one is a boot)")
        key = name.replace("-", "_")  # the kernel reads kvm-amd.npt and kvm_amd.npt as one parameter
        if key in seen:
            raise KernelVmError(f"--kvm-param {name} given twice (the kernel treats - and _ in names alike); "
                                "list its values once, comma-separated")
        seen.add(key)
        axes.append([f"{name}={v}" for v in values.split(",")])
    return list(itertools.product(*axes))


def refuse_vm_options_without_kernel(args) -> None:
    """--kvm-param, --accel and --vm-* mean nothing without --kernel: refused rather than ignored."""
    given = [o for o in VM_ONLY_OPTIONS if getattr(args, o, None) not in (None, [])]
    if given:
        flag = "--" + given[0].replace("_", "-")
        raise KernelVmError(f"{flag} applies to a kernel booted in a VM: add --kernel PATH|debian")


def check_vm_options(args) -> None:
    """Fill the VM options' defaults and refuse values that cannot mean anything (KernelVmError)."""
    if args.kernel == "":
        raise KernelVmError("--kernel '': expected a bzImage/vmlinuz path, a built kernel tree, or 'debian'")
    args.accel = args.accel or os.environ.get("KVMTEST_ACCEL", "auto")
    if args.accel not in ("auto", "kvm", "tcg"):
        raise KernelVmError(f"KVMTEST_ACCEL={args.accel!r}: expected auto, kvm or tcg")
    for name, default in (("vm_timeout", 10800.0), ("vm_stall", 600.0)):
        env = "KVMTEST_" + name.upper()
        if getattr(args, name) is None and env in os.environ:  # named as the variable, not as the flag
            try:
                seconds = float(os.environ[env])
            except ValueError:
                seconds = float("nan")
            if not seconds > 0:
                raise KernelVmError(f"{env}={os.environ[env]!r}: expected seconds, more than 0")
            setattr(args, name, seconds)
        elif getattr(args, name) is None:
            setattr(args, name, default)
        if not float(getattr(args, name)) > 0:
            raise KernelVmError(f"--{name.replace('_', '-')} {getattr(args, name)}: expected seconds, more than 0")
    if args.vm_max_crashes < 0:
        raise KernelVmError(f"--vm-max-crashes {args.vm_max_crashes}: expected 0 or more")
    m = re.fullmatch(r"([0-9]+)([KMGT]?)", args.vm_memory)
    if not m or int(m.group(1)) == 0:
        raise KernelVmError(f"--vm-memory {args.vm_memory!r}: expected a size such as 2G or 2048M")


def shards_too_many(shards: int, memory: str, available: int | None = None) -> str:
    """Why `shards` VMs of `memory` each cannot run at once here ("" when they can): more memory than
    the host's MemAvailable (unknown: not checked)."""
    from .boot import mem_available, memory_bytes

    available = mem_available() if available is None else available
    need = shards * memory_bytes(memory)
    if available and need > available:
        return (f"{shards} VMs of {memory} need {need >> 20} MiB at once, more than the host's MemAvailable "
                f"({available >> 20} MiB); use fewer VMs or a smaller --vm-memory")
    return ""


def refuse_unusable_outputs(args) -> None:
    """A report path that cannot be written or a baseline that is no JUnit report is refused
    (KernelVmError) before any VM boots, not found after the last one."""
    from ..reports.recorder import load_baseline, unwritable
    from ..reports.results import ReportError

    checks = [("--report-dir", unwritable(args.report_dir, directory=True))]
    checks += [(f"--{o}", unwritable(getattr(args, o))) for o in ("junit", "ktap", "html") if getattr(args, o)]
    for flag, problem in checks:
        if problem:
            raise KernelVmError(f"{flag} {problem}")
    try:
        if args.baseline:
            load_baseline(args.baseline)
    except ReportError as e:
        raise KernelVmError(f"--baseline: {e}") from None


def refuse_missing_test_paths(extra: list[str]) -> None:
    """A test path among the pytest arguments that does not exist here is refused (KernelVmError) before
    any VM boots: the VM runs pytest in this same directory over the shared tree, and would only say
    "file or directory not found" after the boot."""
    from ..cli import split_pytest_args

    for target in split_pytest_args(extra)[1]:
        path = Path(target.split("::", 1)[0])
        if not path.exists():
            raise KernelVmError(f"{target}: no such test file or directory in {Path.cwd()} (the VM runs pytest there)")


def refuse_bad_plugin_options(extra: list[str]) -> None:
    """A --kvm-* value among the pytest arguments that kvmtest's plugin would refuse in the VM is
    refused (KernelVmError) before any VM boots, not once per boot minutes later. The command line
    only: the host's KVMTEST_* variables are not the VM's."""
    from ..cli import plugin_option_problem

    problem = plugin_option_problem(extra, environ={})
    if problem:
        raise KernelVmError(problem)


def _terminate(signum, frame):
    # SIGTERM/SIGHUP (a CI job cancelled, `timeout`) as an exception: boot.watch then stops the VM's
    # whole process group, which runs in its own session and would otherwise outlive kvmtest
    raise SystemExit(128 + signum)


def _counts(junit: Path) -> Counter:
    from ..reports.results import ReportError, read_junit

    try:
        return Counter(r.status for r in read_junit(junit))
    except ReportError:
        return Counter()


def _only_qemu_aborts(boot: "Boot") -> bool:
    """Every failing result is a test during which QEMU itself aborted: the emulator's fault, not the kernel's."""
    from ..reports.junit import split_nodeid
    from ..reports.results import ReportError, read_junit

    aborts = {"::".join(split_nodeid(t)) for t, kind in boot.crashes if kind == "qemu-abort"}
    try:
        failing = {r.id for r in read_junit(boot.path(".xml")) if r.status in ("failed", "error")}
    except ReportError:
        return False
    return bool(aborts) and failing <= aborts


def boot_code(boot: "Boot", bisect: bool) -> int:
    """One configuration's exit code: pytest's (or git bisect's 0/1/125); a kernel WARN fails a clean run."""
    from ..cli import bisect_code

    if boot.pytest_exit is not None:  # test results: one clean boot, or rebuilt over the boots a crash took
        code = bisect_code(boot.pytest_exit, boot.path(".xml")) if bisect else boot.pytest_exit
        if bisect and code == BISECT_BAD and _only_qemu_aborts(boot):
            return BISECT_SKIP
        return BISECT_BAD if boot.kernel_warns and code == 0 else code
    if boot.kind in BAD_KINDS:
        return BISECT_BAD
    return BISECT_SKIP if bisect else 2


def overall_code(codes: list[int], bisect: bool) -> int:
    """The exit status of a --kvm-param matrix from each configuration's `codes`: the worst of them,
    or with `bisect` git bisect's code (1 if any configuration is bad, else 125 if any could not be
    tested, else 0)."""
    if not bisect:
        return max(codes)
    if BISECT_BAD in codes:
        return BISECT_BAD
    return BISECT_SKIP if any(c != BISECT_GOOD for c in codes) else BISECT_GOOD


def write_summary(boot: "Boot", accel: str, kernel) -> Path:
    """`<stem>.summary.json`: one configuration's boots (how each ended, seconds to boot, seconds of
    tests), result counts, crashes and kernel warnings, for CI dashboards and benchmarks/."""
    import json

    counts = _counts(boot.path(".xml")) if boot.pytest_exit is not None else Counter()
    data = {"kvm_params": list(boot.params), "kernel": kernel.release, "kernel_source": kernel.source,
            "accelerator": accel, "outcome": boot.kind, "pytest_exit": boot.pytest_exit,
            "boots": [{"ended": kind, "boot_s": round(booted, 1), "tests_s": round(tests, 1),
                       **({"shard": boot.boot_shards[i]} if boot.boot_shards else {})}
                      for i, (kind, booted, tests) in enumerate(boot.boots)],
            "shards": max(boot.boot_shards, default=1), "wall_s": round(boot.wall_s, 1),
            "counts": dict(sorted(counts.items())), "crashes": [{"test": t, "kind": k} for t, k in boot.crashes],
            "warnings": boot.warnings, "junit": str(boot.path(".xml"))}
    path = boot.path(".summary.json")
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def summary(boot: "Boot", accel: str, release: str) -> str:
    """One configuration's result for the terminal: boot and test seconds of each boot, the result
    counts, the tests that killed the VM, console warnings, and how the last boot ended."""
    times = []
    for i, (kind, booted, tests) in enumerate(boot.boots):
        t = f"shard {boot.boot_shards[i]}: " if boot.boot_shards else ""
        t += f"booted in {booted:.0f} s" if booted >= 0 else "no boot"
        t += f", tests {tests:.0f} s" if tests >= 0 else f", {kind}"
        times.append(t)
    if boot.boot_shards and boot.wall_s >= 0:
        times.append(f"{boot.wall_s:.0f} s in all")
    counts = _counts(boot.path(".xml")) if boot.pytest_exit is not None else Counter()
    text = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) if counts else boot.message
    out = f"kvmtest run --kernel: [{boot.label}] {release} under {accel}: {'; '.join(times) or 'no boot'}: {text}"
    for test, kind in boot.crashes:
        out += f"\n  the VM died in {test} ({kind}); the run went on in a fresh VM"
    for w in boot.warnings:
        out += f"\n  {w}"
    run = boot.run
    if boot.kind != "done" and run is not None:
        out += f"\n  {boot.message}"
        if run.in_flight:
            out += f"\n  test in flight: {run.in_flight}"
        out += "\n  last console lines:\n" + "\n".join(f"    {line}" for line in run.tail[-15:])
    return out


def cmd_run_kernel(args, extra) -> int:
    """`kvmtest run --kernel ...`: boot the kernel once per --kvm-param combination, run the suites
    inside, write each configuration's reports (and a merged matrix file). Returns the overall code
    (overall_code); 2, or 125 with --bisect, when the kernel could not be tested."""
    from ..options import jobs_problem
    from .vmrun import merge_suites, run_config

    skip = BISECT_SKIP if args.bisect else 2
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)
    try:
        check_vm_options(args)
        refuse_unusable_outputs(args)  # before the kernel is looked for: the cheap checks first
        refuse_bad_plugin_options(extra)
        refuse_missing_test_paths(extra)
        kernel = resolve(args.kernel)
        combos = param_matrix(args.kvm_param)
        one_file = [o for o in extra if o.split("=")[0] in ("--kvm-ktap", "--kvm-html", "--kvm-junit")]
        if len(combos) > 1 and (args.ktap or args.html or one_file):
            raise KernelVmError(f"{'/'.join(one_file) or '--ktap/--html'} name one file, a --kvm-param matrix "
                                "makes one per boot: use --report-dir (and --junit for the merged JUnit)")
        tools = find_tools()
    except KernelVmError as e:
        print(f"kvmtest run --kernel: {e}", file=sys.stderr)
        return skip
    if args.accel == "auto":
        accel, why = detect_accelerator(device=args.device)
    else:
        accel, why = args.accel, "--accel"
    if args.vm_cpus is None:
        args.vm_cpus = default_cpus(accel)
    elif args.vm_cpus < 1:
        print(f"kvmtest run --kernel: --vm-cpus {args.vm_cpus}: expected a number of vCPUs, 1 or more", file=sys.stderr)
        return skip
    if problem := jobs_problem(args.jobs, args.vm_cpus, f"each VM has {args.vm_cpus} vCPU(s)"):
        print(f"kvmtest run --kernel: {problem}", file=sys.stderr)  # -j is the VM's xdist workers (vm_jobs)
        return skip
    if args.vm_shards is None:
        args.vm_shards = default_shards(accel, args.vm_cpus, args.vm_memory)
    elif args.vm_shards < 1:
        print(f"kvmtest run --kernel: --vm-shards {args.vm_shards}: expected a number of VMs, 1 or more",
              file=sys.stderr)
        return skip
    elif why := shards_too_many(args.vm_shards, args.vm_memory):
        print(f"kvmtest run --kernel: --vm-shards {args.vm_shards}: {why}", file=sys.stderr)
        return skip
    shards = f", {args.vm_shards} VMs at once per configuration" if args.vm_shards > 1 else ""
    print(f"kvmtest run --kernel: {kernel.release} ({kernel.source}), accelerator {accel} ({why}), "
          f"{args.vm_cpus} vCPU(s){shards}, {len(combos)} configuration(s)", flush=True)
    report_dir = Path(args.report_dir).resolve()
    report_dir.mkdir(parents=True, exist_ok=True)  # refuse_unusable_outputs made sure it can be
    boots = []
    for params in combos:
        try:
            boots.append(run_config(args, extra, kernel, accel, params, report_dir, tools))
        except KernelVmError as e:
            print(f"kvmtest run --kernel: {e}", file=sys.stderr)
            return skip
        except Exception as e:  # kvmtest's own failure must not read as a bad kernel to git bisect
            if not args.bisect:
                raise
            print(f"kvmtest run --kernel: internal error: {e!r}", file=sys.stderr)
            return skip
    for boot in boots:
        print(summary(boot, accel, kernel.release))
        write_summary(boot, accel, kernel)
        for ext in (".xml", ".ktap", ".html", ".console.log", ".summary.json"):
            if boot.path(ext).exists():
                print(f"kvmtest run --kernel: {ext[1:]} {boot.path(ext)}")
        for log in sorted(boot.stem.parent.glob(f"{boot.stem.name}.shard*.console.log")):
            print(f"kvmtest run --kernel: console.log {log}")
    xmls = [b.path(".xml") for b in boots]
    if len(boots) > 1:
        merged = Path(args.junit) if args.junit else boots[0].stem.with_name(boots[0].stem.name + "-matrix.xml")
        merge_suites(xmls, merged)
        print(f"kvmtest run --kernel: all {len(boots)} boots in {merged}")
    else:
        for option, ext in ((args.junit, ".xml"), (args.ktap, ".ktap"), (args.html, ".html")):
            if option and boots[0].path(ext).exists():
                shutil.copyfile(boots[0].path(ext), option)
    return overall_code([boot_code(b, args.bisect) for b in boots], args.bisect)
