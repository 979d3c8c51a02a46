"""IOAPIC pins raised by user space with KVM_IRQ_LINE_STATUS (api.rst 4.25) in combinations: two
edge pins raised while the guest has interrupts off, a level pin lowered and raised again before
the guest's EOI, and an edge raised on a masked pin (82093AA I/O APIC datasheet 3.2.4 redirection
table: Remote IRR, Interrupt Mask; SDM Vol. 3A 11.8.3; kvm-unit-tests ioapic.c
test_ioapic_simultaneous, test_ioapic_level_coalesce, test_ioapic_edge_mask)."""

import pytest

from kvmtest.guest import layout as L
from kvmtest.guest.interrupt_log import logging_handlers, read_interrupt_log
from kvmtest.guest.ioapic_source import IOAPIC_DEFAULT_BASE, IOREDTBL_LEVEL, IOREDTBL_MASKED, redirect
from kvmtest.guest.paging import KiB4
from kvmtest.x86 import APIC_DEFAULT_PHYS_BASE, PTE_P, PTE_PCD, PTE_RW

pytestmark = pytest.mark.requires_cap("KVM_CAP_IRQCHIP")
APIC, IOAPIC = APIC_DEFAULT_PHYS_BASE, IOAPIC_DEFAULT_BASE
LEVEL, MASKED = IOREDTBL_LEVEL, IOREDTBL_MASKED
LOG = L.DATA                      # handler runs: a count, then (vector, saved RIP) pairs


SETUP = f"""
    mov rbx, {APIC:#x}
    mov dword ptr [rbx + 0xF0], 0x1FF
    mov rsi, {IOAPIC:#x}
    mov rdi, {LOG:#x}
"""

def _guest(guest, source, vectors):
    g = guest("long64", SETUP + source + logging_handlers(vectors), irqchip=True)
    for page in (APIC, IOAPIC):
        g.page_tables.map(page, page, KiB4, PTE_P | PTE_RW | PTE_PCD)
    for v in vectors:
        g.set_idt_gate(v, f"v{v:x}")
    return g


def _log(g) -> list[tuple[int, int]]:
    return read_interrupt_log(g.vm, LOG)


def _fmt(log) -> str:
    return str([(hex(v), hex(rip)) for v, rip in log])


TWO_PINS = redirect(20, 0x66) + redirect(21, 0x78) + """
    cli
    GUEST_SYNC 1                                # the host raises both pins here
    sti
    nop                                         # STI's shadow
opened:
    cli
    GUEST_DONE
"""


def test_two_edge_pins_raised_together_are_both_taken_highest_vector_first(guest):
    """Edge pins 20 (vector 0x66) and 21 (vector 0x78) raised and lowered, pin 20 first, while the
    guest runs with IF=0: both interrupts wait in the local APIC; once STI's shadow ends, 0x78 is
    taken first (the higher priority class, 11.8.3) and 0x66 right after its handler's EOI and
    IRET, at the same instruction boundary."""
    g = _guest(guest, TWO_PINS, (0x66, 0x78))
    assert g.expect_sync() == 1, "expected GUEST_SYNC 1 (redirection entries of pins 20, 21 programmed, IF=0)"
    for pin in (20, 21):
        g.vm.irq_line(pin, 1)
        g.vm.irq_line(pin, 0)
    g.run_to_done()
    opened = g.labels["opened"]
    log = _log(g)
    assert log == [(0x78, opened), (0x66, opened)], \
        f"(vector, saved RIP) per handler run: {_fmt(log)}; expected 0x78 then 0x66, both at {opened:#x}"


COALESCE = redirect(22, LEVEL | 0x98) + """
    xor r12, r12
    GUEST_SYNC 1                                # the host asserts the level pin here
    sti
1:  cmp r12, 1
    jb 1b
    nop
    GUEST_SYNC 2                                # exits and re-entries with IF=1 after the EOI:
    nop                                         # a second delivery would come here
    GUEST_SYNC 3
    cli
    GUEST_DONE
v98:
    inc r12
    GUEST_SYNC 0x98                             # in service: the host lowers, raises, lowers the pin
    mov dword ptr [rbx + 0xB0], 0               # EOI with the pin low
    iretq
"""


def test_level_pin_raised_again_before_eoi_is_delivered_once(guest):
    """A level pin's interrupt is in service (remote IRR set) when the host lowers the pin, raises it
    and lowers it again; at the EOI the pin is low, so nothing more is delivered: the second
    assertion came while remote IRR held the entry and is not kept (82093AA 3.2.4 Remote IRR:
    cleared by the EOI with the matching vector)."""
    g = _guest(guest, COALESCE, ())
    g.set_idt_gate(0x98, "v98")
    assert g.expect_sync() == 1, "expected GUEST_SYNC 1 (pin 22's level entry programmed, before KVM_IRQ_LINE)"
    g.vm.irq_line(22, 1)
    assert g.expect_sync() == 0x98, "KVM_IRQ_LINE pin 22 level 1: expected GUEST_SYNC 0x98 from vector 0x98's handler"
    for level in (0, 1, 0):
        g.vm.irq_line(22, level)
    syncs = g.run_to_done()
    assert syncs == [2, 3], f"GUEST_SYNCs after the handler's first: {[hex(s) for s in syncs]}; expected 2, 3 " \
                            "(0x98 again would mean the pin's second assertion was delivered)"


EDGE_MASK = redirect(23, MASKED | 0x81) + """
    GUEST_SYNC 1                                # the host raises and lowers the masked pin here
    mov dword ptr [rsi], 0x3E
    mov dword ptr [rsi + 0x10], 0x81            # unmask: edge, vector 0x81
    sti
    nop
    GUEST_SYNC 2                                # a held interrupt would be taken by now
    nop
    GUEST_SYNC 3                                # the host raises and lowers the pin again
    nop
    GUEST_SYNC 4
    cli
    GUEST_DONE
"""


def test_edge_on_a_masked_pin_is_dropped_not_held(guest):
    """An edge raised while the redirection entry is masked is ignored, "not delivered or held
    pending": unmasking the entry delivers nothing; the next edge, with the entry unmasked, is
    delivered once (82093AA 3.2.4 bit 16, Interrupt Mask)."""
    g = _guest(guest, EDGE_MASK, (0x81,))
    assert g.expect_sync() == 1, "expected GUEST_SYNC 1 (pin 23's entry programmed masked)"
    g.vm.irq_line(23, 1)
    g.vm.irq_line(23, 0)
    assert g.expect_sync() == 2, "expected GUEST_SYNC 2 (pin 23 unmasked with vector 0x81, STI executed)"
    assert g.expect_sync() == 3, "expected GUEST_SYNC 3 (the guest's next step after GUEST_SYNC 2)"
    assert _log(g) == [], f"handler runs for the edge raised while masked: {_fmt(_log(g))}"
    g.vm.irq_line(23, 1)
    g.vm.irq_line(23, 0)
    g.run_to_done()
    log = _log(g)
    assert [v for v, _ in log] == [0x81], f"handler runs after an edge on the unmasked pin: {_fmt(log)}; expected one"
