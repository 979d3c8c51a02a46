"""vCPU state structures: registers, FPU/XSAVE, events, LAPIC, MP state, debug, nested state
(<asm/kvm.h>; api.rst 4.11-4.45, 4.57, 4.87, 4.114, 4.131)."""

from ctypes import sizeof
from functools import lru_cache

from .base import KvmStruct, u8, u16, u32, u64


class kvm_regs(KvmStruct):
    """General-purpose registers, RIP and RFLAGS (KVM_GET_REGS / KVM_SET_REGS, api.rst 4.11-4.12)."""

    _fields_ = [
        (name, u64)
        for name in (
            "rax rbx rcx rdx rsi rdi rsp rbp r8 r9 r10 r11 r12 r13 r14 r15 rip rflags".split()
        )
    ]


class kvm_segment(KvmStruct):
    """One segment register with its hidden descriptor cache (kvm_sregs, api.rst 4.13)."""

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


class kvm_dtable(KvmStruct):
    """GDTR or IDTR: base and limit (kvm_sregs, api.rst 4.13)."""

    _fields_ = [("base", u64), ("limit", u16), ("padding", u16 * 3)]


KVM_NR_INTERRUPTS = 256
SEGMENT_NAMES = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")


class kvm_sregs(KvmStruct):
    """Segments, descriptor tables, control registers, EFER, APIC base and the pending-interrupt
    bitmap (KVM_GET_SREGS / KVM_SET_SREGS, api.rst 4.13-4.14)."""

    _fields_ = (
        [(name, kvm_segment) for name in SEGMENT_NAMES]
        + [("gdt", kvm_dtable), ("idt", kvm_dtable)]
        + [(name, u64) for name in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base")]
        + [("interrupt_bitmap", u64 * ((KVM_NR_INTERRUPTS + 63) // 64))]
    )


class kvm_sregs2(KvmStruct):
    """kvm_sregs without the interrupt bitmap, plus flags and the PAE PDPTRs (KVM_GET_SREGS2 /
    KVM_SET_SREGS2, api.rst 4.131-4.132)."""

    _fields_ = (
        [(name, kvm_segment) for name in SEGMENT_NAMES]
        + [("gdt", kvm_dtable), ("idt", kvm_dtable)]
        + [(name, u64) for name in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base")]
        # Two lists: in one literal a type checker joins c_uint64 and an array type to `object`.
        + [("flags", u64)] + [("pdptrs", u64 * 4)]
    )


class kvm_fpu(KvmStruct):
    """x87 and SSE state in FXSAVE layout (KVM_GET_FPU / KVM_SET_FPU, api.rst 4.22-4.23)."""

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


class kvm_xsave(KvmStruct):
    """The 4 KiB XSAVE area (KVM_GET_XSAVE / KVM_SET_XSAVE, api.rst 4.42-4.43); larger areas come
    from xsave_type (KVM_GET_XSAVE2, api.rst 4.134)."""

    _fields_ = [("region", u32 * 1024)]


@lru_cache(maxsize=16)
def xsave_type(nbytes: int) -> type:
    """The kvm_xsave type of `nbytes` bytes (KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2), for KVM_GET_XSAVE2):
    kvm_xsave itself up to 4096 bytes, else a kvm_xsave whose `region` holds nbytes rounded up to
    whole u32s. Build buffers with kvmtest.abi.buffers.xsave_buffer, which checks the size."""
    if nbytes <= sizeof(kvm_xsave):
        return kvm_xsave
    return type(f"kvm_xsave_{nbytes}", (KvmStruct,), {"_fields_": [("region", u32 * ((nbytes + 3) // 4))]})


class kvm_xcr(KvmStruct):
    """One extended control register (XCR0 is xcr 0) and its value (api.rst 4.44)."""

    _fields_ = [("xcr", u32), ("reserved", u32), ("value", u64)]


KVM_MAX_XCRS = 16


class kvm_xcrs(KvmStruct):
    """nr_xcrs valid kvm_xcr entries (KVM_GET_XCRS / KVM_SET_XCRS, api.rst 4.44-4.45)."""

    _fields_ = [("nr_xcrs", u32), ("flags", u32), ("xcrs", kvm_xcr * KVM_MAX_XCRS), ("padding", u64 * 16)]


class kvm_debugregs(KvmStruct):
    """DR0-DR3, DR6, DR7 and flags, which must be 0 (KVM_GET_DEBUGREGS / KVM_SET_DEBUGREGS,
    api.rst 4.33-4.34)."""

    _fields_ = [("db", u64 * 4), ("dr6", u64), ("dr7", u64), ("flags", u64), ("reserved", u64 * 9)]


class _exception_event(KvmStruct):
    _fields_ = [("injected", u8), ("nr", u8), ("has_error_code", u8), ("pending", u8), ("error_code", u32)]


class _interrupt_event(KvmStruct):
    _fields_ = [("injected", u8), ("nr", u8), ("soft", u8), ("shadow", u8)]


class _nmi_event(KvmStruct):
    _fields_ = [("injected", u8), ("pending", u8), ("masked", u8), ("pad", u8)]


class _smi_event(KvmStruct):
    _fields_ = [("smm", u8), ("pending", u8), ("smm_inside_nmi", u8), ("latched_init", u8)]


class _triple_fault_event(KvmStruct):
    _fields_ = [("pending", u8)]


class kvm_vcpu_events(KvmStruct):
    """Pending and injected exception, interrupt, NMI and SMI, the SIPI vector and the interrupt
    shadow; flags say which fields KVM_SET_VCPU_EVENTS takes (KVM_VCPUEVENT_VALID_*; api.rst
    4.31-4.32)."""

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


class kvm_lapic_state(KvmStruct):
    """The local APIC's 1 KiB register page, in the SDM's layout (KVM_GET_LAPIC / KVM_SET_LAPIC,
    api.rst 4.57-4.58)."""

    # char regs[1024] in the header; bytes here, since a ctypes char array stops at the first NUL.
    _fields_ = [("regs", u8 * 1024)]


class kvm_mp_state(KvmStruct):
    """KVM_MP_STATE_* (KVM_GET_MP_STATE / KVM_SET_MP_STATE, api.rst 4.38-4.39)."""

    _fields_ = [("mp_state", u32)]


class kvm_sync_regs(KvmStruct):
    """kvm_run.s.regs: registers, sregs and events synchronised through kvm_run (KVM_CAP_SYNC_REGS,
    api.rst 5)."""

    _fields_ = [("regs", kvm_regs), ("sregs", kvm_sregs), ("events", kvm_vcpu_events)]


class kvm_translation(KvmStruct):
    """A linear address in, its physical address and access rights out (KVM_TRANSLATE, api.rst 4.15)."""

    _fields_ = [
        ("linear_address", u64),
        ("physical_address", u64),
        ("valid", u8),
        ("writeable", u8),
        ("usermode", u8),
        ("pad", u8 * 5),
    ]


class kvm_interrupt(KvmStruct):
    """An interrupt vector to queue (KVM_INTERRUPT, api.rst 4.16)."""

    _fields_ = [("irq", u32)]


class kvm_x86_mce(KvmStruct):
    """A machine-check error to inject into one bank (KVM_X86_SET_MCE, api.rst; <linux/kvm.h>):
    the bank's IA32_MCi_STATUS/ADDR/MISC and the IA32_MCG_STATUS to report with it."""

    _fields_ = [("status", u64), ("addr", u64), ("misc", u64), ("mcg_status", u64), ("bank", u8),
                ("pad1", u8 * 7), ("pad2", u64 * 3)]


class kvm_signal_mask(KvmStruct):
    """Header of KVM_SET_SIGNAL_MASK's argument: `len` bytes of sigset follow (api.rst 4.21)."""

    _fields_ = [("len", u32)]


class kvm_guest_debug_arch(KvmStruct):
    """x86 debug registers for KVM_SET_GUEST_DEBUG: DR0-DR3 at 0-3, DR7 at 7 (api.rst 4.87)."""

    _fields_ = [("debugreg", u64 * 8)]


class kvm_guest_debug(KvmStruct):
    """KVM_GUESTDBG_* control bits and the debug registers (KVM_SET_GUEST_DEBUG, api.rst 4.87)."""

    _fields_ = [("control", u32), ("pad", u32), ("arch", kvm_guest_debug_arch)]


# KVM_GET/SET_NESTED_STATE (api.rst 4.114-4.115): a 128-byte header (the vmx/svm header union kept
# as bytes) followed by `size - 128` bytes of vendor data.
class kvm_nested_state(KvmStruct):
    """The 128-byte nested-state header (KVM_GET_NESTED_STATE, api.rst 4.114); nested_state_type
    adds the vendor data."""

    _fields_ = [("flags", u16), ("format", u16), ("size", u32), ("hdr", u8 * 120)]


@lru_cache(maxsize=16)
def nested_state_type(size: int) -> type:
    """kvm_nested_state with room for `size` bytes in all (header included; a size below the
    header's 128 bytes gives the bare header). Build buffers with
    kvmtest.abi.buffers.nested_state_buffer, which sets and checks `size`."""
    extra = max(0, size - sizeof(kvm_nested_state))
    return type(f"kvm_nested_state_{size}", (KvmStruct,),
                {"_fields_": kvm_nested_state._fields_ + [("data", u8 * extra)]})
