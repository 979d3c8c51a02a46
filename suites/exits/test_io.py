"""KVM_EXIT_IO (api.rst 5, "KVM_EXIT_IO"): port, size, direction, count and data for IN and OUT
of 1, 2 and 4 bytes, immediate and DX ports, in every CPU mode, and string I/O."""

import pytest

from kvmtest.abi.constants import KVM_EXIT_IO_IN, KVM_EXIT_IO_OUT
from kvmtest.exits import IoExit
from kvmtest.guest.mode_select import select
from kvmtest.guest.modes import regs_for

ACC = {1: "al", 2: "ax", 4: "eax"}


@pytest.mark.modes(feature=None)
@pytest.mark.parametrize("size", [1, 2, 4])
def test_out_and_in_with_immediate_and_dx_ports(guest, mode, size):
    """OUT imm8/DX and IN imm8/DX of `size` bytes each exit with KVM_EXIT_IO: the port, size,
    count 1, direction, and for OUT the accumulator's low `size` bytes at data_offset; the data
    the host writes at data_offset for an IN is what the guest's accumulator receives."""
    a = ACC[size]
    value = 0x44332211 & ((1 << 8 * size) - 1)
    g = guest(mode, f"""
        mov eax, {value:#x}
        out 0x40, {a}
        mov dx, 0x3f8
        out dx, {a}
        xor eax, eax
        in {a}, 0x41
        GUEST_SYNC eax
        xor eax, eax
        mov dx, 0x2f8
        in {a}, dx
        GUEST_SYNC eax
        GUEST_DONE""")
    data = value.to_bytes(size, "little")
    g.expect_exit(IoExit, port=0x40, size=size, count=1, direction=KVM_EXIT_IO_OUT, data=data)
    g.expect_exit(IoExit, port=0x3F8, size=size, count=1, direction=KVM_EXIT_IO_OUT, data=data)
    reply = [0xA1B2C3D4 & ((1 << 8 * size) - 1), 0x55667788 & ((1 << 8 * size) - 1)]
    g.expect_exit(IoExit, port=0x41, size=size, count=1, direction=KVM_EXIT_IO_IN).respond(reply[0])
    assert g.expect_sync() == reply[0], f"IN imm8 ({size} bytes): guest got another value than the host supplied"
    g.expect_exit(IoExit, port=0x2F8, size=size, count=1, direction=KVM_EXIT_IO_IN).respond(reply[1])
    assert g.expect_sync() == reply[1]
    g.run_to_done()


STRING_MODES = select(sample="per-code-size")


def _string_guest(mode, insn, df, count):
    r = regs_for(mode)
    start = 0x600 + (count - 1 if df else 0)
    return f"""
        {'std' if df else 'cld'}
        mov {r['si']}, {start:#x}
        mov {r['di']}, {start:#x}
        mov {r['cx']}, {count}
        mov dx, 0x80
        rep {insn}
        cld
        GUEST_SYNC {r['cx']}
        GUEST_SYNC {r['si']}
        GUEST_SYNC {r['di']}
        GUEST_DONE"""


def _collect(g, direction, supply=None):
    """Run through the string exits (KVM may split the string); return the bytes moved."""
    moved = b""
    while True:
        event = g.run()
        if not isinstance(event, IoExit):
            return moved, event
        assert event.port == 0x80 and event.size == 1 and event.direction == direction, f"unexpected {event}"
        if direction == KVM_EXIT_IO_OUT:
            moved += event.data
        else:
            chunk = supply[len(moved): len(moved) + event.count]
            event.respond(chunk)
            moved += chunk


@pytest.mark.modes(*STRING_MODES)
@pytest.mark.parametrize("df", [0, 1], ids=["df0", "df1"])
def test_rep_outsb_sends_elements_in_architectural_order(guest, mode, df):
    """REP OUTSB sends the bytes at [RSI], RSI±1, ... (SDM Vol. 2B OUTS: decrement when DF=1)
    through one or more KVM_EXIT_IO exits whose count and data_offset describe them (api.rst 5);
    afterwards RCX is 0 and RSI has moved by the count, RDI is untouched."""
    g = guest(mode, _string_guest(mode, "outsb", df, 8))
    g.vm.write(0x600, bytes(range(0x10, 0x18)))
    moved, event = _collect(g, KVM_EXIT_IO_OUT)
    want = bytes(range(0x10, 0x18))
    assert moved == (want[::-1] if df else want), f"REP OUTSB DF={df} sent {moved.hex()}"
    start = 0x600 + (7 if df else 0)
    values = [event.value] + g.run_to_done()
    assert values == [0, start - 8 if df else start + 8, start], f"RCX, RSI, RDI after REP OUTSB: {values}"


@pytest.mark.modes(*STRING_MODES)
@pytest.mark.parametrize("df", [0, 1], ids=["df0", "df1"])
def test_rep_insb_fills_memory_with_host_data(guest, mode, df):
    """REP INSB stores the host's bytes at [RDI], RDI±1, ... (SDM Vol. 2A INS); KVM takes them
    from data_offset of each KVM_EXIT_IO (api.rst 5) and never writes past the count
    (selftests userspace_io_test); RCX ends at 0 and RDI has moved by the count."""
    g = guest(mode, _string_guest(mode, "insb", df, 8))
    supply = bytes(range(0xA0, 0xA8))
    moved, event = _collect(g, KVM_EXIT_IO_IN, supply)
    assert moved == supply
    memory = g.vm.read(0x600 - 1, 10)
    want = b"\0" + (supply[::-1] if df else supply) + b"\0"
    assert memory == want, f"memory after REP INSB DF={df}: {memory.hex()}, expected {want.hex()}"
    start = 0x600 + (7 if df else 0)
    values = [event.value] + g.run_to_done()
    assert values == [0, start, start - 8 if df else start + 8], f"RCX, RSI, RDI after REP INSB: {values}"


BUFFER = 0x10000   # layout.DATA: 64 KiB the test may use
GUARD = 16         # bytes checked on either side of the buffer for stray stores


def _insb_guest(count):
    return f"""
        cld
        mov rdi, {BUFFER:#x}
        mov rcx, {count}
        mov dx, 0x80
        rep insb
        GUEST_SYNC rcx
        GUEST_SYNC rdi
        GUEST_DONE"""


def _run_insb(g, count, new_rcx=None):
    """Answer every KVM_EXIT_IO of the REP INSB with 0xaa bytes, changing RCX through KVM_SET_REGS
    at the first one when `new_rcx` is given; returns (RCX, RDI) the guest saw afterwards."""
    g.vm.write(BUFFER - GUARD, b"\x55" * (GUARD + count + (new_rcx or 0) + GUARD))
    first = True
    while True:
        event = g.run()
        if not isinstance(event, IoExit):
            break
        assert event.port == 0x80 and event.size == 1 and event.is_in, f"unexpected {event} during REP INSB"
        event.respond(b"\xaa" * event.count)
        if first and new_rcx is not None:
            regs = g.vcpu.get_regs()
            assert regs.rcx == count, f"KVM_GET_REGS RCX {regs.rcx:#x} at the first REP INSB exit; expected {count}"
            regs.rcx = new_rcx
            g.vcpu.set_regs(regs)
        first = False
    return [event.value] + g.run_to_done()


@pytest.mark.modes("long64")
def test_rep_insb_of_8192_bytes_fills_the_whole_buffer(guest, mode):
    """An 8192-byte REP INSB (more than one kvm_run page of data) stores every byte the host
    supplies across its KVM_EXIT_IO exits and nothing beyond: RCX ends at 0, RDI at the buffer's
    end (SDM Vol. 2A INS/REP; api.rst 5 KVM_EXIT_IO count, data_offset; selftests
    userspace_io_test)."""
    g = guest(mode, _insb_guest(8192))
    rcx, rdi = _run_insb(g, 8192)
    assert (rcx, rdi) == (0, BUFFER + 8192), f"RCX, RDI after REP INSB: {rcx:#x}, {rdi:#x}"
    memory = g.vm.read(BUFFER - GUARD, 8192 + 2 * GUARD)
    want = b"\x55" * GUARD + b"\xaa" * 8192 + b"\x55" * GUARD
    unwritten = memory.find(b"\x55", GUARD, GUARD + 8192)
    assert memory == want, "REP INSB of 8192 bytes: " + (
        f"byte {unwritten - GUARD} of the buffer never written" if unwritten >= 0
        else "a byte outside the buffer was written")


@pytest.mark.modes("long64")
@pytest.mark.parametrize(("count", "new_rcx"), [(2, 1), (3, 8192)], ids=["rcx-2-to-1", "rcx-3-to-8192"])
def test_rep_insb_count_changed_at_the_exit_runs_on_the_new_count(guest, mode, count, new_rcx):
    """User space rewriting RCX (KVM_SET_REGS) at the first KVM_EXIT_IO of a REP INSB: the
    instruction goes on with the count it now finds, as REP does with RCX (SDM Vol. 2B REP), and
    KVM stores no byte past that many: RCX ends at 0, RDI at the start plus the new count, and the
    bytes after it keep their old value (selftests userspace_io_test: "doesn't explode or overflow
    a buffer")."""
    g = guest(mode, _insb_guest(count))
    rcx, rdi = _run_insb(g, count, new_rcx)
    assert (rcx, rdi) == (0, BUFFER + new_rcx), \
        f"RCX, RDI after REP INSB with RCX {count} -> {new_rcx} at the exit: {rcx:#x}, {rdi:#x}; " \
        f"expected 0, {BUFFER + new_rcx:#x}"
    after = g.vm.read(BUFFER + new_rcx, GUARD)
    before = g.vm.read(BUFFER - GUARD, GUARD)
    assert (before, after) == (b"\x55" * GUARD, b"\x55" * GUARD), \
        f"REP INSB with RCX {count} -> {new_rcx} wrote outside [buffer, buffer + {new_rcx}): " \
        f"before {before.hex()}, after {after.hex()}"
