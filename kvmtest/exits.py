"""KVM_RUN exits as small frozen dataclasses, parsed in one place (parse_exit).

Each names itself in messages (`str(exit)`). An IN or MMIO-read exit can be answered with
`respond(...)`, which writes the data into kvm_run for KVM to complete the access on the
next KVM_RUN (api.rst 5. "The kvm_run structure", KVM_EXIT_IO / KVM_EXIT_MMIO).

An exit from Vcpu.run() remembers its vCPU and which KVM_RUN produced it, not the mapping:
a response after the vCPU closed raises ClosedError, and one after a later KVM_RUN (which
reused kvm_run for another exit) raises StaleExitError; neither touches the memory.
"""

import ctypes
import struct
from dataclasses import dataclass, field

from .abi import constants as C
from .abi.structs import kvm_run
from .errors import BadArgumentError, KvmtestError


@dataclass(frozen=True)
class Exit:
    reason: int
    _run: object = field(default=None, repr=False, compare=False)

    @property
    def reason_name(self) -> str:
        return C.EXIT_REASON_NAMES.name(self.reason)

    def __str__(self):
        details = ", ".join(
            f"{k}={v:#x}" if isinstance(v, int) else f"{k}={v!r}"
            for k, v in self.__dict__.items() if k not in ("reason", "_run")
        )
        return f"{self.reason_name}({details})" if details else self.reason_name

    def _write_response(self, write) -> None:
        """Call write(run, mapping_size) on the kvm_run this exit was read from.

        `_run` is (vcpu, KVM_RUN count) for exits from Vcpu.run(): the vCPU checks, under the
        lock its close() takes, that kvm_run is still mapped and still describes this exit.
        A bare kvm_run (exits parsed from a structure built in memory) is written directly.
        """
        source = self._run
        if isinstance(source, tuple):
            vcpu, generation = source
            vcpu.write_response(self, generation, write)
        elif source is None:
            raise KvmtestError(f"{self} carries no kvm_run to respond into")
        else:
            write(source, None)


def _response_bytes(exit_, data, element: int, count: int = 1) -> bytes:
    """`data` (an int for each element, or bytes of element*count) as the bytes a response writes."""
    if isinstance(data, int) and not isinstance(data, bool):
        try:
            return data.to_bytes(element, "little") * count
        except OverflowError:
            raise BadArgumentError(f"{exit_}: {data:#x} does not fit {element} byte(s)") from None
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BadArgumentError(f"{exit_}: respond() takes an int or bytes, got {data!r}")
    data = bytes(data)
    if len(data) != element * count:
        raise ValueError(f"{exit_} needs {element * count} bytes, got {len(data)}")
    return data


@dataclass(frozen=True)
class IoExit(Exit):
    direction: int = 0
    size: int = 0
    port: int = 0
    count: int = 0
    data_offset: int = 0
    data: bytes = b""

    @property
    def is_in(self) -> bool:
        return self.direction == C.KVM_EXIT_IO_IN

    @property
    def is_out(self) -> bool:
        return self.direction == C.KVM_EXIT_IO_OUT

    @property
    def value(self) -> int:
        """The first element written by OUT, as an integer."""
        return int.from_bytes(self.data[: self.size], "little")

    def respond(self, data) -> None:
        """Supply the data an IN reads: an int (each element) or bytes (size*count)."""
        if not self.is_in:
            raise ValueError(f"{self} is an OUT; only an IN takes data from the host")
        data = _response_bytes(self, data, self.size, self.count)

        def write(run, mapping_size):
            # data_offset comes from KVM: never write past the mapping it points into.
            if mapping_size is not None and self.data_offset + len(data) > mapping_size:
                raise KvmtestError(f"{self}: data_offset {self.data_offset:#x} + {len(data)} bytes lies outside "
                                   f"the {mapping_size:#x}-byte kvm_run mapping")
            ctypes.memmove(ctypes.addressof(run) + self.data_offset, data, len(data))

        self._write_response(write)

    def __str__(self):
        direction = "in" if self.is_in else "out"
        text = f"KVM_EXIT_IO({direction} port={self.port:#x} size={self.size} count={self.count}"
        return text + (f" data={self.data.hex()})" if self.is_out else ")")


@dataclass(frozen=True)
class MmioExit(Exit):
    phys_addr: int = 0
    len: int = 0
    is_write: bool = False
    data: bytes = b""

    @property
    def value(self) -> int:
        return int.from_bytes(self.data[: self.len], "little")

    def respond(self, data) -> None:
        """Supply the data an MMIO read returns (int or bytes of length `len`)."""
        if self.is_write:
            raise ValueError(f"{self} is a write; only a read takes data from the host")
        data = _response_bytes(self, data, self.len)
        if len(data) > 8:  # kvm_run.mmio.data is 8 bytes
            raise KvmtestError(f"{self}: len {self.len} is more than the 8 bytes of kvm_run.mmio.data")
        self._write_response(lambda run, _size: ctypes.memmove(run.exit.mmio.data, data, len(data)))

    def __str__(self):
        kind = "write" if self.is_write else "read"
        text = f"KVM_EXIT_MMIO({kind} gpa={self.phys_addr:#x} len={self.len}"
        return text + (f" data={self.data.hex()})" if self.is_write else ")")


@dataclass(frozen=True)
class HltExit(Exit):
    pass


@dataclass(frozen=True)
class ShutdownExit(Exit):
    pass


@dataclass(frozen=True)
class IntrExit(Exit):
    """KVM_RUN returned EINTR (a signal or immediate_exit); exit_reason KVM_EXIT_INTR."""


@dataclass(frozen=True)
class IrqWindowOpenExit(Exit):
    pass


@dataclass(frozen=True)
class DebugExit(Exit):
    exception: int = 0
    pc: int = 0
    dr6: int = 0
    dr7: int = 0

    def __str__(self):
        return (f"KVM_EXIT_DEBUG({C.vector_name(self.exception)} pc={self.pc:#x} "
                f"dr6={self.dr6:#x} dr7={self.dr7:#x})")


@dataclass(frozen=True)
class InternalErrorExit(Exit):
    suberror: int = 0
    ndata: int = 0
    data: tuple = ()

    @property
    def suberror_name(self) -> str:
        return C.INTERNAL_ERROR_NAMES.name(self.suberror)

    @property
    def insn_bytes(self) -> bytes | None:
        """The failing instruction's bytes, where KVM supplied them (api.rst, emulation_failure:
        flags bit KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES, then insn_size and insn_bytes)."""
        if self.suberror != C.KVM_INTERNAL_ERROR_EMULATION or len(self.data) < 3:
            return None
        if not self.data[0] & C.KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES:
            return None
        raw = b"".join(d.to_bytes(8, "little") for d in self.data[1:3])
        return raw[1: 1 + min(raw[0], 15)]

    def __str__(self):
        if self.insn_bytes is not None:
            return f"KVM_EXIT_INTERNAL_ERROR({self.suberror_name} instruction bytes {self.insn_bytes.hex(' ')})"
        data = " ".join(f"{d:#x}" for d in self.data)
        return f"KVM_EXIT_INTERNAL_ERROR({self.suberror_name} ndata={self.ndata} data=[{data}])"


@dataclass(frozen=True)
class FailEntryExit(Exit):
    hardware_entry_failure_reason: int = 0
    cpu: int = 0


@dataclass(frozen=True)
class ExceptionExit(Exit):
    exception: int = 0
    error_code: int = 0


@dataclass(frozen=True)
class HypercallExit(Exit):
    nr: int = 0
    args: tuple = ()
    ret: int = 0
    flags: int = 0

    def respond(self, ret: int) -> None:
        """The hypercall's return value (RAX); a negative value is stored as two's complement."""
        if isinstance(ret, bool) or not isinstance(ret, int) or not -(1 << 63) <= ret < 1 << 64:
            raise BadArgumentError(f"{self}: return value {ret!r} is not a 64-bit integer")

        def write(run, _size):
            run.exit.hypercall.ret = ret & (2**64 - 1)

        self._write_response(write)


@dataclass(frozen=True)
class MsrExit(Exit):
    """KVM_EXIT_X86_RDMSR / KVM_EXIT_X86_WRMSR (KVM_CAP_X86_USER_SPACE_MSR)."""

    error: int = 0
    msr_reason: int = 0
    index: int = 0
    data: int = 0

    @property
    def is_write(self) -> bool:
        return self.reason == C.KVM_EXIT_X86_WRMSR

    def respond(self, data: int = 0, *, error: bool = False) -> None:
        """Complete the access: RDMSR gets `data`; error=True makes the guest take #GP."""
        if isinstance(data, bool) or not isinstance(data, int) or not 0 <= data < 1 << 64:
            raise BadArgumentError(f"{self}: RDMSR data {data!r} is not a 64-bit unsigned integer")

        def write(run, _size):
            run.exit.msr.error = 1 if error else 0
            if not self.is_write:
                run.exit.msr.data = data

        self._write_response(write)

    def __str__(self):
        kind = "KVM_EXIT_X86_WRMSR" if self.is_write else "KVM_EXIT_X86_RDMSR"
        text = f"{kind}(index={self.index:#x} reason={C.MSR_EXIT_REASON_NAMES.name(self.msr_reason)}"
        return text + (f" data={self.data:#x})" if self.is_write else ")")


@dataclass(frozen=True)
class SystemEventExit(Exit):
    type: int = 0
    ndata: int = 0
    data: tuple = ()

    def __str__(self):
        return f"KVM_EXIT_SYSTEM_EVENT({C.SYSTEM_EVENT_NAMES.name(self.type)} ndata={self.ndata})"


@dataclass(frozen=True)
class IoapicEoiExit(Exit):
    """KVM_EXIT_IOAPIC_EOI: with a split irqchip, the guest EOI'd a level-triggered vector that
    a reserved IOAPIC route delivered (api.rst 5, KVM_CAP_SPLIT_IRQCHIP)."""

    vector: int = 0

    def __str__(self):
        return f"KVM_EXIT_IOAPIC_EOI(vector={self.vector:#x})"


@dataclass(frozen=True)
class DirtyRingFullExit(Exit):
    """KVM_EXIT_DIRTY_RING_FULL: the vCPU's dirty ring reached its soft limit; harvest it and
    call KVM_RESET_DIRTY_RINGS before running again (api.rst 8.29)."""


@dataclass(frozen=True)
class MemoryFaultExit(Exit):
    flags: int = 0
    gpa: int = 0
    size: int = 0


@dataclass(frozen=True)
class UnknownExit(Exit):
    """Any exit reason kvmtest does not parse; keeps the hardware reason for the report."""

    hardware_exit_reason: int = 0


_REASON = struct.Struct("<I")
_IO = struct.Struct("<BBHIQ")
_EXIT_UNION = kvm_run.exit.offset


def parse_exit(run: kvm_run, view: memoryview | None = None, source=None) -> Exit:
    """Turn the exit described by `run` into a typed Exit.

    `view`, a memoryview of the vCPU's whole kvm_run mapping, makes the frequent I/O exit
    cheap to decode (the run loop passes it). `source`, (vcpu, KVM_RUN count), is what the
    exit keeps for respond() instead of `run` itself (see Exit._write_response).
    """
    if view is None:
        view = memoryview((ctypes.c_char * (ctypes.sizeof(run) + 4096)).from_address(ctypes.addressof(run))).cast("B")
    src = run if source is None else source
    reason = _REASON.unpack_from(view, 8)[0]
    if reason == C.KVM_EXIT_IO:
        direction, size, port, count, data_offset = _IO.unpack_from(view, _EXIT_UNION)
        data = bytes(view[data_offset: data_offset + size * count]) if direction else b""
        return IoExit(reason, src, direction, size, port, count, data_offset, data)
    e = run.exit
    if reason == C.KVM_EXIT_MMIO:
        m = e.mmio
        data = bytes(m.data[: m.len]) if m.is_write else b""
        return MmioExit(reason, src, m.phys_addr, m.len, bool(m.is_write), data)
    if reason == C.KVM_EXIT_HLT:
        return HltExit(reason, src)
    if reason == C.KVM_EXIT_SHUTDOWN:
        return ShutdownExit(reason, src)
    if reason == C.KVM_EXIT_INTR:
        return IntrExit(reason, src)
    if reason == C.KVM_EXIT_IRQ_WINDOW_OPEN:
        return IrqWindowOpenExit(reason, src)
    if reason == C.KVM_EXIT_DEBUG:
        d = e.debug.arch
        return DebugExit(reason, src, d.exception, d.pc, d.dr6, d.dr7)
    if reason == C.KVM_EXIT_INTERNAL_ERROR:
        i = e.internal
        return InternalErrorExit(reason, src, i.suberror, i.ndata, tuple(i.data[: min(i.ndata, 16)]))
    if reason == C.KVM_EXIT_FAIL_ENTRY:
        return FailEntryExit(reason, src, e.fail_entry.hardware_entry_failure_reason, e.fail_entry.cpu)
    if reason == C.KVM_EXIT_DIRTY_RING_FULL:
        return DirtyRingFullExit(reason, src)
    if reason == C.KVM_EXIT_IOAPIC_EOI:
        return IoapicEoiExit(reason, src, e.eoi.vector)
    if reason == C.KVM_EXIT_EXCEPTION:
        return ExceptionExit(reason, src, e.ex.exception, e.ex.error_code)
    if reason == C.KVM_EXIT_HYPERCALL:
        h = e.hypercall
        return HypercallExit(reason, src, h.nr, tuple(h.args), h.ret, h.flags)
    if reason in (C.KVM_EXIT_X86_RDMSR, C.KVM_EXIT_X86_WRMSR):
        m = e.msr
        return MsrExit(reason, src, m.error, m.reason, m.index, m.data)
    if reason == C.KVM_EXIT_SYSTEM_EVENT:
        s = e.system_event
        return SystemEventExit(reason, src, s.type, s.ndata, tuple(s.data[: min(s.ndata, 16)]))
    if reason == C.KVM_EXIT_MEMORY_FAULT:
        f = e.memory_fault
        return MemoryFaultExit(reason, src, f.flags, f.gpa, f.size)
    return UnknownExit(reason, src, e.hw.hardware_exit_reason)
