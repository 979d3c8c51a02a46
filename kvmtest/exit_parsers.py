"""Parsing a KVM_RUN exit: kvm_run.exit_reason picks a parser from PARSERS, which reads that
reason's member of the exit union (api.rst 5, "The kvm_run structure") into its typed Exit
(kvmtest.exits). A reason with no parser becomes an UnknownExit that keeps the union's raw bytes.
"""

import ctypes
import struct
from collections.abc import Callable
from typing import Any

from .abi import constants as C
from .abi.structs import kvm_run
from .exits import (
    DebugExit,
    DirtyRingFullExit,
    ExceptionExit,
    Exit,
    FailEntryExit,
    HltExit,
    HypercallExit,
    InternalErrorExit,
    IntrExit,
    IoapicEoiExit,
    IoExit,
    IrqWindowOpenExit,
    MemoryFaultExit,
    MmioExit,
    MsrExit,
    ShutdownExit,
    SystemEventExit,
    UnknownExit,
    XenExit,
)

_REASON = struct.Struct("<I")
_IO = struct.Struct("<BBHIQ")
_MMIO = struct.Struct("<Q8sIB")  # phys_addr, data[8], len, is_write (api.rst 5, KVM_EXIT_MMIO)
_EXIT_UNION = kvm_run.exit.offset
_EXIT_UNION_SIZE = kvm_run.exit.size
_ONE_BYTE = tuple(bytes((i,)) for i in range(256))  # what an OUT of one byte wrote, without a copy


# The I/O and MMIO exits, the run loop's frequent ones, are built without the frozen dataclass
# __init__, whose object.__setattr__ per field is most of the cost of an exit: the parser makes an
# instance of a plain class with the same layout (a __dict__ and a __weakref__ slot, nothing else),
# stores the fields in field order with ordinary attribute stores (the fastest Python has; no
# __init__ call), and assigning __class__ then makes that object the frozen exit, as immutable as
# one __init__ built. tests/test_exits.py checks the result against the one __init__ builds.
# One class per exit type: each keeps its own attribute names in order, which is what makes the
# stores fast.
class _IoExitFields:
    pass


class _MmioExitFields:
    pass


# A parser turns (exit reason, kvm_run, memoryview of the kvm_run mapping, what the exit keeps
# for respond()) into the Exit for that reason.
ExitParser = Callable[[int, kvm_run, memoryview, object], Exit]


def _io(reason: int, run: kvm_run, view: memoryview, src) -> Exit:
    # Read straight from the mapping: the run loop's most frequent exit.
    direction, size, port, count, data_offset = _IO.unpack_from(view, _EXIT_UNION)
    if not direction:
        data = b""
    elif size == 1 and count == 1:
        try:
            data = _ONE_BYTE[view[data_offset]]
        except IndexError:  # data_offset (KVM's) outside the mapping: no bytes, as a slice gives
            data = b""
    else:  # a slice stops at the mapping's end, wherever KVM's data_offset points
        data = bytes(view[data_offset: data_offset + size * count])
    exit_: Any = _IoExitFields()  # becomes an IoExit below: typed as what it ends as
    exit_.reason = reason
    exit_._run = src
    exit_.direction = direction
    exit_.size = size
    exit_.port = port
    exit_.count = count
    exit_.data_offset = data_offset
    exit_.data = data
    exit_.__class__ = IoExit
    return exit_


def _mmio(reason: int, run: kvm_run, view: memoryview, src) -> Exit:
    phys_addr, data, length, is_write = _MMIO.unpack_from(view, _EXIT_UNION)
    exit_: Any = _MmioExitFields()  # becomes a MmioExit below
    exit_.reason = reason
    exit_._run = src
    exit_.phys_addr = phys_addr
    exit_.len = length
    exit_.is_write = bool(is_write)
    exit_.data = data[:length] if is_write else b""
    exit_.__class__ = MmioExit
    return exit_


def _internal_error(reason: int, run: kvm_run, view: memoryview, src) -> Exit:
    i = run.exit.internal
    return InternalErrorExit(reason, src, i.suberror, i.ndata, tuple(i.data[: min(i.ndata, 16)]))


def _system_event(reason: int, run: kvm_run, view: memoryview, src) -> Exit:
    e = run.exit.system_event
    return SystemEventExit(reason, src, e.type, e.ndata, tuple(e.data[: min(e.ndata, 16)]))


def _union_bytes(view: memoryview) -> bytes:
    return bytes(view[_EXIT_UNION: _EXIT_UNION + _EXIT_UNION_SIZE])


def _xen(reason: int, run: kvm_run, view: memoryview, src) -> Exit:
    x = run.exit.xen
    h = x.hcall  # the union's one member; read for any type, as KVM fills it only for hypercalls
    return XenExit(reason, src, x.type, h.longmode, h.cpl, h.input, h.result, tuple(h.params))


def _unparsed(reason: int, run: kvm_run, view: memoryview, src) -> Exit:
    return UnknownExit(reason, src, None, _union_bytes(view))


def _union(cls: type[Exit], member: str, *names: str) -> ExitParser:
    """The parser of a reason whose Exit fields, after reason and source, are the fields `names`
    of the union member `member` (a dotted path, e.g. "debug.arch"), in order; arrays as tuples."""
    path = member.split(".")

    def parse(reason: int, run: kvm_run, view: memoryview, src) -> Exit:
        part = run.exit
        for step in path:
            part = getattr(part, step)
        values = (getattr(part, name) for name in names)
        return cls(reason, src, *(tuple(v) if isinstance(v, ctypes.Array) else v for v in values))

    return parse


def _payloadless(cls: type[Exit]) -> ExitParser:
    """The parser of a reason whose exit carries nothing in the union."""
    return lambda reason, run, view, src: cls(reason, src)


def _unknown(reason: int, run: kvm_run, view: memoryview, src) -> Exit:
    return UnknownExit(reason, src, run.exit.hw.hardware_exit_reason, _union_bytes(view))


UNPARSED: ExitParser = _unparsed  # the parser of a reason PARSERS lacks

# Exit reason -> its parser (api.rst 5, struct kvm_run). A reason not here is unparsed.
PARSERS: dict[int, ExitParser] = {
    C.KVM_EXIT_UNKNOWN: _unknown,
    C.KVM_EXIT_EXCEPTION: _union(ExceptionExit, "ex", "exception", "error_code"),
    C.KVM_EXIT_IO: _io,
    C.KVM_EXIT_HYPERCALL: _union(HypercallExit, "hypercall", "nr", "args", "ret", "flags"),
    C.KVM_EXIT_DEBUG: _union(DebugExit, "debug.arch", "exception", "pc", "dr6", "dr7"),
    C.KVM_EXIT_HLT: _payloadless(HltExit),
    C.KVM_EXIT_MMIO: _mmio,
    C.KVM_EXIT_IRQ_WINDOW_OPEN: _payloadless(IrqWindowOpenExit),
    C.KVM_EXIT_SHUTDOWN: _payloadless(ShutdownExit),
    C.KVM_EXIT_FAIL_ENTRY: _union(FailEntryExit, "fail_entry", "hardware_entry_failure_reason", "cpu"),
    C.KVM_EXIT_INTR: _payloadless(IntrExit),
    C.KVM_EXIT_INTERNAL_ERROR: _internal_error,
    C.KVM_EXIT_SYSTEM_EVENT: _system_event,
    C.KVM_EXIT_IOAPIC_EOI: _union(IoapicEoiExit, "eoi", "vector"),
    C.KVM_EXIT_X86_RDMSR: _union(MsrExit, "msr", "error", "reason", "index", "data"),
    C.KVM_EXIT_X86_WRMSR: _union(MsrExit, "msr", "error", "reason", "index", "data"),
    C.KVM_EXIT_DIRTY_RING_FULL: _payloadless(DirtyRingFullExit),
    C.KVM_EXIT_MEMORY_FAULT: _union(MemoryFaultExit, "memory_fault", "flags", "gpa", "size"),
    C.KVM_EXIT_XEN: _xen,
}


def parse_exit(run: kvm_run, view: memoryview | None = None, source=None) -> Exit:
    """Turn the exit described by `run` into a typed Exit, through PARSERS; an UnknownExit for
    a reason that has none.

    `view`, a memoryview of the vCPU's whole kvm_run mapping, makes the frequent I/O exit
    cheap to decode (the run loop passes it). `source`, (vcpu, KVM_RUN count), is what the
    exit keeps for respond() instead of `run` itself (see Exit._write_response).
    """
    if view is None:
        view = memoryview((ctypes.c_char * (ctypes.sizeof(run) + 4096)).from_address(ctypes.addressof(run))).cast("B")
    reason = _REASON.unpack_from(view, 8)[0]
    return PARSERS.get(reason, _unparsed)(reason, run, view, run if source is None else source)
