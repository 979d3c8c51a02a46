"""The AMD hardware configuration register HWCR (MSR C001_0015): the bits KVM virtualizes, set by
the host and seen by the guest, and what McStatusWrEn does (selftests x86/hwcr_msr_test).

APM Vol. 2 (HWCR, Table "MSR C001_0015"): bit 18 McStatusWrEn lets software write nonzero values
to the machine-check status registers MCi_STATUS, which otherwise accept only 0 (a nonzero write
raises #GP; APM Vol. 2 chapter 9, SDM Vol. 3B 16.3.2.2 "writing 1s to them causes a general-protection
exception"); bit 24 TscFreqSel selects the TSC's frequency. api.rst 4.18/4.19: KVM_GET_MSRS and
KVM_SET_MSRS read and write the vCPU's MSRs; KVM_SET_MSRS returns how many it set.
"""

import pytest

from kvmtest.cpuid import vendor
from kvmtest.x86 import MSR_AMD64_HWCR, MSR_IA32_MCG_CAP, msr_ia32_mci_status

HWCR_MCSTATUSWREN = 1 << 18
HWCR_TSCFREQSEL = 1 << 24
BANK = 1
STATUS = 0xBEEF  # nonzero, and no bit any bank would refuse (no VAL/UC/... of the architected fields)


def _rdmsr_sync(msr):
    return f"mov ecx, {msr:#x}\nrdmsr\nshl rdx, 32\nor rax, rdx\nGUEST_SYNC rax\n"


@pytest.mark.parametrize("bit", [pytest.param(HWCR_MCSTATUSWREN, id="McStatusWrEn"),
                                 pytest.param(HWCR_TSCFREQSEL, id="TscFreqSel"),
                                 pytest.param(HWCR_MCSTATUSWREN | HWCR_TSCFREQSEL, id="both")])
def test_hwcr_bits_set_by_the_host_read_back_and_reach_the_guest(guest, bit):
    """KVM_SET_MSRS of HWCR with McStatusWrEn and/or TscFreqSel sets 1 MSR; KVM_GET_MSRS reads
    the value back and so does the guest's RDMSR; writing 0 clears it again (api.rst 4.18/4.19;
    APM Vol. 2 HWCR)."""
    g = guest("long64", _rdmsr_sync(MSR_AMD64_HWCR) + "GUEST_DONE")
    assert g.vcpu.set_msrs({MSR_AMD64_HWCR: bit}) == 1, f"KVM_SET_MSRS refused HWCR = {bit:#x}"
    host = g.vcpu.get_msr(MSR_AMD64_HWCR)
    assert host == bit, f"HWCR: set {bit:#x}, KVM_GET_MSRS read {host:#x}"
    seen = g.run_to_done()
    assert seen == [bit], f"HWCR: the host set {bit:#x}, the guest's RDMSR read {[hex(v) for v in seen]}"
    assert g.vcpu.set_msrs({MSR_AMD64_HWCR: 0}) == 1 and g.vcpu.get_msr(MSR_AMD64_HWCR) == 0, \
        "HWCR did not go back to 0"


@pytest.mark.requires_cap("KVM_CAP_MCE")
@pytest.mark.parametrize("wren", [False, True], ids=["McStatusWrEn=0", "McStatusWrEn=1"])
def test_guest_nonzero_mci_status_write_needs_mcstatuswren(kvm, guest, wren):
    """With machine-check banks (KVM_X86_SETUP_MCE), the guest's WRMSR of a nonzero value to
    MC1_STATUS raises #GP(0) while HWCR.McStatusWrEn is 0, and with it 1 completes, the guest's
    RDMSR and the host's KVM_GET_MSRS then reading the value (APM Vol. 2 HWCR and chapter 9)."""
    table = kvm.supported_cpuid_copy()
    if vendor(table) != "AuthenticAMD":
        pytest.skip(f"HWCR.McStatusWrEn is AMD's (APM); this vCPU is {vendor(table)}")
    status = msr_ia32_mci_status(BANK)
    write = f"mov ecx, {status:#x}\nmov eax, {STATUS:#x}\nxor edx, edx\n"
    body = (write + "wrmsr\n" + _rdmsr_sync(status)) if wren else (write + "GUEST_ASSERT_RAISES GP(0), wrmsr\n")
    g = guest("long64", body + "GUEST_DONE")
    g.vcpu.setup_mce(4)  # four banks, no optional MCG_CAP features
    assert g.vcpu.get_msr(MSR_IA32_MCG_CAP) & 0xFF == 4, \
        "KVM_GET_MSRS MCG_CAP after KVM_X86_SETUP_MCE with 4 banks: expected Count (bits 7:0) 4"
    assert g.vcpu.set_msrs({MSR_AMD64_HWCR: HWCR_MCSTATUSWREN if wren else 0}) == 1, \
        f"KVM_SET_MSRS of HWCR with McStatusWrEn={int(wren)}: expected 1 MSR set (the return value counts them)"
    seen = g.run_to_done()
    if wren:
        host = g.vcpu.get_msr(status)
        assert seen == [STATUS] and host == STATUS, \
            f"MC{BANK}_STATUS after the guest wrote {STATUS:#x} with McStatusWrEn=1: guest read " \
            f"{[hex(v) for v in seen]}, KVM_GET_MSRS {host:#x}"
