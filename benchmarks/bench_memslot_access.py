"""Guest memory access against the number of memslots it is split into, and host unmaps of many
small slots while the guest touches them (the selftests' memslot_perf_test idea; slot add, move
and delete timings are benchmarks/bench_memslots.py).

    python benchmarks/bench_memslot_access.py [--mib 16] [--slots 1,16,128,512] [--passes 5] [--rounds 3]

The same `--mib` MiB of guest memory is split into N equal slots, for each N of `--slots`. One
vCPU (long64-cpl3: its loop runs natively) stores its pass number to every 4 KiB page, over and
over. Per N the host times:
  first pass       the first touch of every page (faults that look up the slot of each page)
  pass             a full pass once everything is mapped (median of `--passes`)
  unmap per slot   madvise(MADV_DONTNEED) of one slot's host memory while the vCPU writes
                   (KVM must drop its mappings of that range), median over all slots
  refault pass     the next full pass after every slot was unmapped
Prints the date, the load average before and after, the medians and each figure's ratio to the
first N (1 slot by default). No targets: a baseline to compare kernels and hosts with.
"""

import argparse
import datetime
import os
import statistics
import sys
import time

from kvmtest import Kvm, libc
from kvmtest.guest import Guest
from kvmtest.guest.page_loops import PAGE_WRITER, WRITER_CONTROL, WRITER_PROGRESS, set_page_range
from kvmtest.guest.paging import MiB2
from kvmtest.memory import HostMapping

BASE = 0x1000000

def _full_pass(vm) -> float:
    """Seconds until the vCPU has completed a pass it began after now."""
    start, t0 = vm.read_u64(WRITER_PROGRESS), time.perf_counter()
    while vm.read_u64(WRITER_PROGRESS) < start + 2:
        if time.perf_counter() - t0 > 120:
            sys.exit("bench_memslot_access: the vCPU stopped making progress")
        time.sleep(0.0002)
    return time.perf_counter() - t0


def one_round(kvm, mib: int, nslots: int, passes: int) -> dict[str, float]:
    size = mib << 20
    slot_size = size // nslots
    g = Guest(kvm, "long64-cpl3", PAGE_WRITER, page_size=MiB2, identity_size=BASE + size, name="bench", timeout=300)
    backing = HostMapping(size, name="bench memory")
    try:
        for i in range(nslots):
            g.vm.add_memory(BASE + i * slot_size, slot_size, mapping=backing, offset=i * slot_size)
        set_page_range(g.vcpu, BASE, BASE + size, WRITER_PROGRESS)
        t0 = time.perf_counter()
        thread = g.in_thread(timeout=300)
        while g.vm.read_u64(WRITER_PROGRESS) < 1:
            time.sleep(0.0002)
        out = {"first pass": time.perf_counter() - t0,
               "pass": statistics.median(_full_pass(g.vm) for _ in range(passes))}
        unmaps = []
        for i in range(nslots):
            t0 = time.perf_counter()
            libc.madvise(backing.addr + i * slot_size, slot_size, libc.MADV_DONTNEED)
            unmaps.append(time.perf_counter() - t0)
        out["unmap per slot"] = statistics.median(unmaps)
        out["refault pass"] = _full_pass(g.vm)
        g.vm.write_u64(WRITER_CONTROL, 1)
        thread.join(300)
    finally:
        g.close()
        backing.close()
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mib", type=int, default=16)
    p.add_argument("--slots", default="1,16,128,512", help="slot counts, comma-separated")
    p.add_argument("--passes", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    counts = [int(n) for n in args.slots.split(",")]
    bad = [n for n in counts if n <= 0 or (args.mib << 20) % n or (args.mib << 20) // n % 0x1000]
    if bad:
        p.error(f"--slots {bad}: each count must split {args.mib} MiB into whole 4 KiB pages")
    load_before = os.getloadavg()[0]
    started = datetime.datetime.now().isoformat(timespec="seconds")
    print(f"bench_memslot_access: {started}, load {load_before:.2f}, {os.cpu_count()} CPUs, {args.mib} MiB, "
          f"slots {counts}, {args.rounds} rounds", flush=True)
    rows: dict[int, dict[str, list[float]]] = {n: {} for n in counts}
    with Kvm() as kvm:
        limit = kvm.check_extension("KVM_CAP_NR_MEMSLOTS")
        if max(counts) >= limit:
            sys.exit(f"bench_memslot_access: {max(counts)} slots plus slot 0 exceed KVM_CAP_NR_MEMSLOTS ({limit})")
        for _ in range(args.rounds):
            for n in counts:   # interleaved, so every count sees the same machine
                for k, v in one_round(kvm, args.mib, n, args.passes).items():
                    rows[n].setdefault(k, []).append(v)
    base = counts[0]
    metrics = ("first pass", "pass", "unmap per slot", "refault pass")
    print(f"{'slots':>6} " + " ".join(f"{m:>16} {'ratio':>7}" for m in metrics))
    for n in counts:
        cells = []
        for m in metrics:
            v, ref = statistics.median(rows[n][m]), statistics.median(rows[base][m])
            cells.append(f"{v * 1e3:>14.3f}ms {v / ref if ref else 0:>6.2f}x")
        print(f"{n:>6} " + " ".join(cells))
    print(f"bench_memslot_access: ratios against {base} slot(s); load before {load_before:.2f}, "
          f"after {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
