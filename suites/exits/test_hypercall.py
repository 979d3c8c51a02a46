"""KVM_EXIT_HYPERCALL for hypercalls user space asked for (KVM_CAP_EXIT_HYPERCALL;
api.rst 5 KVM_EXIT_HYPERCALL, 7 KVM_CAP_EXIT_HYPERCALL; Documentation/virt/kvm/x86/hypercalls.rst
KVM_HC_MAP_GPA_RANGE)."""

import pytest

from kvmtest.cpuid import find_entry, hypercall_instruction
from kvmtest.exits import HypercallExit
from kvmtest.vcpu_cpuid_msr import KVM_CPUID_FEATURES
from kvmtest.x86 import GP_VECTOR

KVM_HC_MAP_GPA_RANGE = 12


def _hypercall_insn(kvm) -> str:
    """VMMCALL on AMD, VMCALL on Intel (hypercalls.rst: the vendor's instruction)."""
    return hypercall_instruction(kvm.cached_supported_cpuid())


@pytest.mark.modes(long=True, cpl=0)
@pytest.mark.guest_timeout(1)  # a host that never completes the hypercall fails in 1 s
def test_unknown_hypercall_returns_enosys(kvm, guest, mode):
    """A hypercall number KVM does not implement returns -KVM_ENOSYS (-1000) in RAX and the guest
    continues after the instruction (hypercalls.rst; kvm-unit-tests hypercall.c)."""
    g = guest(mode, f"mov eax, 0x7fff\n{_hypercall_insn(kvm)}\nGUEST_SYNC eax\nGUEST_DONE")
    assert g.run_to_done() == [(-1000) & 0xFFFFFFFF]


@pytest.mark.requires_cap("KVM_CAP_EXIT_HYPERCALL")
@pytest.mark.modes("long64")
@pytest.mark.guest_timeout(1)
def test_map_gpa_range_exits_with_its_arguments(kvm, guest, mode):
    """With bit KVM_HC_MAP_GPA_RANGE enabled in KVM_CAP_EXIT_HYPERCALL, the hypercall exits as
    KVM_EXIT_HYPERCALL with nr 12 and args gpa, npages, attributes; the ret the host writes is
    the guest's RAX (api.rst 5)."""
    if not kvm.check_extension("KVM_CAP_EXIT_HYPERCALL") & (1 << KVM_HC_MAP_GPA_RANGE):
        pytest.skip("KVM_CAP_EXIT_HYPERCALL does not offer KVM_HC_MAP_GPA_RANGE")
    g = guest(mode, f"mov eax, {KVM_HC_MAP_GPA_RANGE}\nmov rbx, 0x100000\nmov ecx, 2\nxor edx, edx\n"
                    f"{_hypercall_insn(kvm)}\nGUEST_SYNC rax\nGUEST_DONE")
    g.vm.enable_cap("KVM_CAP_EXIT_HYPERCALL", 1 << KVM_HC_MAP_GPA_RANGE)
    exit_ = g.expect_exit(HypercallExit, nr=KVM_HC_MAP_GPA_RANGE)
    assert exit_.args[:3] == (0x100000, 2, 0), f"hypercall args {[hex(a) for a in exit_.args[:3]]}"
    exit_.respond(0)
    assert g.run_to_done() == [0]


KVM_X86_QUIRK_FIX_HYPERCALL_INSN = 1 << 5
WRONG = {"vmmcall": ("vmcall", bytes.fromhex("0f01c1")), "vmcall": ("vmmcall", bytes.fromhex("0f01d9"))}


@pytest.mark.guest_timeout(1)
def test_wrong_vendor_hypercall_is_patched_by_default(kvm, guest):
    """With KVM_X86_QUIRK_FIX_HYPERCALL_INSN in force (the default), the other vendor's hypercall
    instruction is rewritten to this vendor's and the hypercall completes (-KVM_ENOSYS for an
    unknown number) (api.rst 7 KVM_CAP_DISABLE_QUIRKS2; selftests fix_hypercall_test)."""
    native = _hypercall_insn(kvm)
    wrong, _ = WRONG[native]
    g = guest("long64", f"mov eax, 0x7fff\nhc: {wrong}\nGUEST_SYNC eax\nGUEST_DONE")
    assert g.run_to_done() == [(-1000) & 0xFFFFFFFF]
    assert g.vm.read(g.labels["hc"], 3) == WRONG[wrong][1], "the instruction was not patched to the native one"


@pytest.mark.requires_cap("KVM_CAP_DISABLE_QUIRKS2")
@pytest.mark.guest_timeout(1)
def test_wrong_vendor_hypercall_without_the_quirk_is_ud(kvm, guest):
    """With KVM_X86_QUIRK_FIX_HYPERCALL_INSN disabled, the other vendor's hypercall instruction
    raises #UD and guest memory is left as it was (api.rst 7 KVM_CAP_DISABLE_QUIRKS2;
    selftests fix_hypercall_test)."""
    if not kvm.check_extension("KVM_CAP_DISABLE_QUIRKS2") & KVM_X86_QUIRK_FIX_HYPERCALL_INSN:
        pytest.skip("KVM_X86_QUIRK_FIX_HYPERCALL_INSN cannot be disabled here")
    native = _hypercall_insn(kvm)
    wrong, wrong_bytes = WRONG[native]
    g = guest("long64", f"mov eax, 0x7fff\nGUEST_ASSERT_RAISES UD, hc: {wrong}\nGUEST_DONE")
    g.vm.enable_cap("KVM_CAP_DISABLE_QUIRKS2", KVM_X86_QUIRK_FIX_HYPERCALL_INSN)
    g.run_to_done()
    assert g.vm.read(g.labels["hc"], 3) == wrong_bytes, "guest memory changed although the quirk is off"


KVM_HC_SCHED_YIELD = 11     # needs KVM_FEATURE_PV_SCHED_YIELD (hypercalls.rst 8)


@pytest.mark.requires_cap("KVM_CAP_ENFORCE_PV_FEATURE_CPUID")
@pytest.mark.guest_timeout(1)
def test_pv_hypercall_without_its_feature_bit_is_enosys_when_enforced(kvm, guest):
    """With KVM_CAP_ENFORCE_PV_FEATURE_CPUID enabled and no feature bits in the KVM leaf
    (0x40000001 EAX = 0), KVM_HC_SCHED_YIELD, whose feature bit is then absent, returns
    -KVM_ENOSYS (-1000) in RAX and the guest continues (api.rst 7
    KVM_CAP_ENFORCE_PV_FEATURE_CPUID; hypercalls.rst; selftests kvm_pv_test). The PV MSR half
    is suites/cpu/test_msrs.py::test_pv_msr_without_its_feature_bit_is_gp_when_enforced."""
    if find_entry(kvm.cached_supported_cpuid(), KVM_CPUID_FEATURES) is None:
        pytest.skip("KVM_GET_SUPPORTED_CPUID has no KVM feature leaf 0x40000001")
    g = guest("long64", f"mov eax, {KVM_HC_SCHED_YIELD}\nxor ebx, ebx\n{_hypercall_insn(kvm)}\n"
                        "GUEST_SYNC rax\nGUEST_DONE")
    g.vcpu.enforce_pv_features(0)
    (rax,) = g.run_to_done()
    assert rax == (-1000) & (2**64 - 1), f"KVM_HC_SCHED_YIELD without its feature bit returned {rax:#x}, " \
                                         "expected -KVM_ENOSYS (-1000)"


EDGE_PAGE = 0x00007FFFFFFFF000      # the last 4 KiB page below the non-canonical hole (48-bit)
EDGE_BACKING = 0x1F000              # guest RAM for it, inside layout.DATA
NATIVE_BYTES = {"vmcall": bytes.fromhex("0f01c1"), "vmmcall": bytes.fromhex("0f01d9")}


@pytest.mark.modes("long64")
@pytest.mark.guest_timeout(1)
@pytest.mark.parametrize("which", ["native", "other-vendor"])
def test_hypercall_ending_at_the_top_of_canonical_space(kvm, guest, mode, which):
    """A hypercall whose three bytes end at the last canonical address (0x7ffffffffffd-0x7fffffffffff)
    completes like any other (RAX = -KVM_ENOSYS for an unknown number, hypercalls.rst), and the
    next instruction fetch, at the non-canonical 0x800000000000, raises #GP(0) with that RIP saved
    (SDM Vol. 3A 3.3.7.1, 6.15 Interrupt 13; kvm-unit-tests hypercall test_edge). The other
    vendor's instruction does the same, rewritten by KVM under KVM_X86_QUIRK_FIX_HYPERCALL_INSN,
    which is in force by default (api.rst 7 KVM_CAP_DISABLE_QUIRKS2)."""
    native = _hypercall_insn(kvm)
    insn = native if which == "native" else WRONG[native][0]
    g = guest(mode, f"""
        mov rax, 0x7fff                         # no such hypercall
        mov rbx, {EDGE_PAGE + 0xFFD:#x}
        jmp rbx
    gp_handler:
        mov rbx, [rsp + 8]
        GUEST_SYNC rbx                          # saved RIP
        GUEST_SYNC rax
        mov rbx, [rsp]
        GUEST_SYNC rbx                          # error code
        GUEST_DONE""")
    g.vm.write(EDGE_BACKING, b"\xcc" * 0xFFD + NATIVE_BYTES[insn])
    g.page_tables.map(EDGE_PAGE, EDGE_BACKING)
    g.set_idt_gate(GP_VECTOR, "gp_handler")
    rip, rax, error_code = g.run_to_done()
    assert (rip, rax, error_code) == (EDGE_PAGE + 0x1000, (-1000) & (2**64 - 1), 0), \
        f"{insn} at {EDGE_PAGE + 0xFFD:#x}, then #GP: saved RIP {rip:#x}, RAX {rax:#x}, error code " \
        f"{error_code:#x}; expected RIP {EDGE_PAGE + 0x1000:#x} (the non-canonical fetch), RAX -KVM_ENOSYS, " \
        "error code 0"
