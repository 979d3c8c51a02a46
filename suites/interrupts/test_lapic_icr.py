"""The interrupt command register for every vector, delivery mode and destination: what the guest
writes reads back, through KVM_GET_LAPIC in xAPIC mode and through RDMSR of the 64-bit x2APIC ICR;
and the x2APIC ICR's reserved bits, whose setting raises #GP(0) (SDM Vol. 3A 11.6.1 Figure 11-12,
11.12.9 Figure 11-28, 11.12.1.3 "Reserved Bit Checking"; api.rst 4.57 KVM_GET_LAPIC; selftests
xapic_state_test)."""

import struct

import pytest

from kvmtest import lapic
from kvmtest.guest import layout as L
from kvmtest.guest.apic_source import X2APIC_ON
from kvmtest.guest.paging import KiB4
from kvmtest.x86 import (
    APIC_DEFAULT_PHYS_BASE,
    APIC_ICR,
    APIC_ICR2,
    MSR_IA32_X2APIC_ICR,
    PTE_P,
    PTE_PCD,
    PTE_RW,
)

pytestmark = pytest.mark.requires_cap("KVM_CAP_IRQCHIP")
APIC = APIC_DEFAULT_PHYS_BASE
TABLE = L.DATA                    # the ICR values the guest writes, 8 bytes each
ASSERT = 1 << 14                  # level: assert (delivery status, bit 12, is read-only: never written)
SELF, ALL_BUT_SELF = 1 << 18, 3 << 18


def _icr_values(dest_shift: int, own_id: int = 0) -> list[int]:
    """Fixed IPIs with every vector to self (shorthand) and to the own APIC ID; every delivery mode
    to every other 8-bit APIC ID no vCPU has, and with the all-excluding-self shorthand (vector
    0xFF). The guest keeps IF=0, so what reaches its own APIC stays pending."""
    values = [SELF | ASSERT | v for v in range(256)]
    values += [own_id << dest_shift | ASSERT | v for v in range(256)]
    values += [dest << dest_shift | mode << 8 | ASSERT | 0xFF
               for dest in range(1, 255) for mode in range(8)]
    values += [ALL_BUT_SELF | mode << 8 | ASSERT | 0xFF for mode in range(8)]
    return values


XAPIC_WRITES = f"""
    cli
    mov rbx, {APIC:#x}
    mov dword ptr [rbx + 0xF0], 0x1FF
    mov rsi, {TABLE:#x}
    mov r12d, {{count}}
1:  mov eax, dword ptr [rsi + 4]
    mov dword ptr [rbx + 0x310], eax            # ICR high first: the low write sends
    mov eax, dword ptr [rsi]
    mov dword ptr [rbx + 0x300], eax
    GUEST_SYNC rsi                              # the host reads the ICR with KVM_GET_LAPIC here
    add rsi, 8
    dec r12d
    jnz 1b
    GUEST_DONE
"""


def test_xapic_icr_reads_back_through_get_lapic(guest):
    """Each ICR value written by the guest (high half, then low) is what KVM_GET_LAPIC shows at
    offsets 0x300/0x310 right after, bit 12 (delivery status, read-only) aside: 2,552 values over
    every vector, delivery mode and 8-bit destination (11.6.1; api.rst 4.57: "the same as
    documented in the architecture manual")."""
    values = _icr_values(56)
    g = guest("long64", XAPIC_WRITES.format(count=len(values)), irqchip=True)
    g.page_tables.map(APIC, APIC, KiB4, PTE_P | PTE_RW | PTE_PCD)
    g.vm.write(TABLE, b"".join(struct.pack("<Q", v) for v in values))
    wrong = []
    for value in values:
        g.expect_sync()
        state = g.vcpu.get_lapic()
        got = lapic.reg(state, APIC_ICR2) << 32 | lapic.reg(state, APIC_ICR) & ~0x1000
        if got != value:
            wrong.append(f"wrote {value:#018x} read {got:#018x}")
    g.run_to_done()
    assert not wrong, f"{len(wrong)} of {len(values)} ICR values read back wrong through KVM_GET_LAPIC: " \
                      f"{'; '.join(wrong[:8])}"


def _x2apic(source: str) -> str:
    return f"""
    cli
    {X2APIC_ON}
    {source}
    """


X2APIC_WRITES = _x2apic(f"""
    mov rsi, {TABLE:#x}
    mov r12d, {{count}}
1:  mov ecx, {MSR_IA32_X2APIC_ICR:#x}
    mov eax, dword ptr [rsi]
    mov edx, dword ptr [rsi + 4]
    wrmsr
    rdmsr
    cmp eax, dword ptr [rsi]
    jne 2f
    cmp edx, dword ptr [rsi + 4]
    jne 2f
    add rsi, 8
    dec r12d
    jnz 1b
    GUEST_DONE
2:
    GUEST_SYNC rsi                              # the entry that read back wrong,
    shl rdx, 32
    or rax, rdx
    GUEST_SYNC rax                              # and what RDMSR returned
    GUEST_DONE
""")


@pytest.mark.requires_cpu("x2apic")
def test_x2apic_icr_reads_back_for_every_vector_and_destination(guest):
    """In x2APIC mode WRMSR of the 64-bit ICR (MSR 0x830, destination in bits 63:32) and RDMSR of it
    return the value written, for the same 2,552 vectors, delivery modes and destinations
    (11.12.9)."""
    values = _icr_values(32)
    g = guest("long64", X2APIC_WRITES.format(count=len(values)), irqchip=True)
    g.vm.write(TABLE, b"".join(struct.pack("<Q", v) for v in values))
    syncs = g.run_to_done()
    if syncs:
        index = (syncs[0] - TABLE) // 8
        pytest.fail(f"x2APIC ICR entry {index} of {len(values)}: wrote {values[index]:#018x}, RDMSR returned "
                    f"{syncs[1]:#018x}")


@pytest.mark.requires_cpu("x2apic")
@pytest.mark.parametrize("bit", [13, 16, 17, 20, 31])
def test_x2apic_icr_reserved_bit_is_gp(guest, bit):
    """In x2APIC mode bits 13, 17:16 and 31:20 of the ICR are reserved (Figure 11-28), and a WRMSR
    that sets a reserved bit of an x2APIC register raises #GP(0) (11.12.1.3); the ICR keeps the
    value it had (selftests xapic_state_test x2APIC reserved bits)."""
    before = 0x00000055_00004042
    g = guest("long64", _x2apic(f"""
        mov ecx, {MSR_IA32_X2APIC_ICR:#x}
        mov eax, {before & 0xFFFFFFFF:#x}
        mov edx, {before >> 32:#x}
        wrmsr
        or eax, {1 << bit:#x}
        GUEST_ASSERT_RAISES GP(0), wrmsr
        rdmsr
        shl rdx, 32
        or rax, rdx
        GUEST_SYNC rax
        GUEST_DONE"""), irqchip=True)
    (after,) = g.run_to_done()
    assert after == before, f"x2APIC ICR after the refused write of bit {bit}: {after:#x}, expected {before:#x}"
