"""Demand-paging timings: vCPUs first-touching memory that user space supplies through userfaultfd,
beside the same first touch of ordinary memory (the selftests' demand_paging_test idea).

    python benchmarks/bench_demand_paging.py [--vcpus 2] [--pages 1024] [--rounds 3]

Each vCPU (long64-cpl3: its loop runs natively) loads the first qword of each of its `--pages`
4 KiB pages once. Backings, run alternately round by round so all see the same machine:
  anonymous   plain anonymous memory, no userfaultfd (the kernel zero-fills each page)
  missing     anonymous memory registered with userfaultfd MISSING; one host thread answers each
              fault with UFFDIO_COPY
  minor       a memfd whose page cache was filled through a second mapping, the slot's mapping
              registered with userfaultfd MINOR; each fault answered with UFFDIO_CONTINUE
Prints, per backing, the median time until every vCPU touched all its pages, the pages per
second, the median host time per fault (from reading the event to the ioctl's return), and the
ratio of the total to the anonymous one; with the date and the load average before and after.
No targets: a baseline to compare kernels and hosts with.
"""

import argparse
import datetime
import os
import statistics
import sys
import time

from kvmtest import Kvm
from kvmtest.guest import Guest
from kvmtest.guest.paging import MiB2
from kvmtest.memory import HostMapping
from kvmtest.userfaultfd import UFFD_FEATURE_MINOR_SHMEM, UserfaultFd

BASE = 0x1000000
TOUCH = """
start:
    xor eax, eax
page:
    add rax, qword ptr [rsi]
    add rsi, 0x1000
    cmp rsi, rdi
    jb page
    GUEST_SYNC 0
    GUEST_DONE
"""


def one_round(kvm, backing: str, vcpus: int, pages: int) -> tuple[float, list[float]]:
    """Seconds until every vCPU touched all its pages, and the host's seconds per fault."""
    size = vcpus * pages * 0x1000
    g = Guest(kvm, "long64-cpl3", TOUCH, page_size=MiB2, identity_size=BASE + size, name="bench", timeout=120)
    fd, alias, view, uffd = None, None, None, None
    try:
        if backing == "minor":
            fd = os.memfd_create("bench backing")
            os.ftruncate(fd, size)
            alias = HostMapping(size, fd=fd, name="alias")
            for off in range(0, size, 0x1000):
                alias.write(off, b"\x01")
            view = HostMapping(size, fd=fd, name="view")
        else:
            view = HostMapping(size, name="view")
        if backing != "anonymous":
            uffd = UserfaultFd(UFFD_FEATURE_MINOR_SHMEM if backing == "minor" else 0)
            (uffd.register_minor if backing == "minor" else uffd.register_missing)(view.addr, size)
        g.vm.add_memory(BASE, size, mapping=view)
        cpus = [g.vcpu] + [g.add_vcpu("start") for _ in range(vcpus - 1)]
        for i, vcpu in enumerate(cpus):
            regs = vcpu.get_regs()
            regs.rsi, regs.rdi = BASE + i * pages * 0x1000, BASE + (i + 1) * pages * 0x1000
            vcpu.set_regs(regs)
        per_fault = []
        t0 = time.perf_counter()
        threads = [g.in_thread(v, timeout=120) for v in cpus]
        if uffd is not None:
            for _ in range(vcpus * pages):
                fault = uffd.read_fault(timeout=60)
                f0 = time.perf_counter()
                if backing == "minor":
                    uffd.cont(fault.page)
                else:
                    uffd.copy(fault.page, b"\x01")
                per_fault.append(time.perf_counter() - f0)
        for t in threads:
            t.join(120)
        return time.perf_counter() - t0, per_fault
    finally:
        g.close()
        if uffd is not None:
            uffd.close()
        for m in (alias, view):
            if m is not None:
                m.close()
        if fd is not None:
            os.close(fd)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vcpus", type=int, default=2)
    p.add_argument("--pages", type=int, default=1024, help="4 KiB pages per vCPU")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    load_before = os.getloadavg()[0]
    started = datetime.datetime.now().isoformat(timespec="seconds")
    print(f"bench_demand_paging: {started}, load {load_before:.2f}, {os.cpu_count()} CPUs, {args.vcpus} vCPUs x "
          f"{args.pages} pages, {args.rounds} rounds", flush=True)
    backings = ("anonymous", "missing", "minor")
    totals: dict[str, list[float]] = {b: [] for b in backings}
    faults: dict[str, list[float]] = {b: [] for b in backings}
    with Kvm() as kvm:
        for _ in range(args.rounds):
            for b in backings:
                total, per_fault = one_round(kvm, b, args.vcpus, args.pages)
                totals[b].append(total)
                faults[b] += per_fault
    n = args.vcpus * args.pages
    ref = statistics.median(totals["anonymous"])
    print(f"{'backing':<10} {'all pages':>12} {'pages/s':>10} {'host per fault':>15} {'ratio':>7}")
    for b in backings:
        t = statistics.median(totals[b])
        per = f"{statistics.median(faults[b]) * 1e6:>13.1f}us" if faults[b] else f"{'-':>15}"
        print(f"{b:<10} {t * 1e3:>10.2f}ms {n / t:>10.0f} {per} {t / ref:>6.2f}x")
    print(f"bench_demand_paging: ratios against anonymous; load before {load_before:.2f}, "
          f"after {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
