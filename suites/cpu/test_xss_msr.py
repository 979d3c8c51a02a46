"""IA32_XSS, the supervisor-state component bitmap of XSAVES/XRSTORS (selftests x86/xss_msr_test).

SDM Vol. 4 Table 2-2: IA32_XSS (DA0H) exists if CPUID.(EAX=0DH, ECX=1):EAX.XSAVES[3] = 1; SDM
Vol. 1 13.3: bit i of IA32_XSS may be 1 only if CPUID.(EAX=0DH, ECX=1):EDX:ECX[i] = 1 (a supervisor
state component the processor supports), otherwise WRMSR raises #GP(0). SDM
Vol. 2B RDMSR/WRMSR: an MSR the processor does not implement raises #GP(0). api.rst 4.3: what
KVM_GET_MSR_INDEX_LIST lists is what user space saves and restores, so an IA32_XSS that can hold a
nonzero value must be there; 4.19 KVM_SET_MSRS returns how many MSRs it set.
"""

import pytest

from kvmtest.cpuid import find_entry, set_feature
from kvmtest.x86 import MSR_IA32_XSS


def _supported_xss(kvm) -> int:
    """The supervisor components KVM offers: KVM_GET_SUPPORTED_CPUID leaf 0DH.1, EDX:ECX."""
    e = find_entry(kvm.supported_cpuid(), 0xD, 1)
    return 0 if e is None or (e.function, e.index) != (0xD, 1) else e.edx << 32 | e.ecx


@pytest.mark.parametrize("op", ["rdmsr", "wrmsr"])
def test_ia32_xss_without_xsaves_raises_gp(kvm, guest, op):
    """With CPUID.(0DH,1):EAX.XSAVES[3] clear the vCPU has no IA32_XSS: RDMSR, and WRMSR of 0,
    raise #GP(0) (SDM Vol. 4 Table 2-2, Vol. 2B RDMSR/WRMSR)."""
    g = guest("long64", f"mov ecx, {MSR_IA32_XSS:#x}\nxor eax, eax\nxor edx, edx\nGUEST_ASSERT_RAISES GP(0), {op}\n"
                        "GUEST_DONE")
    table = kvm.supported_cpuid_copy()
    set_feature(table, "xsaves", False)
    g.vcpu.set_cpuid(table)
    g.run_to_done()


@pytest.mark.requires_cpu("xsaves")
def test_ia32_xss_starts_at_zero_and_takes_only_supported_components(kvm, vcpu):
    """IA32_XSS reads 0 on a new vCPU (no supervisor component enabled in the power-up state
    KVM_CREATE_VCPU gives, api.rst 4.7); writing it back sets 1 MSR; of the 64 single-bit values,
    KVM_SET_MSRS sets exactly those in CPUID.(0DH,1):EDX:ECX as KVM reports it and refuses the rest
    (returns 0), and the MSR keeps the last value set; if any nonzero value can be set, IA32_XSS is
    in KVM_GET_MSR_INDEX_LIST (SDM Vol. 1 13.3; api.rst 4.3, 4.19)."""
    vcpu.set_cpuid(kvm.supported_cpuid())
    assert vcpu.get_msr(MSR_IA32_XSS) == 0, f"IA32_XSS of a new vCPU is {vcpu.get_msr(MSR_IA32_XSS):#x}, not 0"
    assert vcpu.set_msrs({MSR_IA32_XSS: 0}) == 1, "KVM_SET_MSRS refused IA32_XSS = 0"
    supported = _supported_xss(kvm)
    wrong = []
    for bit in range(64):
        value = 1 << bit
        got = vcpu.set_msrs({MSR_IA32_XSS: value})
        if got != (1 if value & supported else 0):
            wrong.append(f"bit {bit}: set {got} MSRs")
        elif got:
            readback = vcpu.get_msr(MSR_IA32_XSS)
            if readback != value:
                wrong.append(f"bit {bit}: set, reads {readback:#x}")
            vcpu.set_msrs({MSR_IA32_XSS: 0})
    assert not wrong, f"IA32_XSS against the supported components {supported:#x}: {wrong}"
    if supported:
        assert MSR_IA32_XSS in kvm.msr_index_list(), \
            "IA32_XSS can hold nonzero values but is not in KVM_GET_MSR_INDEX_LIST"


@pytest.mark.requires_cpu("xsaves")
def test_guest_wrmsr_of_an_unsupported_xss_component_raises_gp(kvm, guest):
    """With XSAVES enumerated, the guest's WRMSR of IA32_XSS with a component outside
    CPUID.(0DH,1):EDX:ECX raises #GP(0), and IA32_XSS stays 0 (SDM Vol. 1 13.3)."""
    unsupported = ~_supported_xss(kvm) & ((1 << 64) - 1)
    bit = (unsupported & -unsupported).bit_length() - 1   # the lowest bit KVM does not offer
    g = guest("long64", f"mov ecx, {MSR_IA32_XSS:#x}\nmov eax, {(1 << bit) & 0xFFFFFFFF:#x}\n"
                        f"mov edx, {(1 << bit) >> 32:#x}\nGUEST_ASSERT_RAISES GP(0), wrmsr\nGUEST_DONE")
    g.vcpu.set_cpuid(kvm.supported_cpuid())
    g.run_to_done()
    assert g.vcpu.get_msr(MSR_IA32_XSS) == 0, f"IA32_XSS after the refused write of bit {bit}"
