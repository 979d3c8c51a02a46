#!/usr/bin/env python3
"""Issue 18's four speed figures, measured side by side in one run.

    python benchmarks/bench_speed.py                       # all four; the upstream part takes ~30 min
    python benchmarks/bench_speed.py --upstream-from DIR   # the upstream figure from a run already made
    python benchmarks/bench_speed.py --no-upstream         # the three host figures only

1. the whole conformance suite on this host: `kvmtest run -j JOBS suites`, wall seconds (target
   under 30 s on 2 cores) and CPU seconds, with its result counts; then, for comparison, the same
   with `--xdist` (pytest-xdist workers instead of shards; --no-xdist-row leaves it out);
2. the exit loop through `Vcpu.run()` against C (benchmarks/bench_harness.py; target 1.05x of C,
   or the ctypes floor, which the same run measures, with the reason stated);
3. the VM lifecycle against C (target 1.10x);
4. one upstream-KVM configuration under QEMU's TCG: `kvmtest run --kernel debian suites` (default
   module parameters, one configuration, split over as many VMs as the runner picks), seconds to
   boot, seconds of tests, wall seconds (target under 30 minutes), result counts.

Each part prints the date and the load average before and after it; the figures end in one table.
The host parts run first, on a machine as idle as the caller left it; the upstream part runs last
(it keeps every host CPU busy). Exit code 0 when everything was measured (targets met or not), 2
when a part could not run.
"""

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the sibling benchmarks, imported as modules

import bench_harness  # noqa: E402
import bench_upstream_host  # noqa: E402

from kvmtest.options import jobs_value  # noqa: E402

SUITE_TARGET_S = 30.0
UPSTREAM_TARGET_S = 30 * 60.0


def stamp() -> str:
    """The local date and time and the 1-minute load average, for every figure printed."""
    return f"{datetime.datetime.now().isoformat(timespec='seconds')}, load {os.getloadavg()[0]:.2f}"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def host_suite(jobs: str, report_dir: Path, xdist: bool = False) -> dict:
    """Part 1: `kvmtest run -j JOBS suites` on this host (its shards; with `xdist`, pytest-xdist
    workers instead); wall and CPU seconds (user + system, every process of the run) and result counts."""
    from kvmtest.reports.results import read_junit

    junit = report_dir / ("host-suite-xdist.xml" if xdist else "host-suite.xml")
    cmd = [sys.executable, "-m", "kvmtest.cli", "run", "-j", jobs, *(["--xdist"] if xdist else []),
           "--report-dir", str(report_dir), "--junit", str(junit), "suites"]
    before = stamp()
    cpu0, t0 = _children_cpu(), time.monotonic()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall, cpu = time.monotonic() - t0, _children_cpu() - cpu0
    if not junit.exists():
        raise RuntimeError(f"{' '.join(cmd)} wrote no JUnit file (exit {proc.returncode}): {proc.stderr[-2000:]}")
    counts: dict = {}
    for r in read_junit(junit):
        counts[r.status] = counts.get(r.status, 0) + 1
    return {"wall_s": wall, "cpu_s": cpu, "exit": proc.returncode, "counts": counts, "before": before,
            "after": stamp(), "command": " ".join(cmd[2:])}


def upstream(kernel: str, params: list[str], report_dir: Path, extra: list[str]) -> dict:
    """Part 4: one configuration of `kernel` under TCG, all suites; its summary.json's figures."""
    cmd = [sys.executable, "-m", "kvmtest.cli", "run", "--kernel", kernel, "--report-dir", str(report_dir)]
    for p in params:
        cmd += ["--kvm-param", p]
    cmd += extra or ["suites"]
    before = stamp()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    summaries = bench_upstream_host.load(report_dir)
    if not summaries:
        raise RuntimeError(f"{' '.join(cmd)} wrote no summary (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return {**figures(summaries[-1]), "before": before, "after": stamp(), "exit": proc.returncode,
            "command": " ".join(cmd[2:])}


def upstream_from(directory: Path) -> dict:
    """Part 4 from a run already made: the newest summary in `directory`, dated by its file."""
    paths = sorted(directory.glob("*.summary.json"), key=os.path.getmtime)
    if not paths:
        raise RuntimeError(f"--upstream-from {directory}: no *.summary.json there")
    s = bench_upstream_host.load(directory)[-1]
    when = datetime.datetime.fromtimestamp(paths[-1].stat().st_mtime).isoformat(timespec="seconds")
    return {**figures(s), "before": f"run made earlier, summary written {when}", "after": "", "exit": None,
            "command": f"(from {paths[-1]})"}


def figures(s: dict) -> dict:
    """Boot, tests and wall seconds of one configuration's summary (the busiest VM's boot and tests)."""
    booting: dict = {}
    testing: dict = {}
    for b in s["boots"]:
        vm = b.get("shard", 1)
        booting[vm] = booting.get(vm, 0.0) + max(b["boot_s"], 0.0)
        testing[vm] = testing.get(vm, 0.0) + max(b["tests_s"], 0.0)
    return {"label": " ".join(s["kvm_params"]) or "default", "kernel": s["kernel"], "accelerator": s["accelerator"],
            "vms": s.get("shards", 1), "boots": len(s["boots"]), "boot_s": max(booting.values(), default=0.0),
            "tests_s": max(testing.values(), default=0.0), "wall_s": s.get("wall_s", -1.0), "counts": s["counts"],
            "outcome": s["outcome"], "crashes": len(s.get("crashes", []))}


def verdict(value: float, target: float) -> str:
    return "met" if value <= target else "not met"


def table(suite: dict, harness: dict, up: dict | None, xdist: dict | None = None) -> str:
    """The four figures side by side: what, measured, target, met or not (and the host suite under
    pytest-xdist, for comparison)."""
    rows = [("whole suite on this host (wall)", f"{suite['wall_s']:.1f} s", f"< {SUITE_TARGET_S:.0f} s",
             verdict(suite["wall_s"], SUITE_TARGET_S)),
            ("whole suite on this host (CPU, all processes)", f"{suite['cpu_s']:.1f} s", "(info)", "")]
    if xdist is not None:
        rows += [("the same with --xdist (wall)", f"{xdist['wall_s']:.1f} s", "(info)", ""),
                 ("the same with --xdist (CPU, all processes)", f"{xdist['cpu_s']:.1f} s", "(info)", "")]
    for name, target in (("exit loop", bench_harness.TARGETS["exit loop"]),
                         ("VM lifecycle", bench_harness.TARGETS["VM lifecycle"])):
        ratio = harness[name]["ratio"]
        rows.append((f"{name} / C", f"{ratio:.3f}x", f"<= {target:.2f}x", verdict(ratio, target)))
    floor = harness["ctypes floor"]["ratio"]
    rows.append(("ctypes floor / C (KVM_RUN alone)", f"{floor:.3f}x", "(info)", ""))
    if up is not None:
        rows.append((f"upstream [{up['label']}] {up['accelerator']}, {up['vms']} VM(s): boot", f"{up['boot_s']:.0f} s",
                     "(info)", ""))
        rows.append((f"upstream [{up['label']}]: tests (busiest VM)", f"{up['tests_s'] / 60:.1f} min", "(info)", ""))
        wall = up["wall_s"]
        rows.append((f"upstream [{up['label']}]: wall, boot to reports", "-" if wall < 0 else f"{wall / 60:.1f} min",
                     f"< {UPSTREAM_TARGET_S / 60:.0f} min", "" if wall < 0 else verdict(wall, UPSTREAM_TARGET_S)))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{a:<{width}}  {b:>10}  {c:>9}  {d}" for a, b, c, d in rows)


def counts_text(counts: dict) -> str:
    return ", ".join(f"{n:,} {k}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", default="2", type=jobs_value, help="kvmtest run -j for the host suite (default 2)")
    ap.add_argument("--rounds", type=bench_harness.positive, default=7, help="bench_harness rounds (default 7)")
    ap.add_argument("--no-xdist-row", action="store_true",
                    help="leave out the host suite's second run with --xdist (pytest-xdist workers, for comparison)")
    up = ap.add_mutually_exclusive_group()
    up.add_argument("--upstream-from", type=Path, metavar="DIR",
                    help="take the upstream figure from the newest *.summary.json in DIR instead of running it")
    up.add_argument("--no-upstream", action="store_true", help="leave the upstream figure out")
    ap.add_argument("--kernel", default="debian", help="what the upstream part boots (default: debian)")
    ap.add_argument("--kvm-param", action="append", default=[], help="module parameters of the upstream configuration")
    ap.add_argument("--report-dir", type=Path, default=None, help="where the reports go (default: a temporary one)")
    ap.add_argument("--json", type=bench_harness.writable_file, default=None,
                    help="also write every figure to this JSON file")
    args = ap.parse_args(argv)
    up_fig = None
    if args.upstream_from is not None:  # checked before the host parts, which take minutes
        if not args.upstream_from.is_dir():
            print(f"bench_speed: --upstream-from {args.upstream_from}: no such directory", file=sys.stderr)
            return 2
        try:
            up_fig = upstream_from(args.upstream_from)
        except (RuntimeError, bench_upstream_host.SummaryError) as e:
            print(f"bench_speed: {e}", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="bench_speed-") as tmp:
        report_dir = args.report_dir or Path(tmp)
        report_dir.mkdir(parents=True, exist_ok=True)
        print(f"bench_speed: {stamp()}, {os.cpu_count()} CPUs, {os.uname().release}", flush=True)
        try:
            for sub in ("host", "upstream"):
                (report_dir / sub).mkdir(exist_ok=True)
            suite = host_suite(args.jobs, report_dir / "host")
            print(f"1. host suite: {suite['wall_s']:.1f} s wall, {suite['cpu_s']:.1f} s CPU ({suite['before']} -> "
                  f"{suite['after']}), exit {suite['exit']}: {counts_text(suite['counts'])}", flush=True)
            xdist = None
            if not args.no_xdist_row:
                xdist = host_suite(args.jobs, report_dir / "host", xdist=True)
                print(f"1b. host suite with --xdist: {xdist['wall_s']:.1f} s wall, {xdist['cpu_s']:.1f} s CPU "
                      f"({xdist['before']} -> {xdist['after']}), exit {xdist['exit']}: {counts_text(xdist['counts'])}",
                      flush=True)
            before = stamp()
            harness = bench_harness.measure(rounds=args.rounds)
            print(f"2-3. bench_harness, {args.rounds} rounds ({before} -> {stamp()}):", flush=True)
            print(bench_harness.render(harness), flush=True)
            if args.upstream_from is None and not args.no_upstream:
                up_fig = upstream(args.kernel, args.kvm_param, report_dir / "upstream", [])
            if up_fig is not None:
                print(f"4. upstream {up_fig['kernel']} [{up_fig['label']}] under {up_fig['accelerator']}, "
                      f"{up_fig['vms']} VM(s), {up_fig['boots']} boot(s), {up_fig['crashes']} crash(es), "
                      f"{up_fig['outcome']} ({up_fig['before']}{' -> ' + up_fig['after'] if up_fig['after'] else ''}): "
                      f"{counts_text(up_fig['counts'])}", flush=True)
        except (RuntimeError, OSError, bench_upstream_host.SummaryError) as e:
            print(f"bench_speed: {e}", file=sys.stderr)
            return 2
        print(f"\nbench_speed: side by side ({stamp()}):")
        print(table(suite, harness, up_fig, xdist))
        if args.json:
            args.json.write_text(json.dumps({"suite": suite, "suite_xdist": xdist, "harness": harness,
                                             "upstream": up_fig}, indent=2,
                                            default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
