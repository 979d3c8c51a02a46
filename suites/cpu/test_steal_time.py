"""Steal time: struct kvm_steal_time, registered with MSR_KVM_STEAL_TIME, tells the guest "the
amount of time in which this vCPU did not run, in nanoseconds" (Documentation/virt/kvm/x86/
msr.rst). The host makes the vCPU's thread wait for its CPU behind a busy process pinned to the
same CPU and measures that wait itself, from the scheduler's run_delay in
/proc/thread-self/schedstat (Documentation/scheduler/sched-stats.rst: "time spent waiting on a
runqueue"); the steal the guest is shown must cover it (selftests steal_time)."""

import os
import subprocess
import sys
import time

import pytest

from kvmtest.guest import layout as L
from kvmtest.guest.msr_source import wrmsr
from kvmtest.pvclock import StealTime
from kvmtest.x86 import KVM_MSR_ENABLED, MSR_KVM_STEAL_TIME

pytestmark = pytest.mark.requires_cap("KVM_CAP_STEAL_TIME")

STEAL = L.DATA + 0xC40             # 64-byte aligned, as msr.rst requires
WAIT_NS = 100_000_000              # how long the vCPU's thread is kept off its CPU


def _run_delay() -> int:
    """This thread's time spent runnable but not running, in ns (schedstat's second field)."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        pytest.skip("no /proc/thread-self/schedstat (a kernel without CONFIG_SCHED_INFO): the wait cannot be measured")


def _keep_off_cpu(cpu: int) -> int:
    """Run a busy process on `cpu`, where this thread is pinned, until this thread has waited
    WAIT_NS for the CPU (sched_yield hands it over); the wait measured, in ns."""
    hog = subprocess.Popen([sys.executable, "-c", f"import os\nos.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"])
    try:
        start = _run_delay()
        deadline = time.monotonic() + 10
        while _run_delay() - start < WAIT_NS:
            if time.monotonic() > deadline:
                pytest.skip(f"a busy process on CPU {cpu} kept this thread waiting only "
                            f"{(_run_delay() - start) / 1e6:.1f} ms in 10 s")
            os.sched_yield()
        return _run_delay() - start
    finally:
        hog.kill()
        hog.wait()


def test_steal_time_covers_the_time_the_vcpu_thread_waited(guest):
    """After the vCPU's thread waited at least 100 ms for its CPU between two runs, the guest's
    struct kvm_steal_time shows steal grown by at least that wait and by no more than the
    thread's whole wait since the run that produced the previous reading; version is even and flags 0 ("At this
    point, always zero") each time (msr.rst MSR_KVM_STEAL_TIME)."""
    g = guest("long64", f"""
        {wrmsr(MSR_KVM_STEAL_TIME, STEAL | KVM_MSR_ENABLED)}
        GUEST_SYNC 1
        GUEST_SYNC 2
        GUEST_SYNC 3
        GUEST_DONE""")
    cpu = max(os.sched_getaffinity(0))
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})  # this thread: the vCPU's, since KVM_RUN is issued from it
    try:
        # "The interval between updates of this structure is arbitrary" (msr.rst): the first
        # reading is taken one run after the WRMSR, by when KVM has filled it in.
        assert g.expect_sync() == 1
        # The upper bound starts before the KVM_RUN that reaches GUEST_SYNC 2: KVM records steal
        # when it enters the guest, so the first reading holds the thread's run_delay as of that
        # entry, and time the thread waits after it (the guest running, the exit) already counts
        # towards the next reading's growth.
        delay_before = _run_delay()
        assert g.expect_sync() == 2
        before = StealTime.read(g.vm, STEAL)
        waited = _keep_off_cpu(cpu)
        assert g.expect_sync() == 3
        after, delay_after = StealTime.read(g.vm, STEAL), _run_delay()
    finally:
        os.sched_setaffinity(0, saved)
    assert (before.flags, after.flags) == (0, 0), \
        f"kvm_steal_time flags {before.flags:#x}, {after.flags:#x}; msr.rst: always 0"
    grown = after.steal - before.steal
    assert waited <= grown <= delay_after - delay_before, \
        f"steal grew by {grown} ns while the vCPU's thread waited {waited} ns for its CPU between the runs " \
        f"({delay_after - delay_before} ns in all since the run before the first reading)"
    g.run_to_done()


@pytest.mark.parametrize("bit", [1, 5])
def test_steal_time_msr_bits_between_enable_and_address_raise_gp(guest, bit):
    """MSR_KVM_STEAL_TIME holds a "64-byte alignment physical address ... plus an enable bit in
    bit 0" (msr.rst): bits 5:1 are neither, so a WRMSR setting one is refused with #GP(0) and
    leaves the MSR as it was (0, as KVM_GET_MSRS reads it)."""
    g = guest("long64", f"mov ecx, {MSR_KVM_STEAL_TIME:#x}\nmov eax, {STEAL | 1 << bit | KVM_MSR_ENABLED:#x}\n"
                        "xor edx, edx\nGUEST_ASSERT_RAISES GP(0), wrmsr\nGUEST_DONE")
    g.run_to_done()
    assert g.vcpu.get_msr(MSR_KVM_STEAL_TIME) == 0, f"MSR_KVM_STEAL_TIME after the refused WRMSR: " \
                                                    f"{g.vcpu.get_msr(MSR_KVM_STEAL_TIME):#x}"
