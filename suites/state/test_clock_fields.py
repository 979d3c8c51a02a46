"""struct kvm_clock_data (KVM_GET/SET_CLOCK) and the vCPU's TSC offset (KVM_GET/SET_DEVICE_ATTR,
KVM_VCPU_TSC_OFFSET) against the host's own clocks and time-stamp counter, and against what the
guest reads (api.rst KVM_GET_CLOCK, KVM_SET_CLOCK; Documentation/virt/kvm/devices/vcpu.rst
KVM_VCPU_TSC_CTRL; Documentation/virt/kvm/x86/msr.rst MSR_KVM_SYSTEM_TIME_NEW)."""

import struct
import time

import pytest

from kvmtest import host_cpu
from kvmtest.abi import constants as C
from kvmtest.guest import layout as L
from kvmtest.guest.msr_source import wrmsr
from kvmtest.timing import bracketed_pair
from kvmtest.x86 import KVM_MSR_ENABLED, MSR_KVM_SYSTEM_TIME_NEW

pytestmark = pytest.mark.requires_cap("KVM_CAP_ADJUST_CLOCK")
FLAGS = C.KVM_CLOCK_TSC_STABLE | C.KVM_CLOCK_REALTIME | C.KVM_CLOCK_HOST_TSC


@pytest.mark.waits
def test_clock_advances_with_the_hosts_monotonic_clock(kvm, vm):
    """KVM_GET_CLOCK's clock is "CLOCK_MONOTONIC plus a constant offset" when KVM_CLOCK_TSC_STABLE
    is clear, and the kvmclock every vCPU sees when it is set (api.rst KVM_GET_CLOCK): either way
    two reads 0.2 s apart differ by the host's CLOCK_MONOTONIC interval around them (to 0.1%
    for a TSC-derived clock). flags carries only bits KVM_CHECK_EXTENSION(KVM_CAP_ADJUST_CLOCK)
    says it can return."""
    b = bracketed_pair(vm.get_clock, 0.2)
    first, second = b.first, b.second
    delta = second.clock - first.clock
    slack = 0.001 if first.flags & C.KVM_CLOCK_TSC_STABLE else 0
    assert b.inner_ns * (1 - slack) <= delta <= b.outer_ns * (1 + slack), \
        f"KVM_GET_CLOCK advanced {delta} ns while CLOCK_MONOTONIC advanced {b.inner_ns}-{b.outer_ns} ns"
    allowed = kvm.check_extension("KVM_CAP_ADJUST_CLOCK")
    assert first.flags & ~allowed == 0, \
        f"KVM_GET_CLOCK flags {first.flags:#x} outside KVM_CAP_ADJUST_CLOCK {allowed:#x}"


def test_realtime_and_host_tsc_are_the_hosts_at_the_call(vm):
    """With KVM_CLOCK_REALTIME in flags, realtime is the host's CLOCK_REALTIME at the call, and
    with KVM_CLOCK_HOST_TSC, host_tsc is the host's TSC at the call (api.rst KVM_GET_CLOCK):
    both lie between the host's own readings just before and after the ioctl (RDTSC run by
    kvmtest itself)."""
    r0, c0 = time.time_ns(), host_cpu.rdtsc()
    clock = vm.get_clock()
    c1, r1 = host_cpu.rdtsc(), time.time_ns()
    if not clock.flags & (C.KVM_CLOCK_REALTIME | C.KVM_CLOCK_HOST_TSC):
        pytest.skip(f"KVM_GET_CLOCK flags {clock.flags:#x}: neither realtime nor host_tsc is valid on this host "
                    "(KVM sets them only with a TSC-based host clocksource)")
    if clock.flags & C.KVM_CLOCK_REALTIME:
        assert r0 <= clock.realtime <= r1, f"realtime {clock.realtime} outside the host's CLOCK_REALTIME [{r0}, {r1}]"
    if clock.flags & C.KVM_CLOCK_HOST_TSC:
        assert c0 <= clock.host_tsc <= c1, f"host_tsc {clock.host_tsc} outside the host's RDTSC [{c0}, {c1}]"


PVCLOCK = L.DATA + 0x800         # struct pvclock_vcpu_time_info, 32 bytes (x86/msr.rst)
SET_TO = 5 * 10**12              # 5000 s


def test_clock_set_by_the_host_is_what_the_guests_kvmclock_reads(guest):
    """After KVM_SET_CLOCK(clock = 5000 s), the guest enables kvmclock (WRMSR of
    MSR_KVM_SYSTEM_TIME_NEW with its enable bit, x86/msr.rst) and KVM publishes the time to it:
    system_time of the pvclock structure lies between the value set and that value plus the host
    time elapsed since the ioctl (api.rst KVM_SET_CLOCK: "Sets the current timestamp of kvmclock")."""
    g = guest("long64", f"""
        {wrmsr(MSR_KVM_SYSTEM_TIME_NEW, PVCLOCK | KVM_MSR_ENABLED)}
        GUEST_SYNC 1
        GUEST_DONE""")
    t0 = time.monotonic_ns()
    g.vm.set_clock(type(g.vm.get_clock())(clock=SET_TO))
    assert g.expect_sync() == 1
    t1 = time.monotonic_ns()
    version, _, _, system_time = struct.unpack("<IIQQ", g.vm.read(PVCLOCK, 24))
    assert version % 2 == 0 and version > 0, f"pvclock version {version}: the structure was not (completely) written"
    assert SET_TO <= system_time <= SET_TO + (t1 - t0), \
        f"kvmclock system_time {system_time} ns; KVM_SET_CLOCK set {SET_TO} ns {(t1 - t0)} ns before"
    g.run_to_done()


@pytest.mark.requires_cap("KVM_CAP_VCPU_ATTRIBUTES")
@pytest.mark.modes(code_bits=64)
def test_tsc_offset_is_the_guest_tsc_minus_the_hosts(guest, mode):
    """KVM_VCPU_TSC_OFFSET (devices/vcpu.rst: "the guest's TSC = host TSC + offset") read with
    KVM_GET_DEVICE_ATTR is what separates the guest's RDTSC from the host's own RDTSC taken
    around the run; after KVM_SET_DEVICE_ATTR moves it by 2^40, the guest's TSC moves with it."""
    g = guest(mode, "rdtsc\nshl rdx, 32\nor rax, rdx\nGUEST_SYNC rax\nrdtsc\nshl rdx, 32\nor rax, rdx\n"
                    "GUEST_SYNC rax\nGUEST_DONE")
    if not g.vcpu.has_device_attr(C.KVM_VCPU_TSC_CTRL, C.KVM_VCPU_TSC_OFFSET):
        pytest.skip("KVM_HAS_DEVICE_ATTR: no KVM_VCPU_TSC_OFFSET on this vCPU")
    offset = g.vcpu.get_device_attr_u64(C.KVM_VCPU_TSC_CTRL, C.KVM_VCPU_TSC_OFFSET)
    h0 = host_cpu.rdtsc()
    tsc = g.expect_sync()
    h1 = host_cpu.rdtsc()
    assert (h0 + offset) % 2**64 <= tsc <= (h1 + offset) % 2**64, \
        f"guest TSC {tsc:#x}; host TSC {h0:#x}-{h1:#x} + offset {offset:#x} = {(h0 + offset) % 2**64:#x}-" \
        f"{(h1 + offset) % 2**64:#x}"
    moved = (offset + (1 << 40)) % 2**64
    g.vcpu.set_device_attr_u64(C.KVM_VCPU_TSC_CTRL, C.KVM_VCPU_TSC_OFFSET, moved)
    h2 = host_cpu.rdtsc()
    tsc2 = g.expect_sync()
    h3 = host_cpu.rdtsc()
    assert (h2 + moved) % 2**64 <= tsc2 <= (h3 + moved) % 2**64, \
        f"after KVM_SET_DEVICE_ATTR offset {moved:#x}: guest TSC {tsc2:#x}, host TSC {h2:#x}-{h3:#x}"
    g.run_to_done()
