"""IOAPIC interrupts for another vCPU, and a redirection entry reprogrammed while its interrupt is
in service: a physical destination reaches only the local APIC with that ID, whose TMR records the
entry's trigger mode; an EOI clears the remote IRR of the entries with its vector even after the
guest moved them to another destination (82093AA I/O APIC datasheet 3.2.4 Destination Field,
Remote IRR; SDM Vol. 3A 11.8.4 TMR; kvm-unit-tests ioapic.c test_ioapic_physical_destination_mode,
test_ioapic_*_tmr_smp, test_ioapic_self_reconfigure)."""

import pytest

from kvmtest.guest.aps import ready_ap
from kvmtest.guest.ioapic_source import IOAPIC_DEFAULT_BASE, IOREDTBL_LEVEL, redirect
from kvmtest.guest.paging import KiB4
from kvmtest.x86 import APIC_DEFAULT_PHYS_BASE, PTE_P, PTE_PCD, PTE_RW

pytestmark = pytest.mark.requires_cap("KVM_CAP_IRQCHIP")
APIC, IOAPIC = APIC_DEFAULT_PHYS_BASE, IOAPIC_DEFAULT_BASE
LEVEL = IOREDTBL_LEVEL
PIN, VECTOR = 20, 0x79
TMR_WORD = 0x180 + 0x10 * (VECTOR // 32)   # the TMR register holding VECTOR's bit
TMR_BIT = 1 << VECTOR % 32


SETUP = f"""
    mov rbx, {APIC:#x}
    mov dword ptr [rbx + 0xF0], 0x1FF
    mov rsi, {IOAPIC:#x}
"""


def _map(g):
    for page in (APIC, IOAPIC):
        g.page_tables.map(page, page, KiB4, PTE_P | PTE_RW | PTE_PCD)


OTHER_VCPU = SETUP + redirect(PIN, LEVEL | VECTOR, destination=1) + f"""
    xor r12, r12
    GUEST_SYNC 1                                # entry set; vCPU 1 runs now
    sti
    GUEST_SYNC 2                                # exits and re-entries with IF=1: an interrupt for
    nop                                         # this vCPU would be taken here
    GUEST_SYNC 3
    cli
    GUEST_SYNC r12
    GUEST_DONE
ap:
    mov rbx, {APIC:#x}
    mov dword ptr [rbx + 0xF0], 0x1FF
    mov rsi, {IOAPIC:#x}
    xor r12, r12
    GUEST_SYNC 2
    sti
1:  hlt
    jmp 1b
handler:
    inc r12
    mov eax, dword ptr [rbx + {TMR_WORD:#x}]
    GUEST_SYNC rax                              # TMR while in service; the host lowers a level pin
    mov dword ptr [rbx + 0xB0], 0               # EOI
    cmp r12, 2
    jae 2f
    mov dword ptr [rsi], {0x10 + 2 * PIN:#x}
    mov dword ptr [rsi + 0x10], {VECTOR:#x}     # now edge-triggered
    GUEST_SYNC 3                                # the host raises and lowers the pin
    iretq
2:
    GUEST_DONE
"""


def test_physical_destination_interrupt_reaches_only_that_vcpu_with_its_tmr(guest):
    """Pin 20 programmed by vCPU 0 for physical destination APIC ID 1: vCPU 1 takes the
    level-triggered interrupt and its TMR bit for the vector is set while in service; vCPU 1 then
    makes the entry edge-triggered, and the next edge reaches it with the TMR bit clear (11.8.4:
    set for level, cleared for edge on acceptance). vCPU 0, running with IF=1 across exits,
    takes neither."""
    g = guest("long64", OTHER_VCPU, irqchip=True)
    _map(g)
    g.set_idt_gate(VECTOR, "handler")
    assert g.expect_sync() == 1, "vCPU 0: expected GUEST_SYNC 1 (pin 20 programmed for APIC ID 1)"
    ap = ready_ap(g, g.add_vcpu("ap"))
    g.vm.irq_line(PIN, 1)
    level_tmr = g.expect_sync(vcpu=ap)
    g.vm.irq_line(PIN, 0)
    assert g.expect_sync(vcpu=ap) == 3, \
        f"vCPU 1 after the level interrupt's EOI: expected GUEST_SYNC 3 (pin {PIN} made edge-triggered)"
    g.vm.irq_line(PIN, 1)
    g.vm.irq_line(PIN, 0)
    edge_tmr = g.expect_sync(vcpu=ap)
    g.run_to_done(vcpu=ap)
    assert (level_tmr & TMR_BIT, edge_tmr & TMR_BIT) == (TMR_BIT, 0), \
        f"vCPU 1's TMR bit for vector {VECTOR:#x} in service: level {bool(level_tmr & TMR_BIT)}, edge " \
        f"{bool(edge_tmr & TMR_BIT)}; expected set, then clear"
    assert g.run_to_done() == [2, 3, 0], "vCPU 0 took the interrupt routed to APIC ID 1"


LOW, HIGH = (21, 0x64), (22, 0x84)   # (pin, vector): class 6 is in service when class 8 arrives
RECONFIGURE = SETUP + redirect(LOW[0], LEVEL | LOW[1]) + redirect(HIGH[0], LEVEL | HIGH[1]) + f"""
    xor r12, r12
    GUEST_SYNC 1                                # the host asserts the low-priority pin
    sti
1:  cmp r12, 2
    jb 1b
    cli
    {{remote_irrs}}
    GUEST_DONE
low:
    GUEST_SYNC {LOW[1]:#x}                      # the host asserts the high pin, lowers both
    {{remote_irrs}}
    mov dword ptr [rsi], {0x11 + 2 * LOW[0]:#x}
    mov dword ptr [rsi + 0x10], 0x01000000      # both entries to destination APIC ID 1
    mov dword ptr [rsi], {0x11 + 2 * HIGH[0]:#x}
    mov dword ptr [rsi + 0x10], 0x01000000
    mov dword ptr [rbx + 0xB0], 0               # EOI for {LOW[1]:#x}
    mov r12, 1
    iretq
high:
    GUEST_SYNC r12                              # 1: taken only after the low handler's IRET
    mov dword ptr [rbx + 0xB0], 0               # EOI for {HIGH[1]:#x}
    mov r12, 2
    iretq
"""
REMOTE_IRRS = "\n".join(f"mov dword ptr [rsi], {0x10 + 2 * pin:#x}\nmov eax, dword ptr [rsi + 0x10]\n"
                        "shr eax, 14\nand eax, 1\nGUEST_SYNC rax" for pin, _ in (LOW, HIGH))


def test_eoi_clears_remote_irr_of_entries_reprogrammed_while_in_service(guest):
    """While the level interrupt of pin 21 (vector 0x64) is in service with IF=0, pin 22 (vector
    0x84, level) is asserted and both pins are lowered: both entries show remote IRR set (their
    interrupts were accepted). The guest moves both entries to destination APIC ID 1 and EOIs
    0x64; 0x84 is taken only after the IRET; after its EOI both remote IRRs are clear, the EOIs
    matching by vector whatever the entries' new destination (82093AA 3.2.4 Remote IRR)."""
    g = guest("long64", RECONFIGURE.format(remote_irrs=REMOTE_IRRS), irqchip=True)
    _map(g)
    g.set_idt_gate(LOW[1], "low")
    g.set_idt_gate(HIGH[1], "high")
    assert g.expect_sync() == 1, f"expected GUEST_SYNC 1 (pins {LOW[0]}, {HIGH[0]} programmed, before KVM_IRQ_LINE)"
    g.vm.irq_line(LOW[0], 1)
    assert g.expect_sync() == LOW[1], \
        f"KVM_IRQ_LINE pin {LOW[0]} level 1: expected GUEST_SYNC {LOW[1]:#x} from vector {LOW[1]:#x}'s handler"
    g.vm.irq_line(HIGH[0], 1)
    for pin, _ in (HIGH, LOW):
        g.vm.irq_line(pin, 0)
    in_service = [g.expect_sync(), g.expect_sync()]
    assert in_service == [1, 1], f"remote IRR of pins 21, 22 while 0x64 is in service: {in_service}, expected 1, 1"
    after_iret = g.expect_sync()
    assert after_iret == 1, f"the 0x84 handler ran with r12 = {after_iret}: before the 0x64 handler's IRET"
    after = g.run_to_done()
    assert after == [0, 0], f"remote IRR of pins 21, 22 after both EOIs: {after}, expected 0, 0"
