"""Control transfers and faults as KVM's instruction emulator must run them (kvm-unit-tests emulator,
emulator64): IRETQ to the same privilege level, near JMP/CALL/RET to a non-canonical address, the
single-step trap held by MOV SS, and LEA with a register source.

Each instruction runs directly (on a host that emulates CPL0 code, kvm_pvm, that is through the
emulator) and behind the forced-emulation prefix where the kvm module allows it; the long64-cpl3 runs of
the MOV SS and LEA checks are the same guests where most hosts run them natively. Expected values:
SDM Vol. 2A IRET, JMP, CALL, LEA, Vol. 2B RET; Vol. 3A 6.5 (faults restore the state from before
the instruction), 6.8.3 (MOV SS holds debug traps), 6.15 (#GP, #UD).
"""

import pytest

from kvmtest import forced_emulation
from kvmtest.guest import layout as L
from kvmtest.guest.db_log import db_logger, expect_single_steps, install_db_logger, set_tf
from kvmtest.guest.mode_select import select
from kvmtest.guest.modes import get_mode

LONG_CPL0 = select(long=True, cpl=0)     # long64, compat32: GUEST_ASSERT_RAISES returns with IRETQ
NON_CANONICAL = 0x8000000000000000      # bit 63 set, bits 62:47 clear
FEP_LEN = 5                             # UD2 + "kvm": KVM skips it before it emulates (x86.c handle_ud)
LOG = L.DATA + 0x800                    # the #DB handler's record: count, then (RIP, DR6) per #DB
LOG_SLOTS = 4


def _insn(path, text, bits):
    """`text`, behind the forced-emulation prefix on the fep path (one statement, so that
    GUEST_ASSERT_RAISES covers both)."""
    if path != "fep":
        return text
    if not forced_emulation.enabled():
        pytest.skip(forced_emulation.SKIP_REASON)
    return forced_emulation.forced(text, bits)


def _fault_rip(g, label, path):
    """The saved RIP a fault at `label` must have: the faulting instruction's (SDM Vol. 3A 6.5), past
    the prefix on the fep path, where the emulated instruction starts."""
    return g.labels[label] + (FEP_LEN if path == "fep" else 0)


# --- IRET ---------------------------------------------------------------------------------------

IRET_RFLAGS = 0x8C7     # CF, bit 1, PF, ZF, SF, OF; TF, IF, DF, IOPL, NT, AC and ID clear


@pytest.mark.modes("long64")
@pytest.mark.parametrize("path", ["direct", "fep"])
def test_iretq_to_the_same_privilege_level(guest, mode, path):
    """IRETQ at CPL0 in 64-bit mode pops RIP, CS, RFLAGS, RSP and SS, in that order, from a frame the
    guest built, and continues at the popped RIP with all five loaded: RSP is the popped one, not
    the one after the pops (SDM Vol. 2A IRET, IA-32e mode: a 64-bit IRET always pops SS:RSP).
    The guest reads RFLAGS back with PUSHFQ; a fall-through after IRETQ fails the test."""
    new_rsp = 0x7000
    g = guest(mode, f"""
        mov rbx, rsp
        mov ax, ss
        movzx eax, ax
        push rax
        push {new_rsp:#x}
        push {IRET_RFLAGS:#x}
        push {L.SEL_CODE64:#x}
        lea rax, [rip + target]
        push rax
        {_insn(path, "iretq", 64)}
        GUEST_FAIL "IRETQ fell through instead of jumping to the popped RIP"
    target:
        mov rcx, rsp
        pushfq
        pop rax
        GUEST_SYNC rax
        GUEST_SYNC rcx
        mov ax, cs
        movzx eax, ax
        GUEST_SYNC eax
        mov ax, ss
        movzx eax, ax
        GUEST_SYNC eax
        mov rsp, rbx
        GUEST_DONE""")
    ss = g.vcpu.get_sregs().ss.selector
    got = g.run_to_done()
    want = [IRET_RFLAGS, new_rsp, L.SEL_CODE64, ss]
    assert got == want, f"after IRETQ: RFLAGS, RSP, CS, SS {[hex(v) for v in got]}; the frame held " \
                        f"{[hex(v) for v in want]}"


# --- non-canonical targets ----------------------------------------------------------------------

TRANSFERS = {
    # SDM Vol. 2A JMP, CALL (near, 64-bit mode) and Vol. 2B RET: "#GP(0) If the target offset is
    # non-canonical" / "If the return instruction pointer is non-canonical".
    "jmp": "jmp rax",
    "call": "call rax",
    "ret": "ret",
}


@pytest.mark.modes("long64")
@pytest.mark.parametrize("path", ["direct", "fep"])
@pytest.mark.parametrize("insn", list(TRANSFERS))
def test_near_transfer_to_a_non_canonical_address_raises_gp(guest, mode, insn, path):
    """JMP, CALL or RET to 0x8000000000000000 raises #GP(0) as a fault: the saved RIP is the
    transfer itself and RSP is as before it (CALL pushed nothing, RET popped nothing) (SDM Vol. 2A
    JMP, CALL, Vol. 2B RET, 64-Bit Mode Exceptions; Vol. 3A 6.5 and 6.15 Interrupt 13)."""
    g = guest(mode, f"""
        mov rax, {NON_CANONICAL:#x}
        push rax
        mov rbx, rsp
        GUEST_ASSERT_RAISES GP(0), transfer: {_insn(path, TRANSFERS[insn], 64)}
        mov rcx, rsp
        mov rsp, rbx
        pop rdx
        GUEST_SYNC rbx
        GUEST_SYNC rcx
        GUEST_SYNC rdx
        GUEST_DONE""")
    before, after, top = g.run_to_done()
    rip = g.exception_record()["rip"]
    want = _fault_rip(g, "transfer", path)
    assert rip == want, f"#GP from {insn.upper()} to {NON_CANONICAL:#x}: saved RIP {rip:#x}, expected {want:#x}"
    assert (after, top) == (before, NON_CANONICAL), \
        f"after the #GP from {insn.upper()}: RSP {after:#x} (before: {before:#x}), top of stack {top:#x} " \
        f"(pushed {NON_CANONICAL:#x}); a fault leaves both as they were"


# --- MOV SS and a single-step trap --------------------------------------------------------------

@pytest.mark.modes("long64", "long64-cpl3")
@pytest.mark.parametrize("path", ["direct", "fep"])
def test_mov_ss_holds_the_single_step_trap_past_the_next_instruction(guest, mode, path):
    """POPFQ sets TF, so the instruction after it, MOV SS, would end with a single-step trap; MOV SS
    holds debug traps until the instruction after it has run, so the one #DB comes after that
    instruction, with DR6.BS (SDM Vol. 3A 6.8.3; 18.3.1.4; Vol. 2B MOV, "Loading the SS register").
    The guest's #DB handler logs each #DB's saved RIP and DR6 and clears TF."""
    g = guest(mode, f"""
        mov ax, ss
        {set_tf(64)}
        {_insn(path, "mov ss, eax", 64)}
    shadowed:
        mov ecx, 1
    after:
        nop
        GUEST_DONE
        {db_logger(64, LOG, LOG_SLOTS)}""")
    install_db_logger(g, LOG, LOG_SLOTS)
    g.run_to_done()
    expect_single_steps(g, LOG, LOG_SLOTS, ["after"], "around MOV SS (none at `shadowed`, the instruction after it)")


# --- LEA with a register source -----------------------------------------------------------------

@pytest.mark.modes(*LONG_CPL0, "long64-cpl3")
@pytest.mark.parametrize("path", ["direct", "fep"])
@pytest.mark.parametrize("rex_w", [False, True])
def test_lea_with_a_register_source_raises_ud(guest, mode, path, rex_w):
    """LEA's source must be a memory operand: 8D with ModRM mod = 11 (8d c0, "lea eax, eax"; with
    REX.W 48 8d c0 in 64-bit mode) raises #UD, saved RIP at the LEA, EAX unchanged (SDM Vol. 2A LEA,
    Protected Mode Exceptions: "#UD If source operand is not a memory location"; Vol. 3A 6.15
    Interrupt 6)."""
    bits = get_mode(mode).code_bits
    if rex_w and bits != 64:
        pytest.skip("REX.W exists only in 64-bit mode")
    code = ".byte 0x48, 0x8d, 0xc0" if rex_w else ".byte 0x8d, 0xc0"
    g = guest(mode, f"""
        mov eax, 0x1234abcd
        GUEST_ASSERT_RAISES UD, lea: {_insn(path, code, bits)}
        GUEST_SYNC eax
        GUEST_DONE""")
    assert g.run_to_done() == [0x1234ABCD], "EAX changed by the LEA that raised #UD"
    rip = g.exception_record()["rip"]
    want = _fault_rip(g, "lea", path)
    assert rip == want, f"#UD from LEA with a register source: saved RIP {rip:#x}, expected {want:#x}"
