"""KVM_RUN exits as small frozen dataclasses, one per exit reason (kvmtest.exit_parsers turns a
kvm_run into one; UnknownExit stands for KVM_EXIT_UNKNOWN and for reasons kvmtest does not parse).

Each names itself in messages (`str(exit)`). An IN or MMIO-read exit can be answered with
`respond(...)`, which writes the data into kvm_run for KVM to complete the access on the
next KVM_RUN (api.rst 5. "The kvm_run structure", KVM_EXIT_IO / KVM_EXIT_MMIO).

An exit from Vcpu.run() remembers its vCPU and which KVM_RUN produced it, not the mapping:
a response after the vCPU closed raises ClosedError, and one after a later KVM_RUN (which
reused kvm_run for another exit) raises StaleExitError; neither touches the memory.
"""

import ctypes
from dataclasses import dataclass, field

from .abi import constants as C
from .errors import BadArgumentError, KvmtestError
from .x86 import vector_name


@dataclass(frozen=True)
class Exit:
    """One KVM_RUN exit: kvm_run.exit_reason (`reason`) and, per subclass, its union member."""

    reason: int
    _run: object = field(default=None, repr=False, compare=False)

    @property
    def reason_name(self) -> str:
        """The exit reason's KVM_EXIT_* name (KVM_EXIT_unknown(N) for one kvmtest does not know)."""
        return C.EXIT_REASON_NAMES.name(self.reason)

    def __str__(self):
        details = ", ".join(
            f"{k}={v:#x}" if isinstance(v, int) else f"{k}={v!r}"
            for k, v in self.__dict__.items() if k not in ("reason", "_run")
        )
        return f"{self.reason_name}({details})" if details else self.reason_name

    def trace_parts(self) -> tuple:
        """This exit's entry in the trace of recent ioctls and exits (kvmtest.ioctl.recent), where
        Vcpu.run() puts each exit it returns: the vCPU's name, "exit" and the exit."""
        source = self._run
        return (source[0].name if isinstance(source, tuple) else "?", "exit", self)

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
    """KVM_EXIT_IO: port I/O the kernel did not handle; `data` holds what an OUT wrote."""

    direction: int = 0
    size: int = 0
    port: int = 0
    count: int = 0
    data_offset: int = 0
    data: bytes = b""

    @property
    def is_in(self) -> bool:
        """Whether the guest ran IN/INS (KVM_EXIT_IO_IN): respond() supplies the data it reads."""
        return self.direction == C.KVM_EXIT_IO_IN

    @property
    def is_out(self) -> bool:
        """Whether the guest ran OUT/OUTS (KVM_EXIT_IO_OUT): `data` holds what it wrote."""
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
    """KVM_EXIT_MMIO: an access to guest physical memory no memslot backs; `data`: a write's bytes."""

    phys_addr: int = 0
    len: int = 0
    is_write: bool = False
    data: bytes = b""

    @property
    def value(self) -> int:
        """The bytes a write stored (the first `len` of kvm_run.mmio.data), as a little-endian integer."""
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
    """KVM_EXIT_HLT: the guest executed HLT with no in-kernel local APIC to wait in."""


@dataclass(frozen=True)
class ShutdownExit(Exit):
    """KVM_EXIT_SHUTDOWN: the vCPU shut down (a triple fault, SDM Vol. 3A 6.15 #DF)."""


@dataclass(frozen=True)
class IntrExit(Exit):
    """KVM_RUN returned EINTR (a signal or immediate_exit); exit_reason KVM_EXIT_INTR."""


@dataclass(frozen=True)
class IrqWindowOpenExit(Exit):
    """KVM_EXIT_IRQ_WINDOW_OPEN: the guest can take an interrupt (kvm_run.request_interrupt_window)."""


@dataclass(frozen=True)
class DebugExit(Exit):
    """KVM_EXIT_DEBUG: a KVM_SET_GUEST_DEBUG event; struct kvm_debug_exit_arch's fields."""

    exception: int = 0
    pc: int = 0
    dr6: int = 0
    dr7: int = 0

    def __str__(self):
        return (f"KVM_EXIT_DEBUG({vector_name(self.exception)} pc={self.pc:#x} "
                f"dr6={self.dr6:#x} dr7={self.dr7:#x})")


@dataclass(frozen=True)
class InternalErrorExit(Exit):
    """KVM_EXIT_INTERNAL_ERROR: KVM could not go on (emulation failure, ...); suberror and data."""

    suberror: int = 0
    ndata: int = 0
    data: tuple = ()

    @property
    def suberror_name(self) -> str:
        """`suberror`'s KVM_INTERNAL_ERROR_* name (api.rst 5, KVM_EXIT_INTERNAL_ERROR)."""
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
    """KVM_EXIT_FAIL_ENTRY: the hardware refused to enter the guest."""

    hardware_entry_failure_reason: int = 0
    cpu: int = 0


@dataclass(frozen=True)
class ExceptionExit(Exit):
    """KVM_EXIT_EXCEPTION: an exception the kernel hands to user space (not used on x86 today)."""

    exception: int = 0
    error_code: int = 0


@dataclass(frozen=True)
class HypercallExit(Exit):
    """KVM_EXIT_HYPERCALL: a hypercall KVM forwards to user space (KVM_CAP_EXIT_HYPERCALL)."""

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
class XenExit(Exit):
    """KVM_EXIT_XEN (api.rst 5; KVM_XEN_HVM_CONFIG with KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL, 4.28). For
    type KVM_EXIT_XEN_HCALL: whether the caller ran in 64-bit mode (`longmode`), its CPL, the
    hypercall number (`input`) and six parameters, which the Xen ABI takes from RDI, RSI, RDX, R10,
    R8, R9 in 64-bit mode and from EBX, ECX, EDX, ESI, EDI, EBP otherwise (Xen's public
    arch-x86/xen-x86_64.h and xen-x86_32.h)."""

    type: int = 0
    longmode: int = 0
    cpl: int = 0
    input: int = 0
    result: int = 0
    params: tuple = ()

    def respond(self, result: int) -> None:
        """The hypercall's result, which the guest finds in RAX when KVM_RUN resumes it ("Userspace is
        expected to place the hypercall result into the appropriate field", api.rst 5); a negative
        value is stored as two's complement."""
        if self.type != C.KVM_EXIT_XEN_HCALL:
            raise BadArgumentError(f"{self}: only a KVM_EXIT_XEN_HCALL exit takes a result")
        if isinstance(result, bool) or not isinstance(result, int) or not -(1 << 63) <= result < 1 << 64:
            raise BadArgumentError(f"{self}: result {result!r} is not a 64-bit integer")

        def write(run, _size):
            run.exit.xen.hcall.result = result & (2**64 - 1)

        self._write_response(write)

    def __str__(self):
        if self.type != C.KVM_EXIT_XEN_HCALL:
            return f"KVM_EXIT_XEN(type={self.type})"
        params = " ".join(f"{p:#x}" for p in self.params)
        return (f"KVM_EXIT_XEN(KVM_EXIT_XEN_HCALL input={self.input:#x} longmode={self.longmode} cpl={self.cpl} "
                f"params=[{params}])")


@dataclass(frozen=True)
class MsrExit(Exit):
    """KVM_EXIT_X86_RDMSR / KVM_EXIT_X86_WRMSR (KVM_CAP_X86_USER_SPACE_MSR)."""

    error: int = 0
    msr_reason: int = 0
    index: int = 0
    data: int = 0

    @property
    def is_write(self) -> bool:
        """Whether the guest ran WRMSR (KVM_EXIT_X86_WRMSR, `data` holds the value) rather than RDMSR
        (api.rst 5, KVM_EXIT_X86_RDMSR / KVM_EXIT_X86_WRMSR)."""
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
    """KVM_EXIT_SYSTEM_EVENT: shutdown, reset, crash, ... of the VM; type and data."""

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
    """KVM_EXIT_MEMORY_FAULT: KVM could not resolve a guest page fault (api.rst KVM_CAP_MEMORY_FAULT_INFO)."""

    flags: int = 0
    gpa: int = 0
    size: int = 0


@dataclass(frozen=True)
class UnknownExit(Exit):
    """KVM_EXIT_UNKNOWN, or an exit reason kvmtest does not parse.

    Only KVM_EXIT_UNKNOWN defines its payload (api.rst 5, struct kvm_run: "KVM_EXIT_UNKNOWN ...
    hardware_exit_reason"): there hardware_exit_reason holds it. For any other reason it is None,
    and the report gives the reason's name and number and the exit union's bytes (`raw`, all 256,
    as KVM left them), without reading a meaning into them."""

    hardware_exit_reason: int | None = None
    raw: bytes = field(default=b"", repr=False)

    def __str__(self):
        if self.hardware_exit_reason is not None:
            return f"KVM_EXIT_UNKNOWN(hardware_exit_reason={self.hardware_exit_reason:#x})"
        shown = self.raw.rstrip(b"\0")
        data = shown[:_RAW_SHOWN].hex(" ") + (" ..." if len(shown) > _RAW_SHOWN else "") if shown else "all zero"
        return f"{self.reason_name}(reason {self.reason}, not parsed by kvmtest; exit union: {data})"


_RAW_SHOWN = 64  # bytes of an unparsed exit union a message shows
