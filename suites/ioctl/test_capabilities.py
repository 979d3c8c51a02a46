"""Capabilities enabled on a VM with KVM_ENABLE_CAP, each with its documented enable rules and
errors, and what it changes (api.rst 4.37 KVM_ENABLE_CAP and section 7: KVM_CAP_X86_DISABLE_EXITS,
KVM_CAP_X86_APIC_BUS_CYCLES_NS), plus KVM_CAP_X86_GUEST_MODE's kvm_run flag (api.rst 5,
kvm_run.flags)."""

import errno

import pytest

from kvmtest.abi import constants as C
from kvmtest.abi.constants import errno_name
from kvmtest.guest.paging import KiB4
from kvmtest.timing import bracketed_pair
from kvmtest.x86 import APIC_DEFAULT_PHYS_BASE, PTE_P, PTE_PCD, PTE_RW


def _name(err: int) -> str:
    return errno_name(err) if err else "success"


@pytest.mark.requires_cap("KVM_CAP_X86_DISABLE_EXITS")
def test_disable_exits_rules(kvm):
    """KVM_CAP_X86_DISABLE_EXITS: "-EINVAL when args[0] contains invalid exits or if any vCPUs have
    already been created"; the KVM_CHECK_EXTENSION value can be passed as is "to disable all such
    vmexits" (api.rst 7.14). So: bit 31 (no exit has it) is EINVAL, the reported mask succeeds on a
    new VM, and the same mask once the VM has a vCPU is EINVAL."""
    mask = kvm.check_extension("KVM_CAP_X86_DISABLE_EXITS")
    with kvm.create_vm() as vm:
        invalid = vm.try_enable_cap("KVM_CAP_X86_DISABLE_EXITS", 1 << 31)
        reported = vm.try_enable_cap("KVM_CAP_X86_DISABLE_EXITS", mask)
    with kvm.create_vm() as vm:
        vm.create_vcpu()
        late = vm.try_enable_cap("KVM_CAP_X86_DISABLE_EXITS", mask)
    assert (invalid, reported, late) == (errno.EINVAL, 0, errno.EINVAL), \
        f"KVM_ENABLE_CAP(KVM_CAP_X86_DISABLE_EXITS): bit 31 -> {_name(invalid)} (expected EINVAL), the reported " \
        f"mask {mask:#x} -> {_name(reported)} (expected success), the same after KVM_CREATE_VCPU -> {_name(late)} " \
        "(expected EINVAL)"


@pytest.mark.requires_cap("KVM_CAP_X86_APIC_BUS_CYCLES_NS")
def test_apic_bus_cycles_ns_rules(kvm):
    """KVM_CAP_X86_APIC_BUS_CYCLES_NS returns "-ENXIO if a virtual local APIC has not been created
    using KVM_CREATE_IRQCHIP" and "-EINVAL if args[0] contains an invalid value for the frequency
    or if any vCPUs have been created" (api.rst 7.35): ENXIO before KVM_CREATE_IRQCHIP, EINVAL for
    a period of 0 ns, success for 4 ns, EINVAL once a vCPU exists."""
    with kvm.create_vm() as vm:
        no_apic = vm.try_enable_cap("KVM_CAP_X86_APIC_BUS_CYCLES_NS", 4)
        vm.create_irqchip()
        zero = vm.try_enable_cap("KVM_CAP_X86_APIC_BUS_CYCLES_NS", 0)
        good = vm.try_enable_cap("KVM_CAP_X86_APIC_BUS_CYCLES_NS", 4)
        vm.create_vcpu()
        late = vm.try_enable_cap("KVM_CAP_X86_APIC_BUS_CYCLES_NS", 8)
    got = (no_apic, zero, good, late)
    assert got == (errno.ENXIO, errno.EINVAL, 0, errno.EINVAL), \
        f"KVM_ENABLE_CAP(KVM_CAP_X86_APIC_BUS_CYCLES_NS): before KVM_CREATE_IRQCHIP {_name(no_apic)}, 0 ns " \
        f"{_name(zero)}, 4 ns {_name(good)}, after KVM_CREATE_VCPU {_name(late)}; expected ENXIO, EINVAL, success, " \
        "EINVAL"


TIMER_COUNT = f"""
    mov rbx, {APIC_DEFAULT_PHYS_BASE:#x}
    mov dword ptr [rbx + 0xF0], 0x1FF           # SVR: software enable
    mov dword ptr [rbx + 0x3E0], 0xB            # divide configuration: divide by 1
    mov dword ptr [rbx + 0x320], 0x10030        # LVT timer: masked, one-shot
    mov dword ptr [rbx + 0x380], 0xFFFFFFFF     # initial count
    mov eax, dword ptr [rbx + 0x390]
    GUEST_SYNC rax
    mov eax, dword ptr [rbx + 0x390]
    GUEST_SYNC rax
    GUEST_DONE
"""


@pytest.mark.requires_cap("KVM_CAP_X86_APIC_BUS_CYCLES_NS")
@pytest.mark.parametrize("period", ["default", 4])
@pytest.mark.waits
def test_apic_timer_counts_at_the_bus_period(kvm, vm, guest, period):
    """The APIC timer "counts down ... at the bus clock rate divided by the divide configuration"
    (SDM Vol. 3A 11.5.4), and KVM_CAP_X86_APIC_BUS_CYCLES_NS "sets VM's APIC bus clock frequency,
    used by KVM's in-kernel virtual APIC when emulating APIC timers", its default being the
    KVM_CHECK_EXTENSION value (api.rst 7.35; selftests apic_bus_clock_test): with divide-by-1,
    the current count falls by the host's CLOCK_MONOTONIC interval between two guest reads 0.2 s
    apart, divided by the period in ns (to 1%)."""
    ns = kvm.check_extension("KVM_CAP_X86_APIC_BUS_CYCLES_NS") if period == "default" else period
    vm.create_irqchip()
    if period != "default":
        vm.enable_cap("KVM_CAP_X86_APIC_BUS_CYCLES_NS", ns)
    g = guest("long64", TIMER_COUNT, vm=vm)
    g.page_tables.map(APIC_DEFAULT_PHYS_BASE, APIC_DEFAULT_PHYS_BASE, KiB4, PTE_P | PTE_RW | PTE_PCD)
    b = bracketed_pair(g.expect_sync, 0.2)
    counted_ns = (b.first - b.second) * ns
    assert b.inner_ns * 0.99 <= counted_ns <= b.outer_ns * 1.01, \
        f"APIC timer current count fell {b.first - b.second} at a {ns} ns bus period = {counted_ns} ns, while the " \
        f"host's CLOCK_MONOTONIC advanced {b.inner_ns} .. {b.outer_ns} ns"
    g.run_to_done()


@pytest.mark.requires_cap("KVM_CAP_X86_GUEST_MODE")
def test_guest_mode_flag_is_clear_outside_nested_guests(guest):
    """With KVM_CAP_X86_GUEST_MODE, kvm_run.flags' KVM_RUN_X86_GUEST_MODE says whether the vCPU was
    running a nested (L2) guest at the exit (api.rst 5, kvm_run.flags): a guest that never entered
    VMX or SVM non-root operation exits with it clear, and with KVM_RUN_X86_SMM clear too (it is
    not in SMM)."""
    g = guest("long64", "mov al, 1\nout 0x10, al\nGUEST_DONE")
    exit_ = g.run()
    flags = g.vcpu.kvm_run.flags
    assert not flags & (C.KVM_RUN_X86_GUEST_MODE | C.KVM_RUN_X86_SMM), \
        f"kvm_run.flags {flags:#x} at {exit_}: KVM_RUN_X86_GUEST_MODE or KVM_RUN_X86_SMM set for a plain guest"
    g.run_to_done()


@pytest.mark.requires_cap("KVM_CAP_REINJECT_CONTROL")
def test_reinject_control_needs_the_in_kernel_pit(kvm):
    """KVM_REINJECT_CONTROL returns "-ENXIO if KVM_CREATE_PIT or KVM_CREATE_PIT2 didn't succeed
    earlier" and 0 on success (api.rst 4.99): ENXIO on a VM with an irqchip but no PIT, then
    success for both modes (pit_reinject 0 and 1) once KVM_CREATE_PIT2 has made one."""
    with kvm.create_vm() as vm:
        vm.create_irqchip()
        no_pit = vm.try_set_pit_reinject(False)
        vm.create_pit2()
        off, on = vm.try_set_pit_reinject(False), vm.try_set_pit_reinject(True)
    assert (no_pit, off, on) == (errno.ENXIO, 0, 0), \
        f"KVM_REINJECT_CONTROL: without a PIT {_name(no_pit)}, with KVM_CREATE_PIT2 pit_reinject=0 {_name(off)} and " \
        f"=1 {_name(on)}; expected ENXIO, success, success"
