"""ctypes mirrors of the x86 structures in <linux/kvm.h> and <asm/kvm.h>.

Names and field names are exactly the kernel's, so a reader can hold this file next to the
header. tests/test_abi.py compiles a C program against the installed header and compares
every size and offset below; structures newer than that header are compared with the
values the upstream header documents.
"""

from ctypes import (
    Structure,
    Union,
    c_char,
    c_int16,
    c_int32,
    c_int64,
    c_uint8,
    c_uint16,
    c_uint32,
    c_uint64,
    sizeof,
)

u8, u16, u32, u64, s16, s32 = c_uint8, c_uint16, c_uint32, c_uint64, c_int16, c_int32


class _Struct(Structure):
    """Structure with a readable repr (used in failure messages)."""

    def __repr__(self):
        parts = []
        for name, *_ in self._fields_:
            if name.startswith(("pad", "reserved")):
                continue
            value = getattr(self, name)
            if isinstance(value, int):
                parts.append(f"{name}={value:#x}")
            elif isinstance(value, (Structure, Union)):
                parts.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"


# --- registers -------------------------------------------------------------------------


class kvm_regs(_Struct):
    _fields_ = [
        (name, u64)
        for name in (
            "rax rbx rcx rdx rsi rdi rsp rbp r8 r9 r10 r11 r12 r13 r14 r15 rip rflags".split()
        )
    ]


class kvm_segment(_Struct):
    _fields_ = [
        ("base", u64),
        ("limit", u32),
        ("selector", u16),
        ("type", u8),
        ("present", u8),
        ("dpl", u8),
        ("db", u8),
        ("s", u8),
        ("l", u8),
        ("g", u8),
        ("avl", u8),
        ("unusable", u8),
        ("padding", u8),
    ]


class kvm_dtable(_Struct):
    _fields_ = [("base", u64), ("limit", u16), ("padding", u16 * 3)]


KVM_NR_INTERRUPTS = 256
SEGMENT_NAMES = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")


class kvm_sregs(_Struct):
    _fields_ = (
        [(name, kvm_segment) for name in SEGMENT_NAMES]
        + [("gdt", kvm_dtable), ("idt", kvm_dtable)]
        + [(name, u64) for name in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base")]
        + [("interrupt_bitmap", u64 * ((KVM_NR_INTERRUPTS + 63) // 64))]
    )


class kvm_sregs2(_Struct):
    _fields_ = (
        [(name, kvm_segment) for name in SEGMENT_NAMES]
        + [("gdt", kvm_dtable), ("idt", kvm_dtable)]
        + [(name, u64) for name in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base")]
        + [("flags", u64), ("pdptrs", u64 * 4)]
    )


class kvm_fpu(_Struct):
    _fields_ = [
        ("fpr", (u8 * 16) * 8),
        ("fcw", u16),
        ("fsw", u16),
        ("ftwx", u8),
        ("pad1", u8),
        ("last_opcode", u16),
        ("last_ip", u64),
        ("last_dp", u64),
        ("xmm", (u8 * 16) * 16),
        ("mxcsr", u32),
        ("pad2", u32),
    ]


class kvm_xsave(_Struct):
    _fields_ = [("region", u32 * 1024)]


def xsave_type(nbytes: int):
    """A kvm_xsave of `nbytes` (KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) bytes, for KVM_GET_XSAVE2)."""
    if nbytes <= sizeof(kvm_xsave):
        return kvm_xsave
    return type(f"kvm_xsave_{nbytes}", (_Struct,), {"_fields_": [("region", u32 * ((nbytes + 3) // 4))]})


class kvm_xcr(_Struct):
    _fields_ = [("xcr", u32), ("reserved", u32), ("value", u64)]


KVM_MAX_XCRS = 16


class kvm_xcrs(_Struct):
    _fields_ = [("nr_xcrs", u32), ("flags", u32), ("xcrs", kvm_xcr * KVM_MAX_XCRS), ("padding", u64 * 16)]


class kvm_debugregs(_Struct):
    _fields_ = [("db", u64 * 4), ("dr6", u64), ("dr7", u64), ("flags", u64), ("reserved", u64 * 9)]


class _exception_event(_Struct):
    _fields_ = [("injected", u8), ("nr", u8), ("has_error_code", u8), ("pending", u8), ("error_code", u32)]


class _interrupt_event(_Struct):
    _fields_ = [("injected", u8), ("nr", u8), ("soft", u8), ("shadow", u8)]


class _nmi_event(_Struct):
    _fields_ = [("injected", u8), ("pending", u8), ("masked", u8), ("pad", u8)]


class _smi_event(_Struct):
    _fields_ = [("smm", u8), ("pending", u8), ("smm_inside_nmi", u8), ("latched_init", u8)]


class _triple_fault_event(_Struct):
    _fields_ = [("pending", u8)]


class kvm_vcpu_events(_Struct):
    _fields_ = [
        ("exception", _exception_event),
        ("interrupt", _interrupt_event),
        ("nmi", _nmi_event),
        ("sipi_vector", u32),
        ("flags", u32),
        ("smi", _smi_event),
        ("triple_fault", _triple_fault_event),
        ("reserved", u8 * 26),
        ("exception_has_payload", u8),
        ("exception_payload", u64),
    ]


class kvm_lapic_state(_Struct):
    # char regs[1024] in the header; bytes here, since a ctypes char array stops at the first NUL.
    _fields_ = [("regs", u8 * 1024)]


class kvm_mp_state(_Struct):
    _fields_ = [("mp_state", u32)]


class kvm_sync_regs(_Struct):
    _fields_ = [("regs", kvm_regs), ("sregs", kvm_sregs), ("events", kvm_vcpu_events)]


# --- CPUID and MSRs ----------------------------------------------------------------------


class kvm_cpuid_entry2(_Struct):
    _fields_ = [
        ("function", u32),
        ("index", u32),
        ("flags", u32),
        ("eax", u32),
        ("ebx", u32),
        ("ecx", u32),
        ("edx", u32),
        ("padding", u32 * 3),
    ]


class kvm_cpuid2(_Struct):
    """Header only; the flexible `entries` array follows (see cpuid2_type)."""

    _fields_ = [("nent", u32), ("padding", u32)]


def cpuid2_type(nent: int):
    """kvm_cpuid2 with room for `nent` entries."""
    return type(f"kvm_cpuid2_{nent}", (_Struct,), {"_fields_": kvm_cpuid2._fields_ + [("entries", kvm_cpuid_entry2 * nent)]})


class kvm_msr_entry(_Struct):
    _fields_ = [("index", u32), ("reserved", u32), ("data", u64)]


class kvm_msrs(_Struct):
    _fields_ = [("nmsrs", u32), ("pad", u32)]


def msrs_type(n: int):
    return type(f"kvm_msrs_{n}", (_Struct,), {"_fields_": kvm_msrs._fields_ + [("entries", kvm_msr_entry * n)]})


class kvm_msr_list(_Struct):
    _fields_ = [("nmsrs", u32)]


def msr_list_type(n: int):
    return type(f"kvm_msr_list_{n}", (_Struct,), {"_fields_": kvm_msr_list._fields_ + [("indices", u32 * n)]})


class kvm_msr_filter_range(_Struct):
    _fields_ = [("flags", u32), ("nmsrs", u32), ("base", u32), ("bitmap", u64)]


KVM_MSR_FILTER_MAX_RANGES = 16


class kvm_msr_filter(_Struct):
    _fields_ = [("flags", u32), ("ranges", kvm_msr_filter_range * KVM_MSR_FILTER_MAX_RANGES)]


# --- memory ---------------------------------------------------------------------------------


class kvm_userspace_memory_region(_Struct):
    _fields_ = [
        ("slot", u32),
        ("flags", u32),
        ("guest_phys_addr", u64),
        ("memory_size", u64),
        ("userspace_addr", u64),
    ]


class kvm_userspace_memory_region2(_Struct):
    _fields_ = [
        ("slot", u32),
        ("flags", u32),
        ("guest_phys_addr", u64),
        ("memory_size", u64),
        ("userspace_addr", u64),
        ("guest_memfd_offset", u64),
        ("guest_memfd", u32),
        ("pad1", u32),
        ("pad2", u64 * 14),
    ]


class kvm_dirty_log(_Struct):
    # The kernel's union { void __user *dirty_bitmap; __u64 padding2; } is a plain u64 here.
    _fields_ = [("slot", u32), ("padding1", u32), ("dirty_bitmap", u64)]


class kvm_clear_dirty_log(_Struct):
    _fields_ = [("slot", u32), ("num_pages", u32), ("first_page", u64), ("dirty_bitmap", u64)]


class kvm_create_guest_memfd(_Struct):
    _fields_ = [("size", u64), ("flags", u64), ("reserved", u64 * 6)]


class kvm_coalesced_mmio_zone(_Struct):
    _fields_ = [("addr", u64), ("size", u32), ("pio", u32)]


class kvm_coalesced_mmio(_Struct):
    """One queued write; `pio` shares its union with `pad`."""
    _fields_ = [("phys_addr", u64), ("len", u32), ("pio", u32), ("data", u8 * 8)]


class kvm_coalesced_mmio_ring(_Struct):
    """Head of the ring page; kvm_coalesced_mmio entries follow at offset 8 (flexible array)."""
    _fields_ = [("first", u32), ("last", u32)]


class kvm_translation(_Struct):
    _fields_ = [
        ("linear_address", u64),
        ("physical_address", u64),
        ("valid", u8),
        ("writeable", u8),
        ("usermode", u8),
        ("pad", u8 * 5),
    ]


# --- interrupts -------------------------------------------------------------------------------


class kvm_interrupt(_Struct):
    _fields_ = [("irq", u32)]


class kvm_irq_level(_Struct):
    # union { __u32 irq; __s32 status; }: `irq` on the way in, `status` on the way out.
    _fields_ = [("irq", u32), ("level", u32)]

    @property
    def status(self) -> int:
        return s32(self.irq).value


class kvm_dirty_gfn(_Struct):
    """One dirty-ring entry (api.rst 8.29): flags (KVM_DIRTY_GFN_F_*), slot (as_id << 16 | id),
    and the page index relative to the slot's base."""

    _fields_ = [("flags", u32), ("slot", u32), ("offset", u64)]


class kvm_irq_routing_irqchip(_Struct):
    _fields_ = [("irqchip", u32), ("pin", u32)]


class kvm_irq_routing_msi(_Struct):
    _fields_ = [("address_lo", u32), ("address_hi", u32), ("data", u32), ("devid", u32)]


class _irq_routing_u(Union):
    _fields_ = [("irqchip", kvm_irq_routing_irqchip), ("msi", kvm_irq_routing_msi), ("pad", u32 * 8)]


class kvm_irq_routing_entry(_Struct):
    _fields_ = [("gsi", u32), ("type", u32), ("flags", u32), ("pad", u32), ("u", _irq_routing_u)]


class kvm_irq_routing(_Struct):
    """Header only; `entries` follow (see irq_routing_type)."""

    _fields_ = [("nr", u32), ("flags", u32)]


def irq_routing_type(n: int):
    return type(f"kvm_irq_routing_{n}", (_Struct,),
                {"_fields_": kvm_irq_routing._fields_ + [("entries", kvm_irq_routing_entry * n)]})


class kvm_irqchip(_Struct):
    _fields_ = [("chip_id", u32), ("pad", u32), ("chip", u8 * 512)]


class kvm_pit_config(_Struct):
    _fields_ = [("flags", u32), ("pad", u32 * 15)]


# KVM_GET/SET_IRQCHIP payloads (the kvm_irqchip.chip union; <asm/kvm.h>)
class kvm_pic_state(_Struct):
    _fields_ = [(name, u8) for name in (
        "last_irr", "irr", "imr", "isr", "priority_add", "irq_base", "read_reg_select", "poll",
        "special_mask", "init_state", "auto_eoi", "rotate_on_auto_eoi", "special_fully_nested_mode",
        "init4", "elcr", "elcr_mask")]


KVM_IOAPIC_NUM_PINS = 24


class kvm_ioapic_state(_Struct):
    # redirtbl[] is a union of the raw 64-bit entry ("bits") and its bit-fields; kept as the raw
    # entry: vector 7:0, delivery mode 10:8, dest mode 11, delivery status 12, polarity 13,
    # remote IRR 14, trigger mode 15, mask 16, destination 63:56 (82093AA datasheet 3.2.4).
    _fields_ = [("base_address", u64), ("ioregsel", u32), ("id", u32), ("irr", u32), ("pad", u32),
                ("redirtbl", u64 * KVM_IOAPIC_NUM_PINS)]


# KVM_GET/SET_PIT2 (api.rst KVM_GET_PIT2)
class kvm_pit_channel_state(_Struct):
    _fields_ = [("count", u32), ("latched_count", u16), ("count_latched", u8), ("status_latched", u8),
                ("status", u8), ("read_state", u8), ("write_state", u8), ("write_latch", u8),
                ("rw_mode", u8), ("mode", u8), ("bcd", u8), ("gate", u8), ("count_load_time", c_int64)]


class kvm_pit_state2(_Struct):
    _fields_ = [("channels", kvm_pit_channel_state * 3), ("flags", u32), ("reserved", u32 * 9)]


# KVM_GET/SET_CLOCK (api.rst KVM_GET_CLOCK)
class kvm_clock_data(_Struct):
    _fields_ = [("clock", u64), ("flags", u32), ("pad0", u32), ("realtime", u64), ("host_tsc", u64),
                ("pad", u32 * 4)]


class kvm_msi(_Struct):
    _fields_ = [("address_lo", u32), ("address_hi", u32), ("data", u32), ("flags", u32), ("devid", u32), ("pad", u8 * 12)]


class kvm_irqfd(_Struct):
    _fields_ = [("fd", u32), ("gsi", u32), ("flags", u32), ("resamplefd", u32), ("pad", u8 * 16)]


class kvm_ioeventfd(_Struct):
    _fields_ = [("datamatch", u64), ("addr", u64), ("len", u32), ("fd", s32), ("flags", u32), ("pad", u8 * 36)]


# --- control ------------------------------------------------------------------------------------


class kvm_enable_cap(_Struct):
    _fields_ = [("cap", u32), ("flags", u32), ("args", u64 * 4), ("pad", u8 * 64)]


class kvm_device_attr(_Struct):
    """KVM_{GET,SET,HAS}_DEVICE_ATTR; on a vCPU fd with KVM_CAP_VCPU_ATTRIBUTES (devices/vcpu.rst)."""
    _fields_ = [("flags", u32), ("group", u32), ("attr", u64), ("addr", u64)]


# KVM_GET/SET_NESTED_STATE (api.rst KVM_GET_NESTED_STATE): a 128-byte header (the vmx/svm header
# union kept as bytes) followed by `size - 128` bytes of vendor data.
class kvm_nested_state(_Struct):
    _fields_ = [("flags", u16), ("format", u16), ("size", u32), ("hdr", u8 * 120)]


def nested_state_type(size: int):
    extra = max(0, size - sizeof(kvm_nested_state))
    return type(f"kvm_nested_state_{size}", (_Struct,), {"_fields_": kvm_nested_state._fields_ + [("data", u8 * extra)]})


class kvm_guest_debug_arch(_Struct):
    _fields_ = [("debugreg", u64 * 8)]


class kvm_guest_debug(_Struct):
    _fields_ = [("control", u32), ("pad", u32), ("arch", kvm_guest_debug_arch)]


class kvm_signal_mask(_Struct):
    _fields_ = [("len", u32)]


# --- binary statistics (Documentation/virt/kvm/api.rst, KVM_GET_STATS_FD) -----------------------


class kvm_stats_header(_Struct):
    _fields_ = [
        ("flags", u32),
        ("name_size", u32),
        ("num_desc", u32),
        ("id_offset", u32),
        ("desc_offset", u32),
        ("data_offset", u32),
    ]


class kvm_stats_desc(_Struct):
    """Fixed part; `name[name_size]` follows."""

    _fields_ = [("flags", u32), ("exponent", s16), ("size", u16), ("offset", u32), ("bucket_size", u32)]


# --- kvm_run -----------------------------------------------------------------------------------------


class _hw(_Struct):
    _fields_ = [("hardware_exit_reason", u64)]


class _fail_entry(_Struct):
    _fields_ = [("hardware_entry_failure_reason", u64), ("cpu", u32)]


class _ex(_Struct):
    _fields_ = [("exception", u32), ("error_code", u32)]


class _io(_Struct):
    _fields_ = [("direction", u8), ("size", u8), ("port", u16), ("count", u32), ("data_offset", u64)]


class kvm_debug_exit_arch(_Struct):
    _fields_ = [("exception", u32), ("pad", u32), ("pc", u64), ("dr6", u64), ("dr7", u64)]


class _debug(_Struct):
    _fields_ = [("arch", kvm_debug_exit_arch)]


class _mmio(_Struct):
    _fields_ = [("phys_addr", u64), ("data", u8 * 8), ("len", u32), ("is_write", u8)]


class _hypercall(_Struct):
    # union { __u32 longmode; __u64 flags; } is read as `flags`.
    _fields_ = [("nr", u64), ("args", u64 * 6), ("ret", u64), ("flags", u64)]


class _tpr_access(_Struct):
    _fields_ = [("rip", u64), ("is_write", u32), ("pad", u32)]


class _internal(_Struct):
    _fields_ = [("suberror", u32), ("ndata", u32), ("data", u64 * 16)]


class _emulation_failure(_Struct):
    _fields_ = [("suberror", u32), ("ndata", u32), ("flags", u64), ("insn_size", u8), ("insn_bytes", u8 * 15)]


class _system_event(_Struct):
    # union { __u64 flags; __u64 data[16]; }: data[0] is flags.
    _fields_ = [("type", u32), ("ndata", u32), ("data", u64 * 16)]


class _msr(_Struct):
    _fields_ = [("error", u8), ("pad", u8 * 7), ("reason", u32), ("index", u32), ("data", u64)]


class _memory_fault(_Struct):
    _fields_ = [("flags", u64), ("gpa", u64), ("size", u64)]


class _eoi(_Struct):
    _fields_ = [("vector", u8)]


class _notify(_Struct):
    _fields_ = [("flags", u32)]


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
        ("padding", c_char * 256),
    ]


SYNC_REGS_SIZE_BYTES = 2048


class _kvm_run_s(Union):
    _fields_ = [("regs", kvm_sync_regs), ("padding", c_char * SYNC_REGS_SIZE_BYTES)]


class kvm_run(_Struct):
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


# Structures whose layout tests/test_abi.py checks; the C side names them `struct <name>`.
ABI_STRUCTS = [
    kvm_regs, kvm_segment, kvm_dtable, kvm_sregs, kvm_sregs2, kvm_fpu, kvm_xsave, kvm_xcr,
    kvm_xcrs, kvm_debugregs, kvm_vcpu_events, kvm_lapic_state, kvm_mp_state, kvm_sync_regs,
    kvm_cpuid_entry2, kvm_cpuid2, kvm_msr_entry, kvm_msrs, kvm_msr_list, kvm_msr_filter_range,
    kvm_msr_filter, kvm_userspace_memory_region, kvm_userspace_memory_region2, kvm_dirty_log,
    kvm_clear_dirty_log, kvm_dirty_gfn, kvm_create_guest_memfd, kvm_coalesced_mmio_zone, kvm_coalesced_mmio,
    kvm_coalesced_mmio_ring, kvm_translation,
    kvm_interrupt, kvm_irq_level, kvm_irq_routing_irqchip, kvm_irq_routing_msi, kvm_irq_routing_entry,
    kvm_irq_routing, kvm_irqchip, kvm_pit_config, kvm_pic_state, kvm_ioapic_state, kvm_pit_channel_state,
    kvm_pit_state2, kvm_clock_data, kvm_device_attr, kvm_nested_state, kvm_msi, kvm_irqfd,
    kvm_ioeventfd, kvm_enable_cap, kvm_guest_debug_arch, kvm_guest_debug, kvm_signal_mask,
    kvm_stats_header, kvm_stats_desc, kvm_debug_exit_arch, kvm_run,
]

assert sizeof(kvm_run) == 304 + SYNC_REGS_SIZE_BYTES
