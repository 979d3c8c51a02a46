"""IA32_APIC_BASE written by the guest: moving the xAPIC register page to another base address,
and the reserved bits whose setting raises #GP(0) (SDM Vol. 3A 11.4.4 "Local APIC Status and
Location", Figure 11-5; Vol. 2B WRMSR; kvm-unit-tests apic.c test_apicbase)."""

import pytest

from kvmtest.cpuid import find_entry
from kvmtest.exits import MmioExit
from kvmtest.guest.paging import KiB4
from kvmtest.x86 import (
    APIC_BASE_BSP,
    APIC_BASE_EN,
    APIC_BASE_EXTD,
    APIC_DEFAULT_PHYS_BASE,
    MSR_IA32_APIC_BASE,
    PTE_P,
    PTE_PCD,
    PTE_RW,
)

pytestmark = pytest.mark.requires_cap("KVM_CAP_IRQCHIP")
APIC = APIC_DEFAULT_PHYS_BASE
MOVED = 0xFED40000                # a 4 KiB-aligned base below 4 GiB that nothing else uses

RELOCATE = f"""
    mov rbx, {APIC:#x}
    mov esi, dword ptr [rbx + 0x30]             # version register at the reset base
    mov ecx, {MSR_IA32_APIC_BASE:#x}
    rdmsr
    mov edi, eax
    and eax, ~{APIC_BASE_EN | APIC_BASE_EXTD:#x}
    wrmsr                                       # disabled: the base may be changed
    mov eax, {MOVED | APIC_BASE_BSP | APIC_BASE_EN:#x}
    xor edx, edx
    wrmsr                                       # enabled again at the new base
    mov rbx, {MOVED:#x}
    mov eax, dword ptr [rbx + 0x30]
    GUEST_SYNC rsi
    GUEST_SYNC rax                              # version register at the new base
    mov rbx, {APIC:#x}
    old_base: mov eax, dword ptr [rbx + 0x30]   # no longer the APIC
    GUEST_DONE
"""


def test_apic_registers_follow_a_new_base_address(guest):
    """After the guest disables its APIC and enables it again with base 0xFED40000 in
    IA32_APIC_BASE[35:12] (11.4.4), the version register reads the same at the new base as it
    did at 0xFEE00000, and a read of the old address is no longer the APIC's: with no memslot
    there it exits to user space as KVM_EXIT_MMIO (api.rst 5 KVM_EXIT_MMIO)."""
    g = guest("long64", RELOCATE, irqchip=True)
    for page in (APIC, MOVED):
        g.page_tables.map(page, page, KiB4, PTE_P | PTE_RW | PTE_PCD)
    before, after = g.expect_sync(), g.expect_sync()
    assert before & 0xFF and after == before, \
        f"version register at {MOVED:#x} after the move: {after:#x}; at {APIC:#x} before: {before:#x}"
    g.expect_exit(MmioExit, phys_addr=APIC + 0x30, len=4, is_write=False).respond(0)
    g.run_to_done()
    base = g.vcpu.get_msr(MSR_IA32_APIC_BASE)
    assert base == MOVED | APIC_BASE_BSP | APIC_BASE_EN, \
        f"KVM_GET_MSRS IA32_APIC_BASE {base:#x}, expected {MOVED | APIC_BASE_BSP | APIC_BASE_EN:#x}"


def _maxphyaddr(cpuid) -> int:
    leaf = find_entry(cpuid, 0x80000008)
    assert leaf is not None and leaf.function == 0x80000008, "the vCPU's CPUID has no leaf 0x80000008"
    return leaf.eax & 0xFF


@pytest.mark.parametrize("bit", ["0", "7", "9", "maxphyaddr", "63"])
def test_setting_a_reserved_apic_base_bit_is_gp(kvm, guest, bit):
    """WRMSR of IA32_APIC_BASE with a reserved bit set raises #GP(0) and leaves the MSR as it was:
    bits 7:0 and 9 are reserved, and so are bits MAXPHYADDR-63 above the base (11.4.4, Figure
    11-5; MAXPHYADDR from CPUID.80000008H:EAX[7:0]; Vol. 2B WRMSR)."""
    n = _maxphyaddr(kvm.cached_supported_cpuid()) if bit == "maxphyaddr" else int(bit)  # the vCPU's CPUID
    reg, shift = ("edx", n - 32) if n >= 32 else ("eax", n)
    g = guest("long64", f"""
        mov ecx, {MSR_IA32_APIC_BASE:#x}
        rdmsr
        or {reg}, {1 << shift:#x}
        GUEST_ASSERT_RAISES GP(0), wrmsr
        GUEST_DONE""", irqchip=True)
    before = g.vcpu.get_msr(MSR_IA32_APIC_BASE)
    g.run_to_done()
    after = g.vcpu.get_msr(MSR_IA32_APIC_BASE)
    assert after == before, f"IA32_APIC_BASE {after:#x} after the refused write of bit {n}, expected {before:#x}"
