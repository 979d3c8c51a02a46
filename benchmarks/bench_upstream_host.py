#!/usr/bin/env python3
"""Upstream KVM as a host, per configuration: boot time, suite time and result counts.

Runs `kvmtest run --kernel KERNEL --kvm-param ...` (one boot per combination of module
parameters, e.g. kvm_amd.npt=1 and npt=0: two-dimensional and shadow paging on upstream KVM)
and prints, side by side, each configuration's VMs (shards run at once), boots (seconds to boot,
seconds of tests in the busiest VM, wall seconds of the configuration), crashes and counts
(passed, skipped, xfailed, failed, error), read from the `.summary.json` files the runner writes.
`--from DIR` prints the table for a run already made.

    python benchmarks/bench_upstream_host.py --kernel debian --param kvm_amd.npt=1,0 suites
    python benchmarks/bench_upstream_host.py --from reports/upstream

Exit code: 0 when every configuration completed (every test has a verdict), 1 otherwise.
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

STATUSES = ("passed", "skipped", "xfailed", "xpassed", "failed", "error")


class SummaryError(ValueError):
    """A *.summary.json that is not what `kvmtest run --kernel` writes; names the file."""


def load(report_dir: Path) -> list[dict]:
    """Every configuration's summary in `report_dir`, oldest first (SummaryError for a bad one)."""
    out = []
    for p in sorted(report_dir.glob("*.summary.json"), key=os.path.getmtime):
        try:
            s = json.loads(p.read_text())
            if not isinstance(s, dict) or not {"kvm_params", "boots", "counts", "junit"} <= set(s):
                raise ValueError("not a configuration summary (kvm_params, boots, counts, junit)")
            if not isinstance(s["boots"], list) or not all(
                    isinstance(b, dict) and isinstance(b.get("boot_s"), (int, float))
                    and isinstance(b.get("tests_s"), (int, float)) for b in s["boots"]):
                raise ValueError("its boots are not a list of {ended, boot_s, tests_s}")
            if not isinstance(s["counts"], dict) or not isinstance(s.get("crashes", []), list):
                raise ValueError("its counts are not a mapping of status to number, or its crashes not a list")
        except (OSError, ValueError) as e:
            raise SummaryError(f"{p}: {e}") from None
        out.append(s)
    return out


def row(s: dict) -> str:
    """One configuration: VMs at once (shards), boots, the busiest VM's seconds of booting and of tests
    (its boots added up), the wall time of the whole configuration, counts, crashes."""
    boots = s["boots"]
    booting: dict = {}
    testing: dict = {}
    for b in boots:
        vm = b.get("shard", 1)
        booting[vm] = booting.get(vm, 0.0) + max(b["boot_s"], 0.0)
        testing[vm] = testing.get(vm, 0.0) + max(b["tests_s"], 0.0)
    wall = s.get("wall_s")  # written since the runner splits a configuration over VMs
    counts = s["counts"]
    cells = "  ".join(f"{counts.get(k, 0):>7}" for k in STATUSES)
    label = " ".join(s["kvm_params"]) or "default"
    return (f"{label:<24} {s['accelerator']:<5} {s.get('shards', 1):>3} {len(boots):>5} "
            f"{max(booting.values(), default=0):>7.0f} {max(testing.values(), default=0):>8.0f} "
            f"{'-' if wall is None else f'{wall:.0f}':>7} {sum(counts.values()):>6}  {cells}  "
            f"{len(s.get('crashes', [])):>7}  {s['outcome']}")


def table(summaries: list[dict]) -> str:
    head = (f"{'configuration':<24} {'accel':<5} {'VMs':>3} {'boots':>5} {'boot s':>7} {'tests s':>8} {'wall s':>7} "
            f"{'total':>6}  " + "  ".join(f"{k:>7}" for k in STATUSES) + f"  {'crashes':>7}  outcome")
    lines = [head, "-" * len(head)] + [row(s) for s in summaries]
    for s in summaries:
        for c in s.get("crashes", []):
            lines.append(f"  [{' '.join(s['kvm_params']) or 'default'}] the VM died in {c['test']} ({c['kind']})")
    return "\n".join(lines)


def new_verdicts(summaries: list[dict], host_junit: str) -> str:
    """How many checks that skip or xfail in `host_junit` (a run straight on a host) get a verdict,
    pass or fail, in each configuration; an xfail upstream is a deviation, counted apart."""
    from kvmtest.reports.results import read_junit

    silent = {r.id for r in read_junit(Path(host_junit)) if r.status in ("skipped", "xfailed")}
    lines = [f"of the {len(silent)} checks that skip or xfail in {host_junit}:"]
    for s in summaries:
        got = {r.id: r.status for r in read_junit(Path(s["junit"])) if r.id in silent}
        verdicts = sum(1 for v in got.values() if v in ("passed", "failed", "error", "xpassed"))
        xfailed = sum(1 for v in got.values() if v == "xfailed")
        lines.append(f"  [{' '.join(s['kvm_params']) or 'default'}] {verdicts} got a verdict "
                     f"({sum(1 for v in got.values() if v == 'passed')} passed), {xfailed} xfailed as known issues")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernel", default="debian", help="what `kvmtest run --kernel` boots (default: debian)")
    ap.add_argument("--param", action="append", default=[], metavar="MODULE.PARAM=V1[,V2]",
                    help="--kvm-param for the matrix (default: kvm_amd.npt=1,0)")
    ap.add_argument("--report-dir", default="reports/upstream-bench", help="where the reports go")
    ap.add_argument("--from", dest="from_dir", help="only print the table for the summaries in this directory")
    ap.add_argument("--host-junit", help="a JUnit file of a run straight on a host: count its skips and xfails "
                                         "that get a verdict upstream")
    ap.add_argument("tests", nargs="*", default=["suites"], help="pytest arguments (default: suites)")
    args = ap.parse_args(argv)
    try:
        return _main(args)
    except SummaryError as e:
        print(f"bench_upstream_host: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # kvmtest.reports.results.ReportError: a --host-junit file that cannot be read
        print(f"bench_upstream_host: {e}", file=sys.stderr)
        return 2


def _main(args) -> int:
    if args.from_dir and not Path(args.from_dir).is_dir():
        print(f"bench_upstream_host: --from {args.from_dir}: no such directory", file=sys.stderr)
        return 2
    if args.from_dir:
        summaries = load(Path(args.from_dir))
        if not summaries:
            print(f"bench_upstream_host: no *.summary.json in {args.from_dir}", file=sys.stderr)
            return 1
        print(table(summaries))
        if args.host_junit:
            print(new_verdicts(summaries, args.host_junit))
        return 0 if all(s["outcome"] == "done" for s in summaries) else 1
    report_dir = Path(args.report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "kvmtest.cli", "run", "--kernel", args.kernel, "--report-dir", str(report_dir)]
    for p in args.param or ["kvm_amd.npt=1,0"]:
        cmd += ["--kvm-param", p]
    cmd += args.tests
    load_before = os.getloadavg()
    started, t0 = datetime.datetime.now().isoformat(timespec="seconds"), time.monotonic()
    print(f"bench_upstream_host: {started}, load {load_before[0]:.2f}, {os.cpu_count()} CPUs: {' '.join(cmd)}",
          flush=True)
    before = {p.name for p in report_dir.glob("*.summary.json")}
    code = subprocess.call(cmd)
    # the summary sits next to the JUnit file: same stem (which has dots of its own), other ending
    summaries = [s for s in load(report_dir) if Path(s["junit"]).name.removesuffix(".xml") + ".summary.json"
                 not in before]
    print(f"\nbench_upstream_host: {started}, {time.monotonic() - t0:.0f} s in all (kvmtest run exit {code}), "
          f"load before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}")
    print(table(summaries))
    if args.host_junit and summaries:
        print(new_verdicts(summaries, args.host_junit))
    return 0 if summaries and all(s["outcome"] == "done" for s in summaries) else 1


if __name__ == "__main__":
    sys.exit(main())
