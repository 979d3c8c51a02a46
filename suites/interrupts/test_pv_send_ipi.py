"""KVM_HC_SEND_IPI: a paravirtual IPI to the vCPUs of a bitmap of APIC IDs (a0, a1: the bitmap's
low and high parts, bit 0 being APIC ID a2; a3: the ICR), returning "the number of CPUs to which
the IPIs were delivered successfully" (Documentation/virt/kvm/x86/hypercalls.rst KVM_HC_SEND_IPI,
available with KVM_FEATURE_PV_SEND_IPI, x86/cpuid.rst; kvm-unit-tests apic.c test_pv_ipi)."""

import pytest

from kvmtest.cpuid import find_entry, hypercall_instruction
from kvmtest.guest.aps import run_with_waiting_aps
from kvmtest.guest.paging import KiB4
from kvmtest.x86 import (
    APIC_DEFAULT_PHYS_BASE,
    KVM_CPUID_FEATURES,
    KVM_FEATURE_PV_SEND_IPI,
    KVM_HC_SEND_IPI,
    PTE_P,
    PTE_PCD,
    PTE_RW,
)

pytestmark = pytest.mark.requires_cap("KVM_CAP_IRQCHIP")
APIC = APIC_DEFAULT_PHYS_BASE
VECTOR = 0x40


def _hypercall_insn(kvm) -> str:
    """VMMCALL on AMD, VMCALL on Intel (hypercalls.rst: the vendor's instruction)."""
    return hypercall_instruction(kvm.cached_supported_cpuid())


SEND = """
    mov rbx, {apic:#x}
    mov dword ptr [rbx + 0xF0], 0x1FF
    GUEST_SYNC 1
    mov eax, {nr}
    mov ebx, 0b110                              # a0: APIC IDs a2 + 1 and a2 + 2
    xor ecx, ecx                                # a1: no IDs from a2 + 64 on
    xor edx, edx                                # a2: the bitmap starts at APIC ID 0
    mov esi, {icr:#x}                           # a3: fixed, assert, vector
    {insn}
    GUEST_SYNC rax
    GUEST_DONE
ap:
    mov rbx, {apic:#x}
    mov dword ptr [rbx + 0xF0], 0x1FF
    GUEST_SYNC 2
    sti
1:  hlt
    jmp 1b
handler:
    GUEST_SYNC {vector:#x}
    GUEST_DONE
"""


@pytest.mark.guest_timeout(2)  # a host that never completes the hypercall fails in 2 s
def test_pv_send_ipi_reaches_the_vcpus_of_its_bitmap(kvm, guest):
    """vCPU 0's KVM_HC_SEND_IPI with bitmap 0b110 from APIC ID 0 (IDs 1 and 2; only vCPU 1 exists)
    and a fixed ICR for vector 0x40 returns 1 in RAX, and vCPU 1 takes vector 0x40 (hypercalls.rst
    KVM_HC_SEND_IPI)."""
    leaf = find_entry(kvm.cached_supported_cpuid(), KVM_CPUID_FEATURES)
    if leaf is None or leaf.function != KVM_CPUID_FEATURES or not leaf.eax >> KVM_FEATURE_PV_SEND_IPI & 1:
        pytest.skip(f"KVM_GET_SUPPORTED_CPUID leaf {KVM_CPUID_FEATURES:#x} lacks KVM_FEATURE_PV_SEND_IPI")
    g = guest("long64", SEND.format(apic=APIC, nr=KVM_HC_SEND_IPI, icr=0x4000 | VECTOR, insn=_hypercall_insn(kvm),
                                    vector=VECTOR), irqchip=True)
    g.page_tables.map(APIC, APIC, KiB4, PTE_P | PTE_RW | PTE_PCD)
    g.set_idt_gate(VECTOR, "handler")
    got = run_with_waiting_aps(g, 1, timeout=5)
    assert got[0] == [1], f"KVM_HC_SEND_IPI returned {got[0]} in RAX, expected [1] (one vCPU in the bitmap exists)"
    assert got[1] == [VECTOR], f"vCPU 1's GUEST_SYNC values {got[1]}: it did not take vector {VECTOR:#x}"
