"""Guest source for RDMSR and WRMSR of MSRs and values the host picks (SDM Vol. 2B RDMSR, WRMSR:
ECX selects the MSR, EDX:EAX holds the 64-bit value)."""

from .. import validate


def load_msr(msr: int, value: int) -> str:
    """ECX = `msr` and EDX:EAX = `value`, ready for a WRMSR (or for GUEST_ASSERT_RAISES of one).
    Clobbers EAX, ECX, EDX."""
    msr = validate.uint(msr, 32, "MSR index")
    value = validate.uint(value, 64, f"value for MSR {msr:#x}")
    return f"mov ecx, {msr:#x}\nmov eax, {value & 0xFFFFFFFF:#x}\nmov edx, {value >> 32:#x}\n"


def wrmsr(msr: int, value: int) -> str:
    """WRMSR of `value` to `msr`. Clobbers EAX, ECX, EDX."""
    return load_msr(msr, value) + "wrmsr\n"


def rdmsr64(msr: int) -> str:
    """64-bit code: RDMSR of `msr`, the value left whole in RAX (RDX:RAX joined). Clobbers RCX, RDX."""
    msr = validate.uint(msr, 32, "MSR index")
    return f"mov ecx, {msr:#x}\nrdmsr\nshl rdx, 32\nor rax, rdx\n"
