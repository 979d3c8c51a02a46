"""CR0, CR2, CR3, CR4, CR8, EFER, the APIC base and interrupt_bitmap of KVM_GET/SET_SREGS, and
kvm_run's cr8, apic_base, if_flag, ready_for_interrupt_injection and flags, against what the
guest wrote or read itself (api.rst 4.13/4.14, 5 "kvm_run"; SDM Vol. 3A 2.5 control registers,
4.7 CR2 on #PF, 11.8.6.1 CR8; Vol. 4 IA32_EFER, IA32_APIC_BASE)."""

import pytest

from kvmtest.abi import constants as C
from kvmtest.exits import IoExit, IrqWindowOpenExit
from kvmtest.guest.mode_select import select
from kvmtest.guest.msr_source import rdmsr64
from kvmtest.x86 import (
    CR0_AM,
    CR0_MP,
    CR3_PCD,
    CR3_PWT,
    CR4_OSFXSR,
    CR4_OSXMMEXCPT,
    EFER_SCE,
    MSR_IA32_APIC_BASE,
    MSR_IA32_EFER,
    RFLAGS_IF,
)

CR2_VALUE = 0x0000_7F12_3456_7000
APIC_BASE_MOVED = 0xFEB00000       # IA32_APIC_BASE bits 35:12 are the base (SDM Vol. 3A 11.4.4)

GUEST_WRITES = f"""
    mov rax, cr0
    or rax, {CR0_MP | CR0_AM:#x}
    mov cr0, rax
    mov rax, {CR2_VALUE:#x}
    mov cr2, rax
    mov rax, cr3
    or rax, {CR3_PWT | CR3_PCD:#x}
    mov cr3, rax
    mov rax, cr4
    or rax, {CR4_OSFXSR | CR4_OSXMMEXCPT:#x}
    mov cr4, rax
    mov eax, 9
    mov cr8, rax
    mov ecx, {MSR_IA32_EFER:#x}
    rdmsr
    or eax, {EFER_SCE:#x}
    wrmsr
    mov ecx, {MSR_IA32_APIC_BASE:#x}
    rdmsr
    and eax, 0xFFF
    or eax, {APIC_BASE_MOVED:#x}
    wrmsr
    out 0x10, al
"""
GUEST_READS = f"""
    mov rax, cr0
    GUEST_SYNC rax
    mov rax, cr2
    GUEST_SYNC rax
    mov rax, cr3
    GUEST_SYNC rax
    mov rax, cr4
    GUEST_SYNC rax
    mov rax, cr8
    GUEST_SYNC rax
    {rdmsr64(MSR_IA32_EFER)}
    GUEST_SYNC rax
    {rdmsr64(MSR_IA32_APIC_BASE)}
    GUEST_SYNC rax
    GUEST_DONE
"""
NAMES = ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base")


def test_control_registers_the_guest_writes_are_what_get_sregs_reports(guest):
    """MOV to CR0/CR2/CR3/CR4/CR8 and WRMSR of IA32_EFER and IA32_APIC_BASE by the guest are
    what KVM_GET_SREGS and KVM_GET_SREGS2 report at the next exit, what KVM_GET_MSRS reports for
    the two MSRs,
    and what kvm_run.cr8 and kvm_run.apic_base carry (no in-kernel local APIC, so both are
    valid: api.rst 5); the guest reads the same values back itself afterwards (SDM Vol. 3A 2.5;
    Vol. 2B MOV CR, WRMSR)."""
    g = guest("long64", GUEST_WRITES + GUEST_READS)
    start = g.vcpu.get_sregs()
    apic_base = (start.apic_base & 0xFFF) | APIC_BASE_MOVED
    want = {"cr0": start.cr0 | CR0_MP | CR0_AM, "cr2": CR2_VALUE, "cr3": start.cr3 | CR3_PWT | CR3_PCD,
            "cr4": start.cr4 | CR4_OSFXSR | CR4_OSXMMEXCPT, "cr8": 9, "efer": start.efer | EFER_SCE,
            "apic_base": apic_base}
    g.expect_exit(IoExit, port=0x10)
    sregs = g.vcpu.get_sregs()
    reported = {n: getattr(sregs, n) for n in NAMES}
    assert reported == want, f"KVM_GET_SREGS after the guest's writes: {_hex(reported)}; the guest wrote {_hex(want)}"
    if g.kvm.check_extension("KVM_CAP_SREGS2"):
        sregs2 = g.vcpu.get_sregs2()
        reported = {n: getattr(sregs2, n) for n in NAMES}
        assert reported == want, \
            f"KVM_GET_SREGS2 after the guest's writes: {_hex(reported)}; the guest wrote {_hex(want)}"
    msrs = g.vcpu.get_msrs([MSR_IA32_EFER, MSR_IA32_APIC_BASE])
    assert (msrs[MSR_IA32_EFER], msrs[MSR_IA32_APIC_BASE]) == (want["efer"], apic_base), \
        f"KVM_GET_MSRS EFER {msrs[MSR_IA32_EFER]:#x} APIC_BASE {msrs[MSR_IA32_APIC_BASE]:#x}; the guest wrote " \
        f"{want['efer']:#x} and {apic_base:#x}"
    run = g.vcpu.kvm_run
    assert (run.cr8, run.apic_base) == (9, apic_base), \
        f"kvm_run.cr8 {run.cr8:#x} apic_base {run.apic_base:#x} at the exit; the guest wrote 0x9 and {apic_base:#x}"
    seen = dict(zip(NAMES, g.run_to_done(), strict=True))
    assert seen == want, f"the guest read back {_hex(seen)}; it had written {_hex(want)}"


def test_control_registers_the_host_sets_are_what_the_guest_reads(guest):
    """CR0, CR2, CR3, CR4, EFER and APIC base written with KVM_SET_SREGS are what the guest's
    MOV from CR0/CR2/CR3/CR4 and RDMSR of IA32_EFER / IA32_APIC_BASE read (api.rst 4.14; SDM
    Vol. 2B MOV CR, RDMSR). Without an in-kernel local APIC, KVM_RUN loads CR8 from kvm_run.cr8
    (api.rst 5: "both input and output"), so sregs.cr8 is set to that same value here; the
    sregs.cr8 path on its own is checked with an in-kernel APIC in test_lapic_fields.py."""
    g = guest("long64", GUEST_READS)
    sregs = g.vcpu.get_sregs()
    sregs.cr0 |= CR0_MP | CR0_AM
    sregs.cr2 = CR2_VALUE
    sregs.cr3 |= CR3_PWT | CR3_PCD
    sregs.cr4 |= CR4_OSFXSR | CR4_OSXMMEXCPT
    sregs.cr8 = 6
    g.vcpu.kvm_run.cr8 = 6
    sregs.efer |= EFER_SCE
    sregs.apic_base = (sregs.apic_base & 0xFFF) | APIC_BASE_MOVED
    g.set_sregs(sregs)
    want = {n: getattr(sregs, n) for n in NAMES}
    seen = dict(zip(NAMES, g.run_to_done(), strict=True))
    assert seen == want, f"the guest read {_hex(seen)}; KVM_SET_SREGS wrote {_hex(want)}"


def test_kvm_run_cr8_is_an_input_the_guest_sees(guest):
    """kvm_run.cr8 is "both input and output" without an in-kernel local APIC (api.rst 5): a
    value written there before KVM_RUN is what the guest's MOV from CR8 reads."""
    g = guest("long64", "mov rax, cr8\nGUEST_SYNC rax\nGUEST_DONE")
    g.vcpu.kvm_run.cr8 = 0xB
    assert g.run_to_done() == [0xB], "the guest's CR8 is not the kvm_run.cr8 user space wrote before KVM_RUN"


PF_ADDRESS = 0x80001234            # PML4 entry 0 maps 0-512 GiB, but no PDPT entry covers 2 GiB up


@pytest.mark.modes(long=True, order="widest")
def test_cr2_after_a_page_fault_is_the_faulting_address(guest, mode):
    """After a #PF the guest handled, CR2 holds the linear address that faulted (SDM Vol. 3A 4.7,
    6.15 interrupt 14): the guest's own MOV from CR2 in its handler reads it and KVM_GET_SREGS
    reports it at the next exit (api.rst 4.13)."""
    user = mode.endswith("cpl3")
    code = 0x2 | (0x4 if user else 0)       # write, not present, user when at CPL3 (SDM 4.7)
    bx = "rbx" if mode.startswith("long64") else "ebx"
    g = guest(mode, f"""
        mov {bx}, {PF_ADDRESS:#x}
        GUEST_ASSERT_RAISES PF({code:#x}), mov dword ptr [{bx}], eax
        GUEST_SYNC 1
        GUEST_DONE""")
    assert g.expect_sync() == 1
    cr2 = g.vcpu.get_sregs().cr2
    handler_cr2 = g.exception_record()["cr2"]
    assert (cr2, handler_cr2) == (PF_ADDRESS, PF_ADDRESS), \
        f"CR2 after #PF on {PF_ADDRESS:#x}: KVM_GET_SREGS {cr2:#x}, the guest's handler read {handler_cr2:#x}"
    g.run_to_done()


SPIN_AND_HANDLERS = """
    GUEST_SYNC 1
spin:
    nop
    jmp spin
handler_{a:x}:
    GUEST_SYNC {a:#x}
    GUEST_DONE
handler_{b:x}:
    GUEST_SYNC {b:#x}
    GUEST_DONE
"""


def _bitmap(sregs):
    return [v for v in range(256) if sregs.interrupt_bitmap[v // 64] >> (v % 64) & 1]


def _interrupt_guest(guest):
    g = guest("long64", SPIN_AND_HANDLERS.format(a=0x40, b=0x41))
    g.set_idt_gate(0x40, "handler_40")
    g.set_idt_gate(0x41, "handler_41")
    assert g.expect_sync() == 1
    return g


def test_interrupt_queued_with_kvm_interrupt_shows_in_interrupt_bitmap(guest):
    """A vector queued with KVM_INTERRUPT and not yet delivered is the one bit of
    interrupt_bitmap ("pending external interrupts ... at most one bit may be set", api.rst 4.13)
    and the injected interrupt of KVM_GET_VCPU_EVENTS (interrupt.injected, nr, soft = 0 for an
    external interrupt, api.rst 4.31); KVM_RUN then delivers that vector (api.rst 4.16)."""
    g = _interrupt_guest(guest)
    regs = g.vcpu.get_regs()
    regs.rflags |= RFLAGS_IF
    g.vcpu.set_regs(regs)
    g.vcpu.interrupt(0x40)
    bits = _bitmap(g.vcpu.get_sregs())
    ev = g.vcpu.get_events().interrupt
    assert bits == [0x40], f"interrupt_bitmap after KVM_INTERRUPT(0x40): vectors {[hex(b) for b in bits]}"
    assert (ev.injected, ev.nr, ev.soft) == (1, 0x40, 0), \
        f"KVM_GET_VCPU_EVENTS interrupt after KVM_INTERRUPT(0x40): injected={ev.injected} nr={ev.nr:#x} soft={ev.soft}"
    assert g.run_to_done() == [0x40], "the queued vector's handler did not run"


def test_interrupt_bitmap_set_by_the_host_is_delivered(guest):
    """A vector set in interrupt_bitmap with KVM_SET_SREGS is a pending external interrupt
    (api.rst 4.13/4.14): KVM_GET_VCPU_EVENTS reports it injected, and the next KVM_RUN delivers
    it through the IDT even with EFLAGS.IF = 0, as an interrupt already accepted is."""
    g = _interrupt_guest(guest)
    sregs = g.vcpu.get_sregs()
    sregs.interrupt_bitmap[0x41 // 64] |= 1 << (0x41 % 64)
    g.set_sregs(sregs)
    ev = g.vcpu.get_events().interrupt
    assert (ev.injected, ev.nr) == (1, 0x41), \
        f"KVM_GET_VCPU_EVENTS after interrupt_bitmap bit 0x41: injected={ev.injected} nr={ev.nr:#x}"
    assert g.run_to_done() == [0x41], "the vector set in interrupt_bitmap was not delivered"
    assert _bitmap(g.vcpu.get_sregs()) == [], "interrupt_bitmap still shows a vector after its delivery"


STI_CLI = """
    sti
    out 0x10, al
    cli
    out 0x11, al
    GUEST_DONE
"""


def test_kvm_run_if_flag_follows_the_guests_sti_and_cli(guest):
    """kvm_run.if_flag is "the value of the current interrupt flag" without an in-kernel local
    APIC (api.rst 5): 1 at the exit after the guest's STI, 0 after its CLI (SDM Vol. 2B STI, CLI)."""
    g = guest("long64", STI_CLI)
    g.expect_exit(IoExit, port=0x10)
    after_sti = g.vcpu.kvm_run.if_flag
    g.expect_exit(IoExit, port=0x11)
    after_cli = g.vcpu.kvm_run.if_flag
    assert (after_sti, after_cli) == (1, 0), f"kvm_run.if_flag after STI: {after_sti}, after CLI: {after_cli}"
    g.run_to_done()


def test_ready_for_interrupt_injection_is_0_while_interrupts_are_off(guest):
    """With request_interrupt_window set, ready_for_interrupt_injection says whether an interrupt
    can be injected now (api.rst 5): 0 at an exit while the guest runs with EFLAGS.IF = 0, 1 at
    KVM_EXIT_IRQ_WINDOW_OPEN once it set IF."""
    g = guest("long64", "cli\nout 0x10, al\nsti\nspin: nop\njmp spin")
    run = g.vcpu.kvm_run
    run.request_interrupt_window = 1
    g.expect_exit(IoExit, port=0x10)
    with_if_clear = run.ready_for_interrupt_injection
    g.expect_exit(IrqWindowOpenExit)
    run.request_interrupt_window = 0
    assert (with_if_clear, run.ready_for_interrupt_injection) == (0, 1), \
        f"ready_for_interrupt_injection: {with_if_clear} with IF=0, {run.ready_for_interrupt_injection} at the window"


@pytest.mark.modes(*select(code_bits=64) + select(protected=False))
def test_kvm_run_flags_are_clear_outside_smm_and_nested_guests(guest, mode):
    """kvm_run.flags carries KVM_RUN_X86_SMM only while the vCPU is in system-management mode,
    KVM_RUN_X86_GUEST_MODE only while it runs a nested guest, and KVM_RUN_X86_BUS_LOCK only
    after a bus-lock exit (api.rst 5 "flags"): none of them at an ordinary exit of a guest that
    never entered SMM or VMX/SVM operation."""
    g = guest(mode, "GUEST_SYNC 1\nGUEST_DONE")
    assert g.expect_sync() == 1
    flags = g.vcpu.kvm_run.flags
    assert flags & (C.KVM_RUN_X86_SMM | C.KVM_RUN_X86_GUEST_MODE | C.KVM_RUN_X86_BUS_LOCK) == 0, \
        f"kvm_run.flags {flags:#x} at an ordinary exit of a guest outside SMM and nesting"
    g.run_to_done()


def _hex(d):
    return "{" + ", ".join(f"{k}: {v:#x}" for k, v in d.items()) + "}"
