"""KVM_SET_GUEST_DEBUG: software breakpoints, hardware execute and data breakpoints and
single-stepping, reported as KVM_EXIT_DEBUG (api.rst 4.87 KVM_SET_GUEST_DEBUG, 5 KVM_EXIT_DEBUG;
DR6/DR7 layout SDM Vol. 3A 18.2)."""

import pytest

from kvmtest.abi import constants as C
from kvmtest.exits import DebugExit
from kvmtest.guest.mode_select import select
from kvmtest.guest.modes import MODES
from kvmtest.x86 import (
    DB_VECTOR,
    DR6_B0,
    DR6_BD,
    DR6_BS,
    DR6_INIT,
    DR7_GD,
    DR7_INIT,
    DR7_L0,
    DR7_LEN0_SHIFT,
    DR7_RW0_SHIFT,
    MSR_IA32_TSC_DEADLINE,
    RFLAGS_IF,
)

ENABLE = C.KVM_GUESTDBG_ENABLE

pytestmark = pytest.mark.requires_cap("KVM_CAP_SET_GUEST_DEBUG")


def _r(mode):
    return "rbx" if MODES[mode].code_bits == 64 else "ebx"


@pytest.mark.modes(feature=None)
def test_software_breakpoint_exits_with_bp_at_the_int3(guest, mode):
    """With KVM_GUESTDBG_USE_SW_BP, INT3 exits to user space as KVM_EXIT_DEBUG, exception 3
    (#BP), pc = the INT3's address (api.rst 4.87; selftests debug_regs)."""
    g = guest(mode, "nop\nbp: int3\nGUEST_DONE")
    g.vcpu.set_guest_debug(ENABLE | C.KVM_GUESTDBG_USE_SW_BP)
    g.expect_exit(DebugExit, exception=3, pc=g.labels["bp"])


@pytest.mark.modes(feature=None)
@pytest.mark.parametrize("dr", [0, 1, 2, 3])
def test_hardware_execute_breakpoint(guest, mode, dr):
    """An execute breakpoint in DRn (DR7 Ln=1, R/Wn=00, LENn=00) exits before the instruction
    as KVM_EXIT_DEBUG exception 1 (#DB), pc = the address, DR6 = 0xffff0ff0 | Bn
    (SDM Vol. 3A 18.2.4, 18.3.1.1; api.rst 4.87 KVM_GUESTDBG_USE_HW_BP)."""
    g = guest(mode, "nop\nnop\ntarget: nop\nGUEST_DONE")
    regs = [0] * 8
    regs[dr] = g.labels["target"]
    regs[7] = DR7_L0 << (2 * dr)
    g.vcpu.set_guest_debug(ENABLE | C.KVM_GUESTDBG_USE_HW_BP, regs)
    g.expect_exit(DebugExit, exception=DB_VECTOR, pc=g.labels["target"], dr6=DR6_INIT | DR6_B0 << dr)


@pytest.mark.modes(code_bits=(32, 64))
@pytest.mark.parametrize("dr", [0, 3])
def test_hardware_data_write_breakpoint(guest, mode, dr):
    """A data breakpoint (R/Wn=01 write, LENn=11 four bytes) traps after the store: exception 1,
    DR6 Bn set, pc = the instruction after the store (SDM Vol. 3A 18.2.4, 18.3.1.2)."""
    b = _r(mode)
    g = guest(mode, f"mov {b}, 0x600\nstore: mov dword ptr [{b}], 1\nafter: nop\nGUEST_DONE")
    regs = [0] * 8
    regs[dr] = 0x600
    regs[7] = DR7_L0 << (2 * dr) | 0b01 << (DR7_RW0_SHIFT + 4 * dr) | 0b11 << (DR7_LEN0_SHIFT + 4 * dr)
    g.vcpu.set_guest_debug(ENABLE | C.KVM_GUESTDBG_USE_HW_BP, regs)
    exit_ = g.expect_exit(DebugExit, exception=DB_VECTOR, pc=g.labels["after"])
    assert exit_.dr6 & 0xF == DR6_B0 << dr, f"DR6 {exit_.dr6:#x}: expected B{dr} only"
    assert g.vm.read_u32(0x600) == 1, "the store did not complete before the trap"


@pytest.mark.modes(feature=None)
def test_single_step_exits_once_per_instruction(guest, mode):
    """With KVM_GUESTDBG_SINGLESTEP every instruction ends in KVM_EXIT_DEBUG exception 1 with
    DR6.BS set, pc = the next instruction (api.rst 4.87; SDM Vol. 3A 18.3.1.4; kvm-ioctls
    test_run_code in real mode)."""
    g = guest(mode, "i0: mov eax, 1\ni1: add eax, 2\ni2: xor ecx, ecx\ni3: nop\nGUEST_DONE")
    g.vcpu.set_guest_debug(ENABLE | C.KVM_GUESTDBG_SINGLESTEP)
    pcs = []
    for _ in range(3):
        exit_ = g.expect_exit(DebugExit, exception=DB_VECTOR)
        assert exit_.dr6 & DR6_BS, f"DR6 {exit_.dr6:#x} without BS after a single step"
        pcs.append(exit_.pc)
    assert pcs == [g.labels["i1"], g.labels["i2"], g.labels["i3"]], [hex(p) for p in pcs]


@pytest.mark.modes(sample="per-code-size", protected=True, cpl=0)
def test_dr7_gd_traps_debug_register_access(guest, mode):
    """With DR7.GD set, a MOV from a debug register raises #DB with DR6.BD (bit 13) and GD is
    cleared on entry to the handler (SDM Vol. 3A 18.2.4, 18.3.1.3)."""
    a = "rax" if MODES[mode].code_bits == 64 else "eax"
    g = guest(mode, f"GUEST_ASSERT_RAISES DB, mov {a}, dr0\nmov {a}, dr6\nGUEST_SYNC {a}\n"
                    f"mov {a}, dr7\nGUEST_SYNC {a}\nGUEST_DONE")
    dbg = g.vcpu.get_debugregs()
    dbg.dr7 = DR7_INIT | DR7_GD
    g.vcpu.set_debugregs(dbg)
    dr6, dr7 = g.run_to_done()
    assert dr6 & DR6_BD, f"DR6 {dr6:#x} without BD"
    assert not dr7 & DR7_GD, f"DR7 {dr7:#x}: GD not cleared by the #DB"


@pytest.mark.modes(*select(protected=False) + select(long=True, cpl=0) + select(code_bits=64, cpl=3))
def test_icebp_raises_db_as_a_trap(guest, mode):
    """ICEBP (INT1, opcode F1) raises #DB as a trap: saved RIP after the instruction
    (SDM Vol. 3A 18.3.1.5; Vol. 2A INT1)."""
    g = guest(mode, "GUEST_ASSERT_RAISES DB, icebp: .byte 0xf1\nGUEST_DONE")
    g.run_to_done()
    rip = g.exception_record()["rip"]
    assert rip == g.labels["icebp"] + 1, f"saved RIP {rip:#x}, expected {g.labels['icebp'] + 1:#x} (after ICEBP)"


@pytest.mark.modes(long=True, cpl=0)
def test_dr4_is_dr6_unless_cr4_de(guest, mode):
    """With CR4.DE clear, DR4 and DR5 alias DR6 and DR7; with CR4.DE set, using them raises #UD
    (SDM Vol. 3A 18.2.2)."""
    a = "rax" if MODES[mode].code_bits == 64 else "eax"
    g = guest(mode, f"mov {a}, dr6\nmov {'rbx' if a == 'rax' else 'ebx'}, dr4\nGUEST_ASSERT_EQ {a}, "
                    f"{'rbx' if a == 'rax' else 'ebx'}\nmov {a}, cr4\nor {a}, 8\nmov cr4, {a}\n"
                    f"GUEST_ASSERT_RAISES UD, mov {a}, dr4\nGUEST_DONE")
    g.run_to_done()


@pytest.mark.requires_cap("KVM_CAP_SET_GUEST_DEBUG2")
@pytest.mark.modes(*select(protected=False) + select(long=True, cpl=0))
def test_single_step_with_blockirq_holds_back_a_pending_interrupt(kvm, guest, mode):
    """With KVM_GUESTDBG_SINGLESTEP | KVM_GUESTDBG_BLOCKIRQ, a queued interrupt is not delivered
    while stepping: each step lands on the next instruction of the interrupted code; once
    debugging is off the interrupt arrives (api.rst 4.87; selftests debug_regs)."""
    if not kvm.check_extension("KVM_CAP_SET_GUEST_DEBUG2") & C.KVM_GUESTDBG_BLOCKIRQ:
        pytest.skip("KVM_CAP_SET_GUEST_DEBUG2 does not offer KVM_GUESTDBG_BLOCKIRQ")
    g = guest(mode, "i0: nop\ni1: nop\ni2: nop\ni3: nop\nGUEST_DONE\nhandler:\nGUEST_SYNC 0x40\nGUEST_DONE")
    g.set_idt_gate(0x40, "handler")
    regs = g.vcpu.get_regs()
    regs.rflags |= RFLAGS_IF
    g.vcpu.set_regs(regs)
    g.vcpu.interrupt(0x40)
    g.vcpu.set_guest_debug(ENABLE | C.KVM_GUESTDBG_SINGLESTEP | C.KVM_GUESTDBG_BLOCKIRQ)
    pcs = [g.expect_exit(DebugExit, exception=DB_VECTOR).pc for _ in range(3)]
    assert pcs == [g.labels["i1"], g.labels["i2"], g.labels["i3"]], \
        f"steps went to {[hex(p) for p in pcs]}: the interrupt was delivered while BLOCKIRQ was set"
    g.vcpu.set_guest_debug(0)
    assert g.expect_sync() == 0x40


@pytest.mark.modes(sample="per-code-size", protected=True, cpl=0)
def test_host_dr7_gd_exits_before_the_debug_register_access(guest, mode):
    """DR7.GD given through KVM_SET_GUEST_DEBUG (debugreg[7], KVM_GUESTDBG_USE_HW_BP) makes the
    guest's MOV from DR0 a debug exception for the host: KVM_EXIT_DEBUG, exception 1 (#DB), pc =
    the MOV (a fault: it has not run), DR6 = 0xffff0ff0 | BD (SDM Vol. 3A 18.2.4 "GD", 18.3.1.3
    general-detect condition; api.rst 4.87 KVM_SET_GUEST_DEBUG; selftests debug_regs). With
    debugging off again the MOV runs and the guest goes on."""
    a = "rax" if MODES[mode].code_bits == 64 else "eax"
    g = guest(mode, f"nop\naccess: mov {a}, dr0\nGUEST_DONE")
    g.vcpu.set_guest_debug(ENABLE | C.KVM_GUESTDBG_USE_HW_BP, [0] * 7 + [DR7_INIT | DR7_GD])
    g.expect_exit(DebugExit, exception=DB_VECTOR, pc=g.labels["access"], dr6=DR6_INIT | DR6_BD)
    g.vcpu.set_guest_debug(0)
    g.run_to_done()


@pytest.mark.requires_cpu("tsc_deadline")
def test_single_step_exits_after_cpuid_and_a_tsc_deadline_wrmsr(guest):
    """Single-stepping (KVM_GUESTDBG_SINGLESTEP) exits after every instruction, including CPUID and
    a WRMSR of IA32_TSC_DEADLINE, which KVM completes without going back through its full exit
    path: each KVM_EXIT_DEBUG is exception 1 with DR6 = 0xffff0ff0 | BS and pc = the next
    instruction (SDM Vol. 3A 18.3.1.4; api.rst 4.87; selftests debug_regs single-step test).
    The WRMSR writes 0, which disarms the deadline timer (SDM Vol. 3A 11.5.4.1)."""
    g = guest("long64", f"""
        xor ecx, ecx
        i0: xor eax, eax
        i1: cpuid
        i2: mov ecx, {MSR_IA32_TSC_DEADLINE:#x}
        i3: xor eax, eax
        i4: xor edx, edx
        i5: wrmsr
        i6: nop
        GUEST_DONE""", irqchip=True)
    g.vcpu.set_guest_debug(ENABLE | C.KVM_GUESTDBG_USE_HW_BP, [g.labels["i0"], 0, 0, 0, 0, 0, 0, DR7_INIT | DR7_L0])
    g.expect_exit(DebugExit, exception=DB_VECTOR, pc=g.labels["i0"])
    g.vcpu.set_guest_debug(ENABLE | C.KVM_GUESTDBG_SINGLESTEP)
    for name in ("i1", "i2", "i3", "i4", "i5", "i6"):
        g.expect_exit(DebugExit, exception=DB_VECTOR, pc=g.labels[name], dr6=DR6_INIT | DR6_BS)
    g.vcpu.set_guest_debug(0)
    g.run_to_done()
