"""User space changing APIC state on two vCPUs at once: KVM_SET_LAPIC on one vCPU while another's
IA32_APIC_BASE toggles between x2APIC and disabled through KVM_SET_MSRS, with many vCPUs in the
VM, so KVM rebuilds its APIC routing map from both sides concurrently. Every ioctl must succeed
(api.rst 4.19 KVM_SET_MSRS returns the number of MSRs set, 4.58 KVM_SET_LAPIC returns 0), and
interrupts must still reach the right vCPU afterwards (selftests recalc_apic_map_test)."""

import threading
import time

import pytest

from kvmtest.abi.structs import kvm_lapic_state
from kvmtest.guest.apic_source import X2APIC_ON
from kvmtest.guest.aps import ready_ap
from kvmtest.x86 import (
    APIC_BASE_EN,
    APIC_BASE_EXTD,
    APIC_DEFAULT_PHYS_BASE,
    MSR_IA32_APIC_BASE,
    MSR_IA32_X2APIC_EOI,
    MSR_IA32_X2APIC_ICR,
)

pytestmark = [pytest.mark.requires_cap("KVM_CAP_IRQCHIP"), pytest.mark.requires_cpu("x2apic")]
X2APIC = APIC_DEFAULT_PHYS_BASE | APIC_BASE_EN | APIC_BASE_EXTD
RACE_SECONDS = 0.7
EXTRA_VCPUS = 62                  # vCPUs 2-63: never run, only make the map bigger to rebuild
VECTOR = 0x40


AFTER = f"""
    {X2APIC_ON}
    mov ecx, {MSR_IA32_X2APIC_ICR:#x}
    mov eax, {0x4000 | VECTOR:#x}               # fixed, physical
    mov edx, 1                                  # destination: x2APIC ID 1
    wrmsr
    GUEST_DONE
ap:
    {X2APIC_ON}
    GUEST_SYNC 2
    sti
1:  hlt
    jmp 1b
handler:
    mov ecx, {MSR_IA32_X2APIC_EOI:#x}
    xor eax, eax
    xor edx, edx
    wrmsr
    GUEST_SYNC {VECTOR:#x}
    GUEST_DONE
"""


def test_set_lapic_racing_apic_base_toggles_keeps_the_map_right(guest):
    """For RACE_SECONDS a thread repeats KVM_SET_LAPIC (an all-zero register page) on vCPU 1 while
    the main thread sets vCPU 63's IA32_APIC_BASE to x2APIC and to disabled, with 64 vCPUs in x2APIC
    mode; each KVM_SET_LAPIC returns 0 and each KVM_SET_MSRS sets its one MSR. Afterwards an x2APIC
    IPI from vCPU 0 to x2APIC ID 1 is taken by vCPU 1 (SDM Vol. 3A 11.12.9)."""
    g = guest("long64", AFTER, irqchip=True)
    g.set_idt_gate(VECTOR, "handler")
    ap = g.add_vcpu("ap")
    extra = [g.vm.create_vcpu(i) for i in range(len(g.vm.vcpus), len(g.vm.vcpus) + EXTRA_VCPUS)]
    for vcpu in [g.vcpu, ap, *extra]:
        if vcpu in extra:
            vcpu.set_cpuid(g.kvm.cached_supported_cpuid())
        base = vcpu.get_msr(MSR_IA32_APIC_BASE)
        vcpu.set_msr(MSR_IA32_APIC_BASE, base | APIC_BASE_EN | APIC_BASE_EXTD)
    toggled = extra[-1]
    stop, errors, count = threading.Event(), [], [0]

    def set_lapic_loop():
        zero = kvm_lapic_state()
        try:
            while not stop.is_set():
                ap.set_lapic(zero)
                count[0] += 1
        except BaseException as e:  # noqa: BLE001 -- reported by the main thread
            errors.append(e)

    racer = threading.Thread(target=set_lapic_loop, daemon=True)
    racer.start()
    toggles, deadline = 0, time.monotonic() + RACE_SECONDS
    try:
        while time.monotonic() < deadline and not errors:
            for value in (X2APIC, 0):
                accepted = toggled.set_msrs({MSR_IA32_APIC_BASE: value})
                assert accepted == 1, f"KVM_SET_MSRS IA32_APIC_BASE={value:#x} on {toggled.name}: {accepted} MSRs set"
            toggles += 1
    finally:
        stop.set()
        racer.join(10)
    assert not errors, f"KVM_SET_LAPIC on {ap.name} failed during the race: {errors[0]!r}"
    assert toggles and count[0], f"no overlap: {toggles} IA32_APIC_BASE toggles, {count[0]} KVM_SET_LAPIC calls"
    ready_ap(g, ap)
    thread = g.in_thread(ap, timeout=20)
    g.run_to_done()
    assert thread.join(30) == [VECTOR], f"vCPU 1 after the race did not take vector {VECTOR:#x} sent to x2APIC ID 1"
