"""MSRs that exist only when CPUID enumerates them: IA32_SPEC_CTRL, IA32_PRED_CMD, IA32_FLUSH_CMD
and IA32_ARCH_CAPABILITIES, seen by the guest (RDMSR/WRMSR) and by the host (KVM_GET/SET_MSRS).

Guest side, SDM Vol. 2B RDMSR/WRMSR: an MSR address the processor does not implement raises
#GP(0); SDM Vol. 4 Table 2-2 gives each of these MSRs its enumeration (below), and IA32_PRED_CMD
and IA32_FLUSH_CMD are write-only, IA32_ARCH_CAPABILITIES read-only. The vCPU's processor is the
one its CPUID (KVM_SET_CPUID2) describes.

Host side, api.rst 4.18/4.19: KVM_GET_MSRS reads "Supported msr indices" from KVM_GET_MSR_INDEX_LIST;
KVM_SET_MSRS returns the number of MSRs set and stops at one it cannot set, "e.g., due to setting
reserved bits". User space may read an MSR of that list, and write back what it read, whatever
the vCPU's CPUID says: KVM lets host-initiated accesses through so that saving and restoring a
vCPU never depends on the order of KVM_SET_CPUID2 (arch/x86/kvm/x86.c kvm_do_msr_access: "Userspace
is allowed to read MSRs, and write '0' to MSRs, that KVM advertises"; commit 44883f01fe6a "ensure all
MSRs can always be KVM_GET/SET_MSR'd"). Reserved bits stay refused.
"""

from dataclasses import dataclass

import pytest

from kvmtest.cpuid import FEATURES, has_feature, set_feature
from kvmtest.guest.mode_select import select
from kvmtest.x86 import MSR_IA32_ARCH_CAPABILITIES, MSR_IA32_FLUSH_CMD, MSR_IA32_PRED_CMD, MSR_IA32_SPEC_CTRL

BIT63 = 1 << 63  # reserved in IA32_SPEC_CTRL, IA32_PRED_CMD and IA32_FLUSH_CMD (SDM Vol. 4 Table 2-2)


@dataclass(frozen=True)
class GatedMsr:
    name: str
    index: int
    features: tuple   # any one of these CPUID bits makes the MSR exist
    access: str       # "rw", "w" (write-only command MSR) or "r" (read-only)


# Enumeration: SDM Vol. 4 Table 2-2 and Vol. 2A CPUID leaf 7 EDX; APM Vol. 3 CPUID Fn8000_0008 EBX.
# IA32_SPEC_CTRL exists with IBRS (7.0:EDX[26]), STIBP (EDX[27]) or SSBD (EDX[31]), and on AMD with
# IBRS, STIBP or SSBD in 8000_0008:EBX[14, 15, 24]; IA32_PRED_CMD with 7.0:EDX[26] or AMD IBPB
# (8000_0008:EBX[12]); IA32_FLUSH_CMD with L1D_FLUSH (7.0:EDX[28]); IA32_ARCH_CAPABILITIES with
# 7.0:EDX[29].
GATED = {m.name: m for m in [
    GatedMsr("IA32_SPEC_CTRL", MSR_IA32_SPEC_CTRL,
             ("spec_ctrl", "intel_stibp", "ssbd", "amd_ibrs", "amd_stibp", "amd_ssbd"), "rw"),
    GatedMsr("IA32_PRED_CMD", MSR_IA32_PRED_CMD, ("spec_ctrl", "amd_ibpb"), "w"),
    GatedMsr("IA32_FLUSH_CMD", MSR_IA32_FLUSH_CMD, ("flush_l1d",), "w"),
    GatedMsr("IA32_ARCH_CAPABILITIES", MSR_IA32_ARCH_CAPABILITIES, ("arch_capabilities",), "r"),
]}
GUEST_MODES = select(protected=False) + select(long=True, cpl=0)


def _without(kvm, msr):
    """KVM's supported CPUID with every bit that would make `msr` exist cleared."""
    table = kvm.supported_cpuid_copy()
    for name in msr.features:
        set_feature(table, name, False)
    return table


def _with(kvm, msr):
    """KVM's supported CPUID if it enumerates `msr`; skips naming the bits otherwise."""
    table = kvm.supported_cpuid_copy()
    if not any(has_feature(table, name) for name in msr.features):
        pytest.skip(f"{msr.name} needs one of {', '.join(str(FEATURES[n]) for n in msr.features)}, "
                    "none of which KVM_GET_SUPPORTED_CPUID reports")
    return table


@pytest.mark.modes(*GUEST_MODES)
@pytest.mark.parametrize("msr,op", [pytest.param(m, op, id=f"{m.name}-{op}") for m in GATED.values()
                                    for op in ("rdmsr", "wrmsr") if op[0] in m.access])
def test_guest_access_without_the_cpuid_bit_raises_gp(kvm, guest, mode, msr, op):
    """With none of the CPUID bits that enumerate the MSR in the vCPU's CPUID, the MSR does not
    exist: RDMSR or WRMSR (of 0, valid wherever the MSR exists) raises #GP(0) (SDM Vol. 2B
    RDMSR/WRMSR; Vol. 4 Table 2-2 for the enumeration)."""
    g = guest(mode, f"mov ecx, {msr.index:#x}\nxor eax, eax\nxor edx, edx\n"
                    f"GUEST_ASSERT_RAISES GP(0), {op}\nGUEST_DONE")
    g.vcpu.set_cpuid(_without(kvm, msr))
    g.run_to_done()


@pytest.mark.modes(*GUEST_MODES)
def test_guest_reads_arch_capabilities_as_the_host_sees_it(kvm, guest, mode):
    """With CPUID.7.0:EDX[29] set, RDMSR of IA32_ARCH_CAPABILITIES completes and returns the value
    KVM_GET_MSRS reports for the vCPU (SDM Vol. 4 Table 2-2; api.rst 4.18): two views of one MSR."""
    msr = GATED["IA32_ARCH_CAPABILITIES"]
    g = guest(mode, f"mov ecx, {msr.index:#x}\nrdmsr\nGUEST_SYNC eax\nGUEST_SYNC edx\nGUEST_DONE")
    g.vcpu.set_cpuid(_with(kvm, msr))
    host = g.vcpu.get_msr(msr.index)
    lo, hi = g.run_to_done()
    assert hi << 32 | lo == host, f"guest RDMSR {msr.name} = {hi << 32 | lo:#x}, KVM_GET_MSRS = {host:#x}"


@pytest.mark.modes(*GUEST_MODES)
def test_guest_write_to_read_only_arch_capabilities_raises_gp(kvm, guest, mode):
    """IA32_ARCH_CAPABILITIES is read-only: WRMSR raises #GP(0) even where CPUID enumerates it
    (SDM Vol. 4 Table 2-2, "RO"; Vol. 2B WRMSR)."""
    msr = GATED["IA32_ARCH_CAPABILITIES"]
    g = guest(mode, f"mov ecx, {msr.index:#x}\nxor eax, eax\nxor edx, edx\n"
                    "GUEST_ASSERT_RAISES GP(0), wrmsr\nGUEST_DONE")
    g.vcpu.set_cpuid(_with(kvm, msr))
    g.run_to_done()


@pytest.mark.parametrize("msr", [m for m in GATED.values() if "w" in m.access], ids=lambda m: m.name)
def test_host_write_of_a_reserved_bit_is_refused(vm, msr):
    """KVM_SET_MSRS with bit 63 set, reserved in the MSR, sets 0 MSRs (api.rst 4.19: it stops at an
    MSR it cannot set "due to setting reserved bits"; SDM Vol. 4 Table 2-2), with or without the
    CPUID bits that enumerate the MSR."""
    vcpu = vm.create_vcpu()
    vcpu.set_cpuid(vm.kvm.cached_supported_cpuid())
    n = vcpu.set_msrs({msr.index: BIT63})
    assert n == 0, f"KVM_SET_MSRS {msr.name} ({msr.index:#x}) = {BIT63:#x} (reserved bit 63): set {n} MSRs, expected 0"


def test_host_write_of_spec_ctrl_is_what_the_host_reads_back(vm):
    """KVM_SET_MSRS returns the number of MSRs it set (api.rst 4.19), and KVM_GET_MSRS reads the
    vCPU's MSR (4.18): an IA32_SPEC_CTRL write of IBRS (bit 0) that KVM accepts reads back as
    written. Where the vCPU's CPUID enumerates IBRS, KVM must accept it (SDM Vol. 4 Table 2-2)."""
    msr = GATED["IA32_SPEC_CTRL"]
    vcpu = vm.create_vcpu()
    table = vm.kvm.supported_cpuid_copy()
    vcpu.set_cpuid(table)
    ibrs = has_feature(table, "spec_ctrl") or has_feature(table, "amd_ibrs")
    n = vcpu.set_msrs({msr.index: 1})
    if ibrs:
        assert n == 1, f"KVM_SET_MSRS {msr.name} = 1 (IBRS, enumerated in CPUID) set {n} MSRs, expected 1"
    if n == 1:
        got = vcpu.get_msr(msr.index)
        assert got == 1, f"KVM_SET_MSRS {msr.name} = 0x1 returned 1 (set), but KVM_GET_MSRS reads {got:#x}"


def test_host_sets_arch_capabilities_to_a_supported_value(kvm, vm):
    """With CPUID.7.0:EDX[29] set, KVM_SET_MSRS of IA32_ARCH_CAPABILITIES to the value KVM reports
    as available for VMs (KVM_GET_MSRS on the system fd, api.rst 4.18 "MSR-based features that are
    available for the VM") sets 1 MSR, and KVM_GET_MSRS on the vCPU reads it back (api.rst 4.19)."""
    msr = GATED["IA32_ARCH_CAPABILITIES"]
    if msr.index not in kvm.msr_feature_index_list():
        pytest.skip(f"{msr.name} is not in KVM_GET_MSR_FEATURE_INDEX_LIST")
    value = kvm.read_feature_msrs([msr.index])[msr.index]
    vcpu = vm.create_vcpu()
    vcpu.set_cpuid(_with(kvm, msr))
    n = vcpu.set_msrs({msr.index: value})
    assert n == 1, f"KVM_SET_MSRS {msr.name} = {value:#x} (the system KVM_GET_MSRS value) set {n} MSRs, expected 1"
    got = vcpu.get_msr(msr.index)
    assert got == value, f"KVM_SET_MSRS {msr.name} = {value:#x} accepted, KVM_GET_MSRS reads {got:#x}"


@pytest.mark.parametrize("msr", list(GATED.values()), ids=lambda m: m.name)
def test_host_reads_and_writes_back_a_listed_msr_without_its_cpuid_bit(kvm, vm, msr):
    """An MSR of KVM_GET_MSR_INDEX_LIST stays readable by KVM_GET_MSRS with its CPUID bits cleared,
    and writing back the value read sets 1 MSR (api.rst 4.18 "Supported msr indices can be obtained
    using KVM_GET_MSR_INDEX_LIST"; x86.c kvm_do_msr_access on host-initiated accesses)."""
    if msr.index not in kvm.msr_index_list():
        pytest.skip(f"{msr.name} ({msr.index:#x}) is not in KVM_GET_MSR_INDEX_LIST")
    vcpu = vm.create_vcpu()
    vcpu.set_cpuid(_without(kvm, msr))
    value = vcpu.get_msr(msr.index)
    n = vcpu.set_msrs({msr.index: value})
    assert n == 1, f"KVM_SET_MSRS {msr.name} = {value:#x} (as KVM_GET_MSRS read it) set {n} MSRs, expected 1"
