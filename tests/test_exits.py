"""Exit parsing from a kvm_run built in memory, and answering IN / MMIO reads."""

import ctypes

import pytest

from kvmtest.abi import constants as C
from kvmtest.abi.structs import kvm_run
from kvmtest.errors import BadArgumentError
from kvmtest.exit_parsers import PARSERS, parse_exit
from kvmtest.exits import DebugExit, HltExit, InternalErrorExit, IoExit, MmioExit, MsrExit, UnknownExit, XenExit


class RunPage(ctypes.Structure):
    _fields_ = [("run", kvm_run), ("extra", ctypes.c_uint8 * 4096)]


@pytest.fixture
def page():
    return RunPage()


def test_io_out_carries_port_size_count_and_data(page):
    run = page.run
    run.exit_reason = C.KVM_EXIT_IO
    run.exit.io.direction, run.exit.io.size, run.exit.io.port, run.exit.io.count = 1, 2, 0x3F8, 2
    run.exit.io.data_offset = ctypes.sizeof(kvm_run)
    page.extra[0:4] = [1, 2, 3, 4]
    e = parse_exit(run)
    assert isinstance(e, IoExit) and e.is_out and e.port == 0x3F8 and e.data == b"\x01\x02\x03\x04"
    assert e.value == 0x0201
    assert str(e) == "KVM_EXIT_IO(out port=0x3f8 size=2 count=2 data=01020304)"


def test_io_in_takes_host_data(page):
    run = page.run
    run.exit_reason = C.KVM_EXIT_IO
    run.exit.io.direction, run.exit.io.size, run.exit.io.port, run.exit.io.count = 0, 4, 0x10, 1
    run.exit.io.data_offset = ctypes.sizeof(kvm_run)
    e = parse_exit(run)
    e.respond(0xDEADBEEF)
    assert bytes(page.extra[0:4]) == (0xDEADBEEF).to_bytes(4, "little")
    with pytest.raises(ValueError, match="needs 4 bytes"):
        e.respond(b"\x01")


def test_out_refuses_data(page):
    page.run.exit_reason = C.KVM_EXIT_IO
    page.run.exit.io.direction = 1
    with pytest.raises(ValueError, match="only an IN"):
        parse_exit(page.run).respond(1)


def test_mmio_read_and_write(page):
    run = page.run
    run.exit_reason = C.KVM_EXIT_MMIO
    run.exit.mmio.phys_addr, run.exit.mmio.len, run.exit.mmio.is_write = 0xD0000000, 8, 0
    e = parse_exit(run)
    assert isinstance(e, MmioExit) and not e.is_write
    e.respond(0x0102030405060708)
    assert bytes(run.exit.mmio.data) == (0x0102030405060708).to_bytes(8, "little")
    run.exit.mmio.is_write, run.exit.mmio.len = 1, 2
    w = parse_exit(run)
    assert w.is_write and w.data == b"\x08\x07" and str(w) == "KVM_EXIT_MMIO(write gpa=0xd0000000 len=2 data=0807)"


def test_debug_exit_names_the_vector(page):
    run = page.run
    run.exit_reason = C.KVM_EXIT_DEBUG
    run.exit.debug.arch.exception, run.exit.debug.arch.pc, run.exit.debug.arch.dr6 = 1, 0x8000, 0xFFFF4FF0
    e = parse_exit(run)
    assert isinstance(e, DebugExit) and "#DB pc=0x8000 dr6=0xffff4ff0" in str(e)


def test_internal_error_instruction_bytes(page):
    run = page.run
    run.exit_reason = C.KVM_EXIT_INTERNAL_ERROR
    run.exit.internal.suberror, run.exit.internal.ndata = 1, 4
    run.exit.internal.data[0] = 1
    raw = bytes([2, 0xD9, 0x00]) + bytes(13)
    run.exit.internal.data[1] = int.from_bytes(raw[:8], "little")
    run.exit.internal.data[2] = int.from_bytes(raw[8:], "little")
    e = parse_exit(run)
    assert isinstance(e, InternalErrorExit) and e.insn_bytes == b"\xd9\x00"
    assert "KVM_INTERNAL_ERROR_EMULATION instruction bytes d9 00" in str(e)


def test_msr_exit_response(page):
    run = page.run
    run.exit_reason = C.KVM_EXIT_X86_RDMSR
    run.exit.msr.index, run.exit.msr.reason = 0x1234, C.KVM_MSR_EXIT_REASON_UNKNOWN
    e = parse_exit(run)
    assert isinstance(e, MsrExit) and "reason=KVM_MSR_EXIT_REASON_UNKNOWN" in str(e)
    e.respond(error=True)
    assert run.exit.msr.error == 1


def test_xen_hypercall_exit_reads_kvm_xen_exit_and_takes_a_result(page):
    """KVM_EXIT_XEN's struct kvm_xen_exit (api.rst 5): type, then hcall in a union aligned to 8 bytes;
    the result goes into hcall.result, a negative one as two's complement."""
    run = page.run
    run.exit_reason = C.KVM_EXIT_XEN
    raw = (ctypes.c_uint8 * 80).from_buffer(run.exit)
    # by offset: type (and padding), longmode | cpl << 32, input, result, params[6]
    words = [C.KVM_EXIT_XEN_HCALL, 1 | 3 << 32, 0x21, 0, *range(0x101, 0x107)]
    ctypes.memmove(raw, b"".join(w.to_bytes(8, "little") for w in words), 80)
    e = parse_exit(run)
    assert isinstance(e, XenExit)
    expected = (C.KVM_EXIT_XEN_HCALL, 1, 3, 0x21, tuple(range(0x101, 0x107)))
    assert (e.type, e.longmode, e.cpl, e.input, e.params) == expected
    assert str(e) == "KVM_EXIT_XEN(KVM_EXIT_XEN_HCALL input=0x21 longmode=1 cpl=3 params=[0x101 0x102 0x103 0x104 " \
                     "0x105 0x106])"
    e.respond(-2)
    assert bytes(raw[24:32]) == ((1 << 64) - 2).to_bytes(8, "little")
    with pytest.raises(BadArgumentError, match="is not a 64-bit integer"):
        e.respond(1 << 64)


def test_simple_and_unknown_exits(page):
    page.run.exit_reason = C.KVM_EXIT_HLT
    assert isinstance(parse_exit(page.run), HltExit)
    page.run.exit_reason = 77
    e = parse_exit(page.run)
    assert isinstance(e, UnknownExit) and e.reason_name == "KVM_EXIT_unknown(77)"


def test_only_kvm_exit_unknown_reads_a_hardware_exit_reason(page):
    """struct kvm_run's `hw.hardware_exit_reason` belongs to KVM_EXIT_UNKNOWN alone (api.rst 5)."""
    run = page.run
    run.exit_reason = C.KVM_EXIT_UNKNOWN
    run.exit.hw.hardware_exit_reason = 0x7B
    e = parse_exit(run)
    assert isinstance(e, UnknownExit) and e.hardware_exit_reason == 0x7B
    assert str(e) == "KVM_EXIT_UNKNOWN(hardware_exit_reason=0x7b)"


@pytest.mark.parametrize("reason", [C.KVM_EXIT_NMI, C.KVM_EXIT_X86_BUS_LOCK, 77])
def test_an_unparsed_reason_keeps_its_name_and_raw_union_bytes(page, reason):
    run = page.run
    run.exit_reason = reason
    run.exit.hw.hardware_exit_reason = 0x0102  # the union's first bytes: not a hardware reason here
    e = parse_exit(run)
    assert isinstance(e, UnknownExit) and e.hardware_exit_reason is None
    assert e.raw == bytes(run.exit)[: len(e.raw)] and len(e.raw) == ctypes.sizeof(run.exit)
    assert str(e) == f"{C.EXIT_REASON_NAMES.name(reason)}(reason {reason}, not parsed by kvmtest; exit union: 02 01)"
    assert "hardware_exit_reason" not in str(e)


def test_every_parsed_reason_gives_its_own_exit_type(page):
    """Each reason in the table parses to an Exit of that reason, and only KVM_EXIT_UNKNOWN to UnknownExit."""
    for reason in PARSERS:
        page.run.exit_reason = reason
        e = parse_exit(page.run)
        assert e.reason == reason and isinstance(e, UnknownExit) == (reason == C.KVM_EXIT_UNKNOWN), (reason, e)


def _same_as_init(e):
    """`e` against the exit its dataclass __init__ builds from the same fields: equal, the same
    __dict__ (every field, in order, nothing more) and the same text."""
    import dataclasses

    built = type(e)(**{f.name: getattr(e, f.name) for f in dataclasses.fields(e)})
    assert e == built and e.__dict__ == built.__dict__, f"{e!r} != {built!r}"
    assert list(e.__dict__) == [f.name for f in dataclasses.fields(e)]
    assert str(e) == str(built) and repr(e) == repr(built) and hash(e) == hash(built)
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.reason = 0


@pytest.mark.parametrize("direction,size,count", [(1, 1, 1), (1, 1, 3), (1, 4, 1), (0, 1, 1), (0, 2, 2)])
def test_io_exit_built_by_the_parser_is_the_dataclass(page, direction, size, count):
    """The I/O parser builds IoExit without its __init__ (the exit loop's hot path): the result
    must be the very object __init__ builds, OUT data included (one byte or several)."""
    run = page.run
    run.exit_reason = C.KVM_EXIT_IO
    run.exit.io.direction, run.exit.io.size, run.exit.io.port, run.exit.io.count = direction, size, 0x80, count
    run.exit.io.data_offset = ctypes.sizeof(kvm_run)
    page.extra[0:8] = [0xA5, 2, 3, 4, 5, 6, 7, 8]
    e = parse_exit(run)
    assert type(e) is IoExit
    _same_as_init(e)
    assert (e.reason, e.direction, e.size, e.port, e.count, e.data_offset) == \
        (C.KVM_EXIT_IO, direction, size, 0x80, count, ctypes.sizeof(kvm_run))
    assert e.data == (bytes(page.extra[: size * count]) if direction else b"")


def test_io_data_offset_past_the_mapping_gives_no_bytes_not_a_crash(page):
    run = page.run
    run.exit_reason = C.KVM_EXIT_IO
    run.exit.io.direction, run.exit.io.size, run.exit.io.count = 1, 1, 1
    run.exit.io.data_offset = ctypes.sizeof(page) + 0x100
    e = parse_exit(run)
    assert e.data == b"" and e.data_offset == ctypes.sizeof(page) + 0x100


@pytest.mark.parametrize("is_write,length", [(1, 1), (1, 8), (0, 4), (1, 12)])
def test_mmio_exit_built_by_the_parser_is_the_dataclass(page, is_write, length):
    """As for I/O: MmioExit from the parser equals the one __init__ builds; a write's data is the
    first `len` bytes of kvm_run.mmio.data (at most its 8)."""
    run = page.run
    run.exit_reason = C.KVM_EXIT_MMIO
    run.exit.mmio.phys_addr, run.exit.mmio.len, run.exit.mmio.is_write = 0xFEE00030, length, is_write
    run.exit.mmio.data[:] = [1, 2, 3, 4, 5, 6, 7, 8]
    e = parse_exit(run)
    assert type(e) is MmioExit
    _same_as_init(e)
    assert e.phys_addr == 0xFEE00030 and e.len == length and e.is_write is bool(is_write)
    assert e.data == (bytes(range(1, 9))[:length] if is_write else b"")


def test_an_exit_in_the_trace_reads_back_with_its_vcpu(page):
    """Vcpu.run() puts each exit itself in the trace of recent ioctls and exits; recent() shows it
    as the vCPU's name, "exit" and the exit's text, like a tuple entry of those parts."""
    from types import SimpleNamespace

    from kvmtest import ioctl

    run = page.run
    run.exit_reason = C.KVM_EXIT_HLT
    e = parse_exit(run, None, (SimpleNamespace(name="vm7/vcpu3"), 1))
    ioctl.clear_trace()
    ioctl.trace_append(e)
    ioctl.note("vm7/vcpu3", "exit", e)
    assert ioctl.recent() == ["vm7/vcpu3 exit KVM_EXIT_HLT"] * 2
