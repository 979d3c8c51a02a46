"""Every field of struct kvm_regs (the 16 general registers, RIP, RFLAGS) against what the guest
loaded or finds (api.rst 4.11/4.12 KVM_GET/SET_REGS; SDM Vol. 1 3.4.1, 3.4.3 EFLAGS)."""

import struct

import pytest

from kvmtest import x86
from kvmtest.exits import MmioExit
from kvmtest.guest import layout as L
from kvmtest.x86 import RFLAGS_AF, RFLAGS_CF, RFLAGS_DF, RFLAGS_FIXED, RFLAGS_OF, RFLAGS_PF, RFLAGS_SF, RFLAGS_ZF

GPRS = "rax rbx rcx rdx rsi rdi rsp rbp r8 r9 r10 r11 r12 r13 r14 r15".split()
# CF, PF, AF, ZF, SF, DF, OF and the always-1 bit 1 (SDM Vol. 1 3.4.3): flags any CPL may set
RFLAGS_STATUS = RFLAGS_CF | RFLAGS_PF | RFLAGS_AF | RFLAGS_ZF | RFLAGS_SF | RFLAGS_DF | RFLAGS_OF
RFLAGS_SET = RFLAGS_STATUS | RFLAGS_FIXED


def _value(i):
    # Distinct in both halves, so a register truncated to 32 bits or swapped with another shows.
    return (0x1111_0000_0000_1111 * (i + 1) + 0x0123_0000_4567) & 0x7FFF_FFFF_FFFF_FFF0


@pytest.mark.modes(code_bits=64)
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
    assert regs.rflags & (RFLAGS_STATUS | RFLAGS_FIXED) == RFLAGS_SET, \
        f"RFLAGS {regs.rflags:#x}: status bits and DF {regs.rflags & RFLAGS_STATUS:#x}, " \
        f"the guest set {RFLAGS_STATUS:#x}"
    g.run_to_done()


@pytest.mark.modes(code_bits=64)
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
    assert seen["rflags"] & (RFLAGS_STATUS | RFLAGS_FIXED) == RFLAGS_SET, \
        f"the guest's PUSHFQ read RFLAGS {seen['rflags']:#x}; KVM_SET_REGS set the status bits and DF {RFLAGS_SET:#x}"


# Every RFLAGS bit the SDM defines (Vol. 1 3.4.3, Figure 3-8), by name for failure messages
# (FIXED is bit 1, which is always 1).
RFLAGS_BITS = {name.removeprefix("RFLAGS_"): bit for name, bit in vars(x86).items() if name.startswith("RFLAGS_")}
B = RFLAGS_BITS
# What POPFQ loads at CPL0 in 64-bit mode: every bit but RF, VM, VIF and VIP (SDM Vol. 2B POPF).
RFLAGS_POPF = sum(B[n] for n in "CF FIXED PF AF ZF SF TF IF DF OF IOPL NT AC ID".split())
RFLAGS_VIRTUAL = B["VIF"] | B["VIP"]   # IRETQ at CPL0 loads these (SDM Vol. 2A IRET); POPF leaves them
# RF is left out of the comparisons: the processor sets and clears it itself around faults and
# instruction completion (SDM Vol. 3A 18.3.1.1), and no guest instruction here sets it.
RFLAGS_COMPARED = ((1 << 64) - 1) & ~B["RF"]


def _flag_names(value):
    return "|".join(n for n, m in RFLAGS_BITS.items() if value & m) or "0"


def _rflags_diff(got, want):
    return f"{got:#x} ({_flag_names(got)}), expected {want:#x} ({_flag_names(want)}); " \
           f"differing: {_flag_names((got ^ want) & RFLAGS_COMPARED)}"


# A #DB handler for the single step that TF causes: records the saved RIP and RFLAGS of the
# interrupted code, clears TF in the saved image so the step happens once, and returns.
DB_RECORDER = """
db_handler:
    push rax
    mov rax, qword ptr [rsp + 8]
    mov qword ptr [rip + db_rip], rax
    mov rax, qword ptr [rsp + 24]
    mov qword ptr [rip + db_rflags], rax
    and qword ptr [rsp + 24], ~0x100
    pop rax
    iretq
.balign 8
db_rip: .quad 0
db_rflags: .quad 0
"""


def _u64(g, label):
    return struct.unpack("<Q", g.vm.read(g.labels[label], 8))[0]


def _after_popf(start, value, cpl3):
    """RFLAGS after POPFQ of `value` (SDM Vol. 2B POPF, 64-bit mode): at CPL0 every bit of
    RFLAGS_POPF is loaded; at CPL3 IOPL is kept, and IF is loaded only when CPL <= IOPL."""
    if not cpl3:
        return (start & ~RFLAGS_POPF) | (value & RFLAGS_POPF)
    loaded = RFLAGS_POPF & ~B["IOPL"] & ~(0 if start & B["IOPL"] == B["IOPL"] else B["IF"])
    return (start & ~loaded) | (value & loaded)


@pytest.mark.modes(code_bits=64)
def test_rflags_the_guest_loads_are_what_get_regs_reports(guest, mode):
    """Every RFLAGS bit a guest can load is what KVM_GET_REGS reports (api.rst 4.11): at CPL0
    the guest loads VIF and VIP with IRETQ, then CF, PF, AF, ZF, SF, TF, IF, DF, OF, IOPL, NT,
    AC and ID with POPFQ (SDM Vol. 2A IRET, Vol. 2B POPF; at CPL3 POPFQ keeps IOPL). The next
    instruction is an MMIO load, so KVM_EXIT_MMIO comes before it completes and before the
    single step TF asks for: KVM_GET_REGS there must show every bit, TF included. Then the load
    completes and TF makes a #DB trap (SDM Vol. 3A 18.3.1.4) whose saved RFLAGS the guest's
    handler records: the same value, and its saved RIP is the instruction after the load."""
    cpl3 = mode.endswith("cpl3")
    # IRETQ to the same CPL0 code with VIF|VIP in the image; at CPL3 IRETQ would keep them.
    iretq = "" if cpl3 else f"""
        mov ax, ss
        push rax
        lea rax, [rsp + 8]
        push rax
        push {RFLAGS_VIRTUAL | RFLAGS_FIXED:#x}
        mov ax, cs
        push rax
        lea rax, [rip + after_iretq]
        push rax
        iretq
    after_iretq:"""
    g = guest(mode, f"""
        mov rdi, {L.MMIO_BASE:#x}
        {iretq}
        push {RFLAGS_POPF:#x}
        popfq
    load:
        mov al, byte ptr [rdi]
    after_load:
        push {RFLAGS_FIXED:#x}
        popfq
        GUEST_DONE
    {DB_RECORDER}""")
    g.set_idt_gate(1, "db_handler")
    start = g.vcpu.get_regs().rflags        # what the guest builder set with KVM_SET_REGS
    want = _after_popf(start if cpl3 else start | RFLAGS_VIRTUAL, RFLAGS_POPF, cpl3)
    load = g.expect_exit(MmioExit, phys_addr=L.MMIO_BASE, is_write=False)
    regs = g.vcpu.get_regs()
    assert regs.rip == g.labels["load"], f"RIP at the MMIO load's exit {regs.rip:#x}, expected {g.labels['load']:#x}"
    assert regs.rflags & RFLAGS_COMPARED == want, f"KVM_GET_REGS rflags at KVM_EXIT_MMIO ({mode}): " \
                                                  + _rflags_diff(regs.rflags & RFLAGS_COMPARED, want)
    load.respond(0x5A)
    g.run_to_done()
    db_rip, db_rflags = _u64(g, "db_rip"), _u64(g, "db_rflags")
    assert db_rip == g.labels["after_load"], \
        f"the single-step #DB's saved RIP {db_rip:#x}, expected {g.labels['after_load']:#x} (after the load)"
    assert db_rflags & RFLAGS_COMPARED == want, f"RFLAGS the guest's #DB handler found saved ({mode}): " \
                                                + _rflags_diff(db_rflags & RFLAGS_COMPARED, want)


@pytest.mark.modes(code_bits=64)
def test_rflags_the_host_sets_are_what_the_guest_pushes(guest, mode):
    """Every RFLAGS bit but RF and VM written with KVM_SET_REGS (api.rst 4.12) is the guest's:
    its first instruction, PUSHFQ, stores all of them (SDM Vol. 2B PUSHF: the image holds every
    flag but VM and RF, which read 0), and TF takes effect at once: a single-step #DB follows
    that PUSHFQ (SDM Vol. 3A 18.3.1.4). VM is left out: setting it outside 64-bit mode enters
    virtual-8086 mode (pvm-rflags-vm-dropped covers it)."""
    value = RFLAGS_POPF | RFLAGS_VIRTUAL
    g = guest(mode, f"""
        GUEST_FAIL "the guest started at the default entry, not at the RIP KVM_SET_REGS set"
    entry:
        pushfq
    after_pushfq:
        pop rax
        mov qword ptr [rip + pushed], rax
        push {RFLAGS_FIXED:#x}
        popfq
        GUEST_DONE
    .balign 8
    pushed: .quad 0
    {DB_RECORDER}""")
    g.set_idt_gate(1, "db_handler")
    regs = g.vcpu.get_regs()
    regs.rip, regs.rflags = g.labels["entry"], value
    g.vcpu.set_regs(regs)
    g.run_to_done()
    pushed, db_rip = _u64(g, "pushed"), _u64(g, "db_rip")
    assert pushed & RFLAGS_COMPARED == value, \
        f"the guest's PUSHFQ after KVM_SET_REGS rflags={value:#x} ({mode}): " + _rflags_diff(pushed, value)
    assert db_rip == g.labels["after_pushfq"], \
        f"single-step #DB saved RIP {db_rip:#x}; TF set by KVM_SET_REGS should trap right after the first " \
        f"instruction, at {g.labels['after_pushfq']:#x}"
