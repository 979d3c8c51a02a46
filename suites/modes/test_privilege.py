"""Privilege changes: IRET and RETF down to CPL3, interrupts back up through the TSS,
SYSCALL/SYSRET, SYSENTER/SYSEXIT and call gates, each checked for CPL, stack and return
address (SDM Vol. 3A 5.8, 6.12.1, 7.7; Vol. 2B SYSCALL, SYSRET, SYSENTER, SYSEXIT; Vol. 2A IRET)."""

import pytest

from kvmtest.guest import Sync
from kvmtest.guest import descriptors as D
from kvmtest.guest import layout as L
from kvmtest.guest.mode_select import select
from kvmtest.x86 import (
    DB_VECTOR,
    EFER_SCE,
    GP_VECTOR,
    MSR_IA32_FMASK,
    MSR_IA32_LSTAR,
    MSR_IA32_STAR,
    MSR_IA32_SYSENTER_CS,
    MSR_IA32_SYSENTER_EIP,
    MSR_IA32_SYSENTER_ESP,
    SYS_TYPE_CALL_GATE,
    UD_VECTOR,
)


def _sync(g, what):
    event = g.run()
    assert isinstance(event, Sync), f"{what}: expected GUEST_SYNC, got {event}"
    return event.value


IRETQ_TO_USER = """
.include "iretq_to_user.S"
user:
GUEST_AT_CPL 3
    GUEST_SYNC cs
    GUEST_SYNC rsp
    int 0x80
after_int:
    GUEST_DONE
kernel_entry:
GUEST_AT_CPL 0
    GUEST_SYNC cs
    mov rax, rsp
    GUEST_SYNC rax
    mov rax, qword ptr [rsp]
    GUEST_SYNC rax
    mov rax, qword ptr [rsp + 8]
    GUEST_SYNC rax
    mov rax, qword ptr [rsp + 24]
    GUEST_SYNC rax
    iretq
"""


def test_iretq_to_cpl3_and_interrupt_back_through_the_tss(guest):
    """IRETQ with a CPL3 frame enters CPL3 on the new stack; INT 0x80 through a DPL3 gate
    returns to CPL0 on the stack from TSS.RSP0 with the frame SS, RSP, RFLAGS, CS, RIP
    (SDM Vol. 3A 6.14.2, 7.7)."""
    g = guest("long64", IRETQ_TO_USER, user_pages=True)
    g.set_idt_gate(0x80, "kernel_entry", dpl=3)
    assert _sync(g, "CS at CPL3") == L.SEL_USER_CODE64 | 3
    assert _sync(g, "RSP at CPL3") == L.USER_STACK_TOP
    assert _sync(g, "CS in the handler") == L.SEL_CODE64
    assert _sync(g, "RSP in the handler") == L.KERNEL_STACK_TOP - 40, "the handler's stack is not TSS.RSP0 - 5 qwords"
    assert _sync(g, "saved RIP") == g.labels["after_int"]
    assert _sync(g, "saved CS") == L.SEL_USER_CODE64 | 3
    assert _sync(g, "saved RSP") == L.USER_STACK_TOP
    g.run_to_done()


SYSCALL_SYSRET = """
    mov rcx, user
    mov r11, 0x2
    .byte 0x48, 0x0f, 0x07          # SYSRETQ (Keystone lacks the mnemonic)
user:
GUEST_AT_CPL 3
    GUEST_SYNC cs
    GUEST_SYNC ss
    syscall
after_syscall:
    GUEST_FAIL "SYSCALL returned to user code"
syscall_entry:
GUEST_AT_CPL 0
    mov ax, cs                      # the guest's own view of its selectors
    movzx eax, ax
    GUEST_SYNC rax
    mov ax, ss
    movzx eax, ax
    GUEST_SYNC rax
    GUEST_SYNC rcx
    GUEST_DONE
"""


def _enable_syscall(g) -> None:
    """EFER.SCE on; STAR's SYSRET base is the 32-bit user code selector (so +16 is 64-bit user
    code), its SYSCALL base the kernel's 64-bit code; LSTAR at `syscall_entry`; nothing masked."""
    sregs = g.vcpu.get_sregs()
    sregs.efer |= EFER_SCE
    g.set_sregs(sregs)
    g.vcpu.set_msrs({MSR_IA32_STAR: (L.SEL_USER_CODE32 << 48) | (L.SEL_CODE64 << 32),
                     MSR_IA32_LSTAR: g.labels["syscall_entry"], MSR_IA32_FMASK: 0})


def test_sysret_to_cpl3_and_syscall_back(guest):
    """SYSRET (64-bit) loads CS = STAR[63:48]+16 | 3 and SS = STAR[63:48]+8 | 3 and jumps to RCX;
    SYSCALL loads CS = STAR[47:32], SS = STAR[47:32]+8, RIP = LSTAR and saves the return RIP in
    RCX (SDM Vol. 2B SYSCALL, SYSRET)."""
    g = guest("long64", SYSCALL_SYSRET, user_pages=True)
    _enable_syscall(g)
    assert _sync(g, "CS after SYSRET") == L.SEL_USER_CODE64 | 3
    assert _sync(g, "SS after SYSRET") == L.SEL_USER_DATA | 3
    assert _sync(g, "CS the guest reads after SYSCALL") == L.SEL_CODE64
    assert _sync(g, "SS the guest reads after SYSCALL") == L.SEL_DATA
    assert _sync(g, "RCX after SYSCALL") == g.labels["after_syscall"]
    g.run_to_done()


SYSENTER_SYSEXIT = """
    mov edx, user
    mov ecx, USER_STACK_TOP
    sysexit
user:
GUEST_AT_CPL 3
    GUEST_SYNC cs
    GUEST_SYNC esp
    sysenter
sysenter_entry:
GUEST_AT_CPL 0
    GUEST_SYNC cs
    GUEST_SYNC ss
    GUEST_SYNC esp
    GUEST_DONE
"""


@pytest.mark.modes("pm32")
def test_sysexit_to_cpl3_and_sysenter_back(guest, mode):
    """SYSEXIT loads CS = IA32_SYSENTER_CS+16 | 3, SS = +24 | 3, EIP = EDX, ESP = ECX; SYSENTER
    loads CS = IA32_SYSENTER_CS, SS = +8, EIP/ESP from the MSRs (SDM Vol. 2B SYSENTER, SYSEXIT)."""
    g = guest(mode, SYSENTER_SYSEXIT)
    for sel, desc in ((0x60, D.code32()), (0x68, D.data()), (0x70, D.code32(dpl=3)), (0x78, D.data(dpl=3))):
        g.set_gdt_entry(sel, desc.encode())
    g.vcpu.set_msrs({MSR_IA32_SYSENTER_CS: 0x60, MSR_IA32_SYSENTER_ESP: L.KERNEL_STACK_TOP - 0x100,
                     MSR_IA32_SYSENTER_EIP: g.labels["sysenter_entry"]})
    assert _sync(g, "CS after SYSEXIT") == 0x73
    assert _sync(g, "ESP after SYSEXIT") == L.USER_STACK_TOP
    assert _sync(g, "CS after SYSENTER") == 0x60
    assert _sync(g, "SS after SYSENTER") == 0x68
    assert _sync(g, "ESP after SYSENTER") == L.KERNEL_STACK_TOP - 0x100
    g.run_to_done()


CALL_GATE = """
.include "iretq_to_user.S"
user:
GUEST_AT_CPL 3
    FARCALL 0x63, 0
after_call:
    GUEST_SYNC cs
    GUEST_DONE
gate_target:
GUEST_AT_CPL 0
    GUEST_SYNC cs
    mov rax, qword ptr [rsp]
    GUEST_SYNC rax
    mov rax, qword ptr [rsp + 8]
    GUEST_SYNC rax
    rex64 retf
"""


def test_call_gate_from_cpl3_to_cpl0_and_back(guest):
    """A far call through a DPL3 64-bit call gate to a CPL0 code segment runs the target at
    CPL0 with the caller's RIP and CS on the new stack, and RETF returns to CPL3 (SDM Vol. 3A
    5.8.3, 5.8.5, 5.8.6)."""
    g = guest("long64", CALL_GATE, user_pages=True)
    g.set_gdt_entry(0x60, D.gate(g.labels["gate_target"], L.SEL_CODE64, SYS_TYPE_CALL_GATE, dpl=3, bits=64))
    assert _sync(g, "CS in the gate target") == L.SEL_CODE64
    ret = g.labels["after_call"]
    assert _sync(g, "pushed return RIP") == ret
    assert _sync(g, "pushed CS") == L.SEL_USER_CODE64 | 3
    assert _sync(g, "CS after RETF") == L.SEL_USER_CODE64 | 3
    g.run_to_done()


SYSCALL_TF = """
    mov rcx, user
    mov r11, 0x2
    .byte 0x48, 0x0f, 0x07          # SYSRETQ
user:
GUEST_AT_CPL 3
    pushfq
    or qword ptr [rsp], 0x100       # RFLAGS.TF
    popfq
    syscall
syscall_entry:
    nop
db_handler:
GUEST_AT_CPL 0
    mov rax, qword ptr [rsp + 8]    # saved CS of the single-step trap
    GUEST_SYNC rax
    mov rax, qword ptr [rsp]        # saved RIP
    GUEST_SYNC rax
    GUEST_DONE
"""


def test_syscall_with_tf_traps_in_the_kernel(guest):
    """With RFLAGS.TF set and not masked by IA32_FMASK, SYSCALL completes and the single-step
    trap is taken after it, in the kernel's code segment at the LSTAR target (SDM Vol. 2B
    SYSCALL, Vol. 3A 18.3.1.4; kvm-unit-tests syscall.c)."""
    g = guest("long64", SYSCALL_TF, user_pages=True)
    _enable_syscall(g)
    g.set_idt_gate(DB_VECTOR, "db_handler")
    cs, rip = g.run_to_done()
    assert (cs, rip) == (L.SEL_CODE64, g.labels["syscall_entry"]), \
        f"#DB after SYSCALL with TF: saved CS {cs:#x} RIP {rip:#x}, expected CS 0x8 RIP {g.labels['syscall_entry']:#x}"


EXCEPTION_TO_KERNEL = """
    mov {a}, {sp}
    GUEST_SYNC {a}
    {fault}
    GUEST_FAIL "no exception"
kernel_entry:
GUEST_AT_CPL 0
    GUEST_SYNC cs
    mov {a}, {sp}
    GUEST_SYNC {a}
    mov {a}, {sp}
    add {a}, {frame_bytes}
frame:
    mov {b}, {word} ptr [{a}]
    GUEST_SYNC {b}
    sub {a}, {w}
    cmp {a}, {sp}
    jae frame
    GUEST_DONE
"""
USER_FAULTS = {"ud": ("ud2", None), "gp": ("mov ax, 0x1230\n    fault: mov ds, ax", 0x1230)}


@pytest.mark.modes(*select(cpl=3, code_bits=64) + select(cpl=3, paging=False))
@pytest.mark.parametrize("fault", USER_FAULTS)
def test_exception_at_cpl3_enters_cpl0_on_the_tss_stack(guest, mode, fault):
    """An exception raised at CPL3 is delivered at CPL0 on the stack from TSS.RSP0/ESP0 (SS0),
    which holds, from the top: SS and RSP of the interrupted code, RFLAGS, CS (RPL 3), the
    faulting instruction's address and, for #GP, the error code (SDM Vol. 3A 6.12.1, 6.14.2;
    Figures 6-4 and 6-9)."""
    bits64 = mode.startswith("long64")
    w, word = (8, "qword") if bits64 else (4, "dword")
    a, b, sp = ("rax", "rbx", "rsp") if bits64 else ("eax", "ebx", "esp")
    insn, error_code = USER_FAULTS[fault]
    if "fault:" not in insn:
        insn = "fault: " + insn
    items = 5 + (error_code is not None)
    g = guest(mode, EXCEPTION_TO_KERNEL.format(a=a, b=b, sp=sp, w=w, word=word, fault=insn,
                                               frame_bytes=(items - 1) * w))
    for vector in (UD_VECTOR, GP_VECTOR):
        g.set_idt_gate(vector, "kernel_entry")
    user_sp = g.expect_sync()
    kernel_cs = L.SEL_CODE64 if bits64 else L.SEL_CODE32
    assert g.expect_sync() == kernel_cs, "the handler does not run on the kernel code segment (CPL0)"
    handler_sp = g.expect_sync()
    assert handler_sp == L.KERNEL_STACK_TOP - items * w, \
        f"handler stack {handler_sp:#x}: expected TSS stack top {L.KERNEL_STACK_TOP:#x} - {items} pushed words"
    ss, saved_sp, _rflags, cs, ip, *rest = g.run_to_done()
    user_cs = L.SEL_USER_CODE64 if bits64 else L.SEL_USER_CODE32
    want = {"SS": L.SEL_USER_DATA | 3, "RSP": user_sp, "CS": user_cs | 3, "RIP": g.labels["fault"]}
    got = {"SS": ss & 0xFFFF, "RSP": saved_sp, "CS": cs & 0xFFFF, "RIP": ip}
    assert got == want, f"frame on the TSS stack {({k: hex(v) for k, v in got.items()})}, " \
                        f"expected {({k: hex(v) for k, v in want.items()})}"
    assert rest == ([] if error_code is None else [error_code]), \
        f"error code slot {[hex(v) for v in rest]}, expected {error_code!r}"
