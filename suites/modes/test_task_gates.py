"""More hardware task switches (SDM Vol. 3A chapter 7; kvm-unit-tests taskswitch2): a page fault
through an IDT task gate, far JMP and CALL through a task gate in the GDT, a task called again
after its IRET, a task switch into virtual-8086 mode, and a task whose code segment is conforming
with a selector RPL above its DPL. KVM carries task switches out in software, so every field
counts. The simpler cases: test_task_switch.py.
"""


import pytest

from kvmtest.guest import descriptors as D
from kvmtest.guest import layout as L
from kvmtest.guest.tasks import add_task, expect_nested_switch, tss_type
from kvmtest.x86 import (
    RFLAGS_NT,
    RFLAGS_VM,
    SEG_TYPE_CODE_RX_CONFORMING,
    SYS_TYPE_TASK_GATE,
    SYS_TYPE_TSS_AVAILABLE,
    SYS_TYPE_TSS_BUSY,
    TSS32_CS,
    TSS32_DS,
    TSS32_EFLAGS,
    TSS32_EIP,
    TSS32_ES,
    TSS32_LINK,
    TSS32_SIZE,
)

TSS_B, SEL_TSS_B = 0x3100, 0x60
SEL_GATE_B = 0x68              # a task gate in the GDT naming SEL_TSS_B
TSS_C, SEL_TSS_C = 0x3200, 0x70
SEL_CONFORMING = 0x78          # a conforming code segment, DPL 0
TASK_B_STACK = 0x6800
UNMAPPED = 0x80010000          # no page-table entry maps it


def _task(g, selector, base, label, **kw):
    """An available 32-bit TSS at `base`, GDT entry `selector`, whose task starts at `label`."""
    add_task(g, selector, base, label, esp=kw.pop("esp", TASK_B_STACK), **kw)


def _check_nested(g, tr, eflags, old_eip):
    expect_nested_switch(g, tr, eflags, old_eip, new=SEL_TSS_B, new_base=TSS_B)


REPORT = """
        pushfd
        pop eax
        GUEST_SYNC tr
        GUEST_SYNC eax
"""


@pytest.mark.modes("paging32")
def test_page_fault_through_a_task_gate_switches_tasks(guest, mode):
    """A #PF whose IDT entry is a task gate switches to the gate's task as a nested task, with the
    old task's EIP at the faulting instruction, the error code (2: a supervisor write to a page that
    is not present) pushed on the new task's stack, CR2 the address, and CR3 loaded from the new TSS
    (SDM Vol. 3A 6.12.2, 6.15 Interrupt 14, 7.3; kvm-unit-tests taskswitch2 "PF exception")."""
    # The new task's stack slot, both TSSs and the GDT are written once first, so no access of the
    # switch itself can fault in a host's nested page tables and be restarted (not what this checks).
    g = guest(mode, f"""
        mov dword ptr [{TASK_B_STACK - 4:#x}], 0
        mov eax, dword ptr [{TSS_B:#x}]
        mov dword ptr [{TSS_B:#x}], eax
        mov eax, dword ptr [{L.TSS:#x}]
        mov dword ptr [{L.TSS:#x}], eax
        mov eax, dword ptr [{L.GDT + SEL_TSS_B + 4:#x}]
        mov dword ptr [{L.GDT + SEL_TSS_B + 4:#x}], eax
        mov ebx, {UNMAPPED:#x}
    saved:
        mov dword ptr [ebx], 1
        GUEST_FAIL "the #PF did not switch tasks"
    task_b:
        {REPORT}
        GUEST_SYNC esp
        mov ebx, dword ptr [esp]
        GUEST_SYNC ebx
        mov eax, cr2
        GUEST_SYNC eax
        GUEST_DONE""")
    _task(g, SEL_TSS_B, TSS_B, "task_b", cr3=g.page_tables.cr3)
    g.set_idt_gate(14, 0, gate_type=SYS_TYPE_TASK_GATE, selector=SEL_TSS_B)
    tr, eflags, esp, error_code, cr2 = g.run_to_done()
    _check_nested(g, tr, eflags, g.labels["saved"])
    assert (esp, error_code, cr2) == (TASK_B_STACK - 4, 2, UNMAPPED), \
        f"handler task: ESP {esp:#x} holding {error_code:#x}, CR2 {cr2:#x}; expected ESP {TASK_B_STACK - 4:#x} " \
        f"holding the error code 0x2, CR2 {UNMAPPED:#x}"


@pytest.mark.parametrize("insn", ["call", "jmp"])
def test_far_transfer_through_a_gdt_task_gate_switches_tasks(guest, insn):
    """CALL FAR and JMP FAR to a task gate in the GDT switch to the task its TSS selector names (the
    offset is ignored): CALL nests (NT, link, both busy) and the task's IRET returns after the CALL
    with the called TSS available again; JMP does not nest (NT clear, the old TSS available, the new
    one busy) (SDM Vol. 3A 7.3, 7.4, Table 7-2; kvm-unit-tests taskswitch2 lcall/ljmp)."""
    g = guest("pm32", f"""
        {"FARCALL" if insn == "call" else "FARJMP"} {SEL_GATE_B:#x}, 0
    after:
        GUEST_SYNC 0xaf
        GUEST_DONE
    task_b:
        {REPORT}
        iretd
        GUEST_FAIL "IRET with NT set did not return to the calling task\"""")
    _task(g, SEL_TSS_B, TSS_B, "task_b")
    g.set_gdt_entry(SEL_GATE_B, D.gate(0, SEL_TSS_B, SYS_TYPE_TASK_GATE, bits=32))
    tr, eflags = g.expect_sync(), g.expect_sync()
    if insn == "jmp":
        assert tr == SEL_TSS_B, f"TR after JMP through the task gate: {tr:#x}, expected {SEL_TSS_B:#x}"
        assert not eflags & RFLAGS_NT, f"EFLAGS {eflags:#x} after a JMP task switch: NT set"
        assert (tss_type(g, L.SEL_TSS), tss_type(g, SEL_TSS_B)) == (SYS_TYPE_TSS_AVAILABLE, SYS_TYPE_TSS_BUSY), \
            "TSS types (old, new) after JMP: expected (available 0x9, busy 0xb)"
        saved = g.vm.read_u32(L.TSS + TSS32_EIP)
        assert saved == g.labels["after"], f"old TSS EIP {saved:#x}, expected {g.labels['after']:#x}"
        return
    _check_nested(g, tr, eflags, g.labels["after"])
    assert g.run_to_done() == [0xAF], "the task's IRET did not return after the CALL"
    assert g.vcpu.get_sregs().tr.selector == L.SEL_TSS, "TR after IRET is not the calling task's"
    assert tss_type(g, SEL_TSS_B) == SYS_TYPE_TSS_AVAILABLE, "the called TSS is still busy after IRET"


def test_a_task_called_again_resumes_after_its_iret(guest):
    """IRET from a nested task saves its state in its own TSS, EIP after the IRET, so a second CALL
    to the same TSS resumes it there, not at its first instruction (SDM Vol. 3A 7.3 step 9 and 7.4;
    kvm-unit-tests taskswitch2 lcall2)."""
    g = guest("pm32", f"""
        FARCALL {SEL_TSS_B:#x}, 0
        FARCALL {SEL_TSS_B:#x}, 0
        GUEST_DONE
    task_b:
        GUEST_SYNC 1
        iretd
        GUEST_SYNC 2
        iretd
        GUEST_FAIL "the task ran past its second IRET\"""")
    _task(g, SEL_TSS_B, TSS_B, "task_b")
    assert g.run_to_done() == [1, 2], "the second CALL did not resume the task after its first IRET"


VM86_CS, VM86_DS, VM86_ES = 0x4200, 0x1234, 0x2345    # the UD2 at linear 0x42000


def test_iret_to_a_virtual_8086_task_and_back_through_a_task_gate(guest):
    """IRET with NT set switches to the task in the previous-task link; that TSS's EFLAGS has VM set,
    so the task runs in virtual-8086 mode at CS:IP 4200:0000, where UD2 raises #UD, whose IDT task
    gate switches to a third task. The virtual-8086 task's TSS then holds EIP 0 (the UD2, a fault),
    CS 0x4200, DS and ES as loaded and EFLAGS with VM set (SDM Vol. 3A 7.3, 20.2.5, 20.3; kvm-unit-tests
    taskswitch2 VM86)."""
    g = guest("pm32", """
        pushfd
        or dword ptr [esp], 0x4000
        popfd
        iretd
        GUEST_FAIL "IRET with NT set did not switch tasks"
    task_c:
        GUEST_SYNC tr
        GUEST_DONE
    vm86_start:""")
    g.vm.write(VM86_CS << 4, b"\x0f\x0b")                      # UD2
    g.set_gdt_entry(SEL_TSS_B, D.tss(TSS_B, TSS32_SIZE - 1, busy=True).encode())
    g.vm.write(TSS_B, D.tss32_task(0, 0x1000, cs=VM86_CS, data=0x500, eflags=RFLAGS_VM | 0x2,
                                   segments={"ds": VM86_DS, "es": VM86_ES, "fs": 0, "gs": 0}))
    g.vm.write_u32(L.TSS + TSS32_LINK, SEL_TSS_B)
    _task(g, SEL_TSS_C, TSS_C, "task_c")
    g.set_idt_gate(6, 0, gate_type=SYS_TYPE_TASK_GATE, selector=SEL_TSS_C)
    (tr,) = g.run_to_done()
    assert tr == SEL_TSS_C, f"TR after the #UD in the virtual-8086 task: {tr:#x}, expected {SEL_TSS_C:#x}"
    saved = {name: g.vm.read_u32(TSS_B + off) for name, off in
             (("eip", TSS32_EIP), ("eflags", TSS32_EFLAGS), ("cs", TSS32_CS), ("ds", TSS32_DS), ("es", TSS32_ES))}
    want = {"eip": 0, "cs": VM86_CS, "ds": VM86_DS, "es": VM86_ES}
    got = {k: saved[k] & 0xFFFF if k != "eip" else saved[k] for k in want}
    assert got == want and saved["eflags"] & RFLAGS_VM, \
        f"virtual-8086 task's TSS after the switch away: {({k: hex(v) for k, v in saved.items()})}; expected " \
        f"{({k: hex(v) for k, v in want.items()})} and EFLAGS.VM set"


def test_task_with_a_conforming_code_segment_below_its_rpl(guest):
    """CALL FAR to a TSS whose CS selector has RPL 3 and names a conforming code segment of DPL 0
    (with SS and the data segments at DPL 3, EFLAGS.IOPL 3) switches tasks: the new task runs at CPL
    3 with CS = that selector, and its IRET returns (SDM Vol. 3A 6.15 "Interrupt 10—Invalid TSS
    Exception": a task switch raises #TS for a conforming code segment only when its DPL is greater
    than CPL, for a nonconforming one when DPL != CPL; 5.8.1.2, 7.3; kvm-unit-tests taskswitch2 "lcall
    with cs.rpl != cs.dpl")."""
    g = guest("pm32", """
        FARCALL 0x60, 0
        GUEST_SYNC 0xaf
        GUEST_DONE
    task_b:
        mov ax, cs
        movzx eax, ax
        GUEST_SYNC eax
        iretd
        GUEST_FAIL "IRET with NT set did not return to the calling task\"""")
    g.set_gdt_entry(SEL_CONFORMING, D.Descriptor(type=SEG_TYPE_CODE_RX_CONFORMING | 1).encode())
    _task(g, SEL_TSS_B, TSS_B, "task_b", cs=SEL_CONFORMING | 3, data=L.SEL_USER_DATA | 3, eflags=0x3002)
    cs = g.expect_sync()
    assert cs == SEL_CONFORMING | 3, f"CS in the new task {cs:#x}, expected {SEL_CONFORMING | 3:#x} (CPL 3)"
    assert g.run_to_done() == [0xAF], "the task's IRET did not return after the CALL"
