"""The in-kernel IOAPIC: edge and level-triggered GSIs through KVM_IRQ_LINE_STATUS, and a level
interrupt delivered again after EOI while the line stays asserted (api.rst 4.24/4.25;
82093AA IOAPIC datasheet redirection table; SDM Vol. 3A 11.8.5 EOI)."""

import time

import pytest

from kvmtest.eventfd import EventFd
from kvmtest.guest.aps import ready_ap
from kvmtest.guest.ioapic_source import IOAPIC_DEFAULT_BASE, IOREDTBL_LEVEL, IOREDTBL_MASKED, redirect, redirection_low
from kvmtest.guest.paging import KiB4
from kvmtest.x86 import APIC_DEFAULT_PHYS_BASE, PTE_P, PTE_PCD, PTE_RW

pytestmark = pytest.mark.requires_cap("KVM_CAP_IRQCHIP")
APIC, IOAPIC = APIC_DEFAULT_PHYS_BASE, IOAPIC_DEFAULT_BASE

SETUP = """
    mov rbx, 0xFEE00000
    mov dword ptr [rbx + 0xF0], 0x1FF           # LAPIC software enable
    mov rsi, 0xFEC00000
    mov dword ptr [rsi], {index_low:#x}         # IOREGSEL: redirection entry, low dword
    mov dword ptr [rsi + 0x10], {low:#x}        # IOWIN: vector, fixed, physical, trigger
    mov dword ptr [rsi], {index_high:#x}
    mov dword ptr [rsi + 0x10], 0               # destination APIC ID 0
    xor r12, r12
    GUEST_SYNC 0
    sti
wait:
    hlt
    jmp wait
"""

COUNTING_HANDLER = """
handler:
    inc r12
    GUEST_SYNC r12
    mov dword ptr [rbx + 0xB0], 0               # EOI
    cmp r12, {count}
    jb back
    GUEST_DONE
back:
    iretq
"""


def _guest(guest, pin, level, count, handler=COUNTING_HANDLER):
    low = 0x50 | (1 << 15 if level else 0)
    g = guest("long64", (SETUP + handler).format(index_low=0x10 + 2 * pin, index_high=0x11 + 2 * pin, low=low,
                                                 count=count), irqchip=True)
    for page in (APIC, IOAPIC):
        g.page_tables.map(page, page, KiB4, PTE_P | PTE_RW | PTE_PCD)
    g.set_idt_gate(0x50, "handler")
    assert g.expect_sync() == 0
    return g


def test_edge_gsi_is_delivered_once(guest):
    """An edge-triggered IOAPIC pin (GSI 16, IOAPIC only) raised and lowered with
    KVM_IRQ_LINE_STATUS delivers its vector once (api.rst 4.24: GSIs 16-23 go to the IOAPIC)."""
    g = _guest(guest, 16, level=False, count=1)
    g.vm.irq_line(16, 1)
    g.vm.irq_line(16, 0)
    assert g.run_to_done() == [1]


def test_level_gsi_is_delivered_again_while_asserted(guest):
    """A level-triggered pin still asserted at EOI is delivered again; once the line is
    lowered it stops (82093AA remote IRR; kvm-unit-tests ioapic.c level retrigger)."""
    g = _guest(guest, 17, level=True, count=2)
    g.vm.irq_line(17, 1)
    assert g.expect_sync() == 1
    assert g.expect_sync() == 2, "the level interrupt was not delivered again after EOI"
    g.vm.irq_line(17, 0)
    g.run_to_done()



INTERRUPTIBLE_HANDLER = """
handler:
    inc r12
    sti                                         # interrupts on, still in service (no EOI yet)
    nop
    GUEST_SYNC r12                              # an exit and re-entry with IF=1: injection point
    nop
    nop
    GUEST_SYNC r12
    cli
    mov dword ptr [rbx + 0xB0], 0               # EOI
    sti
    nop
    nop
    GUEST_SYNC r12
    GUEST_DONE
"""


def test_level_gsi_is_not_delivered_again_before_eoi(guest):
    """While a level-triggered interrupt is in service, its asserted line delivers nothing
    more even with EFLAGS.IF set, because remote IRR stays set until the EOI (82093AA
    redirection table) and the in-service vector holds its priority class (SDM Vol. 3A
    11.8.3.1); after the line is lowered, the EOI brings no second delivery either."""
    g = _guest(guest, 18, level=True, count=0, handler=INTERRUPTIBLE_HANDLER)
    g.vm.irq_line(18, 1)
    for _ in range(2):
        count = g.expect_sync()
        assert count == 1, f"handler entered {count} times before its EOI with the level line asserted, " \
                           "expected once (remote IRR and ISR hold the vector)"
    g.vm.irq_line(18, 0)
    assert g.run_to_done() == [1], "the lowered level line was delivered again after the EOI"

# Vector 0x50 is bit 16 of the third 32-bit word of TMR (0x180 + 0x20).
TMR_HANDLER = """
handler:
    mov eax, dword ptr [rbx + 0x1A0]
    GUEST_SYNC rax                              # TMR[95:64] while in service
    mov dword ptr [rbx + 0xB0], 0               # EOI
    GUEST_DONE
"""


@pytest.mark.parametrize("level", [True, False], ids=["level", "edge"])
def test_tmr_records_the_trigger_mode(guest, level):
    """When the local APIC accepts an interrupt from the IOAPIC it sets the vector's TMR bit if
    the redirection entry is level-triggered and clears it if edge-triggered (SDM Vol. 3A
    11.8.4; 82093AA redirection entry bit 15)."""
    g = _guest(guest, 20, level=level, count=1, handler=TMR_HANDLER)
    g.vm.irq_line(20, 1)
    if not level:
        g.vm.irq_line(20, 0)
    bit = 1 << (0x50 % 32)
    (tmr,) = g.run_to_done()
    assert tmr & bit == (bit if level else 0), \
        f"TMR bit for vector 0x50 ({'level' if level else 'edge'}): expected {int(level)}, TMR[95:64]={tmr:#x}"
    g.vm.irq_line(20, 0)


IRQFD_HANDLER = """
handler:
    inc r12
    GUEST_SYNC r12
    mov dword ptr [rbx + 0xB0], 0               # EOI
    sti
    GUEST_SYNC 0x77                             # the host writes the deassigned irqfd here
    nop
    GUEST_SYNC 0x78                             # a delivery at the re-entry would come first
    GUEST_DONE
"""


@pytest.mark.requires_cap("KVM_CAP_IRQFD")
@pytest.mark.waits
def test_irqfd_raises_its_gsi(guest):
    """Writing an eventfd registered with KVM_IRQFD for GSI 18 raises that GSI (an edge) in the
    in-kernel IOAPIC (api.rst KVM_IRQFD); after KVM_IRQFD_FLAG_DEASSIGN the eventfd is detached
    and a write no longer interrupts the guest, which is running with IF=1."""
    g = _guest(guest, 18, level=False, count=0, handler=IRQFD_HANDLER)
    with EventFd() as efd:
        g.vm.assign_irqfd(efd, 18)
        efd.signal()
        assert g.expect_sync() == 1, "the irqfd write did not deliver GSI 18's vector"
        assert g.expect_sync() == 0x77, "the handler did not reach the point after its EOI"
        g.vm.deassign_irqfd(efd, 18)
        efd.signal()
        time.sleep(0.05)  # an injection still wired up would be pending by the next entry
        assert g.run_to_done() == [0x78], "a write to the deassigned irqfd still interrupted the guest"


RESAMPLE_HANDLER = """
handler:
    inc r12
    GUEST_SYNC r12                              # in service, before EOI
    mov dword ptr [rbx + 0xB0], 0               # EOI: KVM lowers the line, signals resample
    GUEST_SYNC r12
    sti
    nop
    GUEST_SYNC r12                              # re-entry with IF=1: a line still up would nest here
    nop
    GUEST_SYNC r12
    GUEST_DONE
"""


@pytest.mark.requires_cap("KVM_CAP_IRQFD_RESAMPLE")
def test_resample_irqfd_is_level_and_signals_at_eoi(guest):
    """An irqfd with KVM_IRQFD_FLAG_RESAMPLE drives its GSI as a level: one write asserts it,
    and at the guest's EOI KVM lowers the line and signals the resample eventfd, so the vector
    is delivered once and the resample comes after the EOI, not before (api.rst KVM_IRQFD,
    KVM_CAP_IRQFD_RESAMPLE)."""
    g = _guest(guest, 19, level=True, count=0, handler=RESAMPLE_HANDLER)
    with EventFd("irqfd") as efd, EventFd("resample") as resample:
        g.vm.assign_irqfd(efd, 19, resample=resample)
        assert resample.count() == 0, "the resample eventfd was signalled before the irqfd was"
        efd.signal()
        assert g.expect_sync() == 1, "the irqfd write did not deliver GSI 19's vector once"
        assert resample.count() == 0, "the resample eventfd was signalled before the guest's EOI"
        assert g.expect_sync() == 1, "the handler did not reach the point after its EOI"
        assert resample.count() == 1, "the guest's EOI did not signal the resample eventfd"
        assert g.run_to_done() == [1, 1], "the vector was delivered again after the EOI: the line stayed up"


@pytest.mark.requires_cap("KVM_CAP_IRQ_ROUTING")
def test_gsi_routing_sends_a_new_gsi_to_an_ioapic_pin(guest):
    """KVM_SET_GSI_ROUTING replaces the routing table (api.rst 4.52): with GSI 40 routed to IOAPIC
    pin 19, KVM_IRQ_LINE_STATUS on GSI 40 delivers pin 19's vector. (The table keeps GSIs 0-23 on
    their default pins so the rest of the irqchip works as before.)"""
    from kvmtest.abi import constants as C

    g = _guest(guest, 19, level=False, count=1)
    route = g.vm.irqchip_route
    g.vm.set_gsi_routing([route(gsi, C.KVM_IRQCHIP_IOAPIC, gsi) for gsi in range(24)]
                         + [route(40, C.KVM_IRQCHIP_IOAPIC, 19)])
    g.vm.irq_line(40, 1)
    g.vm.irq_line(40, 0)
    assert g.run_to_done() == [1]


@pytest.mark.requires_cap("KVM_CAP_PIT2")
def test_pit2_is_created_once(vm):
    """KVM_CREATE_PIT2 after KVM_CREATE_IRQCHIP creates the in-kernel PIT; a second one is
    refused with EEXIST (api.rst KVM_CREATE_PIT2; kvm-ioctls test_pit2)."""
    import errno

    from kvmtest.abi.constants import errno_name

    vm.create_irqchip()
    vm.create_pit2()
    err = vm.try_create_pit2()
    assert err == errno.EEXIST, f"second KVM_CREATE_PIT2: expected EEXIST, got {errno_name(err)}"


LOGICAL = """
start:
    mov rbx, 0xFEE00000
    mov dword ptr [rbx + 0xF0], 0x1FF           # SVR: software enable
    mov dword ptr [rbx + 0xE0], 0xFFFFFFFF      # DFR: flat model
    mov ecx, dword ptr [rbx + 0x20]
    shr ecx, 24                                 # this vCPU's APIC ID
    mov eax, 1
    shl eax, cl
    shl eax, 24
    mov dword ptr [rbx + 0xD0], eax             # LDR: one bit per vCPU
    mov rsi, 0xFEC00000
    mov dword ptr [rsi], 0x38                   # pin 20, low dword
    mov dword ptr [rsi + 0x10], 0x851           # vector 0x51, fixed, logical destination
    mov dword ptr [rsi], 0x39
    mov dword ptr [rsi + 0x10], 0x0F000000      # logical destination mask: APICs 0-3
    GUEST_SYNC 1
    sti
wait:
    hlt
    jmp wait
handler:
    mov eax, dword ptr [rbx + 0x20]
    shr eax, 24
    GUEST_SYNC rax
    mov dword ptr [rbx + 0xB0], 0
    GUEST_DONE
"""


def test_logical_destination_reaches_every_vcpu_in_the_mask(guest):
    """An IOAPIC entry in logical destination mode with mask 0x0F delivers its fixed interrupt to
    every vCPU whose flat-model LDR bit is in the mask — four vCPUs here (82093AA; SDM Vol. 3A
    11.6.2.2; kvm-unit-tests ioapic.c with smp=4)."""
    g = guest("long64", LOGICAL, irqchip=True)
    for page in (APIC, IOAPIC):
        g.page_tables.map(page, page, KiB4, PTE_P | PTE_RW | PTE_PCD)
    g.set_idt_gate(0x51, "handler")
    assert g.expect_sync() == 1
    vcpus = [g.vcpu] + [ready_ap(g, g.add_vcpu("start"), ready=1) for _ in range(3)]
    threads = [g.in_thread(v, timeout=20) for v in vcpus]
    g.vm.irq_line(20, 1)
    g.vm.irq_line(20, 0)
    got = sorted(t.join(30)[0] for t in threads)
    assert got == [0, 1, 2, 3], f"APIC IDs that took the interrupt: {got}"


# Pin 21 (an IOAPIC-only GSI: those below 16 also reach the PIC), level-triggered, vector 0x52: masked,
# then unmasked with a write of the low dword alone.
MASKED_PIN_21 = redirect(21, IOREDTBL_LEVEL | IOREDTBL_MASKED | 0x52)
UNMASK_PIN_21 = redirection_low(21, IOREDTBL_LEVEL | 0x52)


def test_masked_level_pin_delivers_once_unmasked(guest):
    """A level interrupt on a masked redirection entry is held back; when the guest unmasks the
    entry while the line is still asserted, it is delivered (82093AA mask bit 16; kvm-unit-tests
    ioapic.c masking)."""
    g = guest("long64", f"""
        mov rbx, {APIC:#x}
        mov dword ptr [rbx + 0xF0], 0x1FF
        mov rsi, {IOAPIC:#x}
        {MASKED_PIN_21}
        sti
        GUEST_SYNC 1
        nop
        GUEST_SYNC 2
        {UNMASK_PIN_21}
    wait:
        hlt
        jmp wait
    handler:
        GUEST_SYNC 0x52
        GUEST_DONE""", irqchip=True)
    for page in (APIC, IOAPIC):
        g.page_tables.map(page, page, KiB4, PTE_P | PTE_RW | PTE_PCD)
    g.set_idt_gate(0x52, "handler")
    assert g.expect_sync() == 1
    g.vm.irq_line(21, 1)
    assert g.expect_sync() == 2, "the masked pin's interrupt was delivered"
    assert g.expect_sync() == 0x52
    g.vm.irq_line(21, 0)
    g.run_to_done()


def test_ioapic_version_register(guest):
    """IOAPIC register 1 reports the version and the highest redirection entry: KVM's IOAPIC has
    24 pins, so bits 23:16 hold 23 (82093AA IOAPICVER)."""
    g = guest("long64", "mov rsi, 0xFEC00000\nmov dword ptr [rsi], 1\nmov eax, dword ptr [rsi + 0x10]\n"
                        "shr eax, 16\nand eax, 0xff\nGUEST_SYNC eax\nGUEST_DONE", irqchip=True)
    g.page_tables.map(IOAPIC, IOAPIC, KiB4, PTE_P | PTE_RW | PTE_PCD)
    assert g.run_to_done() == [23]
