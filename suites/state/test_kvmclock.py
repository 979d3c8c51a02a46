"""kvmclock as the guest reads it: the pvclock structure KVM publishes through
MSR_KVM_SYSTEM_TIME_NEW and MSR_KVM_WALL_CLOCK_NEW (Documentation/virt/kvm/x86/msr.rst), against
KVM_GET_CLOCK / KVM_SET_CLOCK (api.rst KVM_GET_CLOCK, KVM_SET_CLOCK, KVM_KVMCLOCK_CTRL) and the
host's own clocks. The guest computes kvmclock time with msr.rst's algorithm (guests/pvclock64.S).
"""

import time

import pytest

from kvmtest.abi import constants as C
from kvmtest.guest import layout as L
from kvmtest.pvclock import PvclockTimeInfo, PvclockWallClock
from kvmtest.timing import bracketed_pair
from kvmtest.x86 import (
    KVM_MSR_ENABLED,
    MSR_KVM_SYSTEM_TIME_NEW,
    MSR_KVM_WALL_CLOCK_NEW,
    PVCLOCK_GUEST_STOPPED,
    PVCLOCK_TSC_STABLE_BIT,
)

pytestmark = pytest.mark.requires_cap("KVM_CAP_ADJUST_CLOCK")

PVCLOCK = L.DATA + 0x800         # vCPU n's struct pvclock_vcpu_time_info at PVCLOCK + 0x40 * n
WALL_CLOCK = L.DATA + 0xA00      # struct pvclock_wall_clock
LAST = L.DATA + 0xA40            # the latest time any vCPU read (the cross-vCPU check)
SEC = 10**9

ENABLE = f"""
    mov ecx, {MSR_KVM_SYSTEM_TIME_NEW:#x}
    mov eax, {PVCLOCK | KVM_MSR_ENABLED:#x}
    xor edx, edx
    wrmsr
"""
READ = f"""
    mov esi, {PVCLOCK:#x}
    call pvclock_read
"""


def _kvmclock_guest(guest, body, **kw):
    return guest("long64", '.include "pvclock64.S"\n' + body, **kw)


def _clock(vm, clock, flags=0, realtime=0, host_tsc=0):
    data = type(vm.get_clock())(clock=clock, flags=flags, realtime=realtime, host_tsc=host_tsc)
    vm.set_clock(data)


# KVM_SET_CLOCK before the reading: none, a 180 s base, and a 0 base with KVM_CLOCK_REALTIME 180 s
# in the past and in the future (selftests kvm_clock_test's cases).
SET_CLOCK = {"none": None, "base-180s": (180 * SEC, 0), "realtime-180s-ago": (0, -180 * SEC),
             "realtime-180s-ahead": (0, 180 * SEC)}


@pytest.mark.parametrize("setting", list(SET_CLOCK))
def test_guest_kvmclock_lies_between_get_clock_before_and_after(guest, setting):
    """With KVM_CLOCK_TSC_STABLE, KVM_GET_CLOCK returns "the exact kvmclock value seen by all VCPUs
    at the instant when KVM_GET_CLOCK was called" (api.rst KVM_GET_CLOCK): after the KVM_SET_CLOCK
    of each case, a kvmclock reading the guest takes between two KVM_GET_CLOCK calls (msr.rst's
    algorithm on the structure KVM filled after the guest's WRMSR of MSR_KVM_SYSTEM_TIME_NEW) lies
    between their values (selftests kvm_clock_test)."""
    g = _kvmclock_guest(guest, ENABLE + "GUEST_SYNC 0\n" + READ + "GUEST_SYNC rax\nGUEST_DONE")
    assert g.expect_sync() == 0
    if SET_CLOCK[setting] is not None:
        base, realtime_offset = SET_CLOCK[setting]
        flags = C.KVM_CLOCK_REALTIME if realtime_offset else 0
        _clock(g.vm, base, flags, realtime=time.time_ns() + realtime_offset)
    before = g.vm.get_clock()
    if not before.flags & C.KVM_CLOCK_TSC_STABLE:
        pytest.skip(f"KVM_GET_CLOCK flags {before.flags:#x} lack KVM_CLOCK_TSC_STABLE: api.rst promises the vCPUs' "
                    "kvmclock value only with a stable host TSC (a TSC-based host clocksource)")
    seen = g.expect_sync()
    after = g.vm.get_clock()
    assert before.clock <= seen <= after.clock, \
        f"guest kvmclock {seen} ns outside KVM_GET_CLOCK's {before.clock} .. {after.clock} ns around it"
    g.run_to_done()


@pytest.mark.parametrize("flags,expect_offset", [
    (0, 0),
    (C.KVM_CLOCK_REALTIME, 180 * SEC),
    (C.KVM_CLOCK_TSC_STABLE | C.KVM_CLOCK_HOST_TSC, 0),
], ids=["no-flags", "realtime", "get-clock-flags-ignored"])
def test_set_clock_adds_the_realtime_elapsed_only_with_kvm_clock_realtime(vm, flags, expect_offset):
    """KVM_SET_CLOCK(clock = 10 s, realtime = the host's CLOCK_REALTIME 180 s ago): with
    KVM_CLOCK_REALTIME "the difference in elapsed time is added to the final kvmclock value", so
    the clock reads 190 s plus the time since; without it realtime means nothing, and the other
    flags KVM_GET_CLOCK returns "are accepted but ignored" (api.rst KVM_SET_CLOCK; selftests
    kvm_clock_test). Checked with KVM_GET_CLOCK right after, whose value advances as the host's
    CLOCK_MONOTONIC without KVM_CLOCK_TSC_STABLE, as kvmclock does with it."""
    base = 10 * SEC
    m0, r0 = time.monotonic_ns(), time.time_ns()
    _clock(vm, base, flags, realtime=r0 - 180 * SEC, host_tsc=1)
    r1 = time.time_ns()
    got = vm.get_clock().clock
    m1 = time.monotonic_ns()
    low = base + expect_offset
    high = low + (m1 - m0) + ((r1 - r0) if expect_offset else 0)
    assert low <= got <= high, \
        f"KVM_SET_CLOCK clock={base} flags={flags:#x} realtime=now-180s, then KVM_GET_CLOCK read {got} ns; " \
        f"expected {low} .. {high} ns ({expect_offset // SEC} s added)"


def test_set_clock_with_realtime_moves_the_guests_kvmclock(guest):
    """The 180 s KVM_CLOCK_REALTIME adds reach the guest: its kvmclock reading after the
    KVM_SET_CLOCK is at least clock + 180 s and at most that plus the host time since
    (api.rst KVM_SET_CLOCK; msr.rst MSR_KVM_SYSTEM_TIME_NEW)."""
    g = _kvmclock_guest(guest, ENABLE + "GUEST_SYNC 0\n" + READ + "GUEST_SYNC rax\nGUEST_DONE")
    assert g.expect_sync() == 0
    base = 50 * SEC
    m0, r0 = time.monotonic_ns(), time.time_ns()
    _clock(g.vm, base, C.KVM_CLOCK_REALTIME, realtime=r0 - 180 * SEC)
    r1 = time.time_ns()
    seen = g.expect_sync()
    m1 = time.monotonic_ns()
    low, high = base + 180 * SEC, base + 180 * SEC + (r1 - r0) + (m1 - m0)
    assert low <= seen <= high, f"guest kvmclock {seen} ns after KVM_SET_CLOCK with realtime 180 s back; " \
                                f"expected {low} .. {high} ns"
    g.run_to_done()


@pytest.mark.waits
def test_kvmclock_advances_with_the_hosts_monotonic_clock(guest):
    """kvmclock's system_time is "a host notion of monotonic time" and msr.rst's algorithm extends
    it with the TSC: two guest readings 0.3 s of host time apart differ by the host's
    CLOCK_MONOTONIC interval around them, to 0.1% (the TSC-to-nanosecond scaling) plus 50 us."""
    g = _kvmclock_guest(guest, ENABLE + READ + "GUEST_SYNC rax\n" + READ + "GUEST_SYNC rax\nGUEST_DONE")
    b = bracketed_pair(g.expect_sync, 0.3)
    low, high = b.inner_ns * 0.999 - 50_000, b.outer_ns * 1.001 + 50_000
    assert low <= b.second - b.first <= high, \
        f"guest kvmclock advanced {b.second - b.first} ns while the host's CLOCK_MONOTONIC advanced " \
        f"{b.inner_ns} .. {b.outer_ns} ns"
    g.run_to_done()


def test_wall_clock_plus_kvmclock_is_the_hosts_realtime(guest):
    """MSR_KVM_WALL_CLOCK_NEW fills struct pvclock_wall_clock with the wall clock "at time of boot"
    (kvmclock 0), and "to get the current wallclock time, the system_time from
    MSR_KVM_SYSTEM_TIME_NEW needs to be added" (msr.rst): sec/nsec plus the guest's kvmclock
    reading is the host's CLOCK_REALTIME at that moment (to 5 ms); nsec is below 10^9 and the
    version even (kvm-unit-tests kvmclock_test)."""
    g = _kvmclock_guest(guest, f"""
        mov ecx, {MSR_KVM_WALL_CLOCK_NEW:#x}
        mov eax, {WALL_CLOCK:#x}
        xor edx, edx
        wrmsr
        {ENABLE}
        {READ}
        GUEST_SYNC rax
        GUEST_DONE""")
    _clock(g.vm, 1000 * SEC)  # a kvmclock epoch far from the host's boot, so sec is not the host's boot time
    r0 = time.time_ns()
    now = g.expect_sync()
    r1 = time.time_ns()
    wall = PvclockWallClock.read(g.vm, WALL_CLOCK)
    assert wall.nsec < SEC, f"pvclock_wall_clock nsec = {wall.nsec}, not below 10^9"
    slack = 5_000_000
    assert r0 - slack <= wall.ns + now <= r1 + slack, \
        f"wall clock at boot {wall.sec}.{wall.nsec:09d} s + kvmclock {now} ns = {wall.ns + now} ns; the host's " \
        f"CLOCK_REALTIME was {r0} .. {r1} ns"
    g.run_to_done()


MONOTONIC = f"""
    mov ecx, {MSR_KVM_SYSTEM_TIME_NEW:#x}
    rdmsr
    and eax, -2
    mov esi, eax                # this vCPU's own structure (the host registered it)
    xor r12, r12                # own-clock warps
    xor r13, r13                # cross-vCPU warps
    xor r14, r14                # the last time this vCPU read
    mov rdi, {LAST:#x}
    mov r15d, {{count}}
mono_loop:
    mov rbx, qword ptr [rdi]    # the latest time published before this reading
    call pvclock_read
    cmp rax, r14
    jae own_ok
    inc r12
own_ok:
    mov r14, rax
    cmp rax, rbx
    jae publish
    inc r13                     # below a time another vCPU read before this one
    jmp mono_next
publish:
    mov rcx, rax
    mov rax, rbx
    lock cmpxchg qword ptr [rdi], rcx
    je mono_next
    mov rbx, rax                # someone published meanwhile: keep the larger
    mov rax, rcx
    cmp rcx, rbx
    ja publish
mono_next:
    dec r15d
    jnz mono_loop
    GUEST_SYNC r12
    GUEST_SYNC r13
    GUEST_DONE
"""


def test_kvmclock_never_goes_backwards(guest):
    """Two vCPUs read kvmclock 500 times each at the same time (kvm-unit-tests kvmclock_test):
    each vCPU's own readings never decrease, as "a host notion of monotonic time" must not; and
    where the structure's flags have PVCLOCK_TSC_STABLE_BIT, "time measures taken across multiple
    cpus are guaranteed to be monotonic" (msr.rst), so no reading is below one another vCPU
    published before it (the shared latest value is loaded before each reading and raised with
    LOCK CMPXCHG after it)."""
    g = _kvmclock_guest(guest, MONOTONIC.format(count=500))
    ap = g.add_vcpu(g.entry)
    for index, vcpu in enumerate(g.vm.vcpus):
        vcpu.set_msr(MSR_KVM_SYSTEM_TIME_NEW, (PVCLOCK + 0x40 * index) | KVM_MSR_ENABLED)
    other = g.in_thread(ap, timeout=30)
    own0, cross0 = g.run_to_done(timeout=30)
    own1, cross1 = other.join()
    flags = PvclockTimeInfo.read(g.vm, PVCLOCK).flags
    assert (own0, own1) == (0, 0), f"kvmclock went backwards on one vCPU: {own0} times on vCPU 0, {own1} on vCPU 1"
    if flags & PVCLOCK_TSC_STABLE_BIT:
        assert (cross0, cross1) == (0, 0), \
            f"PVCLOCK_TSC_STABLE_BIT set (flags {flags:#x}), yet readings fell below another vCPU's earlier one: " \
            f"{cross0} times on vCPU 0, {cross1} on vCPU 1"


def test_disabled_kvmclock_is_no_longer_written(guest):
    """KVM "may update this structure at any time it sees fit until anything with bit0 == 0 is
    written to it" (msr.rst MSR_KVM_SYSTEM_TIME_NEW): a KVM_SET_CLOCK (which makes KVM publish the
    new time to every vCPU, as test_clock_fields checks) rewrites the zeroed structure while
    kvmclock is enabled, and leaves it zero once the guest has written 0 to the MSR."""
    g = _kvmclock_guest(guest, ENABLE + f"""
        GUEST_SYNC 1
        mov ecx, {MSR_KVM_SYSTEM_TIME_NEW:#x}
        xor eax, eax
        xor edx, edx
        wrmsr
        GUEST_SYNC 2
        GUEST_SYNC 3
        GUEST_DONE""")
    zero = bytes(32)
    assert g.expect_sync() == 1
    g.vm.write(PVCLOCK, zero)
    _clock(g.vm, 2000 * SEC)
    assert g.expect_sync() == 2
    written = PvclockTimeInfo.read(g.vm, PVCLOCK)
    assert written.system_time >= 2000 * SEC, f"enabled kvmclock after KVM_SET_CLOCK(2000 s): {written}"
    g.vm.write(PVCLOCK, zero)
    _clock(g.vm, 3000 * SEC)
    assert g.expect_sync() == 3
    left = g.vm.read(PVCLOCK, 32)
    assert left == zero, f"KVM wrote the pvclock structure after the guest disabled it: {left.hex()}"
    g.run_to_done()


@pytest.mark.requires_cap("KVM_CAP_KVMCLOCK_CTRL")
def test_kvmclock_ctrl_tells_the_guest_it_was_stopped(guest):
    """KVM_KVMCLOCK_CTRL "sets a flag accessible to the guest indicating that the specified vCPU
    has been paused by the host": bit 1 (PVCLOCK_GUEST_STOPPED) of the pvclock structure's flags,
    "set exclusively by the host" (api.rst KVM_KVMCLOCK_CTRL; msr.rst flags table). The guest sees
    it clear before the ioctl and set after it."""
    g = _kvmclock_guest(guest, ENABLE + f"""
        mov rdi, {PVCLOCK + 29:#x}          # pvclock_vcpu_time_info.flags
        movzx eax, byte ptr [rdi]
        GUEST_SYNC rax
        movzx eax, byte ptr [rdi]
        GUEST_SYNC rax
        GUEST_DONE""")
    before = g.expect_sync()
    g.vcpu.kvmclock_ctrl()
    after = g.expect_sync()
    assert not before & PVCLOCK_GUEST_STOPPED, f"pvclock flags {before:#x} before KVM_KVMCLOCK_CTRL: already stopped"
    assert after & PVCLOCK_GUEST_STOPPED, \
        f"pvclock flags {after:#x} after KVM_KVMCLOCK_CTRL: PVCLOCK_GUEST_STOPPED ({PVCLOCK_GUEST_STOPPED:#x}) clear"
    g.run_to_done()
