"""MMIO through KVM's instruction emulator: instructions with a memory operand on unbacked
memory (api.rst 5, KVM_EXIT_MMIO; SDM Vol. 2 for each instruction's semantics)."""

import pytest

from kvmtest.exits import MmioExit
from kvmtest.guest import Done, Sync
from kvmtest.guest import layout as L
from kvmtest.guest.layout import MMIO_BASE
from kvmtest.guest.mode_select import select
from kvmtest.guest.modes import regs_for, with_sse_enabled

MODES = select(sample="per-code-size", protected=True)
ADDR = MMIO_BASE + 0x40


def _guest(guest, mode, body):
    r = regs_for(mode)
    return guest(mode, f"mov {r['bx']}, {ADDR:#x}\n" + body.format(**r) + "\nGUEST_DONE")


@pytest.mark.modes(*MODES)
def test_add_to_mmio_reads_then_writes_the_sum(guest, mode):
    """ADD [mem], imm is a read-modify-write: a 4-byte MMIO read, then a 4-byte MMIO write of
    the read value plus the immediate (SDM Vol. 2A ADD)."""
    g = _guest(guest, mode, "add dword ptr [{bx}], 5")
    g.expect_exit(MmioExit, phys_addr=ADDR, len=4, is_write=False).respond(0x100)
    g.expect_exit(MmioExit, phys_addr=ADDR, len=4, is_write=True, data=(0x105).to_bytes(4, "little"))
    g.run_to_done()


@pytest.mark.modes(*MODES)
def test_xchg_with_mmio_swaps(guest, mode):
    """XCHG [mem], reg reads the old value into the register and writes the register's value
    (SDM Vol. 2B XCHG)."""
    g = _guest(guest, mode, "mov eax, 0x11223344\nxchg dword ptr [{bx}], eax\nGUEST_SYNC eax")
    g.expect_exit(MmioExit, phys_addr=ADDR, len=4, is_write=False).respond(0xAABBCCDD)
    g.expect_exit(MmioExit, phys_addr=ADDR, len=4, is_write=True, data=(0x11223344).to_bytes(4, "little"))
    assert g.run_to_done() == [0xAABBCCDD]


@pytest.mark.modes(*MODES)
def test_cmpxchg_on_mmio_when_equal_writes_the_source(guest, mode):
    """CMPXCHG [mem], reg with EAX equal to [mem] stores the source and sets ZF (SDM Vol. 2A
    CMPXCHG)."""
    g = _guest(guest, mode, "mov eax, 7\nmov ecx, 9\nlock cmpxchg dword ptr [{bx}], ecx\n"
                            "setz al\nmovzx eax, al\nGUEST_SYNC eax")
    g.expect_exit(MmioExit, phys_addr=ADDR, len=4, is_write=False).respond(7)
    g.expect_exit(MmioExit, phys_addr=ADDR, len=4, is_write=True, data=(9).to_bytes(4, "little"))
    assert g.run_to_done() == [1], "ZF after a successful CMPXCHG"


@pytest.mark.modes(*MODES)
def test_stos_to_mmio_writes_each_element(guest, mode):
    """REP STOSD writes EAX to [RDI], RDI+4, ...: one MMIO write per element with the right
    address (SDM Vol. 2B STOS)."""
    g = _guest(guest, mode, "cld\nmov {di}, {bx}\nmov ecx, 3\nmov eax, 0xC0FFEE\nrep stosd")
    for i in range(3):
        g.expect_exit(MmioExit, phys_addr=ADDR + 4 * i, len=4, is_write=True, data=(0xC0FFEE).to_bytes(4, "little"))
    g.run_to_done()


@pytest.mark.modes(*MODES)
def test_movs_from_memory_to_mmio(guest, mode):
    """MOVSD copies [RSI] (RAM) to [RDI] (MMIO): one 4-byte MMIO write of the RAM value
    (SDM Vol. 2B MOVS)."""
    # .byte 0xa5 is MOVSD (string move of a dword); Keystone only knows the SSE2 MOVSD.
    g = _guest(guest, mode, "cld\nmov {si}, 0x600\nmov {di}, {bx}\n.byte 0xa5")
    g.vm.write(0x600, (0x600DCAFE).to_bytes(4, "little"))
    g.expect_exit(MmioExit, phys_addr=ADDR, len=4, is_write=True, data=(0x600DCAFE).to_bytes(4, "little"))
    g.run_to_done()


@pytest.mark.modes(*MODES)
def test_access_straddling_ram_and_mmio(guest, mode):
    """A dword store that starts in RAM and ends in unbacked memory writes the RAM part and
    exits with an MMIO write for the rest (api.rst 5; the access is split at the page)."""
    r = regs_for(mode)
    g = guest(mode, f"mov {r['bx']}, {0x200000 - 2:#x}\nmov dword ptr [{r['bx']}], 0xDDCCBBAA\nGUEST_DONE")
    exit_ = g.run()
    assert isinstance(exit_, MmioExit) and exit_.is_write and exit_.phys_addr == 0x200000 and \
        exit_.data == bytes([0xCC, 0xDD]), f"expected an MMIO write of cc dd at 0x200000, got {exit_}"
    g.run_to_done()
    assert g.vm.read(0x200000 - 2, 2) == bytes([0xAA, 0xBB])


# Instructions whose memory operand is MMIO, with the value the host supplies for the read, and
# the register result the SDM gives (then synced back by the guest).
READ_OPS = {
    "cmp-sets-zf": ("mov ecx, 0x1234\ncmp dword ptr [{bx}], ecx\nsetz al\nmovzx eax, al", 0x1234, 1),
    "bsf": ("bsf eax, dword ptr [{bx}]", 0x00F00000, 20),
    "bsr": ("bsr eax, dword ptr [{bx}]", 0x00F00000, 23),
    "imul": ("mov eax, 7\nimul eax, dword ptr [{bx}]", 6, 42),
    "bt-sets-cf": ("bt dword ptr [{bx}], 3\nsetc al\nmovzx eax, al", 0x8, 1),
    "movzx-word": ("movzx eax, word ptr [{bx}]", 0xBEEF, 0xBEEF),
}


@pytest.mark.modes(*MODES)
@pytest.mark.parametrize("op", sorted(READ_OPS))
def test_instruction_reading_mmio_computes_from_the_host_value(guest, mode, op):
    """An instruction that reads its operand from MMIO computes with exactly the value user
    space supplied (api.rst 5 KVM_EXIT_MMIO; SDM Vol. 2 CMP, BSF, BSR, IMUL, BT, MOVZX;
    kvm-unit-tests emulator.c)."""
    body, value, expected = READ_OPS[op]
    g = _guest(guest, mode, body + "\nGUEST_SYNC eax")
    exit_ = g.run()
    assert isinstance(exit_, MmioExit) and not exit_.is_write and exit_.phys_addr == ADDR, f"{op}: {exit_}"
    exit_.respond(value)
    assert g.run_to_done() == [expected], f"{op} with [mem]={value:#x}"


@pytest.mark.modes(*MODES)
@pytest.mark.parametrize("op,value,written", [("lock inc", 41, 42), ("lock dec", 43, 42), ("neg", 1, 0xFFFFFFFF),
                                              ("not", 0x0F0F0F0F, 0xF0F0F0F0)], ids=["inc", "dec", "neg", "not"])
def test_read_modify_write_on_mmio(guest, mode, op, value, written):
    """Unary read-modify-write instructions on MMIO read once and write the SDM's result once."""
    g = _guest(guest, mode, f"{op} dword ptr [{{bx}}]")
    g.expect_exit(MmioExit, phys_addr=ADDR, len=4, is_write=False).respond(value)
    g.expect_exit(MmioExit, phys_addr=ADDR, len=4, is_write=True, data=written.to_bytes(4, "little"))
    g.run_to_done()


@pytest.mark.modes(sample="per-code-size", protected=True, cpl=0, order="widest")
def test_lidt_from_mmio_loads_what_the_host_supplied(guest, mode):
    """LIDT with its 6-byte (10 in 64-bit mode) operand in MMIO loads IDTR from the bytes user
    space supplies and completes (SDM Vol. 2A LGDT/LIDT; api.rst 5 KVM_EXIT_MMIO: KVM completes
    a read with the data user space leaves in kvm_run.mmio.data on the next KVM_RUN).

    How KVM splits the operand into reads is not specified (api.rst only bounds len by 8), so
    the host answers every read as memory holding the operand would, at any offset and length,
    and checks each read lies inside the operand. The instruction must then finish: the guest
    reaches its GUEST_SYNC with IDTR holding the supplied limit and base, within twice as many
    reads as the operand has bytes (every byte read twice, e.g. by a decoder's operand read and
    by the load itself). kvm-unit-tests keeps its LGDT/LIDT-from-MMIO check disabled ("kvm
    doesn't allow lidt/lgdt from mmio", x86/emulator.c)."""
    wide = mode == "long64"
    size = 10 if wide else 6
    g = _guest(guest, mode, "sidt [{si}]\nlidt [{bx}]\nGUEST_SYNC 1\nlidt [{si}]")
    regs = g.vcpu.get_regs()
    regs.rsi = 0x600
    g.vcpu.set_regs(regs)
    want_limit, want_base = 0x0123, 0x00ABC000
    operand = want_limit.to_bytes(2, "little") + want_base.to_bytes(size - 2, "little")
    reads = []
    event = g.run()
    while isinstance(event, MmioExit):
        offset = event.phys_addr - ADDR
        assert not event.is_write and 0 <= offset and offset + event.len <= size, \
            f"{event}: expected a read inside LIDT's operand, {ADDR:#x}-{ADDR + size - 1:#x}"
        reads.append(f"{event.len}@+{offset}")
        assert len(reads) <= 2 * size, \
            f"LIDT from MMIO did not complete: {len(reads)} KVM_EXIT_MMIO reads of its {size}-byte operand " \
            f"(length@offset: {', '.join(reads)}), each answered with the operand's bytes"
        event.respond(operand[offset:offset + event.len])
        event = g.run()
    assert isinstance(event, Sync) and event.value == 1, \
        f"after LIDT's MMIO reads ({', '.join(reads)}): expected GUEST_SYNC(0x1), got {event}"
    idt = g.vcpu.get_sregs().idt
    assert (idt.limit, idt.base) == (want_limit, want_base), \
        f"IDTR after LIDT from MMIO: limit {idt.limit:#x} base {idt.base:#x}, supplied {want_limit:#x} {want_base:#x}"
    g.run_to_done()


@pytest.mark.modes(sample="per-code-size", protected=True, cpl=0, order="widest")
def test_cmps_against_mmio(guest, mode):
    """CMPSD compares [RSI] (RAM) with [RDI] (MMIO) using the value user space supplies, and sets
    ZF accordingly (SDM Vol. 2A CMPS)."""
    g = _guest(guest, mode, "cld\nmov {si}, 0x600\nmov {di}, {bx}\n.byte 0xa7\nsetz al\nmovzx eax, al\nGUEST_SYNC eax")
    g.vm.write(0x600, (0x13572468).to_bytes(4, "little"))
    g.expect_exit(MmioExit, phys_addr=ADDR, len=4, is_write=False).respond(0x13572468)
    assert g.run_to_done() == [1]


@pytest.mark.modes(*MODES)
def test_smsw_to_mmio_stores_the_low_word_of_cr0(guest, mode):
    """SMSW m16 stores bits 15:0 of CR0 as a 2-byte write, whatever the operand size (SDM
    Vol. 2B SMSW; allowed at CPL3 unless CR4.UMIP)."""
    g = _guest(guest, mode, "smsw word ptr [{bx}]")
    exit_ = g.run()
    cr0 = g.vcpu.get_sregs().cr0
    expected = (cr0 & 0xFFFF).to_bytes(2, "little")
    assert isinstance(exit_, MmioExit) and exit_.is_write and exit_.phys_addr == ADDR and \
        exit_.data == expected, \
        f"SMSW to MMIO: expected a 2-byte KVM_EXIT_MMIO write of CR0[15:0] {expected.hex()} " \
        f"(KVM_GET_SREGS cr0={cr0:#x}) at {ADDR:#x}, got {exit_}"
    g.run_to_done()


@pytest.mark.modes(sample="per-code-size", protected=True, cpl=0)
@pytest.mark.parametrize("msw", [0x000B, 0x0000], ids=["pe-mp-ts", "zero-keeps-pe"])
def test_lmsw_from_mmio_loads_the_low_cr0_bits(guest, mode, msw):
    """LMSW m16 reads two bytes and loads CR0.PE/MP/EM/TS from them; it cannot clear PE (SDM
    Vol. 2A LMSW), so other CR0 bits and PE=1 survive."""
    g = _guest(guest, mode, "mov {cx}, cr0\nlmsw word ptr [{bx}]\nmov {ax}, cr0\nGUEST_SYNC {cx}\nGUEST_SYNC {ax}")
    g.expect_exit(MmioExit, phys_addr=ADDR, len=2, is_write=False).respond(msw)
    before, after = g.run_to_done()
    expected = (before & ~0xE) | (msw & 0xE) | 1
    assert after == expected, \
        f"CR0 after LMSW of {msw:#06x} from MMIO: expected {expected:#x} (was {before:#x}), got {after:#x}"


def _mmio_writes_covering(g, start, length):
    """Run through the MMIO write exits of one access until [start, start + length) is covered;
    returns {address: byte}. Each exit must be a contiguous write of at most 8 bytes inside the
    range (api.rst 5: data[8], len)."""
    seen = {}
    for _ in range(length):  # at least one new byte per exit, so this many exits at most
        exit_ = g.run()
        assert isinstance(exit_, MmioExit) and exit_.is_write, \
            f"expected MMIO writes covering {start:#x}+{length}, got {exit_} with {len(seen)} bytes seen"
        assert 1 <= exit_.len <= 8 and start <= exit_.phys_addr and exit_.phys_addr + exit_.len <= start + length, \
            f"MMIO write {exit_} outside {start:#x}+{length} or longer than 8 bytes"
        for i, b in enumerate(exit_.data):
            assert exit_.phys_addr + i not in seen, f"byte {exit_.phys_addr + i:#x} written twice"
            seen[exit_.phys_addr + i] = b
        if len(seen) == length:
            return seen
    raise AssertionError(f"{length}-byte access at {start:#x}: only {len(seen)} bytes reported")


def _mmio_reads_covering(g, start, pattern):
    """Answer each MMIO read exit of one access with the bytes of `pattern` at its addresses."""
    done = set()
    for _ in range(len(pattern)):
        exit_ = g.run()
        if not isinstance(exit_, MmioExit):
            return exit_, done
        inside = start <= exit_.phys_addr and exit_.phys_addr + exit_.len <= start + len(pattern)
        assert not exit_.is_write and inside, \
            f"MMIO exit {exit_} is not a read inside {start:#x}+{len(pattern)}"
        off = exit_.phys_addr - start
        exit_.respond(int.from_bytes(pattern[off:off + exit_.len], "little"))
        done.update(range(off, off + exit_.len))
    return g.run(), done


@pytest.mark.modes(*MODES)
def test_store_straddling_two_mmio_pages(guest, mode):
    """A dword store across a page boundary in unbacked memory reaches user space as MMIO
    writes that together carry the four bytes at their four addresses, none longer than 8
    bytes (api.rst 5 KVM_EXIT_MMIO; how the access is split is KVM's choice)."""
    r = regs_for(mode)
    start = MMIO_BASE + 0xFFE
    g = guest(mode, f"mov {r['bx']}, {start:#x}\nmov dword ptr [{r['bx']}], 0xDDCCBBAA\nGUEST_DONE")
    seen = _mmio_writes_covering(g, start, 4)
    assert bytes(seen[start + i] for i in range(4)) == bytes.fromhex("aabbccdd"), \
        f"bytes written across the page edge: {[hex(seen[start + i]) for i in range(4)]}, expected aa bb cc dd"
    g.run_to_done()


@pytest.mark.modes(*MODES)
def test_load_straddling_two_mmio_pages(guest, mode):
    """A dword load across a page boundary in unbacked memory is assembled from the data user
    space supplies for each MMIO read exit, byte for byte at its address (api.rst 5)."""
    r = regs_for(mode)
    start = MMIO_BASE + 0xFFE
    g = guest(mode, f"mov {r['bx']}, {start:#x}\nmov eax, dword ptr [{r['bx']}]\nGUEST_SYNC eax\nGUEST_DONE")
    event, done = _mmio_reads_covering(g, start, bytes.fromhex("11223344"))
    assert done == {0, 1, 2, 3}, f"MMIO reads covered offsets {sorted(done)} of the 4 bytes"
    assert getattr(event, "value", None) == 0x44332211, f"the guest loaded {event}, expected 0x44332211"
    g.run_to_done()




def _enable_sse(g):
    g.set_sregs(with_sse_enabled(g.vcpu.get_sregs()))


@pytest.mark.modes(*MODES)
def test_16_byte_sse_store_to_mmio(guest, mode):
    """MOVDQU of an XMM register to unbacked memory hands user space all 16 bytes, split into
    MMIO writes of at most 8 bytes (api.rst 5: data[8]), each byte at its address (SDM Vol. 2B
    MOVDQU)."""
    r = regs_for(mode)
    pattern = bytes(range(0xA0, 0xB0))
    g = guest(mode, f"""
        mov {r['bx']}, {L.DATA:#x}
        movdqu xmm1, xmmword ptr [{r['bx']}]
        mov {r['bx']}, {ADDR:#x}
        movdqu xmmword ptr [{r['bx']}], xmm1
        GUEST_DONE""")
    g.vm.write(L.DATA, pattern)
    _enable_sse(g)
    seen = _mmio_writes_covering(g, ADDR, 16)
    assert bytes(seen[ADDR + i] for i in range(16)) == pattern, \
        f"16-byte MMIO store carried {bytes(seen[ADDR + i] for i in range(16)).hex()}, expected {pattern.hex()}"
    g.run_to_done()


@pytest.mark.modes(*MODES)
def test_16_byte_sse_load_from_mmio(guest, mode):
    """MOVDQU from unbacked memory into an XMM register is assembled from the data user space
    supplies for each MMIO read exit (api.rst 5; SDM Vol. 2B MOVDQU)."""
    r = regs_for(mode)
    pattern = bytes(range(0x30, 0x40))
    g = guest(mode, f"""
        mov {r['bx']}, {ADDR:#x}
        movdqu xmm2, xmmword ptr [{r['bx']}]
        mov {r['bx']}, {L.DATA:#x}
        movdqu xmmword ptr [{r['bx']}], xmm2
        GUEST_DONE""")
    _enable_sse(g)
    event, done = _mmio_reads_covering(g, ADDR, pattern)
    assert done == set(range(16)), f"MMIO reads covered offsets {sorted(done)} of the 16 bytes"
    assert isinstance(event, Done), f"expected GUEST_DONE after the load, got {event}"
    assert g.vm.read(L.DATA, 16) == pattern, f"XMM2 held {g.vm.read(L.DATA, 16).hex()}, expected {pattern.hex()}"
