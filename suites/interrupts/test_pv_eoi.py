"""Paravirtual end of interrupt, MSR_KVM_PV_EOI_EN (Documentation/virt/kvm/x86/msr.rst): bit 0
enables it, bit 1 "is reserved and must be zero", bits 63:2 hold the 4-byte aligned address of a
word whose bit 0 KVM sets when "guest can skip writing EOI to the apic ... it is sufficient to
signal EOI by clearing the bit in guest memory"; with the bit clear "the EOI write is required"."""

import pytest

from kvmtest import lapic
from kvmtest.guest import layout as L
from kvmtest.guest.paging import KiB4
from kvmtest.x86 import APIC_DEFAULT_PHYS_BASE, APIC_ISR, KVM_PV_EOI_ENABLED, MSR_KVM_PV_EOI_EN, PTE_P, PTE_PCD, PTE_RW

pytestmark = pytest.mark.requires_cap("KVM_CAP_IRQCHIP")

PV_EOI = L.DATA + 0xD00            # the PV EOI word, zeroed, 4-byte aligned
VECTOR = 0x50
APIC = APIC_DEFAULT_PHYS_BASE


def _enable(value: int) -> str:
    return f"mov ecx, {MSR_KVM_PV_EOI_EN:#x}\nmov eax, {value:#x}\nxor edx, edx\n"


def test_pv_eoi_msr_reads_back_and_refuses_its_reserved_bit(guest):
    """WRMSR of the word's address with bit 0 reads back with RDMSR and KVM_GET_MSRS; the same
    value with bit 1 ("reserved and must be zero") set raises #GP(0) and changes nothing."""
    value = PV_EOI | KVM_PV_EOI_ENABLED
    g = guest("long64", _enable(value | 2) + "GUEST_ASSERT_RAISES GP(0), wrmsr\n" + _enable(value)
              + "wrmsr\nrdmsr\nGUEST_SYNC rax\nGUEST_DONE", irqchip=True)
    assert g.run_to_done() == [value], f"RDMSR MSR_KVM_PV_EOI_EN after WRMSR {value:#x}"
    assert g.vcpu.get_msr(MSR_KVM_PV_EOI_EN) == value


GUEST = f"""
    mov rbx, {APIC:#x}
    mov rdi, {PV_EOI:#x}
    mov dword ptr [rbx + 0xF0], 0x1FF           # SVR: software enable
    {_enable(PV_EOI | KVM_PV_EOI_ENABLED)}
    wrmsr
    xor r12d, r12d
    sti
    mov dword ptr [rbx + 0x300], {0x44000 | VECTOR:#x}   # self-IPI
wait1:
    cli
    cmp r12d, 1
    jae second
    sti
    hlt
    jmp wait1
second:
    sti
    mov dword ptr [rbx + 0x300], {0x44000 | VECTOR:#x}   # the same vector again
wait2:
    cli
    cmp r12d, 2
    jae both
    sti
    hlt
    jmp wait2
both:
    GUEST_SYNC 0xD0
    GUEST_DONE
handler:
    mov eax, dword ptr [rdi]
    GUEST_SYNC rax              # the PV EOI word as the handler found it
    inc r12d
    btr dword ptr [rdi], 0      # read and clear in one instruction, as msr.rst requires
    jc handled                  # bit 0 was set: clearing it is the EOI
    mov dword ptr [rbx + 0xB0], 0
handled:
    iretq
"""


def test_interrupt_ends_by_clearing_the_pv_eoi_bit_or_by_eoi(guest):
    """A self-IPI's handler ends the interrupt the way the PV EOI word says: with bit 0 set, by
    clearing it alone (one BTR); with bit 0 clear, by writing the EOI register. Either way the
    interrupt has ended: a second self-IPI of the same vector, which an in-service vector 0x50
    would hold back (SDM Vol. 3A 11.8.3.1), is delivered, and at the end KVM_GET_LAPIC shows
    vector 0x50 in neither the ISR nor, set by KVM, the PV EOI word."""
    g = guest("long64", GUEST, irqchip=True)
    g.page_tables.map(APIC, APIC, KiB4, PTE_P | PTE_RW | PTE_PCD)
    g.set_idt_gate(VECTOR, "handler")
    words = g.run_to_done()
    assert len(words) == 3 and words[-1] == 0xD0, \
        f"GUEST_SYNCs {[hex(w) for w in words]}: expected the handler twice, then 0xd0"
    assert all(w & ~1 == 0 for w in words[:2]), f"PV EOI words {[hex(w) for w in words[:2]]}: only bit 0 is KVM's"
    state = g.vcpu.get_lapic()
    assert not lapic.vector_bit(state, APIC_ISR, VECTOR), f"vector {VECTOR:#x} still in service after both handlers"
    assert g.vm.read(PV_EOI, 4) == bytes(4), f"PV EOI word {g.vm.read(PV_EOI, 4).hex()} after both interrupts ended"
