"""KVM_X86_SET_MSR_FILTER beyond one allow range (api.rst 4.126), and the exit reasons of
KVM_CAP_X86_USER_SPACE_MSR (api.rst 5 KVM_EXIT_X86_RDMSR / KVM_EXIT_X86_WRMSR): default-deny
filters, filters with no ranges, a filter replaced between runs, undefined flag bits, the x2APIC
MSRs no filter reaches, KVM_MSR_EXIT_REASON_INVAL, and RDMSR/WRMSR forced through KVM's
instruction emulator (selftests userspace_msr_exit_test)."""

import errno

import pytest

from kvmtest import forced_emulation
from kvmtest.abi import constants as C
from kvmtest.abi.constants import errno_name
from kvmtest.exits import MsrExit
from kvmtest.lapic import reg
from kvmtest.x86 import (
    APIC_BASE_EN,
    APIC_BASE_EXTD,
    MSR_IA32_APIC_BASE,
    MSR_IA32_EFER,
    MSR_IA32_FS_BASE,
    MSR_IA32_GS_BASE,
    MSR_IA32_SYSENTER_CS,
    MSR_IA32_SYSENTER_ESP,
    MSR_IA32_X2APIC_TPR,
)
from kvmtest.x86.apic import APIC_TPR

pytestmark = [pytest.mark.requires_cap("KVM_CAP_X86_USER_SPACE_MSR"),
              pytest.mark.requires_cap("KVM_CAP_X86_MSR_FILTER")]
RW = C.KVM_MSR_FILTER_READ | C.KVM_MSR_FILTER_WRITE
UNKNOWN_MSR = 0x4B564D7F  # no CPU or KVM defines it


def _exits(g, reasons=C.KVM_MSR_EXIT_REASON_FILTER):
    g.vm.enable_cap("KVM_CAP_X86_USER_SPACE_MSR", reasons)


def test_default_deny_filter_exits_for_msrs_outside_every_range(guest):
    """With KVM_MSR_FILTER_DEFAULT_DENY, an MSR no range covers is denied (RDMSR exits with
    KVM_MSR_EXIT_REASON_FILTER; the data user space returns is what the guest reads), while one
    a range allows is handled by KVM without an exit (api.rst 4.126 KVM_MSR_FILTER_DEFAULT_DENY)."""
    g = guest("long64", f"""
        mov ecx, {MSR_IA32_SYSENTER_CS:#x}
        mov eax, 0x23
        xor edx, edx
        wrmsr                                   # allowed: KVM's own
        mov ecx, {MSR_IA32_SYSENTER_ESP:#x}
        rdmsr                                   # in no range: denied
        GUEST_SYNC rax
        GUEST_DONE""")
    _exits(g)
    g.vm.set_msr_filter([(RW, MSR_IA32_SYSENTER_CS, [True])], default_deny=True)
    g.expect_exit(MsrExit, reason=C.KVM_EXIT_X86_RDMSR, index=MSR_IA32_SYSENTER_ESP,
                  msr_reason=C.KVM_MSR_EXIT_REASON_FILTER).respond(0x5151)
    assert g.run_to_done() == [0x5151], "RDMSR of the denied MSR did not read what user space returned"
    assert g.vcpu.get_msr(MSR_IA32_SYSENTER_CS) == 0x23, "the allowed WRMSR of IA32_SYSENTER_CS did not reach KVM"


def test_filter_with_no_ranges_turns_filtering_off(guest):
    """KVM_X86_SET_MSR_FILTER with no ranges (every nmsrs 0) disables filtering: an MSR a previous
    filter denied is KVM's again, the guest reads the value set through KVM_SET_MSRS and nothing
    exits. The same with KVM_MSR_FILTER_DEFAULT_DENY is invalid (EINVAL) (api.rst 4.126)."""
    g = guest("long64", f"mov ecx, {MSR_IA32_SYSENTER_ESP:#x}\nrdmsr\nGUEST_SYNC rax\nGUEST_DONE")
    _exits(g)
    g.vm.set_msr_filter([(RW, MSR_IA32_SYSENTER_ESP, [False])])
    err = g.vm.try_set_msr_filter([], default_deny=True)
    assert err == errno.EINVAL, \
        f"KVM_X86_SET_MSR_FILTER with no ranges and KVM_MSR_FILTER_DEFAULT_DENY: expected EINVAL, got {errno_name(err)}"
    g.vm.set_msr_filter([])
    g.vcpu.set_msr(MSR_IA32_SYSENTER_ESP, 0x7000)
    assert g.run_to_done() == [0x7000], "after a filter with no ranges, RDMSR did not read KVM's IA32_SYSENTER_ESP"


def test_filter_replaced_between_runs_applies_to_the_next_access(guest):
    """A filter set while the guest is stopped at an exit governs every access after it (api.rst
    4.126: vCPUs see "either the previous filter or the new filter"): FS_BASE reads exit under
    the first filter and not under the second, GS_BASE reads the other way round, and with an
    allow-all filter neither exits; unfiltered reads return the bases the guest wrote."""
    fs, gs = 0x11000, 0x22000
    g = guest("long64", f"""
        mov ecx, {MSR_IA32_FS_BASE:#x}
        mov eax, {fs:#x}
        xor edx, edx
        wrmsr
        rdmsr
        GUEST_SYNC rax
        mov ecx, {MSR_IA32_GS_BASE:#x}
        rdmsr
        GUEST_SYNC rax
        mov ecx, {MSR_IA32_FS_BASE:#x}
        rdmsr
        GUEST_SYNC rax
        mov ecx, {MSR_IA32_GS_BASE:#x}
        mov eax, {gs:#x}
        wrmsr                                   # writes are not filtered
        rdmsr
        GUEST_SYNC rax
        GUEST_DONE""")
    _exits(g)
    g.vm.set_msr_filter([(C.KVM_MSR_FILTER_READ, MSR_IA32_FS_BASE, [False])])
    g.expect_exit(MsrExit, index=MSR_IA32_FS_BASE, msr_reason=C.KVM_MSR_EXIT_REASON_FILTER).respond(0xF5)
    assert g.expect_sync() == 0xF5, \
        "RDMSR of FS_BASE under the first filter: expected GUEST_SYNC 0xf5, the value KVM_EXIT_X86_RDMSR returned"
    g.vm.set_msr_filter([(C.KVM_MSR_FILTER_READ, MSR_IA32_GS_BASE, [False])])
    g.expect_exit(MsrExit, index=MSR_IA32_GS_BASE, msr_reason=C.KVM_MSR_EXIT_REASON_FILTER).respond(0x65)
    assert g.expect_sync() == 0x65, \
        "RDMSR of GS_BASE under the second filter: expected GUEST_SYNC 0x65, the value KVM_EXIT_X86_RDMSR returned"
    assert g.expect_sync() == fs, "RDMSR of FS_BASE under the second filter did not read the guest's FS base"
    g.vm.set_msr_filter([(RW, MSR_IA32_FS_BASE, [True, True])])
    assert g.run_to_done() == [gs], "RDMSR of GS_BASE under the allowing filter did not read the guest's GS base"


def test_undefined_filter_flags_are_einval(vm):
    """kvm_msr_filter.flags takes KVM_MSR_FILTER_DEFAULT_DENY (bit 0) and nothing else; a range's
    flags take KVM_MSR_FILTER_READ and KVM_MSR_FILTER_WRITE (bits 0, 1): any other of the 32 bits
    makes KVM_X86_SET_MSR_FILTER fail with EINVAL (api.rst 4.126 lists only these flags; general
    errors: EINVAL)."""
    wrong = []
    for bit in range(32):
        flag = 1 << bit
        err = vm.try_set_msr_filter([(C.KVM_MSR_FILTER_READ, 0, [False])], filter_flags=flag)
        want = 0 if flag == C.KVM_MSR_FILTER_DEFAULT_DENY else errno.EINVAL
        if err != want:
            wrong.append(f"flags={flag:#x}: {errno_name(err)}, expected {errno_name(want)}")
        err = vm.try_set_msr_filter([(flag, 0, [False])])
        want = 0 if flag & RW else errno.EINVAL
        if err != want:
            wrong.append(f"range flags={flag:#x}: {errno_name(err)}, expected {errno_name(want)}")
    assert not wrong, "KVM_X86_SET_MSR_FILTER: " + "; ".join(wrong)


@pytest.mark.requires_cpu("x2apic")
def test_x2apic_msrs_are_never_filtered(guest):
    """A range denying every x2APIC MSR (0x800-0x8ff) has no effect on them: they "are always
    allowed, independent of the default_allow setting" (api.rst 4.126). In x2APIC mode the
    guest's WRMSR and RDMSR of the TPR (0x808) reach the local APIC without an exit: KVM_GET_LAPIC
    shows the value and the guest reads it back (SDM Vol. 3A 11.12.1.2)."""
    g = guest("long64", f"""
        mov ecx, {MSR_IA32_APIC_BASE:#x}
        rdmsr
        or eax, {APIC_BASE_EN | APIC_BASE_EXTD:#x}     # x2APIC mode (SDM Vol. 3A 11.12.1)
        wrmsr
        mov ecx, {MSR_IA32_X2APIC_TPR:#x}
        mov eax, 0x30
        xor edx, edx
        wrmsr
        GUEST_SYNC 1
        xor eax, eax
        rdmsr
        GUEST_SYNC rax
        GUEST_DONE""", irqchip=True)
    _exits(g)
    g.vm.set_msr_filter([(RW, 0x800, [False] * 0x100)], default_deny=False)
    assert g.expect_sync() == 1, "the x2APIC WRMSR exited to user space or faulted"
    tpr = reg(g.vcpu.get_lapic(), APIC_TPR)
    assert tpr == 0x30, f"KVM_GET_LAPIC TPR = {tpr:#x} after the guest's WRMSR 0x808 of 0x30 under a denying filter"
    assert g.run_to_done() == [0x30], "RDMSR 0x808 under a denying filter did not read the TPR"


def test_invalid_value_exits_with_reason_inval(guest):
    """With KVM_MSR_EXIT_REASON_INVAL enabled, a WRMSR KVM would refuse for its value (IA32_EFER
    with reserved bit 63 set, which raises #GP: SDM Vol. 3A 2.2.1, Vol. 2B WRMSR) exits as
    KVM_EXIT_X86_WRMSR with reason KVM_MSR_EXIT_REASON_INVAL and the data; an error reply injects
    #GP and KVM's EFER stays as it was. An unknown MSR, a reason not enabled, raises #GP without an
    exit (api.rst 5 KVM_EXIT_X86_RDMSR: "User space will only receive MSR exit traps when a
    particular reason was requested")."""
    g = guest("long64", f"""
        mov ecx, {MSR_IA32_EFER:#x}
        rdmsr
        or edx, 0x80000000
        GUEST_ASSERT_RAISES GP(0), wrmsr
        mov ecx, {UNKNOWN_MSR:#x}
        GUEST_ASSERT_RAISES GP(0), rdmsr
        GUEST_DONE""")
    _exits(g, C.KVM_MSR_EXIT_REASON_INVAL)
    efer = g.vcpu.get_msr(MSR_IA32_EFER)
    g.expect_exit(MsrExit, reason=C.KVM_EXIT_X86_WRMSR, index=MSR_IA32_EFER, data=efer | 1 << 63,
                  msr_reason=C.KVM_MSR_EXIT_REASON_INVAL).respond(error=True)
    g.run_to_done()
    assert g.vcpu.get_msr(MSR_IA32_EFER) == efer, "KVM took the EFER value that user space refused"


@pytest.mark.skipif(not forced_emulation.enabled(), reason=forced_emulation.SKIP_REASON)
def test_emulated_rdmsr_and_wrmsr_go_through_the_filter(guest):
    """RDMSR and WRMSR run by KVM's instruction emulator (forced-emulation prefix) meet the same
    filter as intercepted ones: each denied access exits with KVM_MSR_EXIT_REASON_FILTER, the
    RDMSR reads what user space returns, the WRMSR's exit carries its data, and an allowed WRMSR
    reaches KVM (api.rst 4.126; selftests userspace_msr_exit_test em_rdmsr/em_wrmsr)."""
    g = guest("long64", f"""
        mov ecx, {MSR_IA32_SYSENTER_ESP:#x}
        {forced_emulation.FEP}
        rdmsr
        GUEST_SYNC rax
        mov eax, 0x99
        xor edx, edx
        {forced_emulation.FEP}
        wrmsr
        mov ecx, {MSR_IA32_SYSENTER_CS:#x}
        mov eax, 0x42
        {forced_emulation.FEP}
        wrmsr
        GUEST_DONE""")
    _exits(g)
    g.vm.set_msr_filter([(RW, MSR_IA32_SYSENTER_CS, [True, False])])
    g.expect_exit(MsrExit, reason=C.KVM_EXIT_X86_RDMSR, index=MSR_IA32_SYSENTER_ESP,
                  msr_reason=C.KVM_MSR_EXIT_REASON_FILTER).respond(0x3131)
    assert g.expect_sync() == 0x3131, "the emulated RDMSR did not read what user space returned"
    g.expect_exit(MsrExit, reason=C.KVM_EXIT_X86_WRMSR, index=MSR_IA32_SYSENTER_ESP, data=0x99,
                  msr_reason=C.KVM_MSR_EXIT_REASON_FILTER).respond()
    g.run_to_done()
    assert g.vcpu.get_msr(MSR_IA32_SYSENTER_CS) == 0x42, "the allowed emulated WRMSR did not reach KVM"
