"""System instructions as KVM's instruction emulator runs them (kvm-unit-tests emulator, emulator64):
MOV to and from debug registers, LGDT/LIDT with each operand size, LTR and LLDT with their operand
in MMIO, far JMP and CALL through a memory operand, and PUSH/POP of segment registers.

An operand in unbacked memory (KVM_EXIT_MMIO, api.rst 5) makes every host run the instruction in its
emulator; the forced-emulation prefix does so where the kvm module allows it; on a host that
emulates CPL0 code (kvm_pvm) the RAM forms go through it too. Expected values: SDM Vol. 2 for each
instruction, Vol. 3A 18.2 for the debug registers.
"""

import pytest

from kvmtest import forced_emulation
from kvmtest.cpuid import find_entry, has_feature
from kvmtest.exits import MmioExit
from kvmtest.guest import Sync
from kvmtest.guest import descriptors as D
from kvmtest.guest import layout as L
from kvmtest.guest.layout import MMIO_BASE
from kvmtest.guest.mode_select import select
from kvmtest.guest.modes import get_mode, regs_for
from kvmtest.x86 import DR6_BLD, DR6_INIT, DR6_RTM, SYS_TYPE_LDT, SYS_TYPE_TSS_BUSY

ADDR = MMIO_BASE + 0x40
CPL0_MODES = select(sample="per-code-size", protected=True, cpl=0, order="widest")   # long64, compat32, pm32
LONG_CPL0 = select(long=True, cpl=0)                                                # long64, compat32: IRET works
SEL = L.GDT_ENTRIES * 8


def _prefix(path):
    if path == "fep" and not forced_emulation.enabled():
        pytest.skip(forced_emulation.SKIP_REASON)
    return forced_emulation.FEP + "; " if path == "fep" else ""


def _answer_reads(g, start, operand, until=Sync):
    """Run, answering each KVM_EXIT_MMIO read inside [start, start + len(operand)) with the
    operand's bytes at its offset (how KVM splits an operand is not specified: api.rst 5 only bounds
    len by 8), until an event of type `until`; returns it. At most two reads per byte."""
    reads = []
    event = g.run()
    while isinstance(event, MmioExit):
        offset = event.phys_addr - start
        assert not event.is_write and 0 <= offset and offset + event.len <= len(operand), \
            f"{event}: expected a read inside the {len(operand)}-byte operand at {start:#x}"
        reads.append(f"{event.len}@+{offset}")
        assert len(reads) <= 2 * len(operand), f"the instruction did not complete after MMIO reads {reads}"
        event.respond(operand[offset:offset + event.len])
        event = g.run()
    assert isinstance(event, until), \
        f"after the operand's MMIO reads ({', '.join(reads)}): expected {until.__name__}, got {event}"
    return event


# --- MOV DRn ------------------------------------------------------------------------------------

@pytest.mark.modes(*CPL0_MODES)
@pytest.mark.parametrize("path", ["direct", "fep"])
def test_mov_to_and_from_debug_registers(guest, mode, path):
    """MOV to DR0-DR3 and DR7, then MOV from them, reads back what was written (DR7 with its
    reserved bit 10 set, SDM Vol. 3A 18.2.4), and KVM_GET_DEBUGREGS reads the same values
    (api.rst 4.33); the breakpoints stay disabled (L0-L3, G0-G3 clear)."""
    p = _prefix(path)
    a = regs_for(mode)["ax"]
    values = [0x1000, 0x2340, 0x3450, 0x4560]
    dr7 = 0xFFFF0400    # every R/W and LEN field set, no breakpoint enabled, bit 10 (reads as 1) set
    body = "\n".join(f"mov {a}, {v:#x}\n{p}mov dr{i}, {a}" for i, v in enumerate(values))
    body += f"\nmov {a}, {dr7:#x}\n{p}mov dr7, {a}\n"
    body += "\n".join(f"{p}mov {a}, dr{i}\nGUEST_SYNC {a}" for i in (0, 1, 2, 3, 7))
    g = guest(mode, body + "\nGUEST_DONE")
    got = g.run_to_done()
    assert got == [*values, dr7], f"MOV from DR0-3, DR7 read {[hex(v) for v in got]}, wrote {values + [dr7]}"
    dbg = g.vcpu.get_debugregs()
    host = [*dbg.db[:4], dbg.dr7]
    assert host == [*values, dr7], f"KVM_GET_DEBUGREGS reads DR0-3, DR7 {[hex(v) for v in host]}, the guest wrote " \
                                   f"{[hex(v) for v in [*values, dr7]]}"


@pytest.mark.modes(*CPL0_MODES)
@pytest.mark.parametrize("path", ["direct", "fep"])
def test_mov_zero_to_dr6_reads_its_fixed_bits(kvm, guest, mode, path):
    """MOV of 0 to DR6, then MOV from DR6, reads 0xFFFF0FF0: bits 31:16 and 11:4 are fixed at 1
    and bit 12 at 0, except BLD (bit 11) and RTM (bit 16), which are writable, so read 0, where
    CPUID reports bus-lock detection and RTM (SDM Vol. 3A 18.2.3; kvm-unit-tests emulator mov_dr6)."""
    p = _prefix(path)
    a = regs_for(mode)["ax"]
    g = guest(mode, f"xor {a}, {a}\n{p}mov dr6, {a}\n{p}mov {a}, dr6\nGUEST_SYNC {a}\nGUEST_DONE")
    table = kvm.cached_supported_cpuid()
    leaf7 = find_entry(table, 7, 0)
    rtm = leaf7 is not None and leaf7.function == 7 and leaf7.ebx >> 11 & 1
    want = DR6_INIT & ~(DR6_BLD if has_feature(table, "bus_lock_detect") else 0) & ~(DR6_RTM if rtm else 0)
    (got,) = g.run_to_done()
    assert got == want, f"DR6 after MOV of 0: {got:#x}, expected {want:#x}"


@pytest.mark.modes("long64-cpl3")
def test_mov_from_a_debug_register_at_cpl3_raises_gp(guest, mode):
    """MOV from DR7 at CPL3 raises #GP(0) (SDM Vol. 2B MOV DR, "#GP(0) If the current privilege
    level is not 0")."""
    guest(mode, "GUEST_ASSERT_RAISES GP(0), mov rax, dr7\nGUEST_DONE").run_to_done()


@pytest.mark.modes("long64")
@pytest.mark.parametrize("dr", [6, 7])
def test_mov_to_dr6_dr7_with_upper_bits_raises_gp(guest, mode, dr):
    """In 64-bit mode, MOV to DR6 or DR7 of a value with any of bits 63:32 set raises #GP(0) and
    leaves the register as it was (SDM Vol. 2B MOV DR, 64-Bit Mode Exceptions)."""
    g = guest(mode, f"mov rbx, dr{dr}\nmov rax, 1\nshl rax, 32\nor rax, rbx\n"
                    f"GUEST_ASSERT_RAISES GP(0), mov dr{dr}, rax\nmov rax, dr{dr}\n"
                    "GUEST_SYNC rbx\nGUEST_SYNC rax\nGUEST_DONE")
    before, after = g.run_to_done()
    assert after == before, f"DR{dr} {after:#x} after the refused MOV; it was {before:#x}"


# --- LGDT / LIDT --------------------------------------------------------------------------------

@pytest.mark.modes("pm32", "compat32", "long64")
@pytest.mark.parametrize("path", ["direct", "fep"])
@pytest.mark.parametrize("insn", ["lgdt", "lidt"])
def test_lgdt_lidt_with_a_16_bit_operand_size(guest, mode, insn, path):
    """With an operand-size prefix, LGDT/LIDT outside 64-bit mode load a 16-bit limit and a 24-bit
    base (the operand's high byte is not used, the base's high byte is 0); in 64-bit mode the operand
    is always 2 + 8 bytes and the prefix changes nothing (SDM Vol. 2A LGDT/LIDT, Description and
    Operation). Read back with KVM_GET_SREGS. (LIDT with its operand in MMIO:
    test_mmio_emulator.py::test_lidt_from_mmio_loads_what_the_host_supplied.)"""
    p = _prefix(path)
    wide = get_mode(mode).code_bits == 64
    b = "rbx" if wide else "ebx"
    modrm = {"lgdt": 0x13, "lidt": 0x1B}[insn]       # 0F 01 /2 or /3 with [rbx]/[ebx]
    save = f"s{insn[1:]}"
    g = guest(mode, f"""
        mov {b}, 0x600
        {save} [{b} + 0x20]
        mov word ptr [{b}], 0x0ab
        mov dword ptr [{b} + 2], 0x87654321
        mov dword ptr [{b} + 6], 0x1
        {p}.byte 0x66, 0x0f, 0x01, {modrm:#x}
        GUEST_SYNC 1
        l{insn[1:]} [{b} + 0x20]
        GUEST_DONE""")
    assert g.expect_sync() == 1, f"{insn.upper()} ({path}) with an operand-size prefix in {mode}: expected " \
                                 "GUEST_SYNC 1 after it, with no exception"
    table = getattr(g.vcpu.get_sregs(), "gdt" if insn == "lgdt" else "idt")
    want = 0x100000000 | 0x87654321 if wide else 0x00654321
    assert (table.limit, table.base) == (0xAB, want), \
        f"{insn.upper()} with an operand-size prefix in {mode}: limit {table.limit:#x} base {table.base:#x}, " \
        f"expected 0xab {want:#x}"
    g.run_to_done()


# --- LTR / LLDT ---------------------------------------------------------------------------------

@pytest.mark.modes(*CPL0_MODES)
def test_ltr_from_mmio_loads_tr_and_marks_the_tss_busy(guest, mode):
    """LTR with its selector operand in MMIO loads TR from the descriptor the host's selector names
    and sets that TSS descriptor's busy bit in the GDT (SDM Vol. 2A LTR: "the TSS is marked busy");
    STR reads the selector back."""
    r = regs_for(mode)
    g = guest(mode, f"mov {r['bx']}, {ADDR:#x}\nltr word ptr [{r['bx']}]\nstr ax\nmovzx eax, ax\nGUEST_SYNC eax\n"
                    "GUEST_DONE")
    tss = D.tss(L.TSS, L.TSS_SIZE - 1, busy=False)
    g.set_gdt_entry(SEL, tss.encode_system64() if get_mode(mode).long else tss.encode())
    event = _answer_reads(g, ADDR, SEL.to_bytes(2, "little"))
    assert event.value == SEL, f"STR after LTR of {SEL:#x} from MMIO read {event.value:#x}"
    kind = D.Descriptor.decode(g.vm.read(L.GDT + SEL, 8)).type
    assert kind == SYS_TYPE_TSS_BUSY, f"TSS descriptor type {kind:#x} after LTR, expected busy ({SYS_TYPE_TSS_BUSY:#x})"
    tr = g.vcpu.get_sregs().tr
    assert (tr.selector, tr.base) == (SEL, L.TSS), f"KVM_GET_SREGS TR {tr.selector:#x} base {tr.base:#x}"
    g.run_to_done()


@pytest.mark.modes(*CPL0_MODES)
def test_lldt_from_mmio_loads_ldtr(guest, mode):
    """LLDT with its selector operand in MMIO loads LDTR from the LDT descriptor that selector names
    (SDM Vol. 2A LLDT); SLDT reads the selector back and KVM_GET_SREGS the base and limit (16-byte
    descriptor in IA-32e mode, SDM Vol. 3A 8.2.3)."""
    r = regs_for(mode)
    g = guest(mode, f"mov {r['bx']}, {ADDR:#x}\nlldt word ptr [{r['bx']}]\nsldt ax\nmovzx eax, ax\nGUEST_SYNC eax\n"
                    "GUEST_DONE")
    ldt = D.Descriptor(base=0x13000, limit=0x1F, type=SYS_TYPE_LDT, s=0, db=0, g=0)
    g.set_gdt_entry(SEL, ldt.encode_system64() if get_mode(mode).long else ldt.encode())
    event = _answer_reads(g, ADDR, SEL.to_bytes(2, "little"))
    assert event.value == SEL, f"SLDT after LLDT of {SEL:#x} from MMIO read {event.value:#x}"
    seg = g.vcpu.get_sregs().ldt
    assert (seg.selector, seg.base, seg.limit) == (SEL, 0x13000, 0x1F), \
        f"KVM_GET_SREGS LDTR selector {seg.selector:#x} base {seg.base:#x} limit {seg.limit:#x}, " \
        f"expected {SEL:#x} 0x13000 0x1f"
    g.run_to_done()


# --- far JMP / CALL through memory -------------------------------------------------------------

FAR = {"jmp": "0xff, 0x2b", "call": "0xff, 0x1b"}     # FF /5 and FF /3 with [rbx]/[ebx]: m16:32


@pytest.mark.modes(*CPL0_MODES)
@pytest.mark.parametrize("where", ["ram", "mmio"])
@pytest.mark.parametrize("insn", ["jmp", "call"])
def test_far_transfer_through_a_memory_operand(guest, mode, insn, where):
    """JMP/CALL m16:32 loads EIP from the operand's first 4 bytes and CS from the next 2 (SDM Vol. 2A
    JMP, CALL: far, same privilege level); CALL pushes CS then the return EIP, 4 bytes each, and
    RETF returns after the CALL. The operand is in RAM, or in MMIO where the host supplies it."""
    r = regs_for(mode)
    cs = {"long64": L.SEL_CODE64, "compat32": L.SEL_CODE32, "pm32": L.SEL_CODE32}[mode]
    b = r["bx"]
    ptr = ADDR if where == "mmio" else 0x600
    target_body = (f"mov eax, dword ptr [{r['sp']}]\nGUEST_SYNC eax\nmov eax, dword ptr [{r['sp']} + 4]\n"
                   "movzx eax, ax\nGUEST_SYNC eax\nretf") if insn == "call" else "GUEST_SYNC 0x7a"
    g = guest(mode, f"""
        mov {b}, {ptr:#x}
    transfer:
        .byte {FAR[insn]}
    after:
        GUEST_SYNC 0xaf
        GUEST_DONE
    target:
        mov ax, cs
        movzx eax, ax
        GUEST_SYNC eax
        {target_body}""")
    operand = g.labels["target"].to_bytes(4, "little") + cs.to_bytes(2, "little")
    if where == "ram":
        g.vm.write(0x600, operand)
        event = g.run()
    else:
        event = _answer_reads(g, ADDR, operand)
    assert isinstance(event, Sync) and event.value == cs, f"far {insn} through {where}: expected the target's " \
                                                          f"GUEST_SYNC of CS {cs:#x}, got {event}"
    if insn == "call":
        ret, ret_cs = g.expect_sync(), g.expect_sync()
        assert (ret, ret_cs) == (g.labels["after"], cs), \
            f"far CALL pushed return {ret:#x}:{ret_cs:#x}, expected {g.labels['after']:#x}:{cs:#x}"
        assert g.run_to_done() == [0xAF], "RETF did not return after the far CALL"
    else:
        assert g.expect_sync() == 0x7A, f"far {insn} through {where}: expected the target's GUEST_SYNC 0x7a"


# --- PUSH / POP of segment registers -----------------------------------------------------------

SREG_MODES = select(sample="per-code-size", cpl=0)     # real, pm32, long64, compat32
PUSHED = {"real": 0x1234, "pm32": L.SEL_DATA16, "compat32": L.SEL_DATA16, "long64": L.SEL_DATA16}


@pytest.mark.modes(*SREG_MODES)
def test_push_and_pop_of_a_segment_register(guest, mode):
    """PUSH FS decrements the stack pointer by the operand size (2, 4 or 8 bytes) and stores FS's
    selector: zero-extended with a 64-bit operand size, and with a 32-bit one either zero-extended
    or by a 16-bit move that leaves the upper half unchanged (SDM Vol. 2B PUSH); POP GS loads GS with
    the selector from the stack and increments the stack pointer by the same size (POP)."""
    _push_pop_sreg(guest, mode, "ram")


@pytest.mark.modes(*CPL0_MODES)
def test_push_and_pop_of_a_segment_register_with_the_stack_in_mmio(guest, mode):
    """The same with the stack in MMIO: PUSH FS is one KVM_EXIT_MMIO write at the new stack pointer
    holding the selector as above, and POP GS loads the selector the host supplies for the read
    (SDM Vol. 2B PUSH, POP; api.rst 5 KVM_EXIT_MMIO)."""
    _push_pop_sreg(guest, mode, "mmio")


def _push_pop_sreg(guest, mode, where):
    m = get_mode(mode)
    size = m.code_bits // 8
    sp, a = ("rsp", "rax") if size == 8 else ("esp", "eax")
    sel = PUSHED[mode]
    top = ADDR + 0x100 if where == "mmio" else 0x6000
    g = guest(mode, f"""
        mov {sp}, {top:#x}
        mov ax, {sel:#x}
        mov fs, ax
        push fs
        mov {a}, {sp}
        GUEST_SYNC {a}
        pop gs
        mov {a}, {sp}
        GUEST_SYNC {a}
        mov ax, gs
        movzx eax, ax
        GUEST_SYNC eax
        GUEST_DONE""")
    slot = top - size
    if where == "ram":
        g.vm.write(slot, b"\xff" * size)
        after_push = g.expect_sync()
        stored = int.from_bytes(g.vm.read(slot, size), "little")
    else:
        write = g.run()
        assert isinstance(write, MmioExit) and write.is_write and write.phys_addr == slot, \
            f"PUSH FS with the stack in MMIO: expected a write at {slot:#x}, got {write}"
        # a 16-bit move leaves the upper bytes unwritten: as if they still held the pattern
        stored = int.from_bytes(write.data + b"\xff" * (size - write.len), "little")
        after_push = g.expect_sync()
    assert after_push == slot, f"stack pointer after PUSH FS {after_push:#x}, expected {slot:#x}"
    allowed = {sel} if size != 4 else {sel, 0xFFFF0000 | sel}
    assert stored in allowed, f"PUSH FS ({size}-byte operand) stored {stored:#x}; the SDM allows " \
                              f"{', '.join(hex(v) for v in sorted(allowed))}"
    if where == "mmio":
        read = g.run()
        assert isinstance(read, MmioExit) and not read.is_write and read.phys_addr == slot, \
            f"POP GS with the stack in MMIO: expected a read at {slot:#x}, got {read}"
        read.respond(sel.to_bytes(read.len, "little"))
    after_pop, gs = g.expect_sync(), g.expect_sync()
    assert (after_pop, gs) == (top, sel), \
        f"after POP GS: stack pointer {after_pop:#x}, GS {gs:#x}; expected {top:#x} and {sel:#x}"
    g.run_to_done()
