"""MSR names for messages: 'IA32_PAT (0x277)', from the MSR_* numbers of kvmtest.x86.msr.

The name shown is the document's own: the SDM's architectural MSRs without the MSR_ that
kvmtest.x86 puts in front (IA32_PAT), every other one as kvmtest.x86 spells it (MSR_PLATFORM_INFO,
MSR_KVM_STEAL_TIME, MSR_AMD64_HWCR, HV_X64_MSR_VP_RUNTIME).
"""

from .x86 import msr as _msr

MSR_NAMES: dict[int, str] = {value: name.removeprefix("MSR_") if name.startswith("MSR_IA32_") else name
                             for name, value in vars(_msr).items() if name.startswith(("MSR_", "HV_X64_MSR_"))}


def msr_name(index: int) -> str:
    """'IA32_PAT (0x277)', or 'MSR 0x123' for an MSR kvmtest.x86 has no name for."""
    name = MSR_NAMES.get(index)
    return f"{name} ({index:#x})" if name else f"MSR {index:#x}"
