"""MSRs: host KVM_GET/SET_MSRS round trips and the guest's RDMSR/WRMSR (api.rst 4.18, 4.19;
SDM Vol. 4 for the MSRs, Vol. 2B RDMSR/WRMSR for #GP)."""

import pytest

from kvmtest.cpuid import find_entry, set_vendor
from kvmtest.vcpu_cpuid_msr import KVM_CPUID_FEATURES
from kvmtest.x86 import (
    MSR_IA32_CSTAR,
    MSR_IA32_EFER,
    MSR_IA32_FMASK,
    MSR_IA32_FS_BASE,
    MSR_IA32_GS_BASE,
    MSR_IA32_KERNEL_GS_BASE,
    MSR_IA32_LSTAR,
    MSR_IA32_PAT,
    MSR_IA32_STAR,
    MSR_IA32_SYSENTER_CS,
    MSR_IA32_SYSENTER_EIP,
    MSR_IA32_SYSENTER_ESP,
    MSR_IA32_TSC,
    MSR_IA32_TSC_ADJUST,
    MSR_KVM_SYSTEM_TIME_NEW,
    MSR_PLATFORM_INFO,
    PAT_POWER_UP,
)

ROUND_TRIP = {
    MSR_IA32_SYSENTER_CS: 0x10,
    MSR_IA32_PAT: PAT_POWER_UP,
    MSR_IA32_STAR: 0x0023001000000000,
    MSR_IA32_LSTAR: 0xFFFF800000003000,
    MSR_IA32_CSTAR: 0xFFFF800000004000,
    MSR_IA32_FMASK: 0x47700,
    MSR_IA32_FS_BASE: 0x7F0000001000,
    MSR_IA32_GS_BASE: 0x7F0000002000,
    MSR_IA32_KERNEL_GS_BASE: 0xFFFF800000005000,
}
UNKNOWN_MSR = 0x4B564D7F
MASK64 = (1 << 64) - 1


@pytest.mark.parametrize("index", sorted(ROUND_TRIP), ids=[f"{i:#x}" for i in sorted(ROUND_TRIP)])
def test_host_round_trip(vm, index):
    """KVM_SET_MSRS sets the MSR and KVM_GET_MSRS reads back the same value (api.rst 4.18, 4.19)."""
    vcpu = vm.create_vcpu()
    vcpu.set_cpuid(vm.kvm.cached_supported_cpuid())
    vcpu.set_msr(index, ROUND_TRIP[index])
    assert vcpu.get_msr(index) == ROUND_TRIP[index], f"MSR {index:#x} read back {vcpu.get_msr(index):#x}"


# SYSENTER's target stack and instruction pointers: how wide they are depends on the vendor.
SYSENTER_ADDRESSES = {MSR_IA32_SYSENTER_ESP: 0xFFFF800000001000, MSR_IA32_SYSENTER_EIP: 0xFFFF800000002000}


@pytest.mark.parametrize("vendor_name", ["GenuineIntel", "AuthenticAMD"])
@pytest.mark.parametrize("index", sorted(SYSENTER_ADDRESSES), ids=[f"{i:#x}" for i in sorted(SYSENTER_ADDRESSES)])
def test_host_round_trip_of_a_sysenter_address_follows_the_cpuid_vendor(vm, index, vendor_name):
    """KVM_SET_MSRS of IA32_SYSENTER_ESP/EIP reads back with KVM_GET_MSRS (api.rst 4.18, 4.19) as
    wide as the vCPU's processor keeps it, and that processor is the one its CPUID names: on Intel
    they hold 64-bit addresses ("In IA-32e mode, the IA32_SYSENTER_EIP and IA32_SYSENTER_ESP MSRs
    hold 64-bit addresses", SDM Vol. 2B SYSENTER), so the whole value comes back; AMD's SYSENTER
    exists in legacy mode only and loads ESP and EIP from them (APM Vol. 3 SYSENTER), so only
    the low 32 bits are defined there and only they are compared."""
    table = vm.kvm.supported_cpuid_copy()
    set_vendor(table, vendor_name)
    vcpu = vm.create_vcpu()
    vcpu.set_cpuid(table)
    written = SYSENTER_ADDRESSES[index]
    vcpu.set_msr(index, written)
    got = vcpu.get_msr(index)
    mask = MASK64 if vendor_name == "GenuineIntel" else 0xFFFFFFFF
    assert got & mask == written & mask, \
        f"{vendor_name} vCPU: KVM_GET_MSRS {index:#x} read {got:#x} after KVM_SET_MSRS {written:#x}; expected " \
        f"{written & mask:#x} in bits {mask.bit_length() - 1}:0"


@pytest.mark.modes(sample="per-code-size", cpl=0)
def test_guest_wrmsr_then_rdmsr(guest, mode):
    """A value the guest writes with WRMSR it reads back with RDMSR, and the host sees it with
    KVM_GET_MSRS (SDM Vol. 2B WRMSR/RDMSR; api.rst 4.18)."""
    g = guest(mode, f"mov ecx, {MSR_IA32_SYSENTER_ESP:#x}\nmov eax, 0x12345000\nxor edx, edx\nwrmsr\n"
                    "xor eax, eax\nrdmsr\nGUEST_SYNC eax\nGUEST_DONE")
    assert g.run_to_done() == [0x12345000]
    assert g.vcpu.get_msr(MSR_IA32_SYSENTER_ESP) == 0x12345000


@pytest.mark.modes(sample="per-code-size", cpl=0)
@pytest.mark.parametrize("what,msr,eax,edx", [
    ("unknown-msr", UNKNOWN_MSR, 0, 0),
    ("pat-reserved-type", MSR_IA32_PAT, 0x00000002, 0),       # memory type 2 is reserved
    ("efer-reserved-bit", MSR_IA32_EFER, 0, 0x80000000),      # bit 63
], ids=["unknown-msr", "pat-reserved-type", "efer-reserved-bit"])
def test_guest_wrmsr_of_an_invalid_value_raises_gp(guest, mode, what, msr, eax, edx):
    """WRMSR of an unimplemented MSR or with reserved bits set raises #GP(0) (SDM Vol. 2B WRMSR;
    Vol. 3A 13.12.2 PAT types; 2.2.1 EFER)."""
    g = guest(mode, f"mov ecx, {msr:#x}\nmov eax, {eax:#x}\nmov edx, {edx:#x}\n"
                    "GUEST_ASSERT_RAISES GP(0), wrmsr\nGUEST_DONE")
    g.run_to_done()


@pytest.mark.modes(cpl=3)
def test_rdmsr_at_cpl3_raises_gp(guest, mode):
    """RDMSR is privileged: at CPL3 it raises #GP(0) (SDM Vol. 2B RDMSR)."""
    g = guest(mode, f"mov ecx, {MSR_IA32_TSC:#x}\nGUEST_ASSERT_RAISES GP(0), rdmsr\nGUEST_DONE")
    g.run_to_done()


@pytest.mark.requires_cpu("tsc_adjust")
def test_guest_tsc_write_moves_tsc_adjust(guest):
    """A guest WRMSR to IA32_TSC adds the same delta to IA32_TSC_ADJUST (SDM Vol. 3A 18.17.3;
    selftests tsc_msrs_test)."""
    g = guest("long64", f"""
        mov ecx, {MSR_IA32_TSC_ADJUST:#x}
        rdmsr
        mov esi, eax
        mov edi, edx
        mov ecx, {MSR_IA32_TSC:#x}
        rdmsr
        shl rdx, 32
        or rax, rdx
        mov rbx, 0x100000000
        add rax, rbx
        mov rdx, rax
        shr rdx, 32
        wrmsr
        mov ecx, {MSR_IA32_TSC_ADJUST:#x}
        rdmsr
        shl rdx, 32
        or rax, rdx
        shl rdi, 32
        or rsi, rdi
        sub rax, rsi
        GUEST_SYNC rax
        GUEST_DONE""")
    (delta,) = g.run_to_done()
    # The guest's TSC moved on a little between its RDMSR and its WRMSR, so the adjust moves by
    # 2^32 minus that small gap; it must be within the few microseconds of emulated code.
    assert 0 < 0x100000000 - delta < 1 << 30, f"IA32_TSC_ADJUST moved by {delta:#x}, expected about 0x100000000"


@pytest.mark.requires_cpu("tsc_adjust")
def test_host_tsc_write_leaves_tsc_adjust(vm):
    """A host KVM_SET_MSRS of IA32_TSC changes the TSC offset, not IA32_TSC_ADJUST
    (selftests tsc_msrs_test: host-initiated writes are not guest writes)."""
    vcpu = vm.create_vcpu()
    vcpu.set_cpuid(vm.kvm.cached_supported_cpuid())
    before = vcpu.get_msr(MSR_IA32_TSC_ADJUST)
    # Far from any value the counter could reach by itself (a fixed 2^40 is passed by a host TSC after
    # minutes of uptime, which made this check vacuous), and read back within 2^40 cycles of it.
    written = vcpu.get_msr(MSR_IA32_TSC) + (1 << 52)
    vcpu.set_msr(MSR_IA32_TSC, written)
    after = vcpu.get_msr(MSR_IA32_TSC_ADJUST)
    assert after == before, f"IA32_TSC_ADJUST changed from {before:#x} to {after:#x}"
    now = vcpu.get_msr(MSR_IA32_TSC)
    assert written <= now < written + (1 << 40), \
        f"KVM_SET_MSRS IA32_TSC={written:#x} accepted, but KVM_GET_MSRS IA32_TSC reads {now:#x}"


@pytest.mark.requires_cap("KVM_CAP_MSR_PLATFORM_INFO")
@pytest.mark.parametrize("enabled", [1, 0], ids=["enabled", "disabled"])
def test_platform_info_msr(guest, enabled):
    """With KVM_CAP_MSR_PLATFORM_INFO enabled the guest reads MSR_PLATFORM_INFO (0xCE) as the
    host set it; disabled, RDMSR of it raises #GP (api.rst 7, KVM_CAP_MSR_PLATFORM_INFO;
    selftests platform_info_test)."""
    read = f"mov ecx, {MSR_PLATFORM_INFO:#x}\n"
    body = read + ("rdmsr\nGUEST_SYNC eax\nGUEST_DONE" if enabled else "GUEST_ASSERT_RAISES GP(0), rdmsr\nGUEST_DONE")
    g = guest("long64", body)
    g.vm.enable_cap("KVM_CAP_MSR_PLATFORM_INFO", enabled)
    if enabled:
        g.vcpu.set_msr(MSR_PLATFORM_INFO, 0x80000000)
        assert g.run_to_done() == [0x80000000]
    else:
        g.run_to_done()


@pytest.mark.requires_cap("KVM_CAP_ENFORCE_PV_FEATURE_CPUID")
def test_pv_msr_without_its_feature_bit_is_gp_when_enforced(guest):
    """With KVM_CAP_ENFORCE_PV_FEATURE_CPUID enabled and no feature bits in the KVM leaf
    (0x40000001 EAX = 0), writing a paravirtual MSR such as MSR_KVM_SYSTEM_TIME_NEW raises #GP
    (api.rst 7 KVM_CAP_ENFORCE_PV_FEATURE_CPUID; selftests kvm_pv_test)."""
    g = guest("long64", f"mov ecx, {MSR_KVM_SYSTEM_TIME_NEW:#x}\nxor eax, eax\nxor edx, edx\n"
                        "GUEST_ASSERT_RAISES GP(0), wrmsr\nGUEST_DONE")
    if find_entry(g.kvm.cached_supported_cpuid(), KVM_CPUID_FEATURES) is None:
        pytest.skip("KVM_GET_SUPPORTED_CPUID has no KVM feature leaf 0x40000001")
    g.vcpu.enforce_pv_features(0)
    g.run_to_done()
