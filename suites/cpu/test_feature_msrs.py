"""The feature MSRs of KVM_GET_MSR_FEATURE_INDEX_LIST on a new vCPU (selftests x86/feature_msrs_test).

api.rst 4.18: KVM_GET_MSRS on the system fd reads "the values of MSR-based features that are
available for the VM". api.rst 7.31 KVM_CAP_DISABLE_QUIRKS2, KVM_X86_QUIRK_STUFF_FEATURE_MSRS: by
default, at vCPU creation, KVM sets IA32_PERF_CAPABILITIES (0x345), IA32_ARCH_CAPABILITIES (0x10A),
MSR_PLATFORM_INFO (0xCE) and the VMX MSRs (0x480-0x492) "to the maximal capabilities supported by
KVM", and IA32_UCODE_REV (0x8B) to an arbitrary value; with the quirk disabled it zeroes them,
except VMX CR0/CR4_FIXED1 (0x487, 0x489), which KVM derives from the vCPU's CPUID. Each is set
here only where the host lists it; the vCPU gets KVM's supported CPUID first, as user space does.
"""

import pytest

from kvmtest.msr_names import msr_name
from kvmtest.x86 import MSR_IA32_ARCH_CAPABILITIES, MSR_IA32_BIOS_SIGN_ID, MSR_IA32_PERF_CAPABILITIES, MSR_PLATFORM_INFO

KVM_X86_QUIRK_STUFF_FEATURE_MSRS = 1 << 8   # arch/x86/include/uapi/asm/kvm.h
VMX_MSRS = range(0x480, 0x493)              # IA32_VMX_BASIC .. IA32_VMX_PROCBASED_CTLS3
VMX_FIXED1 = (0x487, 0x489)                 # IA32_VMX_CR0_FIXED1, IA32_VMX_CR4_FIXED1: outside the quirk
MSR_AMD64_DE_CFG = 0xC0011029               # APM Vol. 2 Appendix A; a feature MSR outside the quirk
QUIRKED = [MSR_IA32_BIOS_SIGN_ID, MSR_IA32_ARCH_CAPABILITIES, MSR_IA32_PERF_CAPABILITIES, MSR_PLATFORM_INFO,
           *VMX_MSRS]


def _id(index):
    return f"{index:#x}"


def _listed(kvm, index):
    if not kvm.check_extension("KVM_CAP_GET_MSR_FEATURES"):
        pytest.skip("needs KVM_CAP_GET_MSR_FEATURES")
    if index not in kvm.msr_feature_index_list():
        pytest.skip(f"{msr_name(index)} is not in KVM_GET_MSR_FEATURE_INDEX_LIST on this host")
    return kvm.read_feature_msrs([index])[index]


def _new_vcpu(kvm, vm):
    vcpu = vm.create_vcpu()
    vcpu.set_cpuid(kvm.cached_supported_cpuid())
    return vcpu


@pytest.mark.parametrize("index", [m for m in QUIRKED if m != MSR_IA32_BIOS_SIGN_ID and m not in VMX_FIXED1], ids=_id)
def test_feature_msr_starts_at_the_supported_value(kvm, vm, index):
    """With KVM_X86_QUIRK_STUFF_FEATURE_MSRS in force (the default), a new vCPU's KVM_GET_MSRS reads
    each quirked feature MSR as the system KVM_GET_MSRS reports it: KVM's maximal supported value
    (api.rst 7.31, 4.18). The microcode revision's value is arbitrary, so it is not checked."""
    supported = _listed(kvm, index)
    got = _new_vcpu(kvm, vm).get_msr(index)
    assert got == supported, \
        f"new vCPU: KVM_GET_MSRS {msr_name(index)} = {got:#x}; the system KVM_GET_MSRS reports {supported:#x}"


@pytest.mark.parametrize("index", [m for m in QUIRKED if m not in VMX_FIXED1], ids=_id)
def test_feature_msr_starts_at_zero_with_the_quirk_disabled(kvm, vm, index):
    """With KVM_X86_QUIRK_STUFF_FEATURE_MSRS disabled through KVM_CAP_DISABLE_QUIRKS2 before the
    vCPU exists, its quirked feature MSRs read 0 (api.rst 7.31: "KVM zeroes the vCPU's MSR values")."""
    _listed(kvm, index)
    if not kvm.check_extension("KVM_CAP_DISABLE_QUIRKS2") & KVM_X86_QUIRK_STUFF_FEATURE_MSRS:
        pytest.skip("KVM_X86_QUIRK_STUFF_FEATURE_MSRS cannot be disabled here")
    vm.enable_cap("KVM_CAP_DISABLE_QUIRKS2", KVM_X86_QUIRK_STUFF_FEATURE_MSRS)
    got = _new_vcpu(kvm, vm).get_msr(index)
    assert got == 0, f"new vCPU with the quirk disabled: KVM_GET_MSRS {msr_name(index)} = {got:#x}, expected 0"


@pytest.mark.parametrize("index", [m for m in QUIRKED if m not in VMX_FIXED1] + [MSR_AMD64_DE_CFG], ids=_id)
@pytest.mark.parametrize("quirk", ["quirk-on", "quirk-off"])
def test_host_sets_a_feature_msr_to_its_supported_value(kvm, vm, index, quirk):
    """KVM_SET_MSRS of a feature MSR to the value the system KVM_GET_MSRS reports as available for
    the VM sets 1 MSR, and the vCPU's KVM_GET_MSRS reads it back, whether the vCPU started at that
    value or, with the quirk disabled, at 0 (api.rst 4.18, 4.19 "returns the number of msrs
    successfully set", 7.31)."""
    supported = _listed(kvm, index)
    if quirk == "quirk-off":
        if not kvm.check_extension("KVM_CAP_DISABLE_QUIRKS2") & KVM_X86_QUIRK_STUFF_FEATURE_MSRS:
            pytest.skip("KVM_X86_QUIRK_STUFF_FEATURE_MSRS cannot be disabled here")
        vm.enable_cap("KVM_CAP_DISABLE_QUIRKS2", KVM_X86_QUIRK_STUFF_FEATURE_MSRS)
    vcpu = _new_vcpu(kvm, vm)
    n = vcpu.set_msrs({index: supported})
    assert n == 1, f"KVM_SET_MSRS {msr_name(index)} = {supported:#x} (the system KVM_GET_MSRS value) set {n} MSRs"
    got = vcpu.get_msr(index)
    assert got == supported, f"KVM_SET_MSRS {msr_name(index)} = {supported:#x} accepted, KVM_GET_MSRS reads {got:#x}"
