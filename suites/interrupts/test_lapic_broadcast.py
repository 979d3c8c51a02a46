"""IPIs that reach several local APICs at once: the physical broadcast destination (0xFF in xAPIC
mode, 0xFFFFFFFF in x2APIC mode), the "all including self" shorthand, and a physical
destination that two APICs share (SDM Vol. 3A 11.6.1, 11.6.2.1, 11.12.9, 11.12.10;
Documentation/virt/kvm/x86/errata.rst "x2APIC"; kvm-unit-tests apic.c physical broadcast and
aliased xAPIC physical IPIs)."""

import pytest

from kvmtest import lapic
from kvmtest.guest.apic_source import X2APIC_ON
from kvmtest.guest.aps import ready_ap, run_with_waiting_aps
from kvmtest.guest.msr_source import wrmsr
from kvmtest.guest.paging import KiB4
from kvmtest.x86 import (
    APIC_DEFAULT_PHYS_BASE,
    APIC_ID,
    MSR_IA32_X2APIC_APICID,
    MSR_IA32_X2APIC_EOI,
    MSR_IA32_X2APIC_ICR,
    PTE_P,
    PTE_PCD,
    PTE_RW,
)

pytestmark = pytest.mark.requires_cap("KVM_CAP_IRQCHIP")
APIC = APIC_DEFAULT_PHYS_BASE
VECTOR = 0x40
FIXED = 0x4000 | VECTOR          # ICR low: fixed, assert, physical destination mode


XAPIC = {
    "enable": f"mov rbx, {APIC:#x}\nmov dword ptr [rbx + 0xF0], 0x1FF\n",
    "id": "mov eax, dword ptr [rbx + 0x20]\nshr eax, 24\n",
    "eoi": "mov dword ptr [rbx + 0xB0], 0\n",
}
X2APIC = {
    "enable": X2APIC_ON,
    "id": f"mov ecx, {MSR_IA32_X2APIC_APICID:#x}\nrdmsr\n",
    "eoi": wrmsr(MSR_IA32_X2APIC_EOI, 0),
}
# destination -> (APIC mode, the instructions that send the IPI)
SENDS = {
    "xapic-physical-ff": (XAPIC, f"mov dword ptr [rbx + 0x310], 0xFF000000\nmov dword ptr [rbx + 0x300], {FIXED:#x}\n"),
    "xapic-all-including-self": (XAPIC, f"mov dword ptr [rbx + 0x300], {0x80000 | FIXED:#x}\n"),
    "x2apic-physical-ffffffff": (X2APIC, wrmsr(MSR_IA32_X2APIC_ICR, 0xFFFFFFFF << 32 | FIXED)),
}

BROADCAST = """
    {enable}
    GUEST_SYNC 1
    {send}
    sti
1:  hlt
    jmp 1b
ap:
    {enable}
    GUEST_SYNC 2
    sti
2:  hlt
    jmp 2b
handler:
    {id}
    GUEST_SYNC rax
    {eoi}
    GUEST_DONE
"""


def _guest(guest, apic_mode, send):
    g = guest("long64", BROADCAST.format(send=send, **apic_mode), irqchip=True)
    g.page_tables.map(APIC, APIC, KiB4, PTE_P | PTE_RW | PTE_PCD)
    g.set_idt_gate(VECTOR, "handler")
    return g


@pytest.mark.parametrize("destination", list(SENDS))
def test_broadcast_ipi_reaches_every_vcpu_including_the_sender(kvm, guest, destination):
    """A fixed IPI to the physical broadcast ID (0xFF in xAPIC mode, 11.6.2.1; 0xFFFFFFFF in x2APIC
    mode, 11.12.9) or with the "all including self" shorthand (11.6.1) is accepted by every local
    APIC: each of the three vCPUs, the sender too, takes the vector and reads its own APIC ID in the
    handler (kvm-unit-tests apic.c test_physical_broadcast)."""
    apic_mode, send = SENDS[destination]
    if apic_mode is X2APIC and not kvm.has_feature("x2apic"):
        pytest.skip("needs CPUID.1:ECX[21] (x2apic), which KVM_GET_SUPPORTED_CPUID does not report")
    got = run_with_waiting_aps(_guest(guest, apic_mode, send), 2)
    assert got == {0: [0], 1: [1], 2: [2]}, \
        f"handler syncs (vCPU -> APIC IDs read): {got}; expected each vCPU's handler to run once with its own ID"


ALIASED = f"""
    {XAPIC['enable']}
    GUEST_SYNC 1
    mov dword ptr [rbx + 0x310], 0              # physical destination APIC ID 0
    mov dword ptr [rbx + 0x300], {FIXED:#x}
    sti
1:  hlt
    jmp 1b
ap:
    {XAPIC['enable']}
    GUEST_SYNC 2
    sti
2:  hlt
    jmp 2b
handler:
    {XAPIC['id']}
    GUEST_SYNC rax
    {XAPIC['eoi']}
    GUEST_DONE
"""


def test_ipi_to_an_apic_id_two_vcpus_share_reaches_both(guest):
    """With KVM_X2APIC_API_USE_32BIT_IDS not enabled, "KVM follows x86 architecture when
    processing interrupts (all vCPUs matching the target APIC ID receive the interrupt)"
    (Documentation/virt/kvm/x86/errata.rst, x2APIC). vCPU 1's xAPIC ID is set to 0 with
    KVM_SET_LAPIC (api.rst 4.58; the ID in bits 31:24 without USE_32BIT_IDS, 4.57), and a fixed IPI
    to physical destination 0 then reaches both vCPUs, each reading ID 0 in its handler
    (kvm-unit-tests apic.c test_aliased_xapic_physical_ipi)."""
    g = guest("long64", ALIASED, irqchip=True)
    g.page_tables.map(APIC, APIC, KiB4, PTE_P | PTE_RW | PTE_PCD)
    g.set_idt_gate(VECTOR, "handler")
    ap = g.add_vcpu("ap")
    state = ap.get_lapic()
    assert lapic.reg(state, APIC_ID) == 1 << 24, f"vCPU 1's xAPIC ID register {lapic.reg(state, APIC_ID):#x}"
    lapic.set_reg(state, APIC_ID, 0)
    ap.set_lapic(state)
    assert lapic.reg(ap.get_lapic(), APIC_ID) == 0, "KVM_SET_LAPIC did not give vCPU 1 xAPIC ID 0"
    ready_ap(g, ap)
    thread = g.in_thread(ap, timeout=20)
    assert g.expect_sync() == 1
    got = {0: g.run_to_done(), 1: thread.join(30)}
    assert got == {0: [0], 1: [0]}, \
        f"handler syncs (vCPU -> APIC IDs read): {got}; expected both vCPUs, each with ID 0, to take the IPI"
