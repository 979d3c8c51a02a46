"""Guest source for the local APIC, shared by the checks and benchmarks that drive it from inside."""

from ..x86 import APIC_BASE_EN, APIC_BASE_EXTD, MSR_IA32_APIC_BASE, MSR_IA32_X2APIC_SIVR

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
