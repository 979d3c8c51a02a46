"""Faults raised while an event is being delivered, and delivery onto a stack page that is also a
page table: a #PF while delivering #DE or #NP is handled first and the instruction then raises its
exception again (SDM Vol. 3A 6.15 Interrupt 8, Table 6-5: contributory then page fault = handle
serially); #NP for an IDT gate whose code segment is not present (6.15 Interrupt 11); and the
64-bit interrupt frame written into a page the guest also uses as a paging structure (6.14.2,
6.14.4; kvm-unit-tests eventinj.c "DE PF exceptions", "NP PF exceptions", "int 33 with shadowed
stack")."""

import dataclasses
import struct

import pytest

from kvmtest.guest import layout as L
from kvmtest.guest.descriptors import code64
from kvmtest.guest.paging import KiB4
from kvmtest.x86 import (
    APIC_DEFAULT_PHYS_BASE,
    DE_VECTOR,
    NP_VECTOR,
    PF_VECTOR,
    PFEC_P,
    PFEC_W,
    PTE_A,
    PTE_D,
    PTE_P,
    PTE_PCD,
    PTE_RW,
    RFLAGS_AF,
    RFLAGS_CF,
    RFLAGS_FIXED,
    RFLAGS_IF,
    RFLAGS_OF,
    RFLAGS_PF,
    RFLAGS_SF,
    RFLAGS_ZF,
    TSS64_IST1,
)

LOG = L.DATA                      # counters and values the handlers record, 8 bytes apart
PF_COUNT, PF_CR2, PF_ERROR, EXC_COUNT, EXC_ERROR, DIVISOR, INT_COUNT, PTE_ADDRESS = range(0, 64, 8)
STACK_PAGE = L.DATA + 0x5000      # the stack the faulting instruction runs on
IST_STACK_TOP = L.DATA + 0xF000   # the #PF handler's own stack (IST1), always writable
NOT_PRESENT_CS = L.GDT_ENTRIES * 8  # a 64-bit code descriptor with P = 0
VECTOR = 0x21
# Bytes below the stack top that the frame covers: SS, RSP, RFLAGS, CS, RIP, and for #NP the error
# code (6.14.2 Figure 6-9). The SDM leaves open in which order the frame's writes happen, so the
# first write to fault, and so CR2, may be anywhere in it.
FRAME_BYTES = {"de": 40, "np": 48}

PF_HANDLER = f"""
pf:
    push rax
    inc qword ptr [rdi + {PF_COUNT}]
    mov rax, cr2
    mov qword ptr [rdi + {PF_CR2}], rax
    mov rax, qword ptr [rsp + 8]
    mov qword ptr [rdi + {PF_ERROR}], rax
    mov rax, qword ptr [rdi + {PTE_ADDRESS}]    # the stack page's PTE, which the host put here
    or qword ptr [rax], {PTE_RW:#x}             # make the stack page writable
    mov rax, {STACK_PAGE:#x}
    invlpg [rax]
    pop rax
    add rsp, 8                                  # the error code
    iretq
"""

DIVIDE = f"""
    mov rdi, {LOG:#x}
    mov r14, rsp
    mov rsp, {STACK_PAGE + 0x1000:#x}
    xor edx, edx
    mov eax, 1500
    div dword ptr [rdi + {DIVISOR}]             # 0 at first: #DE
    mov rsp, r14
    GUEST_SYNC rax
    GUEST_DONE
de:
    inc qword ptr [rdi + {EXC_COUNT}]
    mov dword ptr [rdi + {DIVISOR}], 10
    iretq
"""

SOFTWARE_INT = f"""
    mov rdi, {LOG:#x}
    mov rax, {L.IDT:#x}                         # read first what delivery reads, so that this is
    mov rcx, qword ptr [rax + {VECTOR * 16}]    # about #NP and #PF, not about the host mapping
    mov rcx, qword ptr [rax + {NP_VECTOR * 16}] # these pages on their first use
    mov rcx, qword ptr [rax + {PF_VECTOR * 16}]
    mov rax, {L.GDT + NOT_PRESENT_CS:#x}
    mov rcx, qword ptr [rax]
    mov rax, {STACK_PAGE:#x}
    mov rcx, qword ptr [rax + 0xFF8]
    mov r14, rsp
    mov rsp, {STACK_PAGE + 0x1000:#x}
    int {VECTOR:#x}                             # the gate's code segment is not present: #NP
    mov rsp, r14
    GUEST_SYNC 0
    GUEST_DONE
np:
    inc qword ptr [rdi + {EXC_COUNT}]
    push rax
    mov rax, qword ptr [rsp + 8]
    mov qword ptr [rdi + {EXC_ERROR}], rax
    mov rax, {L.IDT + VECTOR * 16 + 2:#x}
    mov word ptr [rax], {L.SEL_CODE64:#x}       # the gate's selector: a present code segment now
    pop rax
    add rsp, 8
    iretq
handler:
    inc qword ptr [rdi + {INT_COUNT}]
    iretq
"""

EVENTS = {"de": (DIVIDE, DE_VECTOR, "de"), "np": (SOFTWARE_INT, NP_VECTOR, "np")}


def _guest(guest, event, stack_writable):
    source, vector, label = EVENTS[event]
    g = guest("long64", source + PF_HANDLER)
    g.vm.write_u64(LOG + PTE_ADDRESS, g.page_tables.entry_address(STACK_PAGE, 3))
    g.vm.write_u64(L.TSS + TSS64_IST1, IST_STACK_TOP)
    g.set_idt_gate(PF_VECTOR, "pf", ist=1)
    g.set_idt_gate(vector, label)
    if event == "np":
        g.set_gdt_entry(NOT_PRESENT_CS, dataclasses.replace(code64(), p=0).encode())
        g.set_idt_gate(VECTOR, "handler", selector=NOT_PRESENT_CS)
    if not stack_writable:
        g.page_tables.write_entry(STACK_PAGE, 3, g.page_tables.read_entry(STACK_PAGE, 3) & ~PTE_RW)
    return g


def _log(g) -> dict[str, int]:
    names = ("pf", "cr2", "pf_error", "exceptions", "error", "divisor", "ints")
    return {name: g.vm.read_u64(LOG + 8 * i) for i, name in enumerate(names)}


@pytest.mark.parametrize("stack", ["writable", "read-only"])
def test_divide_error_delivered_after_the_page_fault_its_push_raised(guest, stack):
    """DIV by 0 with RSP in a read-only page (CR0.WP=1): pushing the #DE frame raises #PF (error
    code P|W, CR2 in the stack page), which is delivered first through IST1 (6.14.5); its handler
    makes the page writable and returns to the DIV, which raises #DE again, now delivered; the #DE
    handler sets the divisor to 10 and DIV gives 1500 / 10 = 150. With a writable stack no #PF
    comes (6.15 Table 6-5: contributory then page fault, handled serially)."""
    g = _guest(guest, "de", stack == "writable")
    (quotient,) = g.run_to_done()
    log = _log(g)
    assert quotient == 150 and log["exceptions"] == 1, \
        f"DIV result {quotient} after {log['exceptions']} #DE handler runs; expected 150 after one"
    if stack == "writable":
        assert log["pf"] == 0, f"#PF with a writable stack: CR2 {log['cr2']:#x} error code {log['pf_error']:#x}"
        return
    low = STACK_PAGE + 0x1000 - FRAME_BYTES["de"]
    assert log["pf"] == 1 and log["pf_error"] == PFEC_P | PFEC_W and low <= log["cr2"] < STACK_PAGE + 0x1000, \
        f"#PF while pushing the #DE frame: {log['pf']} taken, last error code {log['pf_error']:#x} CR2 " \
        f"{log['cr2']:#x}; expected one, error code P|W ({PFEC_P | PFEC_W:#x}), CR2 in the frame " \
        f"[{low:#x}, {STACK_PAGE + 0x1000:#x})"


@pytest.mark.parametrize("stack", ["writable", "read-only"])
def test_not_present_gate_segment_is_np_delivered_after_a_page_fault(guest, stack):
    """INT 0x21 through a gate whose code segment descriptor has P = 0 raises #NP with error code
    the selector (EXT = 0, software interrupt; 6.13, 6.15 Interrupt 11). With RSP in a read-only
    page, pushing the #NP frame raises #PF first (handled through IST1, making the page writable);
    the INT then runs again and #NP is delivered. The #NP handler points the gate at a present
    segment, and the INT runs a third time and reaches vector 0x21's handler once."""
    g = _guest(guest, "np", stack == "writable")
    g.run_to_done()
    log = _log(g)
    assert (log["exceptions"], log["error"], log["ints"]) == (1, NOT_PRESENT_CS, 1), \
        f"#NP handler runs {log['exceptions']} (error code {log['error']:#x}), vector {VECTOR:#x} handler runs " \
        f"{log['ints']}; expected 1 #NP with error code {NOT_PRESENT_CS:#x}, then 1 run of the handler"
    want_pf = 0 if stack == "writable" else 1
    assert log["pf"] == want_pf, f"#PF taken {log['pf']} times (CR2 {log['cr2']:#x}), expected {want_pf}"
    if want_pf:
        low = STACK_PAGE + 0x1000 - FRAME_BYTES["np"]
        assert log["pf_error"] == PFEC_P | PFEC_W and low <= log["cr2"] < STACK_PAGE + 0x1000, \
            f"#PF error code {log['pf_error']:#x} CR2 {log['cr2']:#x}; expected P|W and CR2 in the #NP frame " \
            f"[{low:#x}, {STACK_PAGE + 0x1000:#x})"


SHADOW = L.DATA + 0x6000          # a page that is the stack and, through itself, a paging structure
SELF_MAP_VA = 2 << 39             # PML4 slot 2 -> SHADOW, whose entry 0 -> SHADOW at every level
APIC = APIC_DEFAULT_PHYS_BASE
STATUS_FLAGS = RFLAGS_CF | RFLAGS_PF | RFLAGS_AF | RFLAGS_ZF | RFLAGS_SF | RFLAGS_OF
# Each way of raising vector 0x21: its code, the RFLAGS it runs with (loaded by POPFQ just before),
# and the labels bounding the RIP the frame must hold. INT n is a trap: the saved RIP is the next
# instruction's. The self IPI is taken at some instruction boundary of the wait loop after the ICR
# write (6.12.1: the frame holds the return instruction pointer and RFLAGS at that point).
RAISE = {
    "int-n": (f"int {VECTOR:#x}\nint_return:", RFLAGS_FIXED | RFLAGS_CF | RFLAGS_PF | RFLAGS_ZF | RFLAGS_SF,
              ("int_return", "int_return")),
    "self-ipi": (f"mov dword ptr [rbx + 0x300], {0x44000 | VECTOR:#x}\nipi_sent:\n    mov ecx, 100000\n"
                 "ipi_wait:\n    cmp r12, 1\n    je ipi_wait_end\n    dec ecx\n    jnz ipi_wait\n"
                 "ipi_wait_end:\n    cli",
                 RFLAGS_FIXED | RFLAGS_IF, ("ipi_sent", "ipi_wait_end")),
}
SHADOWED_STACK = f"""
    mov rbx, {APIC:#x}
    mov dword ptr [rbx + 0xF0], 0x1FF
    xor r12, r12
    mov rax, {SELF_MAP_VA:#x}
    mov qword ptr [rax + 8], 0                  # a write through the self-map: SHADOW is in use as
    mov r14, rsp                                # a page table at all four levels
    push {{rflags:#x}}
    popfq
    mov rsp, {SHADOW + 0x1000:#x}
    {{raise_}}
    mov rsp, r14
    push {RFLAGS_FIXED:#x}
    popfq
    GUEST_SYNC r12
    GUEST_DONE
handler:
    inc r12
    mov dword ptr [rbx + 0xB0], 0               # EOI (a self IPI needs it; harmless otherwise)
    iretq
"""


@pytest.mark.parametrize("event", list(RAISE))
def test_interrupt_frame_written_into_a_page_that_is_also_a_page_table(guest, event):
    """The stack page is also a paging structure: PML4 entry 2 and the page's own entry 0 point at
    it, and the guest writes through that self-map first, so a shadow MMU treats the page as a
    page table. INT 0x21, or a self IPI of vector 0x21 with IF=1, on a stack at the page's top:
    the handler runs once, and the page then holds the 64-bit frame the delivery pushed, from the
    top down SS, RSP, RFLAGS, CS, RIP (6.14.2 Figure 6-9, RSP aligned to 16 first): the RSP before
    delivery, the RFLAGS the guest ran with (all of it for INT n; for the IPI, IF=1 and the other
    system flags, as the wait loop changes the status flags), and as RIP the instruction after the
    INT, or one of the wait loop's instructions after the ICR write (6.12.1)."""
    raise_, rflags, (first, last) = RAISE[event]
    g = guest("long64", SHADOWED_STACK.format(raise_=raise_, rflags=rflags), irqchip=True)
    g.page_tables.map(APIC, APIC, KiB4, PTE_P | PTE_RW | PTE_PCD)
    g.vm.write_u64(g.page_tables.root + 2 * 8, SHADOW | PTE_P | PTE_RW)
    g.vm.write_u64(SHADOW, SHADOW | PTE_P | PTE_RW)
    g.set_idt_gate(VECTOR, "handler")
    (runs,) = g.run_to_done()
    assert runs == 1, f"vector {VECTOR:#x} handler ran {runs} times, expected once"
    rip, cs, saved_rflags, rsp, ss = struct.unpack("<5Q", g.vm.read(SHADOW + 0x1000 - 40, 40))
    low, high = g.labels[first], g.labels[last]
    assert low <= rip <= high, f"saved RIP {rip:#x}; expected in [{first} {low:#x}, {last} {high:#x}]"
    ignored = STATUS_FLAGS if event == "self-ipi" else 0
    assert saved_rflags & ~ignored == rflags, \
        f"saved RFLAGS {saved_rflags:#x}; expected {rflags:#x} (ignoring status flags {ignored:#x})"
    sregs = g.vcpu.get_sregs()
    want = (sregs.cs.selector, SHADOW + 0x1000, sregs.ss.selector)
    assert (cs, rsp, ss) == want, \
        f"frame in the page-table page (CS, RSP, SS): {[hex(v) for v in (cs, rsp, ss)]}; " \
        f"expected {[hex(v) for v in want]}"
    entry = g.vm.read_u64(SHADOW) & ~(PTE_A | PTE_D)  # the walks set accessed and dirty
    assert entry == SHADOW | PTE_P | PTE_RW, f"the self-map entry now {entry:#x}"
