"""A vCPU thread migrated between host CPUs while it runs KVM_RUN: each time KVM_RUN returns, the
thread's rseq cpu_id names the CPU it is on (selftests rseq_test).

rseq(2), include/uapi/linux/rseq.h: the kernel updates a registered thread's cpu_id to "the
current CPU number on which the registered thread is running" before it returns to user space,
also after a migration that happened while the thread was in the kernel. KVM_RUN (api.rst 4.10)
is such a stay in the kernel, and KVM must give the kernel that chance when it comes back to user
space with a guest exit. The CPU the thread is on comes independently from sched_getcpu(3).
"""

import itertools
import os
import random
import threading
import time

import pytest

from kvmtest import rseq

RUN_SECONDS = 0.6


class Migrator:
    """Moves one thread round the CPUs of `cpus` on its own thread, bumping `seq` before and after
    each sched_setaffinity (odd: a migration is under way)."""

    def __init__(self, tid, cpus):
        self.tid, self.cpus, self.seq, self.moves = tid, cpus, 0, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        rng = random.Random(0x5E0)
        for cpu in itertools.cycle(self.cpus):
            if self.stop.is_set():
                return
            self.seq += 1
            os.sched_setaffinity(self.tid, {cpu})
            self.seq += 1
            self.moves += 1
            time.sleep(rng.uniform(1e-6, 1e-5))


def test_rseq_cpu_id_follows_a_vcpu_thread_migrated_during_kvm_run(guest):
    """For 0.6 s another thread moves the vCPU's thread between the host CPUs it may use while it
    runs a guest that exits to user space in a loop; after each KVM_RUN, with no migration under
    way, the thread's rseq cpu_id equals sched_getcpu() (rseq(2); api.rst 4.10)."""
    if not rseq.registered():
        pytest.skip("glibc registered no rseq area for this process (glibc < 2.35 or glibc.pthread.rseq=0)")
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        pytest.skip(f"only one usable host CPU ({allowed}): the vCPU thread cannot be migrated")
    g = guest("long64", "spin:\nGUEST_SYNC 0x5e0\njmp spin")
    tid = threading.get_native_id()
    migrator = Migrator(tid, allowed)
    runs, mismatches, cpus_seen = 0, [], set()
    migrator.thread.start()
    try:
        deadline = time.monotonic() + RUN_SECONDS
        while time.monotonic() < deadline:
            event = g.run()
            assert getattr(event, "value", None) == 0x5E0, f"expected the guest's GUEST_SYNC, got {event}"
            runs += 1
            while True:
                snapshot = migrator.seq & ~1
                cpu, rseq_cpu = rseq.sched_getcpu(), rseq.cpu_id()
                if snapshot == migrator.seq:
                    break
            cpus_seen.add(cpu)
            if rseq_cpu != cpu:
                mismatches.append((runs, rseq_cpu, cpu))
    finally:
        migrator.stop.set()
        migrator.thread.join(5)
        os.sched_setaffinity(tid, allowed)
    assert not mismatches, \
        f"after KVM_RUN the rseq cpu_id differed from sched_getcpu() (run, rseq cpu_id, CPU): {mismatches[:10]}"
    assert len(cpus_seen) >= 2 and migrator.moves >= 10, \
        f"the vCPU thread was not migrated enough to test anything: CPUs seen {sorted(cpus_seen)}, " \
        f"{migrator.moves} moves in {runs} KVM_RUNs"
