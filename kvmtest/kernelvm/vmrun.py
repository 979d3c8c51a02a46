"""One configuration (one set of --kvm-param values): boot, run, and resume after a crash.

Each boot runs `kvmtest run` inside the VM with the progress plugin. When the VM dies in a test
(panic, oops, BUG, QEMU abort, stall), that test becomes an ERROR naming what happened, and a
fresh VM runs the tests that remain. With pytest-xdist several tests are in flight at once; the
next boot first runs those suspects one at a time, so the one that kills the VM is named alone.
"""

import datetime
import json
import os
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from . import progress, resume
from .boot import VmRun, default_cpus, vng_command, watch
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

    @property
    def label(self) -> str:
        """The configuration's module parameters as written ("kvm_amd.npt=0"), or "default"."""
        return " ".join(self.params) or "default"

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


def session_args(args, extra: list[str], files: Path, report_dir: Path, suspects=()) -> list[str]:
    """`kvmtest run` arguments for one pytest session in the VM; suspects run alone, one at a time."""
    out = ["--report-dir", str(report_dir), "--junit", f"{files}.xml", "--ktap", f"{files}.ktap",
           "--html", f"{files}.html", "-j", "0" if suspects else args.jobs]
    for b in args.baseline:
        out += ["--baseline", str(Path(b).resolve())]
    # the shared root is read-only in the VM: no .pytest_cache (one token: a bare word reads as a test path);
    # the progress plugin keeps the log a crash cannot take away
    out += ["-pno:cacheprovider", "-pkvmtest.kernelvm.progress"]
    if suspects:
        return out + [a for a in extra if a.startswith("-")] + list(suspects)
    return out + extra


def _boot(args, boot: Boot, kernel: Kernel, accel: str, report_dir: Path, tools, sessions, timeout_s, n):
    status_path = boot.path(f".boot{n}.status.json")
    spec_path = boot.path(f".boot{n}.spec.json")
    spec_path.write_text(json.dumps({"accelerator": accel, "status": str(status_path),
                                     "progress": str(boot.path(".progress.jsonl")), "sessions": sessions},
                                    indent=2) + "\n")
    exec_cmd = f"{sys.executable} -m kvmtest.kernelvm.inner {spec_path}"
    cmd = vng_command(tools["vng"], kernel, accel, exec_cmd, rwdirs=[report_dir], append=boot.params,
                      cpus=args.vm_cpus or default_cpus(accel), memory=args.vm_memory)
    env = {**os.environ, "PATH": f"{Path(tools['vng']).parent}:{os.environ.get('PATH', '')}"}
    print(f"kvmtest run --kernel: boot {n} [{boot.label}]: {' '.join(cmd)}", flush=True)
    log = boot.path(".console.log" if n == 1 else f".boot{n}.console.log")
    run = watch(cmd, log, timeout_s=timeout_s, stall_s=args.vm_stall, echo=lambda line: print(line, flush=True),
                env=env)
    try:
        status = json.loads(status_path.read_text())
    except (OSError, ValueError):
        status = None
    for p in (spec_path, status_path):
        p.unlink(missing_ok=True)
    return run, status


def run_config(args, extra, kernel: Kernel, accel: str, params: tuple[str, ...], report_dir: Path, tools) -> Boot:
    """Run one --kvm-param configuration (`params`) of `kernel` under `accel` to its end: boot,
    and after a VM that died in a test, boot again and resume (the tests in flight one at a time
    first), until the tests are done, nothing would change, or --vm-max-crashes; then write its
    reports (finish). Returns the Boot record."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    label = "-".join(params).replace("=", "")
    boot = Boot(params, report_dir / "-".join(filter(None, ("kvmtest-vm", accel, kernel.release, label, stamp))))
    log = boot.path(".progress.jsonl")
    deadline = time.monotonic() + args.vm_timeout
    suspects: list[str] = []
    n = 0
    while True:
        n += 1
        files = boot.stem if n == 1 else boot.path(f".boot{n}")
        sessions = ([session_args(args, extra, boot.path(f".boot{n}-suspects"), report_dir, suspects)]
                    if suspects else []) + [session_args(args, extra, files, report_dir)]
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
            print(f"kvmtest run --kernel: {boot.message}; in test {flight[0]}; resuming in a fresh VM", flush=True)
            suspects = []
        elif len(flight) > 1 and flight != suspects:
            print(f"kvmtest run --kernel: {boot.message} with {len(flight)} tests in flight; "
                  "a fresh VM runs them one at a time first", flush=True)
            suspects = flight
        else:
            break  # died outside any test (or the same suspects again): a fresh VM would do the same
        if len(boot.crashes) >= args.vm_max_crashes:
            boot.message += f"; stopped after {len(boot.crashes)} crashes (--vm-max-crashes)"
            break
    finish(boot, args, kernel, accel, n)
    return boot


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
