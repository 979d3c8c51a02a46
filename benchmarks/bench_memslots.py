"""Memslot operation timings, a regression baseline to compare between kernels (catalog M09).

    python benchmarks/bench_memslots.py [--slots 200] [--rounds 5]

Median time per KVM_SET_USER_MEMORY_REGION for adding a 2 MiB slot, moving it, toggling dirty
logging on it, and deleting it, with the VM idle; and the same add/delete while a vCPU runs
a guest that touches memory (the selftests' memslot_perf_test idea, in kvmtest's terms).
"""

import argparse
import statistics
import sys
import time

from kvmtest import Kvm
from kvmtest.abi.constants import KVM_MEM_LOG_DIRTY_PAGES
from kvmtest.guest import Guest
from kvmtest.memory import HostMapping

SIZE = 0x200000
BASE = 0x100000000


def _time(fn, n):
    t0 = time.perf_counter_ns()
    for i in range(n):
        fn(i)
    return (time.perf_counter_ns() - t0) / n


def one_round(kvm, n, busy):
    guest = Guest(kvm, "long64", "spin: mov rax, qword ptr [rbx]\njmp spin", name="bench") if busy else None
    vm = guest.vm if guest else kvm.create_vm()
    thread = None
    if guest:
        regs = guest.vcpu.get_regs()
        regs.rbx = 0x10000
        guest.vcpu.set_regs(regs)
        guest.vcpu.timeout = 60
        thread = guest.in_thread(until_done=False, timeout=60)
    backing = [HostMapping(SIZE) for _ in range(n)]
    first = 10 if busy else 0
    try:
        add = _time(lambda i: vm.set_user_memory_region(first + i, 0, BASE + i * SIZE, SIZE, backing[i].addr), n)
        move = _time(lambda i: vm.set_user_memory_region(first + i, 0, BASE + (n + i) * SIZE, SIZE, backing[i].addr), n)
        log = _time(lambda i: vm.set_user_memory_region(first + i, KVM_MEM_LOG_DIRTY_PAGES, BASE + (n + i) * SIZE,
                                                        SIZE, backing[i].addr), n)
        delete = _time(lambda i: vm.set_user_memory_region(first + i, 0, BASE + (n + i) * SIZE, 0, backing[i].addr), n)
    finally:
        if guest:
            guest.vcpu.kick()
            try:
                thread.join(10)
            except Exception:
                pass
            guest.close()
        else:
            vm.close()
        for b in backing:
            b.close()
    return {"add": add, "move": move, "dirty-log on": log, "delete": delete}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slots", type=int, default=200)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    with Kvm() as kvm:
        for busy in (False, True):
            rounds = [one_round(kvm, args.slots, busy) for _ in range(args.rounds)]
            label = "vCPU running" if busy else "idle VM"
            for op in rounds[0]:
                print(f"{label:<13} {op:<13} {statistics.median(r[op] for r in rounds) / 1000:8.2f} us per ioctl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
