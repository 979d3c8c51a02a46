"""Interrupts and exceptions in flight when the VM is saved reach the guest in the new VM, once:
a vector waiting in the local APIC's IRR, a level interrupt held in a masked IOAPIC pin, an IRQ
waiting in the PIC, and events queued through KVM_SET_VCPU_EVENTS or KVM_NMI (api.rst 4.26/4.27
KVM_GET/SET_IRQCHIP, 4.31/4.32 KVM_GET/SET_VCPU_EVENTS, KVM_GET/SET_LAPIC, KVM_NMI;
kvmtest.vm_state)."""

import struct

import pytest

from kvmtest.abi import constants as C
from kvmtest.guest.ioapic_source import IOAPIC_DEFAULT_BASE, IOREDTBL_LEVEL, IOREDTBL_MASKED, redirect, redirection_low
from kvmtest.guest.paging import KiB4
from kvmtest.guest.pic import counting_irq_handler, init_master_pic
from kvmtest.x86 import APIC_DEFAULT_PHYS_BASE, PTE_P, PTE_PCD, PTE_RW

APIC, IOAPIC = APIC_DEFAULT_PHYS_BASE, IOAPIC_DEFAULT_BASE
irqchip = pytest.mark.requires_cap("KVM_CAP_IRQCHIP")


def _map_chips(g):
    for page in (APIC, IOAPIC):
        g.page_tables.map(page, page, KiB4, PTE_P | PTE_RW | PTE_PCD)


def _lapic_irr_has(vcpu, vector) -> bool:
    word = struct.unpack_from("<I", bytes(vcpu.get_lapic().regs), 0x200 + 0x10 * (vector // 32))[0]
    return bool(word >> (vector % 32) & 1)


# The guest takes whatever is pending once it sets IF (STI's shadow covers the HLT, so the
# interrupt ends the HLT; with nothing pending the HLT would never end), counts deliveries in
# r12 and reports the count: exactly one delivery is expected.
TAKE_PENDING = """
    xor r12, r12
    GUEST_SYNC 1
    sti
    hlt
    cli
    GUEST_SYNC r12
    GUEST_DONE
"""


@irqchip
def test_vector_in_the_lapic_irr_is_delivered_after_migration(guest):
    """An edge interrupt (IOAPIC pin 16, vector 0x50) raised while the guest has IF=0 waits in
    the LAPIC's IRR (SDM Vol. 3A 11.8.4); saved there, it is delivered once in the new VM when
    the guest sets IF."""
    g = guest("long64", f"""
        mov rbx, {APIC:#x}
        mov dword ptr [rbx + 0xF0], 0x1FF           # LAPIC software enable
        mov rsi, {IOAPIC:#x}
        mov dword ptr [rsi], 0x30                   # pin 16, low dword
        mov dword ptr [rsi + 0x10], 0x50            # vector 0x50, fixed, edge, unmasked
        mov dword ptr [rsi], 0x31
        mov dword ptr [rsi + 0x10], 0               # destination APIC ID 0
        {TAKE_PENDING}
    handler:
        inc r12
        mov dword ptr [rbx + 0xB0], 0               # EOI
        iretq""", irqchip=True)
    _map_chips(g)
    g.set_idt_gate(0x50, "handler")
    assert g.expect_sync() == 1
    g.vm.irq_line(16, 1)
    g.vm.irq_line(16, 0)
    assert _lapic_irr_has(g.vcpu, 0x50), "vector 0x50 is not in the LAPIC IRR before the save"
    g.migrate()
    assert g.run_to_done() == [1], "deliveries of the vector that was in the IRR"


@irqchip
def test_level_interrupt_held_by_a_masked_ioapic_pin_is_delivered_after_migration(guest):
    """A level interrupt asserted on a masked redirection entry is held in the IOAPIC's IRR
    (82093AA mask bit 16); after migration the guest unmasks the pin and takes the vector once.
    The line is lowered in the new VM after the handler's EOI-free report."""
    g = guest("long64", f"""
        mov rbx, {APIC:#x}
        mov dword ptr [rbx + 0xF0], 0x1FF
        mov rsi, {IOAPIC:#x}
        {redirect(21, IOREDTBL_LEVEL | IOREDTBL_MASKED | 0x52)}
        sti
        GUEST_SYNC 1
        {redirection_low(21, IOREDTBL_LEVEL | 0x52)}
    wait:
        hlt
        jmp wait
    handler:
        GUEST_SYNC 0x52
        mov dword ptr [rbx + 0xB0], 0
        GUEST_DONE""", irqchip=True)
    _map_chips(g)
    g.set_idt_gate(0x52, "handler")
    assert g.expect_sync() == 1
    g.vm.irq_line(21, 1)
    ioapic = C.KVM_IRQCHIP_IOAPIC
    irr = struct.unpack_from("<I", bytes(g.vm.get_irqchip(ioapic).chip), 16)[0]
    assert irr >> 21 & 1, f"IOAPIC IRR {irr:#x} before the save: pin 21 not held"
    g.migrate()
    assert g.expect_sync() == 0x52
    g.vm.irq_line(21, 0)
    g.run_to_done()


@irqchip
def test_irq_waiting_in_the_pic_is_delivered_after_migration(guest):
    """IRQ1 raised while the guest has IF=0 waits in the master PIC's IRR (8259A); saved with
    KVM_GET_IRQCHIP, it reaches the guest in the new VM as vector ICW2+1, once."""
    g = guest("long64", init_master_pic(0x20, unmasked=(1,)) + TAKE_PENDING + counting_irq_handler("irq1"),
              irqchip=True)
    g.set_idt_gate(0x21, "irq1")
    assert g.expect_sync() == 1
    g.vm.irq_line(1, 1)
    g.vm.irq_line(1, 0)
    pic = g.vm.get_irqchip(C.KVM_IRQCHIP_PIC_MASTER)
    assert pic.chip[1] & 2, f"master PIC IRR {pic.chip[1]:#x} before the save: IRQ1 not pending"
    g.migrate()
    assert g.run_to_done() == [1], "deliveries of the PIC's pending IRQ1"


def test_injected_interrupt_is_delivered_after_migration(guest):
    """An external interrupt KVM holds as injected but not yet delivered (kvm_vcpu_events
    interrupt.injected, set here with KVM_SET_VCPU_EVENTS) is delivered in the new VM, even
    though the guest runs with IF=0: it was already accepted (api.rst 4.31/4.32)."""
    g = guest("long64", """
        GUEST_SYNC 1
        GUEST_FAIL "the injected interrupt was not delivered"
    handler:
        GUEST_SYNC 0x40
        GUEST_DONE""")
    g.set_idt_gate(0x40, "handler")
    assert g.expect_sync() == 1
    events = g.vcpu.get_events()
    events.interrupt.injected, events.interrupt.nr, events.interrupt.soft = 1, 0x40, 0
    g.vcpu.set_events(events)
    got = g.vcpu.get_events().interrupt
    assert (got.injected, got.nr) == (1, 0x40), f"KVM_GET_VCPU_EVENTS before the save: {got}"
    g.migrate()
    assert g.run_to_done() == [0x40]


EXC_HANDLER = """
    GUEST_SYNC 1
    GUEST_FAIL "the queued exception was not delivered"
handler:
    pop rax                     # error code
    GUEST_SYNC rax
    mov rax, cr2
    GUEST_SYNC rax
    GUEST_DONE
"""


def test_injected_exception_is_delivered_after_migration(guest):
    """A #GP with error code 0x1234 queued through KVM_SET_VCPU_EVENTS (exception.injected,
    api.rst 4.32) before the save is raised in the new VM, with its error code."""
    g = guest("long64", EXC_HANDLER)
    g.set_idt_gate(13, "handler")
    assert g.expect_sync() == 1
    events = g.vcpu.get_events()
    e = events.exception
    e.injected, e.nr, e.has_error_code, e.error_code, e.pending = 1, 13, 1, 0x1234, 0
    g.vcpu.set_events(events)
    g.migrate()
    error_code, _ = g.run_to_done()
    assert error_code == 0x1234, f"#GP error code in the new VM: {error_code:#x}, expected 0x1234"


@pytest.mark.requires_cap("KVM_CAP_EXCEPTION_PAYLOAD")
def test_pending_page_fault_keeps_its_payload_across_migration(guest):
    """With KVM_CAP_EXCEPTION_PAYLOAD a pending #PF carries CR2 as its payload, written only when
    the fault is delivered (api.rst KVM_CAP_EXCEPTION_PAYLOAD, 4.31 exception_payload). One left
    pending at the save is delivered in the new VM with its error code, and CR2 = the payload."""
    g = guest("long64", EXC_HANDLER)
    g.vm.enable_cap("KVM_CAP_EXCEPTION_PAYLOAD", 1)
    g.set_idt_gate(14, "handler")
    assert g.expect_sync() == 1
    events = g.vcpu.get_events()
    e = events.exception
    e.pending, e.injected, e.nr, e.has_error_code, e.error_code = 1, 0, 14, 1, 0x6
    events.exception_has_payload, events.exception_payload = 1, 0xDEAD000
    events.flags |= C.KVM_VCPUEVENT_VALID_PAYLOAD
    g.vcpu.set_events(events)
    got = g.vcpu.get_events()
    assert (got.exception.pending, got.exception_payload) == (1, 0xDEAD000), \
        f"KVM_GET_VCPU_EVENTS before the save: {got.exception}, payload {got.exception_payload:#x}"
    g.migrate()
    error_code, cr2 = g.run_to_done()
    assert (error_code, cr2) == (0x6, 0xDEAD000), \
        f"#PF in the new VM: error code {error_code:#x}, CR2 {cr2:#x}; expected 0x6 and the payload 0xdead000"


@pytest.mark.requires_cap("KVM_CAP_USER_NMI")
def test_pending_nmi_is_delivered_after_migration(guest):
    """An NMI queued with KVM_NMI (api.rst KVM_NMI) is pending in kvm_vcpu_events.nmi at the save;
    restore transfers nmi.pending (KVM_VCPUEVENT_VALID_NMI_PENDING, api.rst 4.32) and the guest
    takes vector 2 in the new VM, once."""
    g = guest("long64", """
        xor r12, r12
        GUEST_SYNC 1
        nop
        GUEST_SYNC r12
        GUEST_DONE
    nmi:
        inc r12
        iretq""")
    g.set_idt_gate(2, "nmi")
    assert g.expect_sync() == 1
    g.vcpu.nmi()
    nmi = g.vcpu.get_events().nmi
    assert nmi.pending or nmi.injected, f"KVM_GET_VCPU_EVENTS after KVM_NMI: {nmi}"
    g.migrate()
    assert g.run_to_done() == [1], "NMIs the guest took after migration"
