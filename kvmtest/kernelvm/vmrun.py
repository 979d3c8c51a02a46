"""One configuration (one set of --kvm-param values): boot, run, and resume after a crash.

Each boot runs `kvmtest run` inside the VM with the progress plugin. When the VM dies in a test
(panic, oops, BUG, QEMU abort, stall), that test becomes an ERROR naming what happened, and a
fresh VM runs the tests that remain. With pytest-xdist several tests are in flight at once; the
next boot first runs those suspects one at a time, so the one that kills the VM is named alone.

A configuration may be split over several VMs at once (--vm-shards; under TCG by default one per
host CPU, since one TCG VM cannot use more than one vCPU safely, boot.TCG_CPUS): each VM collects the
same tests and runs every N-th of them (progress.py --kvm-vm-shard), resumes after its own crashes
like a single VM, and the configuration's reports are rebuilt from all the shards' progress logs.
"""

import datetime
import json
import os
import sys
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from . import progress, resume
from .boot import VmRun, default_cpus, kill_all, vng_command, watch
from .kernel import Kernel

CRASH_KINDS = ("panic", "bug", "oops", "qemu-abort", "stall", "vm-exit")  # the VM died in a test: resume


@dataclass
class Boot:
    """One configuration's run: its settings, files, the boots it took and what came of it."""

    params: tuple[str, ...]
    stem: Path
    kind: str = ""               # how the last boot ended: done, or runner.BAD_KINDS / UNTESTABLE_KINDS
    message: str = ""
    pytest_exit: int | None = None  # the verdict over all boots' results; None when there are no results
    run: VmRun | None = None     # the last boot
    warnings: list[str] = field(default_factory=list)  # non-fatal console events (WARN, hung task, RCU stall)
    kernel_warns: int = 0        # of which kernel WARNINGs: these fail a run that otherwise passed
    crashes: list[tuple[str, str]] = field(default_factory=list)  # (test id, kind) of tests that killed the VM
    boots: list[tuple[str, float, float]] = field(default_factory=list)  # (kind, boot s, tests s) per boot
    shard: tuple[int, int] | None = None  # (K, N): this is the K-th of N VMs running one configuration
    boot_shards: list[int] = field(default_factory=list)  # the shard (K) of each entry of `boots`; [] unsharded
    wall_s: float = -1.0         # seconds from the first boot's start to the last VM's end
    merged_into: Path | None = None  # a shard's: the configuration's stem, whose reports finish_shards rebuilds

    @property
    def label(self) -> str:
        """The configuration's module parameters as written ("kvm_amd.npt=0"), or "default"."""
        return " ".join(self.params) or "default"

    @property
    def display(self) -> str:
        """The label, and for a shard which one ("kvm_amd.npt=0 shard 1/2"), for progress lines."""
        return self.label + (f" shard {self.shard[0]}/{self.shard[1]}" if self.shard else "")

    def path(self, ext: str) -> Path:
        """The configuration's file with extension `ext` (".xml", ".progress.jsonl", ...) beside its stem."""
        return self.stem.with_name(self.stem.name + ext)


def classify(run: VmRun, status: dict | None, timeout_s: float, stall_s: float) -> tuple[str, str]:
    """(kind, message) for one boot, from the watcher and the VM's status file."""
    if run.fatal is not None:
        return run.fatal.kind, run.fatal.describe()
    if run.ended_by == "timeout":
        return "timeout", f"the run went past --vm-timeout ({timeout_s:.0f} s) and was stopped"
    if run.ended_by == "stall":
        return "stall", f"the VM printed nothing for {stall_s:.0f} s (--vm-stall) and was stopped"
    status = status or {}
    stage = status.get("stage")
    if stage == "done":
        return "done", ""
    if stage == "no-kvm":
        return "no-kvm", f"no usable KVM in the VM: {status.get('error')}"
    if stage is None:
        return "no-boot", f"the VM never started kvmtest (vng exit {run.returncode})"
    return "vm-exit", f"the VM ended during the tests without a verdict (vng exit {run.returncode})"


def stand_in_junit(boot: Boot, kernel: Kernel, accel: str) -> None:
    """A JUnit file with one error for a configuration that produced no test results."""
    from ..reports import junit
    from ..reports.results import Result

    run = boot.run
    details = [boot.message]
    if run is not None and run.in_flight:
        details.append(f"test in flight: {run.in_flight}")
    if run is not None:
        details += ["", "last console lines:", *run.tail]
    details.append(f"console log: {boot.path('.console.log')}")
    result = Result("kvmtest.vm", f"boot[{boot.label}]", "error", boot.message, "\n".join(details))
    props = {"kvmtest.host": "kvmtest-vm", "kvmtest.kernel.release": kernel.release, "kvmtest.accelerator": accel,
             "kvmtest.kernel.source": kernel.source, "kvmtest.kvm_params": boot.label, "kvmtest.vm.outcome": boot.kind}
    junit.write(boot.path(".xml"), [junit.suite_from_results([result], f"kvmtest@kvmtest-vm [{boot.label}]",
                                                             "kvmtest-vm", props)])


def name_suites(path: Path, boot: Boot) -> None:
    """Name each <testsuite> after the configuration, so a merged matrix report tells them apart."""
    tree = ET.parse(path)
    root = tree.getroot()
    for suite in [root] if root.tag == "testsuite" else root.findall("testsuite"):
        suite.set("name", f"{suite.get('name')} [{boot.label}]")
        props = suite.find("properties")
        if props is None:
            props = ET.SubElement(suite, "properties")
        ET.SubElement(props, "property", name="kvmtest.kvm_params", value=boot.label)
    tree.write(path, encoding="utf-8", xml_declaration=True)


def merge_suites(paths: list[Path], out: Path) -> None:
    """Every <testsuite> of the given files under one <testsuites> (one per configuration)."""
    root = ET.Element("testsuites")
    for p in paths:
        r = ET.parse(p).getroot()
        root.extend([r] if r.tag == "testsuite" else r.findall("testsuite"))
    ET.indent(root)
    out.write_bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))


def vm_jobs(args, accel: str) -> str:
    """pytest-xdist workers in the VM: -j as given, else one per vCPU, and none for a one-vCPU VM
    (a lone worker would only add a second process, a second collection and a pipe to every report)."""
    if args.jobs != "auto":
        return args.jobs
    cpus = args.vm_cpus or default_cpus(accel)
    return "0" if cpus == 1 else str(cpus)


def session_args(args, extra: list[str], files: Path, report_dir: Path, suspects=(), *, jobs: str | None = None,
                 shard: tuple[int, int] | None = None, merged_into: Path | None = None) -> list[str]:
    """`kvmtest run` arguments for one pytest session in the VM; suspects run alone, one at a time;
    `jobs` (default -j as given) the VM's xdist workers; `shard` (K, N) this VM's share of the tests;
    `merged_into` the configuration's stem when the host rebuilds its reports from the progress logs
    and removes this session's files (the session's "kvmtest report:" lines then say so)."""
    out = ["--report-dir", str(report_dir), "--junit", f"{files}.xml", "--ktap", f"{files}.ktap",
           "--html", f"{files}.html", "-j", "0" if suspects else jobs or args.jobs,
           "--xdist"]  # in the VM, workers under one controller: it alone writes the progress log
    for b in args.baseline:
        out += ["--baseline", str(Path(b).resolve())]
    # the shared root is read-only in the VM: no .pytest_cache (one token: a bare word reads as a test path);
    # the progress plugin keeps the log a crash cannot take away
    out += ["-pno:cacheprovider", "-pkvmtest.kernelvm.progress"]
    if merged_into is not None:
        out.append(f"--kvm-vm-merged-into={merged_into}")
    if suspects:  # named by id: already this shard's
        return out + [a for a in extra if a.startswith("-")] + list(suspects)
    if shard is not None and shard[1] > 1:
        out.append(f"--kvm-vm-shard={shard[0]}/{shard[1]}")
    return out + extra


def shared_asm_cache() -> Path | None:
    """The host's assembly disk cache (kvmtest.asm.cache), created if missing, for the VM to read
    and fill (written whole and renamed, so several VMs at once are safe): the rest of the shared
    root is read-only there, and every guest the host already assembled need not be assembled again
    under the VM's slower CPU. None when the disk cache is off or cannot be created."""
    from ..asm.cache import cache_dir

    directory = cache_dir()
    if directory is None:
        return None
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return directory


def shared_pycache() -> Path | None:
    """The host's bytecode tree (kvmtest.bytecode.cache_prefix), created if missing, for the VM's
    Python to read and fill: the checkout is read-only there, and compiling kvmtest and rewriting
    the suites' asserts is half of a collection, minutes under TCG. Python writes each file whole
    and renames it, so several VMs at once are safe. None when it cannot be created."""
    from ..bytecode import cache_prefix

    directory = cache_prefix()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return directory


def _boot(args, boot: Boot, kernel: Kernel, accel: str, report_dir: Path, tools, sessions, timeout_s, n):
    status_path = boot.path(f".boot{n}.status.json")
    spec_path = boot.path(f".boot{n}.spec.json")
    asm_cache, pycache = shared_asm_cache(), shared_pycache()
    spec_path.write_text(json.dumps({"accelerator": accel, "status": str(status_path),
                                     "progress": str(boot.path(".progress.jsonl")), "sessions": sessions,
                                     "asm_cache": str(asm_cache) if asm_cache else "",
                                     "pycache": str(pycache) if pycache else ""}, indent=2) + "\n")
    exec_cmd = f"{sys.executable} -m kvmtest.kernelvm.inner {spec_path}"
    rwdirs = [report_dir] + [d for d in (asm_cache, pycache) if d]
    cmd = vng_command(tools["vng"], kernel, accel, exec_cmd, rwdirs=rwdirs, append=boot.params,
                      cpus=args.vm_cpus or default_cpus(accel), memory=args.vm_memory)
    env = {**os.environ, "PATH": f"{Path(tools['vng']).parent}:{os.environ.get('PATH', '')}"}
    print(f"kvmtest run --kernel: boot {n} [{boot.display}]: {' '.join(cmd)}", flush=True)
    log = boot.path(".console.log" if n == 1 else f".boot{n}.console.log")
    prefix = f"[shard {boot.shard[0]}/{boot.shard[1]}] " if boot.shard else ""  # two VMs' lines interleave
    run = watch(cmd, log, timeout_s=timeout_s, stall_s=args.vm_stall,
                echo=lambda line: print(prefix + line, flush=True), env=env)
    try:
        status = json.loads(status_path.read_text())
    except (OSError, ValueError):
        status = None
    for p in (spec_path, status_path):
        p.unlink(missing_ok=True)
    return run, status


def run_config(args, extra, kernel: Kernel, accel: str, params: tuple[str, ...], report_dir: Path, tools) -> Boot:
    """Run one --kvm-param configuration (`params`) of `kernel` under `accel` to its end, split over
    `args.vm_shards` VMs at once (default 1): boot, and after a VM that died in a test, boot again
    and resume (the tests in flight one at a time first), until the tests are done, nothing would
    change, or --vm-max-crashes; then write its reports (finish). Returns the Boot record."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    label = "-".join(params).replace("=", "")
    boot = Boot(params, report_dir / "-".join(filter(None, ("kvmtest-vm", accel, kernel.release, label, stamp))))
    deadline = time.monotonic() + args.vm_timeout
    started = time.monotonic()
    shards = getattr(args, "vm_shards", None) or 1
    if shards == 1:
        n = _run_boots(args, extra, boot, kernel, accel, report_dir, tools, deadline)
        finish(boot, args, kernel, accel, n)
    else:
        parts = [Boot(params, boot.path(f".shard{k}"), shard=(k, shards), merged_into=boot.stem)
                 for k in range(1, shards + 1)]
        _run_shards(parts, args, extra, kernel, accel, report_dir, tools, deadline)
        finish_shards(boot, parts, args, kernel, accel)
    boot.wall_s = time.monotonic() - started
    return boot


def _run_shards(parts: list[Boot], args, extra, kernel: Kernel, accel: str, report_dir: Path, tools,
                deadline: float) -> None:
    """Each shard's boots in a thread of its own; the first exception (kvmtest's own fault) stops all."""
    errors: list[BaseException] = []

    def one(part: Boot) -> None:
        try:
            _run_boots(args, extra, part, kernel, accel, report_dir, tools, deadline,
                       crashes=lambda: sum(len(p.crashes) for p in parts))
        except BaseException as e:  # re-raised in the main thread, after the other VMs are stopped
            errors.append(e)
            kill_all()

    threads = [threading.Thread(target=one, args=(p,), name=f"kvmtest-{p.display}", daemon=True) for p in parts]
    try:
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(1.0)  # in slices: SIGTERM and Ctrl-C reach the main thread only
    except BaseException:
        kill_all()
        raise
    if errors:
        raise errors[0]


def _run_boots(args, extra, boot: Boot, kernel: Kernel, accel: str, report_dir: Path, tools, deadline: float,
               crashes=None) -> int:
    """Boot `boot` (a configuration, or one shard of it) until its tests are done or nothing a fresh
    VM would change; returns the number of boots. `crashes()`: the configuration's crashes so far,
    all shards together, for --vm-max-crashes (default: this boot's own)."""
    crashes = crashes or (lambda: len(boot.crashes))
    log = boot.path(".progress.jsonl")
    jobs = vm_jobs(args, accel)
    suspects: list[str] = []
    n = 0
    while True:
        n += 1
        files = boot.stem if n == 1 else boot.path(f".boot{n}")
        # the reports stand as the VM wrote them only for an unsharded configuration's first boot
        # (finish); those of a shard, a later boot or suspects are rebuilt from the progress logs
        final = boot.merged_into or boot.stem
        merged = final if boot.merged_into is not None or n > 1 else None
        sessions = ([session_args(args, extra, boot.path(f".boot{n}-suspects"), report_dir, suspects,
                                  merged_into=final)] if suspects else []) \
            + [session_args(args, extra, files, report_dir, jobs=jobs, shard=boot.shard, merged_into=merged)]
        run, status = _boot(args, boot, kernel, accel, report_dir, tools, sessions,
                            max(deadline - time.monotonic(), 1.0), n)
        boot.run = run
        boot.kind, boot.message = classify(run, status, args.vm_timeout, args.vm_stall)
        boot.warnings += [e.describe() for e in run.events if not e.fatal]
        boot.kernel_warns += sum(1 for e in run.events if e.kind == "warn")
        marks = run.marks
        # seconds of tests: from KVM loaded to the session's end, or to the VM's end when it died in a test
        ended = marks.get("done", run.seconds if boot.kind in CRASH_KINDS else None)
        boot.boots.append((boot.kind, marks.get("booted", -1.0),
                           ended - marks["kvm"] if ended is not None and "kvm" in marks else -1.0))
        if boot.kind == "done":
            boot.pytest_exit = status.get("pytest_exit")
            break
        if boot.kind not in CRASH_KINDS:
            break  # no boot, no KVM, out of time: nothing a fresh VM would change
        flight = progress.in_flight(progress.read(log))
        if len(flight) == 1:
            resume.record_crash(log, flight[0], boot.kind, boot.message, run.tail)
            boot.crashes.append((flight[0], boot.kind))
            print(f"kvmtest run --kernel: [{boot.display}] {boot.message}; in test {flight[0]}; "
                  "resuming in a fresh VM", flush=True)
            suspects = []
        elif len(flight) > 1 and flight != suspects:
            print(f"kvmtest run --kernel: [{boot.display}] {boot.message} with {len(flight)} tests in flight; "
                  "a fresh VM runs them one at a time first", flush=True)
            suspects = flight
        else:
            break  # died outside any test (or the same suspects again): a fresh VM would do the same
        if crashes() >= args.vm_max_crashes:
            boot.message += f"; stopped after {crashes()} crashes (--vm-max-crashes)"
            break
    return n


def finish_shards(boot: Boot, parts: list[Boot], args, kernel: Kernel, accel: str) -> None:
    """A sharded configuration's record and reports: every shard's boots, crashes and warnings; how it
    ended is the first shard's that did not finish (else done); the JUnit/KTAP/HTML are rebuilt from
    all shards' progress logs, and the shards' own files, but their console logs, are removed."""
    for part in parts:
        k, n = part.shard or (1, 1)
        boot.boots += part.boots
        boot.boot_shards += [k] * len(part.boots)
        boot.crashes += part.crashes
        boot.warnings += [f"[shard {k}/{n}] {w}" for w in part.warnings]
        boot.kernel_warns += part.kernel_warns
    failed = [p for p in parts if p.kind != "done"]
    last = failed[0] if failed else parts[-1]
    boot.kind, boot.run = last.kind, last.run
    boot.message = f"{last.display.removeprefix(last.label).strip()}: {last.message}" if failed else ""
    entries = [e for p in parts for e in progress.read(p.path(".progress.jsonl"))]
    if resume.fingerprint(entries):
        if failed:  # the run stopped short: say so in the report itself
            for p in failed:
                resume.record_crash(p.path(".progress.jsonl"), f"kvmtest-vm::run[{p.display}]", p.kind,
                                    f"{p.message}; the remaining tests of this shard did not run",
                                    p.run.tail if p.run else [])
            entries = [e for p in parts for e in progress.read(p.path(".progress.jsonl"))]
        paths = {"junit": boot.path(".xml"), "ktap": boot.path(".ktap"), "html": boot.path(".html")}
        results = resume.write_reports(entries, paths, [str(Path(b).resolve()) for b in args.baseline])
        boot.pytest_exit = shard_exit(resume.exit_code(results), [p.pytest_exit for p in parts])
    else:
        if boot.kind == "done":
            boot.kind = "vm-exit"
            boot.message = "kvmtest in the VMs wrote no progress log (pytest exits " \
                           f"{', '.join(str(p.pytest_exit) for p in parts)})"
        boot.pytest_exit = None
        stand_in_junit(boot, kernel, accel)
        return
    for part in parts:
        for stale in part.stem.parent.glob(f"{part.stem.name}.*"):
            if not stale.name.endswith(".console.log"):
                stale.unlink()
    if boot.params:
        name_suites(boot.path(".xml"), boot)


def shard_exit(results_code: int, shard_exits: list[int | None]) -> int:
    """The configuration's pytest exit from the rebuilt results' code (0 or 1) and the shards' own:
    a shard that collected none of the selected tests (5) counts only when every shard did; a usage
    error or internal error (2, 3, 4) of any shard stands."""
    exits = [e for e in shard_exits if e is not None]
    if results_code:
        return results_code
    if exits and all(e == 5 for e in exits):
        return 5
    return max((e for e in exits if e in (2, 3, 4)), default=0)


def finish(boot: Boot, args, kernel: Kernel, accel: str, boots: int) -> None:
    """The configuration's JUnit/KTAP/HTML: the VM's own for one clean boot, else rebuilt from the log."""
    entries = progress.read(boot.path(".progress.jsonl"))
    if boots == 1 and boot.kind == "done" and boot.path(".xml").exists():
        boot.path(".progress.jsonl").unlink(missing_ok=True)  # nothing to resume from; the VM's reports stand
    elif resume.fingerprint(entries):
        if boot.kind != "done":  # the run stopped short: say so in the report itself
            resume.record_crash(boot.path(".progress.jsonl"), f"kvmtest-vm::run[{boot.label}]", boot.kind,
                                f"{boot.message}; the remaining tests did not run", boot.run.tail if boot.run else [])
            entries = progress.read(boot.path(".progress.jsonl"))
        paths = {"junit": boot.path(".xml"), "ktap": boot.path(".ktap"), "html": boot.path(".html")}
        results = resume.write_reports(entries, paths, [str(Path(b).resolve()) for b in args.baseline])
        boot.pytest_exit = resume.exit_code(results)
        for stale in boot.stem.parent.glob(f"{boot.stem.name}.boot*"):  # per-boot reports now merged
            if stale.suffix in (".xml", ".ktap", ".html"):
                stale.unlink()
    else:
        if boot.kind == "done":
            boot.kind = "vm-exit"
            boot.message = f"kvmtest in the VM wrote no JUnit file (pytest exit {boot.pytest_exit})"
        boot.pytest_exit = None
        stand_in_junit(boot, kernel, accel)
        return
    if boot.params:
        name_suites(boot.path(".xml"), boot)
