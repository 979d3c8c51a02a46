"""KVM_CAP_ENFORCE_PV_FEATURE_CPUID: with it enabled, "KVM will disable paravirtual features
provided to the guest according to the bits in the KVM_CPUID_FEATURES CPUID leaf (0x40000001)"
(api.rst KVM_CAP_ENFORCE_PV_FEATURE_CPUID). Each paravirtual MSR is available only with its
feature bit (Documentation/virt/kvm/x86/msr.rst: "Availability of this MSR must be checked via
bit N in 0x40000001 cpuid leaf"; x86/cpuid.rst), so without it RDMSR and WRMSR raise #GP(0) as
for any MSR the vCPU does not have (SDM Vol. 2B RDMSR/WRMSR); each PV hypercall needs its bit
too, and without it returns -KVM_ENOSYS (x86/hypercalls.rst). Selftests kvm_pv_test."""

import pytest

from kvmtest.cpuid import find_entry, hypercall_instruction
from kvmtest.msr_names import msr_name
from kvmtest.x86 import (
    KVM_CPUID_FEATURES,
    KVM_ENOSYS,
    KVM_FEATURE_PV_SCHED_YIELD,
    KVM_FEATURE_PV_SEND_IPI,
    KVM_FEATURE_PV_UNHALT,
    KVM_HC_KICK_CPU,
    KVM_HC_SCHED_YIELD,
    KVM_HC_SEND_IPI,
    PV_MSR_FEATURES,
)

pytestmark = pytest.mark.requires_cap("KVM_CAP_ENFORCE_PV_FEATURE_CPUID")

MSRS = sorted(PV_MSR_FEATURES)
MSR_IDS = [msr_name(m).split()[0].removeprefix("MSR_") for m in MSRS]


def _supported_features(kvm) -> int:
    leaf = find_entry(kvm.cached_supported_cpuid(), KVM_CPUID_FEATURES)
    if leaf is None or leaf.function != KVM_CPUID_FEATURES:
        pytest.skip(f"KVM_GET_SUPPORTED_CPUID has no KVM feature leaf {KVM_CPUID_FEATURES:#x}")
    return leaf.eax


def _needs(kvm, bit: int, what: str) -> int:
    features = _supported_features(kvm)
    if not features >> bit & 1:
        pytest.skip(f"KVM_GET_SUPPORTED_CPUID's leaf {KVM_CPUID_FEATURES:#x} EAX {features:#x} lacks bit {bit} "
                    f"({what})")
    return features


@pytest.mark.parametrize("access", ["rdmsr", "wrmsr"])
@pytest.mark.parametrize("msr", MSRS, ids=MSR_IDS)
def test_pv_msr_without_its_feature_bit_raises_gp(kvm, guest, msr, access):
    """With every other feature KVM supports left in 0x40000001 EAX and only this MSR's bit
    cleared, RDMSR and WRMSR of 0 raise #GP(0): the gate is this MSR's own bit."""
    bit = PV_MSR_FEATURES[msr]
    features = _supported_features(kvm)
    g = guest("long64", f"mov ecx, {msr:#x}\nxor eax, eax\nxor edx, edx\nGUEST_ASSERT_RAISES GP(0), {access}\n"
                        "GUEST_DONE", irqchip=True)
    g.vcpu.enforce_pv_features(features & ~(1 << bit))
    g.run_to_done()


@pytest.mark.parametrize("msr", MSRS, ids=MSR_IDS)
def test_pv_msr_with_only_its_feature_bit_is_available(kvm, guest, msr):
    """With only this MSR's feature bit in 0x40000001 EAX, RDMSR of it completes and WRMSR of 0
    (the disabled setting of each of them, msr.rst) too: the positive control of the #GP above."""
    bit = PV_MSR_FEATURES[msr]
    _needs(kvm, bit, msr_name(msr))
    g = guest("long64", f"mov ecx, {msr:#x}\nrdmsr\nxor eax, eax\nxor edx, edx\nwrmsr\nGUEST_DONE", irqchip=True)
    g.vcpu.enforce_pv_features(1 << bit)
    g.run_to_done()


def _hypercall_insn(kvm) -> str:
    """VMMCALL on AMD, VMCALL on Intel (hypercalls.rst: the vendor's instruction)."""
    return hypercall_instruction(kvm.cached_supported_cpuid())


HYPERCALLS = {
    "KICK_CPU": (KVM_HC_KICK_CPU, KVM_FEATURE_PV_UNHALT),
    "SEND_IPI": (KVM_HC_SEND_IPI, KVM_FEATURE_PV_SEND_IPI),
    "SCHED_YIELD": (KVM_HC_SCHED_YIELD, KVM_FEATURE_PV_SCHED_YIELD),
}


@pytest.mark.guest_timeout(1)  # a host that never completes the hypercall fails in 1 s
@pytest.mark.parametrize("name", list(HYPERCALLS))
def test_pv_hypercall_without_its_feature_bit_returns_enosys(kvm, guest, name):
    """KVM_HC_KICK_CPU (KVM_FEATURE_PV_UNHALT), KVM_HC_SEND_IPI (KVM_FEATURE_PV_SEND_IPI) and
    KVM_HC_SCHED_YIELD (KVM_FEATURE_PV_SCHED_YIELD) with only their own bit cleared from
    0x40000001 EAX return -KVM_ENOSYS in RAX (hypercalls.rst; api.rst
    KVM_CAP_ENFORCE_PV_FEATURE_CPUID)."""
    nr, bit = HYPERCALLS[name]
    features = _supported_features(kvm)
    g = guest("long64", f"mov eax, {nr}\nxor ebx, ebx\nxor ecx, ecx\nxor edx, edx\nxor esi, esi\n"
                        f"{_hypercall_insn(kvm)}\nGUEST_SYNC rax\nGUEST_DONE", irqchip=True)
    g.vcpu.enforce_pv_features(features & ~(1 << bit))
    (rax,) = g.run_to_done()
    assert rax == -KVM_ENOSYS & (2**64 - 1), \
        f"KVM_HC_{name} without feature bit {bit} returned {rax:#x}; expected -KVM_ENOSYS " \
        f"({-KVM_ENOSYS & (2**64 - 1):#x})"
