"""Exceptions in every CPU mode: the vector, the error code and the saved RIP the SDM
prescribes (SDM Vol. 3A 6.15, "Exception and Interrupt Reference"; 6.13 error codes)."""

import pytest

from kvmtest.guest import descriptors as D
from kvmtest.guest.mode_select import select
from kvmtest.guest.modes import MODES
from kvmtest.x86 import CR0_AM, GP_VECTOR, RFLAGS_AC, RFLAGS_RF, UD_VECTOR


def _r(mode, name):
    return ("r" if MODES[mode].code_bits == 64 else "e") + name


def _check(g, vector_name, fault_label, expect_rip):
    g.run_to_done()
    rec = g.exception_record()
    want = g.labels[fault_label]
    assert rec["rip"] & 0xFFFFFFFFFFFF == expect_rip(want, g), \
        f"{vector_name}: saved RIP {rec['rip']:#x}, expected {expect_rip(want, g):#x} (instruction at {want:#x})"


AT = lambda addr, g: addr  # noqa: E731  faults save the faulting instruction's address


@pytest.mark.modes(feature=None)
def test_divide_error_is_a_fault_at_the_div(guest, mode):
    """DIV by zero raises #DE (vector 0), no error code, saved RIP = the DIV (SDM Vol. 3A 6.15
    Interrupt 0: fault)."""
    g = guest(mode, "xor ecx, ecx\nmov eax, 1\nxor edx, edx\nGUEST_ASSERT_RAISES DE, fault: div ecx\nGUEST_DONE")
    _check(g, "#DE", "fault", AT)


@pytest.mark.modes(feature=None)
def test_breakpoint_is_a_trap_after_int3(guest, mode):
    """INT3 raises #BP (vector 3) as a trap: the saved RIP is the next instruction (SDM Vol. 3A
    6.15 Interrupt 3). The gate has DPL 3, so INT3 works at CPL3 too."""
    g = guest(mode, "GUEST_ASSERT_RAISES BP, fault: int3\nGUEST_DONE")
    _check(g, "#BP", "fault", lambda a, g: a + 1)


@pytest.mark.modes(feature=None)
@pytest.mark.guest_timeout(2)  # a host that never completes the INT is reported in 2 s, not 10
def test_int_n_through_a_dpl3_gate(guest, mode):
    """INT 0x80 through a gate with DPL 3 delivers vector 0x80 at any CPL, saved RIP after the
    two-byte INT (SDM Vol. 2A INT n; Vol. 3A 6.12.1.1: software interrupts check gate DPL >= CPL)."""
    g = guest(mode, "GUEST_ASSERT_RAISES 0x80, fault: int 0x80\nGUEST_DONE")
    g.set_idt_gate(0x80, "kt_stub_128", dpl=3)
    _check(g, "INT 0x80", "fault", lambda a, g: a + 2)


@pytest.mark.modes(feature=None)
def test_invalid_opcode_is_a_fault_at_ud2(guest, mode):
    """UD2 raises #UD (vector 6), saved RIP = the UD2 (SDM Vol. 3A 6.15 Interrupt 6)."""
    g = guest(mode, "GUEST_ASSERT_RAISES UD, fault: ud2\nGUEST_DONE")
    _check(g, "#UD", "fault", AT)


@pytest.mark.modes(protected=True)
def test_selector_beyond_the_gdt_limit_is_gp_with_the_selector(guest, mode):
    """Loading DS with a selector beyond the GDT limit raises #GP with the selector (index and
    TI, RPL cleared) as error code (SDM Vol. 3A 6.13, 6.15 Interrupt 13; MOV Sreg)."""
    g = guest(mode, "mov ax, 0x1233\nGUEST_ASSERT_RAISES GP(0x1230), fault: mov ds, ax\nGUEST_DONE")
    _check(g, "#GP", "fault", AT)


@pytest.mark.modes(protected=True)
def test_not_present_segment_is_np_with_the_selector(guest, mode):
    """Loading DS with a descriptor whose P bit is clear raises #NP with the selector as
    error code (SDM Vol. 3A 6.15 Interrupt 11)."""
    dpl = MODES[mode].cpl
    g = guest(mode, f"mov ax, {0x60 | dpl}\nGUEST_ASSERT_RAISES NP(0x60), fault: mov ds, ax\nGUEST_DONE")
    g.set_gdt_entry(0x60, D.Descriptor(p=0, dpl=dpl).encode())
    _check(g, "#NP", "fault", AT)


@pytest.mark.modes(paging=True)
def test_page_fault_reports_error_code_and_cr2(guest, mode):
    """A write to an unmapped linear address raises #PF (vector 14) with error code W (bit 1),
    plus U (bit 2) at CPL3, P clear; CR2 holds the address; saved RIP = the store (SDM Vol. 3A
    4.7, 6.15 Interrupt 14)."""
    addr = 0x50000000  # above the identity map and the MMIO window
    user = 4 if MODES[mode].user else 0
    b = _r(mode, "bx")
    g = guest(mode, f"mov {b}, {addr:#x}\n"
                    f"GUEST_ASSERT_RAISES PF({2 | user:#x}), fault: mov dword ptr [{b}], 1\nGUEST_DONE")
    _check(g, "#PF", "fault", AT)
    assert g.exception_record()["cr2"] == addr, f"CR2 {g.exception_record()['cr2']:#x}, expected {addr:#x}"


@pytest.mark.modes(code_bits=64)
def test_noncanonical_stack_reference_is_ss(guest, mode):
    """A memory reference through RBP (SS segment) to a non-canonical address raises #SS(0),
    not #GP (SDM Vol. 3A 6.15 Interrupt 12; 3.3.7.1)."""
    g = guest(mode, "mov rbp, 0x8000000000000000\n"
                    "GUEST_ASSERT_RAISES SS(0), fault: mov rax, qword ptr [rbp]\nGUEST_DONE")
    _check(g, "#SS", "fault", AT)


@pytest.mark.modes(code_bits=64)
def test_noncanonical_data_reference_is_gp(guest, mode):
    """A non-canonical address through a DS-based register raises #GP(0), not #PF (SDM Vol. 3A
    3.3.7.1, 6.15 Interrupt 13)."""
    g = guest(mode, "mov rbx, 0x8000000000000000\n"
                    "GUEST_ASSERT_RAISES GP(0), fault: mov rax, qword ptr [rbx]\nGUEST_DONE")
    _check(g, "#GP", "fault", AT)


@pytest.mark.modes(cpl=3)
def test_alignment_check_at_cpl3(guest, mode):
    """With CR0.AM and RFLAGS.AC set, a misaligned dword load at CPL3 raises #AC(0)
    (SDM Vol. 3A 6.15 Interrupt 17)."""
    b = _r(mode, "bx")
    g = guest(mode, f"mov {b}, 0x601\nGUEST_ASSERT_RAISES AC(0), fault: mov eax, dword ptr [{b}]\nGUEST_DONE")
    sregs = g.vcpu.get_sregs()
    sregs.cr0 |= CR0_AM
    g.set_sregs(sregs)
    regs = g.vcpu.get_regs()
    regs.rflags |= RFLAGS_AC
    g.vcpu.set_regs(regs)
    _check(g, "#AC", "fault", AT)


# Faults whose handler reads the RFLAGS image: the instruction, and how many words the CPU pushed
# below RFLAGS (RIP, CS, plus the error code for #GP; SDM Vol. 3A 6.14.2 Figure 6-8, 6.12.1 Figure 6-4).
RF_FAULTS = {"ud": (UD_VECTOR, "ud2", 2), "gp": (GP_VECTOR, "mov ds, ax", 3)}


@pytest.mark.modes(*select(sample="per-code-size", code_bits=(32, 64)))
@pytest.mark.parametrize("fault", sorted(RF_FAULTS))
def test_fault_pushes_rflags_with_rf_set(guest, mode, fault):
    """For a fault-class exception other than an instruction breakpoint, the RFLAGS image the
    processor pushes has RF (bit 16) set (SDM Vol. 3A 18.3.1.1: "For any fault-class exception
    except a debug exception generated in response to an instruction breakpoint, the value pushed
    for RF is 1"): #UD from UD2 and #GP from loading DS with a selector beyond the GDT limit, with
    the saved RIP at the faulting instruction (kvm-unit-tests idt_test). The handler reads the image
    from its stack and ends the guest, so no IRET is involved."""
    vector, insn, below = RF_FAULTS[fault]
    m = MODES[mode]
    a, sp, w = ("rax", "rsp", 8) if m.handler_bits == 64 else ("eax", "esp", 4)
    switch = f".code{m.handler_bits}" if m.handler_bits != m.code_bits else ""
    g = guest(mode, f"""
        mov ax, 0x1233                          # index beyond the GDT limit (for the #GP case)
    fault:
        {insn}
        GUEST_FAIL "no exception"
    {switch}
    handler:
        GUEST_AT_CPL 0
        mov {a}, [{sp} + {below * w}]
        GUEST_SYNC {a}                          # the RFLAGS image
        mov {a}, [{sp} + {(below - 2) * w}]
        GUEST_SYNC {a}                          # the saved RIP
        GUEST_DONE""")
    g.set_idt_gate(vector, "handler")
    rflags, rip = g.run_to_done()
    assert rip == g.labels["fault"], \
        f"#{fault.upper()}: saved RIP {rip:#x}, expected the {insn} at {g.labels['fault']:#x}"
    assert rflags & RFLAGS_RF, f"#{fault.upper()} from {insn}: pushed RFLAGS {rflags:#x} without RF (bit 16)"
