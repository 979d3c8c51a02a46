"""RFLAGS.RF and host execute breakpoints (KVM_SET_GUEST_DEBUG with KVM_GUESTDBG_USE_HW_BP,
api.rst 4.87): RF=1 suppresses instruction-breakpoint faults for the next instruction, and the
processor clears RF once that instruction completes (SDM Vol. 3A 18.3.1.1 "Instruction-Breakpoint
Exception Condition", 2.3 "EFLAGS", 6.15 "Interrupt 1"). A debugger resumes from an instruction
breakpoint by setting RF, here through KVM_SET_REGS, or the guest returns with RF set in the
IRET image."""

import pytest

from kvmtest.abi import constants as C
from kvmtest.exits import DebugExit
from kvmtest.guest.mode_select import select
from kvmtest.guest.modes import MODES
from kvmtest.x86 import DB_VECTOR, DR6_B0, DR7_L0, RFLAGS_RF

pytestmark = pytest.mark.requires_cap("KVM_CAP_SET_GUEST_DEBUG")

RF_MODES = select(sample="per-code-size", cpl=0) + select(sample="per-code-size", long=True, cpl=3)


def _arm(g, address):
    # DR7.L0 alone arms an execute breakpoint on DR0: R/W0 = 00, LEN0 = 00 (SDM Vol. 3B 18.2.4).
    g.vcpu.set_guest_debug(C.KVM_GUESTDBG_ENABLE | C.KVM_GUESTDBG_USE_HW_BP, [address, 0, 0, 0, 0, 0, 0, DR7_L0])


def _resume_with_rf(g):
    """KVM_SET_REGS with RF added to the RFLAGS KVM_GET_REGS reported; checks it reads back."""
    regs = g.vcpu.get_regs()
    regs.rflags |= RFLAGS_RF
    g.vcpu.set_regs(regs)
    back = g.vcpu.get_regs().rflags
    assert back & RFLAGS_RF, f"KVM_GET_REGS after KVM_SET_REGS with RF: RFLAGS {back:#x}, RF (bit 16) lost"


@pytest.mark.modes(*RF_MODES)
def test_host_breakpoint_resumed_with_rf_runs_the_instruction_once(guest, mode):
    """An execute breakpoint in debugreg[0] exits before `target` (KVM_EXIT_DEBUG, #DB, DR6.B0,
    pc = target, the instruction not yet run). Resumed with RF=1 set through KVM_SET_REGS, the
    instruction runs without a second exit; RF is then clear again, so when the loop comes back
    to `target` the breakpoint exits once more, after exactly one ADD (SDM Vol. 3A 18.3.1.1)."""
    c = "rcx" if MODES[mode].code_bits == 64 else "ecx"
    g = guest(mode, f"""
        xor {c}, {c}
        mov edx, 2
        top:
        target: add {c}, 1
        dec edx
        jnz top
        GUEST_SYNC {c}
        GUEST_DONE""")
    target = g.labels["target"]
    _arm(g, target)
    for adds_before in (0, 1):
        exit_ = g.expect_exit(DebugExit, exception=DB_VECTOR, pc=target)
        assert exit_.dr6 & 0xF == DR6_B0, f"{exit_}: expected DR6.B0 alone among B0-B3"
        regs = g.vcpu.get_regs()
        assert (regs.rip, regs.rcx & 0xFFFFFFFF) == (target, adds_before), \
            f"at the breakpoint exit ({exit_}) KVM_GET_REGS reads RIP {regs.rip:#x} RCX {regs.rcx:#x}, expected " \
            f"RIP {target:#x} (target) with the ADD run {adds_before} time(s): a second exit at target before the " \
            "instruction ran means RF=1 from KVM_SET_REGS did not suppress the breakpoint"
        _resume_with_rf(g)
    event = g.run()
    assert not isinstance(event, DebugExit), \
        f"after the second resume with RF=1 KVM_RUN exited {event} again; expected the ADD to run (SDM 18.3.1.1)"
    assert getattr(event, "value", None) == 2, f"expected GUEST_SYNC 2 (two ADDs), got {event}"
    g.vcpu.set_guest_debug(0)
    g.run_to_done()


IRET_GUEST = {
    # IRETQ to `target` with RF set in the RFLAGS image (SS:RSP, RFLAGS, CS, RIP).
    "long64": """
        mov rax, rsp
        xor ebx, ebx
        mov bx, ss
        push rbx
        push rax
        pushfq
        or dword ptr [rsp], 0x10000
        mov bx, cs
        push rbx
        mov rax, target
        push rax
        iretq""",
    # IRETD in real mode pops EIP, CS and the 32-bit EFLAGS, RF included.
    "real": """
        pushfd
        or dword ptr [esp], 0x10000
        xor eax, eax
        mov ax, cs
        push eax
        mov eax, target
        push eax
        iretd""",
}


@pytest.mark.modes(*IRET_GUEST)
def test_iret_with_rf_set_suppresses_a_host_breakpoint_once(guest, mode):
    """The guest's own IRET loading RF=1 suppresses the instruction breakpoint at its target
    (IRET is the instruction that sets RF and does not clear it, SDM Vol. 3A 18.3.1.1 and Vol. 2A
    IRET), so a host execute breakpoint there does not exit; the next pass over `target`, with RF
    clear again, does (api.rst 4.87 KVM_GUESTDBG_USE_HW_BP)."""
    g = guest(mode, f"""
        xor ecx, ecx
        {IRET_GUEST[mode]}
        target: add ecx, 1
        cmp ecx, 2
        jne target
        GUEST_SYNC ecx
        GUEST_DONE""")
    target = g.labels["target"]
    _arm(g, target)
    exit_ = g.expect_exit(DebugExit, exception=DB_VECTOR, pc=target)
    rcx = g.vcpu.get_regs().rcx & 0xFFFFFFFF
    assert rcx == 1, \
        f"first breakpoint exit {exit_} came with ECX = {rcx} (KVM_GET_REGS), expected 1: the ADD reached by IRET " \
        "with RF=1 must run without a breakpoint exit, the second pass must exit"
    g.vcpu.set_guest_debug(0)
    assert g.run_to_done() == [2]
