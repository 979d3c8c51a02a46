"""Several fixed interrupts pending in the local APIC at once are dispatched highest priority first:
by priority class (vector bits 7:4) and, within a class, by the higher vector; all of them at the
same instruction boundary once IF opens (SDM Vol. 3A 11.8.3 "Interrupt, Task, and Processor
Priority", 11.8.4; Vol. 2B STI; kvm-unit-tests eventinj.c "vec 32/33")."""

import pytest

from kvmtest.guest import layout as L
from kvmtest.guest.interrupt_log import logging_handlers, read_interrupt_log
from kvmtest.guest.paging import KiB4
from kvmtest.x86 import APIC_DEFAULT_PHYS_BASE, PTE_P, PTE_PCD, PTE_RW

pytestmark = pytest.mark.requires_cap("KVM_CAP_IRQCHIP")
APIC = APIC_DEFAULT_PHYS_BASE
SENT = [0x20, 0x50, 0x21]         # in this order; 0x20 and 0x21 share priority class 2
LOG = L.DATA                      # (vector, saved RIP) per handler run, after a count

GUEST = f"""
    mov rbx, {APIC:#x}
    mov dword ptr [rbx + 0xF0], 0x1FF
    mov rdi, {LOG:#x}
    cli
    {{sends}}
    GUEST_SYNC 0                                # all pending, IF=0
    sti
    nop                                         # STI's shadow
opened:
    cli
    GUEST_DONE
{{handlers}}
"""

def test_pending_self_ipis_are_taken_highest_priority_first(guest):
    """Self IPIs of vectors 0x20, 0x50 and 0x21 sent with IF=0 all wait in IRR; after STI (whose
    shadow covers the next instruction) they are taken 0x50, 0x21, 0x20 — class 5 before class 2,
    and 0x21 before 0x20 within class 2 (11.8.3) — each handler's saved RIP being the instruction
    after the shadowed NOP: each EOI and IRET leaves IF=1, so the next is taken at that same
    boundary."""
    sends = "\n    ".join(f"mov dword ptr [rbx + 0x300], {0x44000 | v:#x}" for v in SENT)
    handlers = logging_handlers(SENT)
    g = guest("long64", GUEST.format(sends=sends, handlers=handlers), irqchip=True)
    g.page_tables.map(APIC, APIC, KiB4, PTE_P | PTE_RW | PTE_PCD)
    for v in SENT:
        g.set_idt_gate(v, f"v{v:x}")
    assert g.expect_sync() == 0
    count = g.vm.read_u32(LOG)
    assert count == 0, f"{count} handlers ran with IF=0"
    g.run_to_done()
    got = read_interrupt_log(g.vm, LOG)
    opened = g.labels["opened"]
    want = [(v, opened) for v in (0x50, 0x21, 0x20)]
    assert got == want, f"(vector, saved RIP) per handler run: {[(hex(v), hex(r)) for v, r in got]}; expected " \
                        f"{[(hex(v), hex(r)) for v, r in want]}"
