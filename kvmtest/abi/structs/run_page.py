"""struct kvm_run, the page KVM_RUN shares with user space, and its per-exit unions (api.rst 5)."""

from ctypes import Union, c_char

from .base import KvmStruct, u8, u16, u32, u64
from .vcpu_state import kvm_sync_regs


class _hw(KvmStruct):
    _fields_ = [("hardware_exit_reason", u64)]


class _fail_entry(KvmStruct):
    _fields_ = [("hardware_entry_failure_reason", u64), ("cpu", u32)]


class _ex(KvmStruct):
    _fields_ = [("exception", u32), ("error_code", u32)]


class _io(KvmStruct):
    _fields_ = [("direction", u8), ("size", u8), ("port", u16), ("count", u32), ("data_offset", u64)]


class kvm_debug_exit_arch(KvmStruct):
    """KVM_EXIT_DEBUG's x86 payload: the vector (#DB or #BP), RIP, DR6 and DR7 (api.rst 5)."""

    _fields_ = [("exception", u32), ("pad", u32), ("pc", u64), ("dr6", u64), ("dr7", u64)]


class _debug(KvmStruct):
    _fields_ = [("arch", kvm_debug_exit_arch)]


class _mmio(KvmStruct):
    _fields_ = [("phys_addr", u64), ("data", u8 * 8), ("len", u32), ("is_write", u8)]


class _hypercall(KvmStruct):
    # union { __u32 longmode; __u64 flags; } is read as `flags`.
    _fields_ = [("nr", u64), ("args", u64 * 6), ("ret", u64), ("flags", u64)]


class _tpr_access(KvmStruct):
    _fields_ = [("rip", u64), ("is_write", u32), ("pad", u32)]


class _internal(KvmStruct):
    _fields_ = [("suberror", u32), ("ndata", u32), ("data", u64 * 16)]


class _emulation_failure(KvmStruct):
    _fields_ = [("suberror", u32), ("ndata", u32), ("flags", u64), ("insn_size", u8), ("insn_bytes", u8 * 15)]


class _system_event(KvmStruct):
    # union { __u64 flags; __u64 data[16]; }: data[0] is flags.
    _fields_ = [("type", u32), ("ndata", u32), ("data", u64 * 16)]


class _msr(KvmStruct):
    _fields_ = [("error", u8), ("pad", u8 * 7), ("reason", u32), ("index", u32), ("data", u64)]


class _memory_fault(KvmStruct):
    _fields_ = [("flags", u64), ("gpa", u64), ("size", u64)]


class _eoi(KvmStruct):
    _fields_ = [("vector", u8)]


class _notify(KvmStruct):
    _fields_ = [("flags", u32)]


class _xen_hcall(KvmStruct):
    _fields_ = [("longmode", u32), ("cpl", u32), ("input", u64), ("result", u64), ("params", u64 * 6)]


class kvm_xen_exit(KvmStruct):
    """KVM_EXIT_XEN's payload: its type (KVM_EXIT_XEN_HCALL) and, for a hypercall, the caller's mode
    and CPL, the hypercall number, six parameters and the result user space writes (api.rst 5)."""

    # union { struct {...} hcall; } u: one member, read as `hcall` (ctypes aligns it to 8 as C does).
    _fields_ = [("type", u32), ("hcall", _xen_hcall)]


class _kvm_run_exit(Union):
    _fields_ = [
        ("hw", _hw),
        ("fail_entry", _fail_entry),
        ("ex", _ex),
        ("io", _io),
        ("debug", _debug),
        ("mmio", _mmio),
        ("hypercall", _hypercall),
        ("tpr_access", _tpr_access),
        ("internal", _internal),
        ("emulation_failure", _emulation_failure),
        ("eoi", _eoi),
        ("system_event", _system_event),
        ("msr", _msr),
        ("memory_fault", _memory_fault),
        ("notify", _notify),
        ("xen", kvm_xen_exit),
        ("padding", c_char * 256),
    ]


SYNC_REGS_SIZE_BYTES = 2048


class _kvm_run_s(Union):
    _fields_ = [("regs", kvm_sync_regs), ("padding", c_char * SYNC_REGS_SIZE_BYTES)]


class kvm_run(KvmStruct):
    """The vCPU's shared page (api.rst 5): inputs (request_interrupt_window, immediate_exit, cr8,
    kvm_dirty_regs), the exit reason and its payload in `exit`, and kvm_run.s (KVM_CAP_SYNC_REGS)."""

    _fields_ = [
        ("request_interrupt_window", u8),
        ("immediate_exit", u8),  # immediate_exit__unsafe in newer headers; same byte
        ("padding1", u8 * 6),
        ("exit_reason", u32),
        ("ready_for_interrupt_injection", u8),
        ("if_flag", u8),
        ("flags", u16),
        ("cr8", u64),
        ("apic_base", u64),
        ("exit", _kvm_run_exit),  # the kernel's anonymous union
        ("kvm_valid_regs", u64),
        ("kvm_dirty_regs", u64),
        ("s", _kvm_run_s),
    ]
