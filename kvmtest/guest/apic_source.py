"""Guest source for the local APIC, shared by the checks and benchmarks that drive it from inside
(SDM Vol. 3A chapter 11)."""

from ..x86 import (
    APIC_BASE_EN,
    APIC_BASE_EXTD,
    APIC_DEFAULT_PHYS_BASE,
    APIC_ICR,
    APIC_ICR2,
    APIC_SVR,
    MSR_IA32_APIC_BASE,
    MSR_IA32_X2APIC_SIVR,
)

# x2APIC mode (IA32_APIC_BASE EN and EXTD, SDM Vol. 3A 11.12.1), then software-enabled through the
# spurious-interrupt vector register with vector 0xFF (11.9). Clobbers EAX, ECX, EDX.
X2APIC_ON = f"""
    mov ecx, {MSR_IA32_APIC_BASE:#x}
    rdmsr
    or eax, {APIC_BASE_EN | APIC_BASE_EXTD:#x}
    wrmsr
    mov ecx, {MSR_IA32_X2APIC_SIVR:#x}
    mov eax, 0x1FF
    xor edx, edx
    wrmsr
"""

# An AP's side of the IPI checks, at label `ap`: software-enable its xAPIC (11.9), report in with
# GUEST_SYNC 2 (kvmtest.guest.aps.ready_ap), then wait in HLT with IF=1 for an interrupt. Leaves RBX
# = the xAPIC base for its handlers.
XAPIC_AP_WAITS = f"""
ap:
    mov rbx, {APIC_DEFAULT_PHYS_BASE:#x}
    mov dword ptr [rbx + {APIC_SVR:#x}], 0x1FF
    GUEST_SYNC 2
    sti
ap_wait:
    hlt
    jmp ap_wait
"""

# vCPU 0 enables its xAPIC, reports GUEST_SYNC 1, sends a fixed IPI with vector 0x40 to APIC ID 1
# (11.6.1) and ends; vCPU 1 waits as XAPIC_AP_WAITS, and its vector 0x40 handler `ap_ipi`
# reports 0x40. Both vCPUs' pages must map the xAPIC page.
FIXED_IPI_TO_ID1 = f"""
    mov rbx, {APIC_DEFAULT_PHYS_BASE:#x}
    mov dword ptr [rbx + {APIC_SVR:#x}], 0x1FF
    GUEST_SYNC 1
    mov dword ptr [rbx + {APIC_ICR2:#x}], 0x01000000     # destination APIC ID 1
    mov dword ptr [rbx + {APIC_ICR:#x}], 0x00004040      # fixed, assert, vector 0x40
    GUEST_DONE
{XAPIC_AP_WAITS}
ap_ipi:
    GUEST_SYNC 0x40
    GUEST_DONE
"""
