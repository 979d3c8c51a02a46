"""Machine-check injection: KVM_X86_SETUP_MCE gives a vCPU machine-check banks, KVM_X86_SET_MCE
reports an error in one (api.rst KVM_X86_SETUP_MCE, KVM_X86_SET_MCE, KVM_CAP_MCE), and the guest
sees it as the machine-check architecture defines (SDM Vol. 3B chapter 16: 16.3 the MSRs, 16.5
CMCI, 16.6.2 the UCR error classes; Vol. 3A 6.15 "Interrupt 18—Machine-Check Exception").
Selftests ucna_injection_test, kvm-unit-tests msr.c (the bank MSRs)."""

import errno

import pytest

from kvmtest.abi.constants import errno_name
from kvmtest.exits import IntrExit, ShutdownExit
from kvmtest.guest.msr_source import load_msr, rdmsr64, wrmsr
from kvmtest.guest.paging import KiB4
from kvmtest.x86 import (
    APIC_DEFAULT_PHYS_BASE,
    MCG_CMCI_P,
    MCG_CTL_P,
    MCG_EXT_P,
    MCG_LMCE_P,
    MCG_SER_P,
    MCG_STATUS_EIPV,
    MCG_STATUS_MCIP,
    MCG_STATUS_RIPV,
    MCG_TES_P,
    MCI_CTL2_CMCI_EN,
    MCI_STATUS_ADDRV,
    MCI_STATUS_EN,
    MCI_STATUS_MISCV,
    MCI_STATUS_PCC,
    MCI_STATUS_UC,
    MCI_STATUS_VAL,
    MSR_IA32_MCG_CAP,
    MSR_IA32_MCG_CTL,
    MSR_IA32_MCG_STATUS,
    PTE_P,
    PTE_PCD,
    PTE_RW,
    msr_ia32_mci_addr,
    msr_ia32_mci_ctl,
    msr_ia32_mci_ctl2,
    msr_ia32_mci_misc,
    msr_ia32_mci_status,
)

pytestmark = pytest.mark.requires_cap("KVM_CAP_MCE")

BANKS = 4
BANK = 1
ADDR, MISC = 0x1234000, 0x86
CORRECTED = MCI_STATUS_VAL | MCI_STATUS_EN | MCI_STATUS_ADDRV | MCI_STATUS_MISCV | 0x0005
UNCORRECTED = CORRECTED | MCI_STATUS_UC | MCI_STATUS_PCC
UCNA = MCI_STATUS_VAL | MCI_STATUS_UC | MCI_STATUS_EN | MCI_STATUS_ADDRV | MCI_STATUS_MISCV | 0x0005  # PCC=S=AR=0
ALL_ONES = (1 << 64) - 1
CAP_NAMES = {"MCG_CTL_P": MCG_CTL_P, "MCG_EXT_P": MCG_EXT_P, "MCG_CMCI_P": MCG_CMCI_P, "MCG_TES_P": MCG_TES_P,
             "MCG_SER_P": MCG_SER_P, "MCG_LMCE_P": MCG_LMCE_P}


def _mcg_cap(kvm, extra: int = 0) -> int:
    """BANKS banks with MCG_CTL_P and MCG_SER_P where KVM supports them, plus `extra` (skips if unsupported)."""
    supported = kvm.mce_cap_supported()
    missing = [name for name, bit in CAP_NAMES.items() if extra & ~supported & bit]
    if missing:
        pytest.skip(f"KVM_X86_GET_MCE_CAP_SUPPORTED {supported:#x} lacks {', '.join(missing)}")
    if kvm.check_extension("KVM_CAP_MCE") < BANKS:
        pytest.skip(f"KVM_CAP_MCE offers {kvm.check_extension('KVM_CAP_MCE')} banks, fewer than {BANKS}")
    return BANKS | (supported & (MCG_CTL_P | MCG_SER_P)) | extra


def _rdmsr(msr: int) -> str:
    return rdmsr64(msr) + "GUEST_SYNC rax\n"


# Machine checks enabled (SDM Vol. 3B 16.8 "Machine-Check Initialization"): CR4.MCE, then
# IA32_MCG_CTL and the bank's IA32_MCi_CTL all ones, so that every error is signalled.
ENABLE_MC = ("mov rax, cr4\nor rax, 0x40\nmov cr4, rax\n" + wrmsr(MSR_IA32_MCG_CTL, ALL_ONES)
             + wrmsr(msr_ia32_mci_ctl(BANK), ALL_ONES))


def _complete_sync(g) -> None:
    """Finish the GUEST_SYNC's OUT (KVM_RUN with immediate_exit: api.rst 5, KVM_EXIT_IO is complete
    only once KVM_RUN is entered again) so that what the host injects next comes after it."""
    g.vcpu.kvm_run.immediate_exit = 1
    exit_ = g.vcpu.run()
    assert isinstance(exit_, IntrExit), f"KVM_RUN with immediate_exit: expected KVM_EXIT_INTR, got {exit_}"


def test_setup_mce_sets_mcg_cap_and_the_banks(kvm, guest):
    """After KVM_X86_SETUP_MCE(mcg_cap) "with the same format as the MSR_IA32_MCG_CAP register",
    IA32_MCG_CAP reads mcg_cap, from the host (KVM_GET_MSRS) and the guest (RDMSR), and the guest
    has exactly its count of banks: RDMSR of the last bank's IA32_MCi_CTL completes, of the next
    one raises #GP(0), as for an MSR the processor does not have (SDM Vol. 2B RDMSR)."""
    mcg_cap = _mcg_cap(kvm)
    g = guest("long64", _rdmsr(MSR_IA32_MCG_CAP) + f"mov ecx, {msr_ia32_mci_ctl(BANKS - 1):#x}\nrdmsr\n"
              f"mov ecx, {msr_ia32_mci_ctl(BANKS):#x}\nGUEST_ASSERT_RAISES GP(0), rdmsr\nGUEST_DONE")
    g.vcpu.setup_mce(mcg_cap)
    host = g.vcpu.get_msr(MSR_IA32_MCG_CAP)
    assert g.run_to_done() == [mcg_cap] and host == mcg_cap, \
        f"IA32_MCG_CAP after KVM_X86_SETUP_MCE {mcg_cap:#x}: KVM_GET_MSRS {host:#x}, guest {g.syncs}"


def test_setup_mce_refuses_too_many_banks_and_unsupported_capabilities(kvm, vcpu):
    """KVM_X86_SETUP_MCE returns EINVAL "if the requested number of banks is invalid" (more than
    KVM_CHECK_EXTENSION(KVM_CAP_MCE) reports) and "if requested MCE capability is not supported"
    (outside KVM_X86_GET_MCE_CAP_SUPPORTED) (api.rst KVM_X86_SETUP_MCE)."""
    supported, most = kvm.mce_cap_supported(), kvm.check_extension("KVM_CAP_MCE")
    candidates = (MCG_EXT_P, MCG_CMCI_P, MCG_TES_P, MCG_LMCE_P, 1 << 63)
    unsupported = next((bit for bit in candidates if not supported & bit), None)
    errs = {"too-many-banks": vcpu.try_setup_mce(most + 1)}
    if unsupported is not None:
        errs["unsupported-capability"] = vcpu.try_setup_mce(1 | unsupported)
    assert all(err == errno.EINVAL for err in errs.values()), \
        f"KVM_X86_SETUP_MCE: {({k: errno_name(v) if v else 'success' for k, v in errs.items()})}; expected EINVAL " \
        f"(KVM_CAP_MCE {most} banks, supported capabilities {supported:#x})"


def test_set_mce_refuses_a_bank_out_of_range_or_a_status_without_val(kvm, vcpu):
    """KVM_X86_SET_MCE returns EINVAL "if the bank number is invalid" (not below the count set up)
    and "if VAL bit is not set in status field" (api.rst KVM_X86_SET_MCE)."""
    vcpu.set_cpuid(kvm.cached_supported_cpuid())
    vcpu.setup_mce(_mcg_cap(kvm))
    errs = {"bank-out-of-range": vcpu.try_set_mce(BANKS, CORRECTED),
            "status-without-val": vcpu.try_set_mce(BANK, CORRECTED & ~MCI_STATUS_VAL)}
    assert all(err == errno.EINVAL for err in errs.values()), \
        f"KVM_X86_SET_MCE: {({k: errno_name(v) if v else 'success' for k, v in errs.items()})}; expected EINVAL"


BANK_READ = (_rdmsr(msr_ia32_mci_status(BANK)) + _rdmsr(msr_ia32_mci_addr(BANK)) + _rdmsr(msr_ia32_mci_misc(BANK))
             + _rdmsr(MSR_IA32_MCG_STATUS))


def test_corrected_error_is_logged_without_a_machine_check(kvm, guest):
    """"If the MCE is a corrected error, KVM will just store it in the corresponding bank" (api.rst
    KVM_X86_SET_MCE): no #MC reaches the guest (its handler would fail the test), and its RDMSR of
    the bank's STATUS, ADDR and MISC reads what was reported (SDM Vol. 3B 16.3.2.2-16.3.2.4)."""
    g = guest("long64", ENABLE_MC + "GUEST_SYNC 1\n" + BANK_READ + "GUEST_DONE")
    g.vcpu.setup_mce(_mcg_cap(kvm))
    assert g.expect_sync() == 1
    g.vcpu.set_mce(BANK, CORRECTED, addr=ADDR, misc=MISC)
    status, addr, misc, _ = g.run_to_done()
    assert (status, addr, misc) == (CORRECTED, ADDR, MISC), \
        f"bank {BANK} after a corrected error: STATUS {status:#x} ADDR {addr:#x} MISC {misc:#x}; expected " \
        f"{CORRECTED:#x} {ADDR:#x} {MISC:#x}"


def test_uncorrected_error_raises_machine_check_with_the_bank_filled(kvm, guest):
    """"If the MCE being reported is an uncorrected error, KVM will inject it as an MCE exception"
    (api.rst KVM_X86_SET_MCE): with CR4.MCE and the bank enabled the guest takes #MC at the point
    of injection, and its handler reads the bank's STATUS, ADDR, MISC and IA32_MCG_STATUS as
    reported (SDM Vol. 3B 16.3.1.2, 16.3.2; Vol. 3A 6.15)."""
    mcg_status = MCG_STATUS_RIPV | MCG_STATUS_EIPV | MCG_STATUS_MCIP
    g = guest("long64", ENABLE_MC + "GUEST_ASSERT_RAISES MC, GUEST_SYNC 1\n" + BANK_READ + "GUEST_DONE")
    g.vcpu.setup_mce(_mcg_cap(kvm))
    assert g.expect_sync() == 1
    _complete_sync(g)
    g.vcpu.set_mce(BANK, UNCORRECTED, addr=ADDR, misc=MISC, mcg_status=mcg_status)
    seen = g.run_to_done()
    assert seen == [UNCORRECTED, ADDR, MISC, mcg_status], \
        f"after #MC: bank STATUS/ADDR/MISC and MCG_STATUS {[hex(v) for v in seen]}; expected " \
        f"{[hex(v) for v in (UNCORRECTED, ADDR, MISC, mcg_status)]}"


@pytest.mark.parametrize("case", ["mcip-set", "cr4-mce-clear"])
def test_uncorrected_error_shuts_down_when_it_cannot_be_delivered(kvm, guest, case):
    """An uncorrected error while IA32_MCG_STATUS.MCIP reports a machine check in progress ends in
    KVM_EXIT_SHUTDOWN (api.rst KVM_X86_SET_MCE; SDM Vol. 3B 16.3.1.2: "If this flag is set and
    another machine-check exception is generated, the processor enters a shutdown state"), and so
    does one with CR4.MCE clear (SDM Vol. 3A 6.15: "If the machine-check mechanism is not enabled
    (the MCE flag in control register CR4 is clear), a machine-check exception causes the
    processor to enter the shutdown state")."""
    enable = ENABLE_MC if case == "mcip-set" else ENABLE_MC.replace("or rax, 0x40", "and rax, -0x41")
    g = guest("long64", enable + "GUEST_SYNC 1\nGUEST_DONE")
    g.vcpu.setup_mce(_mcg_cap(kvm))
    assert g.expect_sync() == 1
    _complete_sync(g)
    if case == "mcip-set":
        g.vcpu.set_msr(MSR_IA32_MCG_STATUS, MCG_STATUS_MCIP)
    g.vcpu.set_mce(BANK, UNCORRECTED, addr=ADDR, misc=MISC, mcg_status=MCG_STATUS_RIPV | MCG_STATUS_MCIP)
    g.expect_exit(ShutdownExit)


def test_uncorrected_error_with_the_bank_disabled_raises_no_machine_check(kvm, guest):
    """With IA32_MCi_CTL all zeros the bank signals no machine-check exception: "clearing [an EEj
    flag] disables signaling of the error" (SDM Vol. 3B 16.3.2.1), so the guest runs on to its
    end without #MC."""
    g = guest("long64", ENABLE_MC.replace(wrmsr(msr_ia32_mci_ctl(BANK), ALL_ONES), wrmsr(msr_ia32_mci_ctl(BANK), 0))
              + "GUEST_SYNC 1\nGUEST_DONE")
    g.vcpu.setup_mce(_mcg_cap(kvm))
    assert g.expect_sync() == 1
    _complete_sync(g)
    g.vcpu.set_mce(BANK, UNCORRECTED, addr=ADDR, misc=MISC, mcg_status=MCG_STATUS_RIPV | MCG_STATUS_MCIP)
    g.run_to_done()


CMCI_VECTOR = 0x60
UCNA_GUEST = f"""
    mov rbx, {APIC_DEFAULT_PHYS_BASE:#x}
    mov dword ptr [rbx + 0xF0], 0x1FF           # SVR: software enable
    mov dword ptr [rbx + 0x2F0], {CMCI_VECTOR:#x}   # LVT CMCI: fixed, vector 0x60, unmasked
    {{ctl2}}
    sti
    GUEST_SYNC 1
    nop
    GUEST_SYNC 2
    {BANK_READ}
    GUEST_DONE
cmci:
    GUEST_SYNC {CMCI_VECTOR:#x}
    mov dword ptr [rbx + 0xB0], 0
    iretq
"""


@pytest.mark.requires_cap("KVM_CAP_IRQCHIP")
@pytest.mark.parametrize("cmci_en", [True, False], ids=["cmci-enabled", "cmci-disabled"])
def test_ucna_error_signals_cmci_not_machine_check(kvm, guest, cmci_en):
    """An uncorrected no-action error (UC=1, PCC=0, S=0, AR=0: SDM Vol. 3B 16.6.2) is logged in the
    bank and signalled through the corrected machine-check interrupt when the bank's
    IA32_MCi_CTL2.CMCI_EN is set (16.5: CMCI delivered through the LVT CMCI entry), never as #MC;
    with CMCI_EN clear it is only logged (selftests ucna_injection_test)."""
    mcg_cap = _mcg_cap(kvm, MCG_CMCI_P | MCG_SER_P)
    ctl2 = wrmsr(msr_ia32_mci_ctl2(BANK), MCI_CTL2_CMCI_EN if cmci_en else 0)
    g = guest("long64", UCNA_GUEST.format(ctl2=ctl2), irqchip=True)
    g.page_tables.map(APIC_DEFAULT_PHYS_BASE, APIC_DEFAULT_PHYS_BASE, KiB4, PTE_P | PTE_RW | PTE_PCD)
    g.set_idt_gate(CMCI_VECTOR, "cmci")
    g.vcpu.setup_mce(mcg_cap)
    assert g.expect_sync() == 1
    g.vcpu.set_mce(BANK, UCNA, addr=ADDR, misc=MISC)
    seen = g.run_to_done()
    want = ([CMCI_VECTOR] if cmci_en else []) + [2, UCNA, ADDR, MISC, 0]
    assert seen == want, f"GUEST_SYNCs {[hex(v) for v in seen]}; expected {[hex(v) for v in want]} (CMCI " \
                         f"{'then' if cmci_en else 'none, then'} sync 2, the bank's STATUS/ADDR/MISC, MCG_STATUS 0)"


@pytest.mark.parametrize("bit", [15, 29, 31, 63])
def test_mci_ctl2_reserved_bits_raise_gp(kvm, guest, bit):
    """IA32_MCi_CTL2 holds the corrected-error threshold in bits 14:0 and CMCI_EN in bit 30; bits
    29:15 and 63:31 are reserved (SDM Vol. 3B 16.3.2.5), so a WRMSR setting one raises #GP(0)
    while CMCI_EN plus a threshold of 1 is accepted and reads back (selftests ucna_injection_test)."""
    valid = MCI_CTL2_CMCI_EN | 1
    g = guest("long64", wrmsr(msr_ia32_mci_ctl2(BANK), valid) + _rdmsr(msr_ia32_mci_ctl2(BANK))
              + load_msr(msr_ia32_mci_ctl2(BANK), valid | 1 << bit) + "GUEST_ASSERT_RAISES GP(0), wrmsr\n"
              + _rdmsr(msr_ia32_mci_ctl2(BANK)) + "GUEST_DONE")
    g.vcpu.setup_mce(_mcg_cap(kvm, MCG_CMCI_P))
    assert g.run_to_done() == [valid, valid], f"IA32_MCi_CTL2 before and after the refused WRMSR with bit {bit}"


NONCANONICAL = 0xAAAA5555AAAA5555


def test_bank_msr_write_rules(kvm, guest):
    """Each bank's IA32_MCi_CTL takes all zeros and all ones and reads them back; IA32_MCi_STATUS
    takes 0 ("software is responsible for clearing IA32_MCi_STATUS MSRs by explicitly writing 0s
    to them; writing 1s to them causes a general-protection exception"), so a WRMSR of 1 raises
    #GP(0); IA32_MCi_ADDR and IA32_MCi_MISC take any 64-bit value, non-canonical ones included,
    and read them back (SDM Vol. 3B 16.3.2.1-16.3.2.4). The four MSRs of the first bank past the
    count in IA32_MCG_CAP do not exist: RDMSR and WRMSR of 0 raise #GP(0) (SDM Vol. 2B RDMSR;
    kvm-unit-tests msr.c test_mce_msrs)."""
    src, want = "", []
    for bank in range(BANKS):
        for value in (0, ALL_ONES):
            src += wrmsr(msr_ia32_mci_ctl(bank), value) + _rdmsr(msr_ia32_mci_ctl(bank))
            want.append(value)
        src += wrmsr(msr_ia32_mci_status(bank), 0) + _rdmsr(msr_ia32_mci_status(bank))
        src += load_msr(msr_ia32_mci_status(bank), 1) + "GUEST_ASSERT_RAISES GP(0), wrmsr\n"
        want.append(0)
        for msr in (msr_ia32_mci_addr(bank), msr_ia32_mci_misc(bank)):
            for value in (0, ALL_ONES, NONCANONICAL):
                src += wrmsr(msr, value) + _rdmsr(msr)
                want.append(value)
    for msr in (msr_ia32_mci_ctl(BANKS), msr_ia32_mci_status(BANKS), msr_ia32_mci_addr(BANKS),
                msr_ia32_mci_misc(BANKS)):
        src += f"mov ecx, {msr:#x}\nGUEST_ASSERT_RAISES GP(0), rdmsr\n" + load_msr(msr, 0) + \
            "GUEST_ASSERT_RAISES GP(0), wrmsr\n"
    g = guest("long64", src + "GUEST_DONE")
    g.vcpu.setup_mce(_mcg_cap(kvm))
    got = g.run_to_done()
    wrong = [f"#{i}: {g_:#x} (wrote {w:#x})" for i, (g_, w) in enumerate(zip(got, want, strict=True)) if g_ != w]
    assert not wrong, f"bank MSRs read back other than written (in order CTL 0/1s, STATUS 0, ADDR, MISC per bank): " \
                      f"{', '.join(wrong)}"
