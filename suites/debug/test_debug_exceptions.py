"""The guest's own #DB semantics, with no KVM_SET_GUEST_DEBUG: what DR6 holds after a debug
exception (SDM Vol. 3A 18.2.3) and how MOV SS holds back single-step traps and data
breakpoints for one instruction (SDM Vol. 3A 6.8.3; Vol. 2B MOV "Loading the SS register")."""

import pytest

from kvmtest.guest import layout as L
from kvmtest.guest.db_log import db_logger, expect_single_steps, format_db_log, install_db_logger, read_db_log, set_tf
from kvmtest.guest.mode_select import select
from kvmtest.guest.modes import MODES, regs_for
from kvmtest.x86 import (
    DEBUGCTL_BLD,
    DR6_B0,
    DR6_BLD,
    DR6_BS,
    DR6_INIT,
    DR7_INIT,
    DR7_L0,
    DR7_LEN0_SHIFT,
    DR7_RW0_SHIFT,
    MSR_IA32_DEBUGCTL,
)

LOG = L.DATA + 0x800          # the #DB handler's record: count, then (RIP, DR6) per exception
LOG_SLOTS = 8


# The guest disarms its breakpoint again before it finishes: QEMU's TCG before 9.1 keeps a
# breakpoint an SVM guest armed with MOV DR7 after VMEXIT (svm_helper.c loads DR7 without
# cpu_x86_update_dr7) and raises #DB at that address in every later guest of the session.


@pytest.mark.modes(sample="per-code-size", cpl=0)
@pytest.mark.parametrize("dr6_before", [DR6_INIT, DR6_INIT | DR6_BS], ids=["dr6-clear", "dr6-bs"])
def test_own_breakpoint_raises_db_in_the_guest_and_keeps_dr6(guest, mode, dr6_before):
    """Without KVM_SET_GUEST_DEBUG the guest owns DR0-DR7: an execute breakpoint it sets itself
    raises #DB in the guest with DR6.B0 set (SDM Vol. 3A 18.3.1.1), not a KVM_EXIT_DEBUG; a
    DR6.BS set beforehand stays set, since the processor "may clear bits 0-3" but never clears
    the rest of DR6 (SDM Vol. 3A 18.2.3; kvm-unit-tests debug.c)."""
    a = "rax" if MODES[mode].code_bits == 64 else "eax"
    g = guest(mode, f"""
        mov {a}, {dr6_before:#x}
        mov dr6, {a}
        mov {a}, target
        mov dr0, {a}
        mov {a}, 1
        mov dr7, {a}
        GUEST_ASSERT_RAISES DB, target: nop
        mov {a}, dr6
        GUEST_SYNC {a}
        mov {a}, {DR7_INIT:#x}
        mov dr7, {a}
        GUEST_DONE""")
    (dr6,) = g.run_to_done()
    want = (dr6_before & DR6_BS) | DR6_B0
    assert dr6 & (DR6_BS | 0xF) == want, \
        f"DR6 after the DR0 #DB: {dr6:#x}; expected B0 set and BS {'kept' if want & DR6_BS else 'clear'} " \
        f"(bits 14, 3:0 = {want:#x})"


SS_MODES = select(code_bits=64) + select(code_bits=32, paging=False, cpl=0)
RW_EXECUTE, RW_WRITE, RW_READ_WRITE = 0, 1, 3   # DR7 R/Wn encodings (SDM Vol. 3B 18.2.4)
LEN_2 = 1                                       # DR7 LENn: 2 bytes


def _arm_dr0(g, address, rw, length=0):
    """Point the guest's own DR0 at `address` through KVM_SET_DEBUGREGS (api.rst 4.34),
    which works whatever CPL the guest code starts at; checks the registers read back."""
    dbg = g.vcpu.get_debugregs()
    dbg.db[0] = address
    dbg.dr7 = DR7_INIT | DR7_L0 | rw << DR7_RW0_SHIFT | length << DR7_LEN0_SHIFT
    g.vcpu.set_debugregs(dbg)
    back = g.vcpu.get_debugregs()
    assert (back.db[0], back.dr7) == (address, dbg.dr7), \
        f"KVM_GET_DEBUGREGS after KVM_SET_DEBUGREGS: DR0 {back.db[0]:#x} DR7 {back.dr7:#x}, " \
        f"expected {address:#x} {dbg.dr7:#x}"


def _logging_guest(guest, mode, body, stop_label="after"):
    """`body`, then GUEST_DONE, with the #DB logger installed: it sets the saved RF (so an
    instruction breakpoint, a fault, does not hit again on return: SDM 18.3.1.1) and ends
    single-stepping at `stop_label`."""
    g = guest(mode, f"""
        {body}
        GUEST_DONE
        {db_logger(MODES[mode].handler_bits, LOG, LOG_SLOTS, stop=stop_label, set_rf=True)}""")
    install_db_logger(g, LOG, LOG_SLOTS)
    return g


@pytest.mark.modes(*SS_MODES)
def test_own_execute_breakpoint_faults_before_the_instruction(guest, mode):
    """An execute breakpoint in the guest's own DR0 raises #DB as a fault: saved RIP is the
    breakpoint address, DR6.B0 is set, and with RF set in the saved flags the instruction then
    runs once (SDM Vol. 3A 18.3.1.1). At CPL3 too: DR7.L0 is not limited to CPL0 code."""
    b = regs_for(mode)["bx"]
    g = _logging_guest(guest, mode, f"""
        mov {b}, 1
        target: add {b}, 1
        after: nop
        GUEST_SYNC {b}""")
    _arm_dr0(g, g.labels["target"], RW_EXECUTE)
    assert g.run_to_done() == [2], "the instruction at the breakpoint did not run exactly once"
    log = read_db_log(g.vm, LOG, LOG_SLOTS)
    assert [(rip, dr6 & 0xF) for rip, dr6 in log] == [(g.labels["target"], DR6_B0)], \
        f"execute-breakpoint #DBs: {format_db_log(g.labels, log)}; expected one at RIP target with DR6.B0"


@pytest.mark.modes(*SS_MODES)
@pytest.mark.parametrize("access,rw", [("write", RW_WRITE), ("write", RW_READ_WRITE), ("read", RW_READ_WRITE)])
def test_own_data_breakpoint_traps_after_the_access(guest, mode, access, rw):
    """A data breakpoint in the guest's own DR0 raises #DB as a trap once the access is done:
    saved RIP after the accessing instruction, DR6.B0 set; R/W0 = 01 matches writes only and
    11 reads and writes (SDM Vol. 3A 18.2.4, 18.3.1.2)."""
    b = regs_for(mode)["bx"]
    insn = "mov word ptr [{b}], ax" if access == "write" else "mov ax, word ptr [{b}]"
    g = _logging_guest(guest, mode, f"""
        mov {b}, {L.DATA:#x}
        {insn.format(b=b)}
        after: nop""")
    _arm_dr0(g, L.DATA, rw, LEN_2)
    g.run_to_done()
    log = read_db_log(g.vm, LOG, LOG_SLOTS)
    assert [(rip, dr6 & 0xF) for rip, dr6 in log] == [(g.labels["after"], DR6_B0)], \
        f"data-breakpoint #DBs after a {access} (R/W0={rw:02b}): {format_db_log(g.labels, log)}; expected one at " \
        "RIP after with DR6.B0"


@pytest.mark.modes(*SS_MODES)
def test_mov_ss_holds_a_single_step_trap_for_one_instruction(guest, mode):
    """With EFLAGS.TF set, the single-step trap for MOV SS is held back until the instruction
    after it has run: #DB comes with the saved RIP after that next instruction and DR6.BS, and
    no #DB points at the instruction following MOV SS (SDM Vol. 3A 6.8.3; Vol. 2B MOV)."""
    g = _logging_guest(guest, mode, f"""
        {set_tf(MODES[mode].code_bits)}
        step1: nop
        step2: mov ax, ss
        step3: mov ss, ax
        shadowed: nop
        after_shadow: nop""", "after_shadow")
    g.run_to_done()
    expect_single_steps(g, LOG, LOG_SLOTS, ["step2", "step3", "after_shadow"],
                        "around MOV SS (none at `shadowed`, the instruction after it)")


@pytest.mark.modes(*SS_MODES)
def test_mov_ss_holds_a_data_breakpoint_for_one_instruction(guest, mode):
    """A data breakpoint on the memory that MOV SS reads is held back until the next
    instruction has run: one #DB, saved RIP after that instruction, DR6.B0 set (SDM Vol. 3A
    6.8.3: MOV SS inhibits data breakpoints for one instruction). The guest owns DR0/DR7,
    set through KVM_SET_DEBUGREGS so CPL3 code is covered too."""
    selector = L.DATA + 0x700
    b = regs_for(mode)["bx"]
    g = _logging_guest(guest, mode, f"""
        mov {b}, {selector:#x}
        mov ss, word ptr [{b}]
        shadowed: nop
        after: nop""")
    g.vm.write(selector, g.vcpu.get_sregs().ss.selector.to_bytes(2, "little"))  # reload the same SS
    _arm_dr0(g, selector, RW_READ_WRITE, LEN_2)
    g.run_to_done()
    log = read_db_log(g.vm, LOG, LOG_SLOTS)
    assert [(rip, dr6 & 0xF) for rip, dr6 in log] == [(g.labels["after"], DR6_B0)], \
        f"data-breakpoint #DBs: {format_db_log(g.labels, log)}; expected one at RIP after with DR6.B0 " \
        "(held over `shadowed`)"


@pytest.mark.requires_cpu("bus_lock_detect")
@pytest.mark.modes(code_bits=64)
def test_bus_lock_raises_db_after_the_locked_instruction(guest, mode):
    """With IA32_DEBUGCTL.BLD set, a locked access that splits a cache line (a bus lock) raises
    #DB as a trap after the instruction and clears DR6.BLD, which is active low (SDM Vol. 3A
    18.3.1.6 bus-lock detection; kvm-unit-tests debug.c). DEBUGCTL is set through
    KVM_SET_MSRS so the check runs at CPL3 too."""
    split = L.DATA + 0x3E     # 4 bytes across the 64-byte line boundary at DATA + 0x40
    g = guest(mode, f"""
        mov rbx, {split:#x}
        GUEST_ASSERT_RAISES DB, locked: lock add dword ptr [rbx], 1  # f0 83 03 01: 4 bytes
        GUEST_DONE""")
    accepted = g.vcpu.set_msrs({MSR_IA32_DEBUGCTL: DEBUGCTL_BLD})
    assert accepted == 1, "KVM_SET_MSRS refused IA32_DEBUGCTL.BLD although CPUID offers bus-lock detection"
    g.run_to_done()
    rec = g.exception_record()
    assert rec["rip"] == g.labels["locked"] + 4, \
        f"bus-lock #DB saved RIP {rec['rip']:#x}, expected {g.labels['locked'] + 4:#x} (after the LOCK ADD)"
    dr6 = g.vcpu.get_debugregs().dr6
    assert not dr6 & DR6_BLD, f"DR6 {dr6:#x}: BLD (bit 11) still 1; a bus-lock #DB clears it"
    assert g.vm.read_u32(split) == 1, "the locked add did not complete before the trap"
