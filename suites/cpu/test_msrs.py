"""MSRs: host KVM_GET/SET_MSRS round trips and the guest's RDMSR/WRMSR (api.rst 4.18, 4.19;
SDM Vol. 4 for the MSRs, Vol. 2B RDMSR/WRMSR for #GP)."""

import pytest

from kvmtest.cpuid import find_entry
from kvmtest.guest.modes import MODES
from kvmtest.vcpu import KVM_CPUID_FEATURES

ROUND_TRIP = {
    0x174: 0x10,                       # IA32_SYSENTER_CS
    0x175: 0xFFFF800000001000,         # IA32_SYSENTER_ESP
    0x176: 0xFFFF800000002000,         # IA32_SYSENTER_EIP
    0x277: 0x0007040600070406,         # IA32_PAT (power-up value, SDM Vol. 3A 13.12.4)
    0xC0000081: 0x0023001000000000,    # STAR
    0xC0000082: 0xFFFF800000003000,    # LSTAR
    0xC0000083: 0xFFFF800000004000,    # CSTAR
    0xC0000084: 0x47700,               # SFMASK
    0xC0000100: 0x7F0000001000,        # FS_BASE
    0xC0000101: 0x7F0000002000,        # GS_BASE
    0xC0000102: 0xFFFF800000005000,    # KERNEL_GS_BASE
}
UNKNOWN_MSR = 0x4B564D7F


@pytest.mark.parametrize("index", sorted(ROUND_TRIP), ids=[f"{i:#x}" for i in sorted(ROUND_TRIP)])
def test_host_round_trip(vm, index):
    """KVM_SET_MSRS sets the MSR and KVM_GET_MSRS reads back the same value (api.rst 4.18, 4.19)."""
    vcpu = vm.create_vcpu()
    vcpu.set_cpuid(vm.kvm.cached_supported_cpuid())
    vcpu.set_msr(index, ROUND_TRIP[index])
    assert vcpu.get_msr(index) == ROUND_TRIP[index], f"MSR {index:#x} read back {vcpu.get_msr(index):#x}"


@pytest.mark.modes("real", "pm32", "long64", "compat32")
def test_guest_wrmsr_then_rdmsr(guest, mode):
    """A value the guest writes with WRMSR it reads back with RDMSR, and the host sees it with
    KVM_GET_MSRS (SDM Vol. 2B WRMSR/RDMSR; api.rst 4.18)."""
    g = guest(mode, "mov ecx, 0x175\nmov eax, 0x12345000\nxor edx, edx\nwrmsr\nxor eax, eax\nrdmsr\n"
                    "GUEST_SYNC eax\nGUEST_DONE")
    assert g.run_to_done() == [0x12345000]
    assert g.vcpu.get_msr(0x175) == 0x12345000


@pytest.mark.modes("real", "pm32", "long64", "compat32")
@pytest.mark.parametrize("what,msr,eax,edx", [
    ("unknown-msr", UNKNOWN_MSR, 0, 0),
    ("pat-reserved-type", 0x277, 0x00000002, 0),          # memory type 2 is reserved
    ("efer-reserved-bit", 0xC0000080, 0, 0x80000000),      # bit 63
], ids=["unknown-msr", "pat-reserved-type", "efer-reserved-bit"])
def test_guest_wrmsr_of_an_invalid_value_raises_gp(guest, mode, what, msr, eax, edx):
    """WRMSR of an unimplemented MSR or with reserved bits set raises #GP(0) (SDM Vol. 2B WRMSR;
    Vol. 3A 13.12.2 PAT types; 2.2.1 EFER)."""
    g = guest(mode, f"mov ecx, {msr:#x}\nmov eax, {eax:#x}\nmov edx, {edx:#x}\nGUEST_ASSERT_RAISES GP(0), wrmsr\nGUEST_DONE")
    g.run_to_done()


@pytest.mark.modes(*[m for m in MODES if MODES[m].user])
def test_rdmsr_at_cpl3_raises_gp(guest, mode):
    """RDMSR is privileged: at CPL3 it raises #GP(0) (SDM Vol. 2B RDMSR)."""
    g = guest(mode, "mov ecx, 0x10\nGUEST_ASSERT_RAISES GP(0), rdmsr\nGUEST_DONE")
    g.run_to_done()


@pytest.mark.requires_cpu("tsc_adjust")
def test_guest_tsc_write_moves_tsc_adjust(guest):
    """A guest WRMSR to IA32_TSC adds the same delta to IA32_TSC_ADJUST (SDM Vol. 3A 18.17.3;
    selftests tsc_msrs_test)."""
    g = guest("long64", """
        mov ecx, 0x3b
        rdmsr
        mov esi, eax
        mov edi, edx
        mov ecx, 0x10
        rdmsr
        shl rdx, 32
        or rax, rdx
        mov rbx, 0x100000000
        add rax, rbx
        mov rdx, rax
        shr rdx, 32
        wrmsr
        mov ecx, 0x3b
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
    before = vcpu.get_msr(0x3B)
    # Far from any value the counter could reach by itself (a fixed 2^40 is passed by a host TSC after
    # minutes of uptime, which made this check vacuous), and read back within 2^40 cycles of it.
    written = vcpu.get_msr(0x10) + (1 << 52)
    vcpu.set_msr(0x10, written)
    assert vcpu.get_msr(0x3B) == before, f"IA32_TSC_ADJUST changed from {before:#x} to {vcpu.get_msr(0x3B):#x}"
    now = vcpu.get_msr(0x10)
    assert written <= now < written + (1 << 40), \
        f"KVM_SET_MSRS IA32_TSC={written:#x} accepted, but KVM_GET_MSRS IA32_TSC reads {now:#x}"


@pytest.mark.requires_cap("KVM_CAP_MSR_PLATFORM_INFO")
@pytest.mark.parametrize("enabled", [1, 0], ids=["enabled", "disabled"])
def test_platform_info_msr(guest, enabled):
    """With KVM_CAP_MSR_PLATFORM_INFO enabled the guest reads MSR_PLATFORM_INFO (0xCE) as the
    host set it; disabled, RDMSR of it raises #GP (api.rst 7, KVM_CAP_MSR_PLATFORM_INFO;
    selftests platform_info_test)."""
    body = "mov ecx, 0xce\nrdmsr\nGUEST_SYNC eax\nGUEST_DONE" if enabled else \
        "mov ecx, 0xce\nGUEST_ASSERT_RAISES GP(0), rdmsr\nGUEST_DONE"
    g = guest("long64", body)
    g.vm.enable_cap("KVM_CAP_MSR_PLATFORM_INFO", enabled)
    if enabled:
        g.vcpu.set_msr(0xCE, 0x80000000)
        assert g.run_to_done() == [0x80000000]
    else:
        g.run_to_done()


@pytest.mark.requires_cap("KVM_CAP_ENFORCE_PV_FEATURE_CPUID")
def test_pv_msr_without_its_feature_bit_is_gp_when_enforced(guest):
    """With KVM_CAP_ENFORCE_PV_FEATURE_CPUID enabled and no feature bits in the KVM leaf
    (0x40000001 EAX = 0), writing a paravirtual MSR such as MSR_KVM_SYSTEM_TIME_NEW raises #GP
    (api.rst 7 KVM_CAP_ENFORCE_PV_FEATURE_CPUID; selftests kvm_pv_test)."""
    g = guest("long64", "mov ecx, 0x4b564d01\nxor eax, eax\nxor edx, edx\nGUEST_ASSERT_RAISES GP(0), wrmsr\nGUEST_DONE")
    if find_entry(g.kvm.cached_supported_cpuid(), KVM_CPUID_FEATURES) is None:
        pytest.skip("KVM_GET_SUPPORTED_CPUID has no KVM feature leaf 0x40000001")
    g.vcpu.enforce_pv_features(0)
    g.run_to_done()
