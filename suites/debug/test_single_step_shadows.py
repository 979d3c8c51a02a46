"""The guest's own single-stepping (EFLAGS.TF, no KVM_SET_GUEST_DEBUG) across instructions that
block events for one instruction or that KVM emulates: STI's interrupt shadow does not hold the
single-step trap, STI;HLT woken by the local APIC timer steps on, a general-detect fault after MOV
SS is not held back, and CPUID, RDMSR and IN step one by one (SDM Vol. 3A 18.3.1.4 single-step
trap, 18.3.1.3 general detect, 6.8.3, 6.9; Vol. 2B STI; Vol. 2A HLT; kvm-unit-tests debug.c
singlestep_with_sti_blocking, singlestep_with_sti_hlt, singlestep_with_movss_blocking_and_dr7_gd,
singlestep_emulated_instructions)."""

import pytest

from kvmtest.guest import layout as L
from kvmtest.guest.db_log import db_logger, expect_single_steps, format_db_log, install_db_logger, read_db_log, set_tf
from kvmtest.guest.mode_select import select
from kvmtest.guest.modes import MODES, regs_for
from kvmtest.guest.paging import KiB4
from kvmtest.x86 import (
    APIC_DEFAULT_PHYS_BASE,
    DR6_BD,
    DR6_BS,
    DR6_INIT,
    DR7_GD,
    DR7_INIT,
    MSR_IA32_APIC_BASE,
    PTE_P,
    PTE_PCD,
    PTE_RW,
)

LOG = L.DATA + 0x800              # count, then (saved RIP, DR6) per #DB
LOG_SLOTS = 16
CPL0_MODES = select(code_bits=64, cpl=0) + select(code_bits=32, paging=False, cpl=0)


def _guest(guest, mode, body, stop, handlers="", **kw):
    """`body`, GUEST_DONE, `handlers`, and the #DB logger, which ends single-stepping at `stop`."""
    logger = db_logger(MODES[mode].handler_bits, LOG, LOG_SLOTS, stop=stop)
    g = guest(mode, f"{body}\n    GUEST_DONE\n{handlers}{logger}", **kw)
    install_db_logger(g, LOG, LOG_SLOTS)
    return g


@pytest.mark.modes(*CPL0_MODES)
def test_single_step_is_not_held_by_the_sti_shadow(guest, mode):
    """STI with IF=0 blocks external interrupts until after the next instruction (Vol. 2B STI), but
    not the single-step trap: #DB comes after the STI itself (saved RIP at the instruction after
    it, DR6.BS) and after every instruction on (18.3.1.4; only MOV SS and POP SS inhibit debug
    exceptions, 6.8.3)."""
    g = _guest(guest, mode, f"""
    cli
    {set_tf(MODES[mode].code_bits)}
    sti
    s1: nop
    s2: cli
    s3: nop
    stop: nop""", "stop")
    g.run_to_done()
    expect_single_steps(g, LOG, LOG_SLOTS, ["s1", "s2", "s3", "stop"], "across STI")


APIC = APIC_DEFAULT_PHYS_BASE
TIMER = 0xEE
STI_HLT = f"""
    mov rbx, {APIC:#x}
    mov dword ptr [rbx + 0xF0], 0x1FF
    xor r12, r12
    cli
    mov dword ptr [rbx + 0x3E0], 0xB            # divide by 1
    mov dword ptr [rbx + 0x320], {TIMER:#x}     # one-shot
    mov dword ptr [rbx + 0x380], 1000000        # about 1 ms
    {set_tf(64)}
    sti
    halted: hlt
    s1: nop
    stop: nop
    mov ecx, 10000000
1:  cmp r12, 1                                  # the timer interrupt, if it has not come yet
    jae 2f
    dec ecx
    jnz 1b
2:
    cli
    GUEST_SYNC r12
"""


TIMER_HANDLER = """
timer:
    inc r12
    mov dword ptr [rbx + 0xB0], 0               # EOI
    iretq
"""


@pytest.mark.requires_cap("KVM_CAP_IRQCHIP")
def test_single_step_over_sti_hlt_woken_by_the_apic_timer(guest):
    """With TF set before STI;HLT and the local APIC timer armed: #DB after the STI (saved RIP at
    the HLT), after the HLT (saved RIP after it, the HLT having ended; 6.9: a pending trap comes
    before an external interrupt) and after each instruction on; the timer's interrupt is taken
    once (Vol. 2A HLT: an interrupt resumes execution after it; kvm-unit-tests debug.c
    singlestep_with_sti_hlt)."""
    g = _guest(guest, "long64", STI_HLT, "stop", TIMER_HANDLER, irqchip=True)
    g.page_tables.map(APIC, APIC, KiB4, PTE_P | PTE_RW | PTE_PCD)
    g.set_idt_gate(TIMER, "timer")
    assert g.run_to_done() == [1], "the APIC timer interrupt was not taken exactly once"
    expect_single_steps(g, LOG, LOG_SLOTS, ["halted", "s1", "stop"], "across STI;HLT")


@pytest.mark.modes(*CPL0_MODES)
def test_general_detect_fault_right_after_mov_ss_is_not_held(guest, mode):
    """With DR7.GD set and TF set just before MOV SS, the MOV to DR6 that follows MOV SS faults
    with #DB at once: MOV SS holds interrupts, debug traps and single-step traps for one
    instruction, but "all other faults may still be generated" (6.8.3) and general detect is a
    fault (18.3.1.3): saved RIP = the MOV DR6, DR6.BD set. The processor clears DR7.GD on
    delivery (18.2.4), so the MOV DR6 then runs, and single-stepping goes on after it."""
    a, b = regs_for(mode)["ax"], regs_for(mode)["bx"]
    g = _guest(guest, mode, f"""
    mov {b}, {DR6_INIT:#x}
    mov {a}, {DR7_INIT | DR7_GD:#x}
    mov dr7, {a}
    mov cx, ss
    {set_tf(MODES[mode].code_bits)}
    mov ss, cx
    guarded: mov dr6, {b}
    s1: nop
    stop: nop""", "stop")
    g.run_to_done()
    log = read_db_log(g.vm, LOG, LOG_SLOTS)
    assert log and log[0][0] == g.labels["guarded"] and log[0][1] & DR6_BD, \
        f"first #DB: {format_db_log(g.labels, log)}; expected the general-detect fault at `guarded` with DR6.BD"
    assert [rip for rip, _ in log[1:]] == [g.labels[n] for n in ("s1", "stop")] and \
        all(dr6 & DR6_BS for _, dr6 in log[1:]), \
        f"#DBs after the general-detect fault: {format_db_log(g.labels, log[1:])}; expected single steps at s1, " \
        "stop with DR6.BS"


def _emulated(mode) -> str:
    a = regs_for(mode)["ax"]
    return f"""
    {set_tf(MODES[mode].code_bits)}
    s0: xor eax, eax
    s1: cpuid
    s2: mov ecx, {MSR_IA32_APIC_BASE:#x}
    s3: rdmsr
    s4: in al, 0x21
    s5: mov {a}, {a}
    stop: nop"""


@pytest.mark.requires_cap("KVM_CAP_IRQCHIP")
@pytest.mark.modes(*CPL0_MODES)
def test_single_step_over_instructions_kvm_emulates(guest, mode):
    """TF set, then CPUID, RDMSR of IA32_APIC_BASE and IN from the in-kernel PIC's port 0x21, all
    completed inside KVM: one single-step #DB after each, with the saved RIP at the next
    instruction and DR6.BS (18.3.1.4)."""
    g = _guest(guest, mode, _emulated(mode), "stop", irqchip=True)
    g.run_to_done()
    expect_single_steps(g, LOG, LOG_SLOTS, ["s1", "s2", "s3", "s4", "s5", "stop"], "over emulated instructions")
