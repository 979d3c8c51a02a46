"""Every field of struct kvm_regs (the 16 general registers, RIP, RFLAGS) against what the guest
loaded or finds (api.rst 4.11/4.12 KVM_GET/SET_REGS; SDM Vol. 1 3.4.1, 3.4.3 EFLAGS)."""

import struct

import pytest

from kvmtest.exits import MmioExit
from kvmtest.guest import layout as L

GPRS = "rax rbx rcx rdx rsi rdi rsp rbp r8 r9 r10 r11 r12 r13 r14 r15".split()
# CF, PF, AF, ZF, SF, DF, OF and the always-1 bit 1 (SDM Vol. 1 3.4.3): flags any CPL may set
RFLAGS_STATUS = 0x1 | 0x4 | 0x10 | 0x40 | 0x80 | 0x400 | 0x800
RFLAGS_SET = RFLAGS_STATUS | 0x2


def _value(i):
    # Distinct in both halves, so a register truncated to 32 bits or swapped with another shows.
    return (0x1111_0000_0000_1111 * (i + 1) + 0x0123_0000_4567) & 0x7FFF_FFFF_FFFF_FFF0


@pytest.mark.modes("long64", "long64-cpl3")
def test_registers_the_guest_loads_are_what_get_regs_reports(guest, mode):
    """The guest sets RFLAGS' status bits and DF with POPFQ, loads all sixteen general registers
    (RSP included) and exits with a store to unbacked memory: KVM_GET_REGS reports each register
    as loaded, RIP after the store, and those RFLAGS bits (api.rst 4.11, 5 KVM_EXIT_MMIO)."""
    loads = "\n".join(f"mov {r}, {_value(i):#x}" for i, r in enumerate(GPRS) if r != "rdi")
    g = guest(mode, f"""
        push {RFLAGS_SET:#x}
        popfq
        {loads}
        mov rdi, {L.MMIO_BASE:#x}
        mov byte ptr [rdi], al
    after_store:
        mov rsp, {L.USER_STACK_TOP if mode.endswith('cpl3') else L.KERNEL_STACK_TOP:#x}
        cld
        GUEST_DONE""")
    g.expect_exit(MmioExit, phys_addr=L.MMIO_BASE, is_write=True)
    regs = g.vcpu.get_regs()
    want = {r: (L.MMIO_BASE if r == "rdi" else _value(i)) for i, r in enumerate(GPRS)}
    got = {r: getattr(regs, r) for r in GPRS}
    wrong = [f"{r}: loaded {want[r]:#x}, got {got[r]:#x}" for r in GPRS if got[r] != want[r]]
    assert not wrong, f"KVM_GET_REGS at the exit ({mode}): " + "; ".join(wrong)
    assert regs.rip == g.labels["after_store"], f"RIP {regs.rip:#x}, expected {g.labels['after_store']:#x}"
    assert regs.rflags & (RFLAGS_STATUS | 0x2) == RFLAGS_SET, \
        f"RFLAGS {regs.rflags:#x}: status bits and DF {regs.rflags & RFLAGS_STATUS:#x}, the guest set {RFLAGS_STATUS:#x}"
    g.run_to_done()


@pytest.mark.modes("long64", "long64-cpl3")
def test_registers_the_host_sets_are_what_the_guest_finds(guest, mode):
    """Registers written with KVM_SET_REGS are the guest's: it starts at the RIP set (not the
    default entry), stores all sixteen general registers RIP-relatively before touching any,
    and its PUSHFQ shows the status bits and DF set in RFLAGS (api.rst 4.12)."""
    stores = "\n".join(f"mov qword ptr [rip + slot_{r}], {r}" for r in GPRS)
    slots = "\n".join(f"slot_{r}: .quad 0" for r in GPRS + ["rflags"])
    g = guest(mode, f"""
        GUEST_FAIL "the guest started at the default entry, not at the RIP KVM_SET_REGS set"
    entry:
        {stores}
        pushfq
        pop rax
        mov qword ptr [rip + slot_rflags], rax
        cld
        GUEST_DONE
    {slots}""")
    regs = g.vcpu.get_regs()
    stack = L.USER_STACK_TOP - 0x100 if mode.endswith("cpl3") else L.KERNEL_STACK_TOP - 0x100
    want = {r: (stack if r == "rsp" else _value(i)) for i, r in enumerate(GPRS)}
    for r, v in want.items():
        setattr(regs, r, v)
    regs.rip = g.labels["entry"]
    regs.rflags = (regs.rflags & ~RFLAGS_STATUS) | RFLAGS_SET
    g.vcpu.set_regs(regs)
    g.run_to_done()
    seen = {r: struct.unpack("<Q", g.vm.read(g.labels[f"slot_{r}"], 8))[0] for r in GPRS + ["rflags"]}
    wrong = [f"{r}: set {want[r]:#x}, guest found {seen[r]:#x}" for r in GPRS if seen[r] != want[r]]
    assert not wrong, f"general registers after KVM_SET_REGS ({mode}): " + "; ".join(wrong)
    assert seen["rflags"] & (RFLAGS_STATUS | 0x2) == RFLAGS_SET, \
        f"the guest's PUSHFQ read RFLAGS {seen['rflags']:#x}; KVM_SET_REGS set the status bits and DF {RFLAGS_SET:#x}"
