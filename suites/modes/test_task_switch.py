"""Hardware task switches in 32-bit protected mode (SDM Vol. 3A 7.3 task switching; kvm-unit-tests
taskswitch.c). KVM carries them out in software, so every field counts."""

import pytest

from kvmtest.exits import HltExit
from kvmtest.guest import layout as L
from kvmtest.guest.tasks import add_task, expect_nested_switch, tss_type
from kvmtest.x86 import RFLAGS_NT, SYS_TYPE_TASK_GATE, SYS_TYPE_TSS_AVAILABLE, SYS_TYPE_TSS_BUSY, TSS32_EIP

TSS_B, SEL_TSS_B = 0x3100, 0x60
TASK_B_STACK = 0x6800

SOURCE = """
    FARJMP 0x60, 0
after_jmp:
    GUEST_FAIL "the task switch returned to the old task"
task_b:
    mov eax, 0x0B0B
    GUEST_SYNC tr
    GUEST_SYNC esp
    GUEST_DONE
"""


def test_far_jump_to_a_tss_switches_tasks(guest):
    """JMP FAR to an available 32-bit TSS descriptor saves the current task's state in its TSS
    (EIP = the instruction after the JMP), loads the new task's registers from the new TSS, loads
    TR with the new selector, marks the new TSS busy and the old one available, and leaves
    EFLAGS.NT clear (SDM Vol. 3A 7.3, Table 7-2)."""
    g = guest("pm32", SOURCE)
    add_task(g, SEL_TSS_B, TSS_B, "task_b", esp=TASK_B_STACK)
    tr, esp = g.run_to_done()
    assert tr == SEL_TSS_B, f"TR after the switch: {tr:#x}, expected {SEL_TSS_B:#x}"
    assert esp == TASK_B_STACK, f"ESP in the new task {esp:#x}, expected {TASK_B_STACK:#x} from its TSS"
    old_eip = g.vm.read_u32(L.TSS + TSS32_EIP)
    assert old_eip == g.labels["after_jmp"], f"old TSS EIP {old_eip:#x}, expected {g.labels['after_jmp']:#x}"
    new_type, old_type = tss_type(g, SEL_TSS_B), tss_type(g, L.SEL_TSS)
    assert (new_type, old_type) == (SYS_TYPE_TSS_BUSY, SYS_TYPE_TSS_AVAILABLE), \
        f"TSS types after JMP: new {new_type:#x} (want busy 0xb), old {old_type:#x} (want available 0x9)"
    assert not g.vcpu.get_regs().rflags & RFLAGS_NT, "EFLAGS.NT set after a JMP task switch"


def _tss_types(g):
    """(old task's TSS type, new task's TSS type) as the GDT holds them now."""
    return tss_type(g, L.SEL_TSS), tss_type(g, SEL_TSS_B)


def _nested_task_b(g):
    add_task(g, SEL_TSS_B, TSS_B, "task_b", esp=TASK_B_STACK)


def _check_nested_entry(g, tr, eflags, old_eip):
    expect_nested_switch(g, tr, eflags, old_eip, new=SEL_TSS_B, new_base=TSS_B)


def test_far_call_to_a_tss_nests_and_iret_returns(guest):
    """CALL FAR to an available TSS switches tasks as a nested task: NT set, the previous-task
    link holds the old TR, the old TSS stays busy, the old EIP (after the CALL) is saved. IRET
    with NT set then returns to the old task after the CALL, with TR back, NT clear and the
    nested TSS available again (SDM Vol. 3A 7.3, 7.4, Table 7-2; kvm-unit-tests taskswitch.c)."""
    g = guest("pm32", """
        FARCALL 0x60, 0
    after_call:
        pushfd
        pop eax
        GUEST_SYNC tr
        GUEST_SYNC eax
        GUEST_DONE
    task_b:
        pushfd
        pop eax
        GUEST_SYNC tr
        GUEST_SYNC eax
        iretd
        GUEST_FAIL "IRET with NT set did not return to the calling task"
    """)
    _nested_task_b(g)
    tr, eflags = g.expect_sync(), g.expect_sync()
    _check_nested_entry(g, tr, eflags, g.labels["after_call"])
    back_tr, back_eflags = g.run_to_done()
    assert back_tr == L.SEL_TSS, f"TR after IRET: {back_tr:#x}, expected the calling task's {L.SEL_TSS:#x}"
    assert not back_eflags & RFLAGS_NT, f"EFLAGS {back_eflags:#x} after IRET: NT set in the calling task"
    assert _tss_types(g) == (SYS_TYPE_TSS_BUSY, SYS_TYPE_TSS_AVAILABLE), \
        f"TSS types (old, new) after IRET {_tss_types(g)}: expected (busy 0xb, available 0x9)"


TASK_B_REPORTS = """
    task_b:
        pushfd
        pop eax
        GUEST_SYNC tr
        GUEST_SYNC eax
        GUEST_SYNC esp
        mov ebx, dword ptr [esp]
        GUEST_SYNC ebx
        GUEST_DONE
"""

EXCEPTIONS = {
    # vector, code (label `saved` = where the old task's EIP must point: the faulting
    # instruction for faults, the next one for traps), error code on the new task's stack
    "de": (0, "xor edx, edx\n    xor ecx, ecx\n    mov eax, 1\n    saved: div ecx", None),
    "bp": (3, "int3\n    saved: nop", None),
    "of": (4, "mov al, 0x7f\n    add al, 1\n    into\n    saved: nop", None),
    "ud": (6, "saved: ud2", None),
    "gp": (13, "mov ax, 0x1230\n    saved: mov ds, ax", 0x1230),
}


@pytest.mark.parametrize("name", EXCEPTIONS)
def test_exception_through_a_task_gate_switches_tasks(guest, name):
    """An exception whose IDT entry is a task gate switches to the gate's task as a nested
    task; the old task's saved EIP is the faulting instruction for a fault (#DE, #UD, #GP) and
    the next one for a trap (#BP, #OF), and an error code is pushed on the new task's stack
    (SDM Vol. 3A 6.5 fault/trap, 6.11 task gates, 6.12.2 "Interrupt Tasks", 7.3)."""
    vector, code, error_code = EXCEPTIONS[name]
    g = guest("pm32", f"""
    {code}
        GUEST_FAIL "the exception did not switch tasks"
    {TASK_B_REPORTS}""")
    _nested_task_b(g)
    g.set_idt_gate(vector, 0, gate_type=SYS_TYPE_TASK_GATE, selector=SEL_TSS_B)
    tr, eflags, esp, top = g.run_to_done()
    _check_nested_entry(g, tr, eflags, g.labels["saved"])
    if error_code is None:
        assert esp == TASK_B_STACK, f"ESP in the handler task {esp:#x}, expected {TASK_B_STACK:#x} (no error code)"
    else:
        assert (esp, top) == (TASK_B_STACK - 4, error_code), \
            f"handler task stack: ESP {esp:#x} holding {top:#x}, expected the error code {error_code:#x} " \
            f"at {TASK_B_STACK - 4:#x}"


@pytest.mark.parametrize("source", ["int", "external", "nmi"])
def test_interrupt_through_a_task_gate_switches_tasks(guest, source):
    """INT n, an external interrupt (KVM_INTERRUPT) and an NMI (KVM_NMI) whose IDT entry is a
    task gate switch to the gate's task as a nested task, the old task's saved EIP pointing
    after the interrupted instruction and no error code pushed (SDM Vol. 3A 6.12.2, 7.3;
    api.rst 4.16 KVM_INTERRUPT, 4.64 KVM_NMI)."""
    vector = {"int": 0x40, "external": 0x40, "nmi": 2}[source]
    trigger = "int 0x40" if source == "int" else "sti\n    hlt"
    g = guest("pm32", f"""
        {trigger}
    resumed:
        GUEST_FAIL "the interrupt did not switch tasks"
    {TASK_B_REPORTS}""")
    _nested_task_b(g)
    g.set_idt_gate(vector, 0, gate_type=SYS_TYPE_TASK_GATE, selector=SEL_TSS_B)
    if source != "int":
        g.expect_exit(HltExit)
        if source == "external":
            g.vcpu.interrupt(vector)
        else:
            g.vcpu.nmi()
    tr, eflags, esp, _ = g.run_to_done()
    _check_nested_entry(g, tr, eflags, g.labels["resumed"])
    assert esp == TASK_B_STACK, f"ESP in the handler task {esp:#x}, expected {TASK_B_STACK:#x} (no error code)"
