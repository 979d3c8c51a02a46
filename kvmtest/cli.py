"""The `kvmtest` command: `info` (host fingerprint) and `run` (the suites, with reports)."""

import argparse
import importlib.util
import datetime
import json
import os
import re
import sys
from pathlib import Path

from . import fingerprint as fpmod

REPO_SUITES = Path(__file__).resolve().parent.parent / "suites"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "unknown"


def junit_path(report_dir: str, fp: dict) -> Path:
    """reports/kvmtest-<host>-<kernel>-<time>.xml"""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(report_dir) / f"kvmtest-{_safe(fp['host'])}-{_safe(fp['kernel']['release'])}-{stamp}.xml"


def cmd_info(args) -> int:
    fp = fpmod.collect(args.device)
    if args.json:
        json.dump(fp, sys.stdout, indent=2, sort_keys=True)
        print()
        return 0
    print(fpmod.short(fp))
    print(f"  kernel:   {fp['kernel']['release']} {fp['kernel']['version']}")
    print(f"  cmdline:  {fp['kernel']['cmdline']}")
    cpu = fp["cpu"]
    flags = " ".join(f for f, on in cpu["flags"].items() if on)
    print(f"  cpu:      {cpu['vendor']} {cpu['model_name']} family {cpu['family']} model {cpu['model']} "
          f"stepping {cpu['stepping']}; flags: {flags}")
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


def _default_suites() -> str:
    if REPO_SUITES.is_dir():
        return str(REPO_SUITES)
    if Path("suites").is_dir():
        return "suites"
    raise SystemExit("kvmtest run: no suites/ directory found (run from a kvmtest checkout or name the tests)")


def pytest_args(args, extra: list[str], fp: dict) -> tuple[list[str], Path]:
    junit = Path(args.junit) if args.junit else junit_path(args.report_dir, fp)
    targets = [a for a in extra if not a.startswith("-")]
    out = [] if targets else [_default_suites()]
    out += ["-v", "-rfEX", f"--kvm-junit={junit}", f"--kvm-report-dir={args.report_dir}",
            f"--kvm-device={args.device}"]
    if args.jobs != "0" and importlib.util.find_spec("xdist") is not None:
        out += ["-n", args.jobs]
    return out + extra, junit


def cmd_run(args, extra) -> int:
    import pytest

    fp = fpmod.collect(args.device)
    argv, junit = pytest_args(args, extra, fp)
    print(f"kvmtest run: {fpmod.short(fp)}")
    print(f"kvmtest run: pytest {' '.join(argv)}", flush=True)
    code = int(pytest.main(argv))
    print(f"kvmtest run: JUnit report {junit}")
    return code


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kvmtest", description="KVM conformance suite and harness")
    sub = p.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="print the host fingerprint")
    info.add_argument("--json", action="store_true", help="the whole fingerprint as JSON")
    info.add_argument("--device", default=os.environ.get("KVMTEST_DEVICE", "/dev/kvm"))
    run = sub.add_parser("run", help="run the conformance suites (extra arguments go to pytest)")
    run.add_argument("--report-dir", default=os.environ.get("KVMTEST_REPORT_DIR", "reports"))
    run.add_argument("--junit", default="", help="JUnit path (default: reports/kvmtest-<host>-<kernel>-<time>.xml)")
    run.add_argument("--device", default=os.environ.get("KVMTEST_DEVICE", "/dev/kvm"))
    run.add_argument("-j", "--jobs", default="auto", help="pytest-xdist workers ('auto', a number, or 0 for none)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "info":
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return cmd_info(args)
    return cmd_run(args, extra)


if __name__ == "__main__":
    sys.exit(main())
