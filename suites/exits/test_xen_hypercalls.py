"""Xen hypercalls intercepted to user space: KVM_XEN_HVM_CONFIG with KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL
(api.rst 4.28, 8.30 KVM_CAP_XEN_HVM) makes each Xen hypercall exit as KVM_EXIT_XEN with type
KVM_EXIT_XEN_HCALL, and user space places the result before the next KVM_RUN (api.rst 5). The
registers are the Xen hypercall ABI's (Xen's public arch-x86/xen-x86_64.h and xen-x86_32.h; its guest
guide, x86/hypercall-abi.rst): the number in RAX; parameters in RDI, RSI, RDX, R10, R8, R9 when the
vCPU runs 64-bit code, else in EBX, ECX, EDX, ESI, EDI, EBP; the result in RAX. The hypercall page is
32-byte entries, hypercall N at offset N * 32 (xen-x86_64.h: "call hypercall_page + hypercall-number
* 32"). Peer: selftests x86/xen_vmcall_test.
"""

import errno

import pytest

from kvmtest.abi import constants as C
from kvmtest.abi.constants import errno_name
from kvmtest.cpuid import hypercall_instruction
from kvmtest.exits import XenExit
from kvmtest.guest import layout as L
from kvmtest.guest.modes import get_mode

pytestmark = pytest.mark.requires_cap("KVM_CAP_XEN_HVM")

HYPERCALL = 0x21                 # the hypercall number (RAX)
PARAMS = [0x1111_0000_0000_0011 * k for k in range(1, 7)]
RESULT = 0x7654_3210_FEDC_BA98
PAGE_MSR = 0x40000200            # a synthetic MSR, clear of the Hyper-V range 0x40000000-0x400000FF
REGS_64 = ("rdi", "rsi", "rdx", "r10", "r8", "r9")
REGS_32 = ("ebx", "ecx", "edx", "esi", "edi", "ebp")


def _intercepting(kvm):
    """Skip where KVM_CAP_XEN_HVM does not offer KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL (api.rst 8.30)."""
    if not kvm.check_extension("KVM_CAP_XEN_HVM") & C.KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL:
        pytest.skip("KVM_CAP_XEN_HVM does not offer KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL")


def _hypercall_insn(kvm) -> str:
    """VMMCALL on AMD, VMCALL on Intel (the Xen guide's "Mode transfer" table)."""
    return hypercall_instruction(kvm.cached_supported_cpuid())


@pytest.mark.modes("long64", "long64-cpl3", "compat32", "compat32-cpl3", "pm32", "pm32-cpl3")
@pytest.mark.guest_timeout(2)
def test_a_hypercall_exits_with_its_number_parameters_mode_and_cpl(kvm, guest, mode):
    """With KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL, VMCALL/VMMCALL exits as KVM_EXIT_XEN type
    KVM_EXIT_XEN_HCALL (api.rst 5) naming the hypercall (RAX), its six parameters from the ABI's
    registers for the mode (64-bit code: RDI RSI RDX R10 R8 R9; else the low halves of RBX RCX RDX
    RSI RDI RBP), longmode 1 only for 64-bit code, and the caller's CPL; the result user space
    writes is RAX when the guest resumes after the instruction."""
    _intercepting(kvm)
    bits64 = get_mode(mode).code_bits == 64
    regs, mask = (REGS_64, (1 << 64) - 1) if bits64 else (REGS_32, 0xFFFF_FFFF)
    loads = "\n".join(f"mov {r}, {p & mask:#x}" for r, p in zip(regs, PARAMS, strict=True))
    acc = "rax" if bits64 else "eax"
    # RBP/EBP is the sixth parameter: kept around the call, so nothing of the guest's depends on it
    g = guest(mode, f"push {'rbp' if bits64 else 'ebp'}\nmov {acc}, {HYPERCALL:#x}\n{loads}\n"
                    f"{_hypercall_insn(kvm)}\npop {'rbp' if bits64 else 'ebp'}\nGUEST_SYNC {acc}\nGUEST_DONE")
    # Configured as a Xen VMM does, with the hypercall-page MSR: KVM switches its Xen hypercall handling
    # on only once an MSR is set (arch/x86/kvm/xen.c kvm_xen_hvm_config, the kvm_xen_enabled key; with
    # msr 0 the 6.12 host left VMMCALL a KVM hypercall), which api.rst 4.28 leaves unsaid: the check is
    # the exit, not that.
    g.vm.configure_xen_hvm(C.KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL, PAGE_MSR)
    exit_ = g.expect_exit(XenExit)
    expected = (C.KVM_EXIT_XEN_HCALL, int(bits64), get_mode(mode).cpl, HYPERCALL, tuple(p & mask for p in PARAMS))
    observed = (exit_.type, exit_.longmode, exit_.cpl, exit_.input, exit_.params)
    assert observed == expected, (f"KVM_EXIT_XEN in {mode}: expected (type, longmode, cpl, input, params) = "
                                  f"{expected}, observed {observed} ({exit_})")
    exit_.respond(RESULT)
    assert g.run_to_done() == [RESULT & mask], f"RAX after the hypercall: expected the result {RESULT & mask:#x}"


@pytest.mark.guest_timeout(2)
def test_hypercall_page_entry_n_makes_hypercall_n(kvm, guest):
    """With KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL, a write of a page's GPA to the configured MSR makes KVM
    fill that page with hypercall stubs (api.rst 4.28: "generate the contents of the hypercall page
    automatically"); a call to entry N (offset N * 32, Xen's xen-x86_64.h) exits as hypercall N with
    the caller's parameters and returns to the caller with the result in RAX."""
    _intercepting(kvm)
    page = L.DATA
    loads = "\n".join(f"mov {r}, {p:#x}" for r, p in zip(REGS_64[:5], PARAMS[:5], strict=True))
    g = guest("long64", f"mov ecx, {PAGE_MSR:#x}\nmov eax, {page:#x}\nxor edx, edx\nwrmsr\n{loads}\n"
                        f"mov rax, {page + HYPERCALL * 32:#x}\ncall rax\nGUEST_SYNC rax\nGUEST_DONE")
    g.vm.configure_xen_hvm(C.KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL, PAGE_MSR)
    exit_ = g.expect_exit(XenExit, type=C.KVM_EXIT_XEN_HCALL, longmode=1, cpl=0)
    assert (exit_.input, exit_.params[:5]) == (HYPERCALL, tuple(PARAMS[:5])), \
        f"a call to hypercall page entry {HYPERCALL:#x}: expected input {HYPERCALL:#x} and parameters " \
        f"{[hex(p) for p in PARAMS[:5]]}, observed {exit_}"
    exit_.respond(RESULT)
    assert g.run_to_done() == [RESULT], f"RAX after the call into the hypercall page: expected {RESULT:#x}"


@pytest.mark.parametrize("blob", ["blob_addr_32", "blob_addr_64", "blob_size_32", "blob_size_64"])
def test_intercepting_with_a_user_space_blob_is_refused(kvm, vm, blob):
    """KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL has KVM write the hypercall page, so "all of the blob size
    and address fields must be zero" (api.rst 4.28): any one of them set fails with EINVAL."""
    _intercepting(kvm)
    err = vm.try_configure_xen_hvm(C.KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL, PAGE_MSR, **{blob: 1})
    assert err == errno.EINVAL, f"KVM_XEN_HVM_CONFIG with INTERCEPT_HCALL and {blob}=1: expected EINVAL, " \
                                f"got {errno_name(err)}"


def test_a_flag_kvm_does_not_offer_is_refused(kvm, vm):
    """Only the KVM_XEN_HVM_CONFIG_* flags KVM_CAP_XEN_HVM offers are valid in kvm_xen_hvm_config.flags
    (api.rst 4.28, 8.30): bit 31, which no version defines, fails with EINVAL."""
    _intercepting(kvm)
    err = vm.try_configure_xen_hvm(C.KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL | 1 << 31)
    assert err == errno.EINVAL, f"KVM_XEN_HVM_CONFIG with flags bit 31: expected EINVAL, got {errno_name(err)}"
