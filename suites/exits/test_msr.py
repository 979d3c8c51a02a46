"""MSR accesses handed to user space (KVM_CAP_X86_USER_SPACE_MSR, KVM_X86_SET_MSR_FILTER;
api.rst 5 KVM_EXIT_X86_RDMSR/WRMSR, 7.x)."""

import pytest

from kvmtest.abi import constants as C
from kvmtest.exits import MsrExit
from kvmtest.guest.mode_select import select
from kvmtest.x86 import MSR_IA32_SYSENTER_CS, MSR_IA32_SYSENTER_ESP

pytestmark = pytest.mark.requires_cap("KVM_CAP_X86_USER_SPACE_MSR")
UNKNOWN_MSR = 0x4B564D7F  # no CPU or KVM defines it
MODES = select(sample="per-code-size", cpl=0)


def _enable(g, reasons=C.KVM_MSR_EXIT_REASON_UNKNOWN | C.KVM_MSR_EXIT_REASON_FILTER):
    g.vm.enable_cap("KVM_CAP_X86_USER_SPACE_MSR", reasons)


@pytest.mark.modes(*MODES)
def test_rdmsr_of_an_unknown_msr_exits_and_takes_host_data(guest, mode):
    """RDMSR of an MSR KVM does not know exits with KVM_EXIT_X86_RDMSR, reason
    KVM_MSR_EXIT_REASON_UNKNOWN and the index; the data the host returns lands in EDX:EAX."""
    g = guest(mode, f"mov ecx, {UNKNOWN_MSR:#x}\nrdmsr\nGUEST_SYNC eax\nGUEST_SYNC edx\nGUEST_DONE")
    _enable(g)
    g.expect_exit(MsrExit, reason=C.KVM_EXIT_X86_RDMSR, index=UNKNOWN_MSR,
                  msr_reason=C.KVM_MSR_EXIT_REASON_UNKNOWN).respond(0x1122334455667788)
    assert g.run_to_done() == [0x55667788, 0x11223344]


@pytest.mark.modes(*MODES)
def test_wrmsr_of_an_unknown_msr_exits_with_the_data(guest, mode):
    """WRMSR of an unknown MSR exits with KVM_EXIT_X86_WRMSR carrying index and EDX:EAX."""
    g = guest(mode, f"mov ecx, {UNKNOWN_MSR:#x}\nmov eax, 0xCAFEF00D\nmov edx, 0x12\nwrmsr\nGUEST_DONE")
    _enable(g)
    g.expect_exit(MsrExit, reason=C.KVM_EXIT_X86_WRMSR, index=UNKNOWN_MSR, data=0x12CAFEF00D).respond()
    g.run_to_done()


@pytest.mark.modes(long=True, cpl=0)
def test_error_reply_injects_gp(guest, mode):
    """Setting msr.error makes the guest's RDMSR take #GP(0) (api.rst 5: "if error is set, an
    exception is injected into the guest")."""
    g = guest(mode, f"mov ecx, {UNKNOWN_MSR:#x}\nGUEST_ASSERT_RAISES GP(0), rdmsr\nGUEST_DONE")
    _enable(g)
    g.expect_exit(MsrExit, index=UNKNOWN_MSR).respond(error=True)
    g.run_to_done()


@pytest.mark.requires_cap("KVM_CAP_X86_MSR_FILTER")
def test_filtered_msr_exits_with_reason_filter(guest):
    """An MSR denied by KVM_X86_SET_MSR_FILTER exits with reason KVM_MSR_EXIT_REASON_FILTER
    although KVM knows it, and the data user space returns is what RDMSR reads; an MSR whose
    bit is set in the same range, and a write to the denied MSR when the range only covers
    reads, are handled by KVM without an exit (api.rst KVM_X86_SET_MSR_FILTER)."""
    g = guest("long64", f"""
        mov ecx, {MSR_IA32_SYSENTER_ESP:#x}     # allowed in the range
        rdmsr
        mov ecx, {MSR_IA32_SYSENTER_CS:#x}      # only its reads are denied
        mov eax, 0x10
        xor edx, edx
        wrmsr
        rdmsr
        GUEST_SYNC eax
        GUEST_DONE""")
    _enable(g)
    # The range starts at IA32_SYSENTER_CS: its bit 0 (denied), then IA32_SYSENTER_ESP (allowed).
    g.vm.set_msr_filter([(C.KVM_MSR_FILTER_READ, MSR_IA32_SYSENTER_CS, [False, True])])
    g.expect_exit(MsrExit, reason=C.KVM_EXIT_X86_RDMSR, index=MSR_IA32_SYSENTER_CS,
                  msr_reason=C.KVM_MSR_EXIT_REASON_FILTER).respond(5)
    assert g.run_to_done() == [5], "RDMSR of the filtered MSR did not read the data user space returned"
    assert g.vcpu.get_msr(MSR_IA32_SYSENTER_CS) == 0x10, "the unfiltered WRMSR of IA32_SYSENTER_CS did not reach KVM"
