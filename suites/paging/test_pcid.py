"""Process-context identifiers: CR4.PCIDE's preconditions and INVPCID's operand checks
(kvm-unit-tests pcid, pcid-enabled, pcid-asymmetric; la57's INVPCID canonical check).

SDM Vol. 2B MOV CR: #GP(0) on setting CR4.PCIDE while CR3[11:0] is not 0, or outside IA-32e mode,
and on clearing CR0.PG while CR4.PCIDE = 1. SDM Vol. 2A INVPCID: #GP(0) at CPL > 0, for a type
above 3, when INVPCID_DESC[63:12] is not 0, when CR4.PCIDE = 0 and a type 0 or 1 descriptor names a
PCID other than 0, and when a type 0 descriptor's linear address is not canonical. Without
CPUID.01H:ECX.PCID[17] CR4.PCIDE is reserved, and without CPUID.(EAX=07H,ECX=0):EBX.INVPCID[10] INVPCID
raises #UD: suites/cpu/test_cpuid_gated_cr4.py and test_cpuid_gated_instructions.py check those.
"""

import pytest

from kvmtest.cpuid import FEATURES
from kvmtest.guest import layout as L
from kvmtest.guest.fault_probe import expect_fault_at_probe, fault_probe_source, install_fault_probe
from kvmtest.x86 import CR0_PG, CR4_PCIDE, GP_VECTOR

DESC = L.DATA  # the 16-byte INVPCID descriptor


def _require(kvm, *features):
    for name in features:
        if not kvm.has_feature(name):
            pytest.skip(f"needs {FEATURES[name]}, which KVM_GET_SUPPORTED_CPUID does not report")


def _set_pcide(g):
    sregs = g.vcpu.get_sregs()
    sregs.cr4 |= CR4_PCIDE
    g.set_sregs(sregs)


def test_setting_pcide_with_cr3_low_bits_set_raises_gp(kvm, guest):
    """In 64-bit mode, MOV to CR4 setting PCIDE while CR3[11:0] = 1 raises #GP(0) and leaves PCIDE
    clear; with CR3[11:0] = 0 the same MOV sets it (SDM Vol. 2B MOV CR, 64-Bit Mode Exceptions)."""
    _require(kvm, "pcid")
    g = guest("long64", f"""
        mov rbx, cr3
        mov rax, rbx
        or rax, 1
        mov cr3, rax
        mov rax, cr4
        or rax, {CR4_PCIDE:#x}
        GUEST_ASSERT_RAISES GP(0), mov cr4, rax
        mov rcx, cr4
        GUEST_SYNC rcx
        mov cr3, rbx
        mov cr4, rax
        mov rcx, cr4
        GUEST_SYNC rcx
        GUEST_DONE""")
    refused, set_ = g.run_to_done()
    assert not refused & CR4_PCIDE, f"CR4 {refused:#x} after the refused MOV: PCIDE set with CR3[11:0] = 1"
    assert set_ & CR4_PCIDE, f"CR4 {set_:#x}: MOV to CR4 with CR3[11:0] = 0 did not set PCIDE"


@pytest.mark.modes("real", "pm32")
def test_setting_pcide_outside_ia32e_mode_raises_gp(kvm, guest, mode):
    """Outside IA-32e mode MOV to CR4 cannot set PCIDE: #GP(0), even with PCID in the vCPU's CPUID
    (SDM Vol. 2B MOV CR, Real-Address and Protected Mode Exceptions)."""
    _require(kvm, "pcid")
    setup = f"mov eax, cr4\nor eax, {CR4_PCIDE:#x}"
    if mode == "real":
        g = guest(mode, f"{setup}\nGUEST_ASSERT_RAISES GP, mov cr4, eax\nGUEST_DONE")
        g.run_to_done()
        return
    g = guest(mode, fault_probe_source(mode, setup, "mov cr4, eax"))
    install_fault_probe(g, GP_VECTOR)
    outcome = expect_fault_at_probe(g, GP_VECTOR, "MOV to CR4.PCIDE in 32-bit protected mode")
    assert outcome.error_code == 0, f"{outcome}: expected error code 0"


def test_clearing_paging_with_pcide_set_raises_gp(kvm, guest):
    """In compatibility mode, with CR4.PCIDE = 1, MOV to CR0 clearing PG raises #GP(0) and the
    vCPU stays in IA-32e mode with paging on (SDM Vol. 2B MOV CR, Protected Mode Exceptions, which
    apply in compatibility mode)."""
    _require(kvm, "pcid")
    g = guest("compat32", f"""
        mov eax, cr0
        and eax, {~CR0_PG & 0xFFFFFFFF:#x}
        GUEST_ASSERT_RAISES GP(0), mov cr0, eax
        mov eax, cr0
        GUEST_SYNC eax
        GUEST_DONE""")
    _set_pcide(g)
    (cr0,) = g.run_to_done()
    assert cr0 & CR0_PG, f"CR0 {cr0:#x} after the refused MOV: PG cleared with CR4.PCIDE = 1"


# name: (INVPCID type, descriptor low and high quadwords, CR4.PCIDE, faults with #GP(0))
INVPCID_CASES = {
    **{f"type{t}-pcid0": (t, 0, 0, False, False) for t in range(4)},
    "type0-pcid1-pcide0": (0, 1, 0, False, True),
    "type1-pcid1-pcide0": (1, 1, 0, False, True),
    "type2-pcid1-pcide0": (2, 1, 0, False, False),
    "type4": (4, 0, 0, False, True),
    "reserved-desc-bit12": (2, 1 << 12, 0, False, True),
    "reserved-desc-bit63": (3, 1 << 63, 0, False, True),
    "type0-canonical-addr": (0, 0, 0x00007FFFFFFFF000, False, False),
    "type0-noncanonical-addr": (0, 0, 0x8000000000000000, False, True),
    "type0-pcid10-pcide1": (0, 10, 0x1000, True, False),
    "type1-pcid10-pcide1": (1, 10, 0, True, False),
}


@pytest.mark.parametrize("case", list(INVPCID_CASES))
def test_invpcid_operand_checks(kvm, guest, case):
    """INVPCID in 64-bit mode at CPL0 completes, or raises #GP(0), as SDM Vol. 2A INVPCID gives
    for its type, the reserved descriptor bits 63:12, a PCID other than 0 with CR4.PCIDE = 0 (types
    0 and 1) and a non-canonical type 0 address (kvm-unit-tests pcid, la57)."""
    kind, low, high, pcide, faults = INVPCID_CASES[case]
    _require(kvm, "invpcid", *(["pcid"] if pcide else []))
    insn = "invpcid rax, [rbx]"
    g = guest("long64", f"""
        mov rbx, {DESC:#x}
        mov rax, {low:#x}
        mov qword ptr [rbx], rax
        mov rax, {high:#x}
        mov qword ptr [rbx + 8], rax
        mov eax, {kind}
        {f"GUEST_ASSERT_RAISES GP(0), {insn}" if faults else insn}
        GUEST_DONE""")
    if pcide:
        _set_pcide(g)
    g.run_to_done()


def test_invpcid_at_cpl3_raises_gp(kvm, guest):
    """INVPCID is privileged: at CPL3 it raises #GP(0) whatever its operands (SDM Vol. 2A INVPCID,
    64-Bit Mode Exceptions)."""
    _require(kvm, "invpcid")
    g = guest("long64-cpl3", f"mov rbx, {DESC:#x}\nmov qword ptr [rbx], 0\nmov qword ptr [rbx + 8], 0\n"
                             "mov eax, 2\nGUEST_ASSERT_RAISES GP(0), invpcid rax, [rbx]\nGUEST_DONE")
    g.run_to_done()
