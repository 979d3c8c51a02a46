"""Dirty-logging timings while vCPUs keep writing their memory (the selftests' dirty_log_perf_test
idea, in kvmtest's terms), for the two ways of collecting the log side by side.

    python benchmarks/bench_dirty_log.py [--vcpus 2] [--mib 8] [--iterations 5] [--rounds 3]

Each vCPU (long64-cpl3: its loop runs natively) stores its pass number to every 4 KiB page of
its own `--mib` MiB, over and over. Per round and collection mode the host times:
  populate        the first pass of every vCPU (first touch of all memory, logging off)
  pass, log off   a full pass of every vCPU with logging off
  logging on      KVM_SET_USER_MEMORY_REGION adding KVM_MEM_LOG_DIRTY_PAGES
  pass, log on    a full pass of every vCPU after a collection (each page write-protected again)
  get             KVM_GET_DIRTY_LOG of the whole slot, every page dirty
  clear           KVM_CLEAR_DIRTY_LOG of those pages (manual-protect mode only)
  logging off     KVM_SET_USER_MEMORY_REGION clearing the flag
Modes: "get" (KVM_GET_DIRTY_LOG clears and write-protects, api.rst 4.8) and "get+clear"
(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, api.rst 4.117). Prints the date, the load average before and
after, the median of each figure, and the get+clear / get ratio. No targets: a baseline to compare
kernels and hosts with.
"""

import argparse
import datetime
import os
import statistics
import sys
import time

from kvmtest import Kvm
from kvmtest.abi.constants import KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE, KVM_MEM_LOG_DIRTY_PAGES
from kvmtest.guest import Guest
from kvmtest.guest.page_loops import PAGE_WRITER, WRITER_CONTROL, WRITER_PROGRESS, set_page_range, writer_passes
from kvmtest.guest.paging import MiB2

BASE = 0x1000000

def _full_pass(vm, n) -> float:
    """Seconds until every vCPU has completed a pass it began after now."""
    start, t0 = writer_passes(vm, n), time.perf_counter()
    while any(p < s + 2 for p, s in zip(writer_passes(vm, n), start, strict=True)):
        if time.perf_counter() - t0 > 120:
            sys.exit("bench_dirty_log: the vCPUs stopped making progress")
        time.sleep(0.0002)
    return time.perf_counter() - t0


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def one_round(kvm, mode: str, vcpus: int, mib: int, iterations: int) -> dict[str, list[float]]:
    size = vcpus * (mib << 20)
    g = Guest(kvm, "long64-cpl3", PAGE_WRITER, page_size=MiB2, identity_size=BASE + size, name="bench", timeout=300)
    out: dict[str, list[float]] = {}
    try:
        if mode == "get+clear":
            g.vm.enable_cap("KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2", KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE)
        slot = g.vm.add_memory(BASE, size).slot
        cpus = [g.vcpu] + [g.add_vcpu("start") for _ in range(vcpus - 1)]
        for i, vcpu in enumerate(cpus):
            set_page_range(vcpu, BASE + i * (mib << 20), BASE + (i + 1) * (mib << 20), WRITER_PROGRESS + 8 * i)
        t0 = time.perf_counter()
        threads = [g.in_thread(v, timeout=300) for v in cpus]
        while min(writer_passes(g.vm, vcpus)) < 1:
            time.sleep(0.0002)
        out["populate"] = [time.perf_counter() - t0]
        out["pass, log off"] = [_full_pass(g.vm, vcpus)]
        out["logging on"] = [_timed(lambda: g.vm.set_memslot_flags(slot, KVM_MEM_LOG_DIRTY_PAGES))]
        g.vm.get_dirty_log(slot)
        if mode == "get+clear":
            g.vm.clear_dirty_log(slot, 0, size >> 12)
        for _ in range(iterations):
            out.setdefault("pass, log on", []).append(_full_pass(g.vm, vcpus))
            t0 = time.perf_counter()
            dirty = g.vm.get_dirty_log(slot)
            out.setdefault("get", []).append(time.perf_counter() - t0)
            if mode == "get+clear":
                t0 = time.perf_counter()
                g.vm.clear_dirty_log(slot, 0, size >> 12, dirty)
                out.setdefault("clear", []).append(time.perf_counter() - t0)
        out["logging off"] = [_timed(lambda: g.vm.set_memslot_flags(slot, 0))]
        g.vm.write_u64(WRITER_CONTROL, 1)
        for t in threads:
            t.join(300)
    finally:
        g.close()
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vcpus", type=int, default=2)
    p.add_argument("--mib", type=int, default=8, help="MiB each vCPU writes")
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    load_before = os.getloadavg()[0]
    started = datetime.datetime.now().isoformat(timespec="seconds")
    print(f"bench_dirty_log: {started}, load {load_before:.2f}, {os.cpu_count()} CPUs, {args.vcpus} vCPUs x "
          f"{args.mib} MiB, {args.iterations} iterations x {args.rounds} rounds", flush=True)
    modes = ("get", "get+clear")
    results: dict[str, dict[str, list[float]]] = {m: {} for m in modes}
    with Kvm() as kvm:
        manual = kvm.check_extension("KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2")
        for _ in range(args.rounds):
            for mode in modes:   # alternating, so both see the same machine
                if mode == "get+clear" and not manual:
                    continue
                for k, v in one_round(kvm, mode, args.vcpus, args.mib, args.iterations).items():
                    results[mode].setdefault(k, []).extend(v)
    print(f"{'phase':<14} {'get':>12} {'get+clear':>12} {'ratio':>7}")
    for phase in ("populate", "pass, log off", "logging on", "pass, log on", "get", "clear", "logging off"):
        cells = [statistics.median(results[m][phase]) * 1e3 if results[m].get(phase) else None for m in modes]
        ratio = f"{cells[1] / cells[0]:6.2f}x" if None not in cells and cells[0] else "   -"
        print(f"{phase:<14} " + " ".join(f"{c:>10.3f}ms" if c is not None else f"{'-':>12}" for c in cells)
              + f" {ratio:>7}")
    if not manual:
        print("get+clear: the host lacks KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2")
    print(f"bench_dirty_log: load before {load_before:.2f}, after {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
