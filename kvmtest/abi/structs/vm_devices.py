"""VM-level structures: memslots, dirty logs, coalesced MMIO, interrupt routing, the in-kernel
irqchip and PIT, kvmclock, eventfds, capabilities, device attributes and binary stats (api.rst 4.8,
4.24-4.30, 4.35, 4.37, 4.52, 4.59, 4.71-4.75, 4.80, 4.116-4.117, 4.133, 4.140, 4.142; 8.29)."""

from ctypes import Union, c_int64
from functools import lru_cache

from .base import KvmStruct, s16, s32, u8, u16, u32, u64

# --- memory ---------------------------------------------------------------------------------


class kvm_userspace_memory_region(KvmStruct):
    """A memslot: slot (bits 15:0 id, 31:16 address space), KVM_MEM_* flags, guest physical base,
    size in bytes and the backing host address (KVM_SET_USER_MEMORY_REGION, api.rst 4.35)."""

    _fields_ = [
        ("slot", u32),
        ("flags", u32),
        ("guest_phys_addr", u64),
        ("memory_size", u64),
        ("userspace_addr", u64),
    ]


class kvm_userspace_memory_region2(KvmStruct):
    """kvm_userspace_memory_region plus a guest_memfd and its offset (KVM_SET_USER_MEMORY_REGION2,
    api.rst 4.140)."""

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


class kvm_dirty_log(KvmStruct):
    """A slot and the user address of its bitmap, one bit per page (KVM_GET_DIRTY_LOG, api.rst 4.8)."""

    # The kernel's union { void __user *dirty_bitmap; __u64 padding2; } is a plain u64 here.
    _fields_ = [("slot", u32), ("padding1", u32), ("dirty_bitmap", u64)]


class kvm_clear_dirty_log(KvmStruct):
    """Pages [first_page, first_page + num_pages) of a slot to re-protect, one bitmap bit each
    (KVM_CLEAR_DIRTY_LOG, api.rst 4.117)."""

    _fields_ = [("slot", u32), ("num_pages", u32), ("first_page", u64), ("dirty_bitmap", u64)]


class kvm_create_guest_memfd(KvmStruct):
    """Size in bytes (page multiple) and flags of a new guest_memfd (KVM_CREATE_GUEST_MEMFD, api.rst 4.142)."""

    _fields_ = [("size", u64), ("flags", u64), ("reserved", u64 * 6)]


class kvm_pre_fault_memory(KvmStruct):
    """A guest physical range for KVM_PRE_FAULT_MEMORY (api.rst 4.143): KVM maps [gpa, gpa + size)
    ahead of use and leaves in gpa/size what it has not mapped yet; flags must be 0."""

    _fields_ = [("gpa", u64), ("size", u64), ("flags", u64), ("padding", u64 * 5)]


class kvm_coalesced_mmio_zone(KvmStruct):
    """A guest physical (or, with pio = 1, port) range whose writes are queued in the ring
    (KVM_(UN)REGISTER_COALESCED_MMIO, api.rst 4.116)."""

    _fields_ = [("addr", u64), ("size", u32), ("pio", u32)]


class kvm_coalesced_mmio(KvmStruct):
    """One queued write; `pio` shares its union with `pad`."""

    _fields_ = [("phys_addr", u64), ("len", u32), ("pio", u32), ("data", u8 * 8)]


class kvm_coalesced_mmio_ring(KvmStruct):
    """Head of the ring page; kvm_coalesced_mmio entries follow at offset 8 (flexible array)."""

    _fields_ = [("first", u32), ("last", u32)]


class kvm_dirty_gfn(KvmStruct):
    """One dirty-ring entry (api.rst 8.29): flags (KVM_DIRTY_GFN_F_*), slot (as_id << 16 | id),
    and the page index relative to the slot's base."""

    _fields_ = [("flags", u32), ("slot", u32), ("offset", u64)]


# --- interrupts -------------------------------------------------------------------------------


class kvm_irq_level(KvmStruct):
    """A GSI and its level (KVM_IRQ_LINE, KVM_IRQ_LINE_STATUS; api.rst 4.25)."""

    # union { __u32 irq; __s32 status; }: `irq` on the way in, `status` on the way out.
    _fields_ = [("irq", u32), ("level", u32)]

    @property
    def status(self) -> int:
        """KVM_IRQ_LINE_STATUS's answer: >0 delivered, 0 masked, <0 coalesced."""
        return s32(self.irq).value


class kvm_irq_routing_irqchip(KvmStruct):
    """Route to an in-kernel chip's pin (KVM_IRQ_ROUTING_IRQCHIP, api.rst 4.52)."""

    _fields_ = [("irqchip", u32), ("pin", u32)]


class kvm_irq_routing_msi(KvmStruct):
    """Route to an MSI message (KVM_IRQ_ROUTING_MSI, api.rst 4.52)."""

    _fields_ = [("address_lo", u32), ("address_hi", u32), ("data", u32), ("devid", u32)]


class _irq_routing_u(Union):
    _fields_ = [("irqchip", kvm_irq_routing_irqchip), ("msi", kvm_irq_routing_msi), ("pad", u32 * 8)]


class kvm_irq_routing_entry(KvmStruct):
    """One GSI route: gsi, type (KVM_IRQ_ROUTING_*), flags and the irqchip or MSI target (api.rst 4.52)."""

    _fields_ = [("gsi", u32), ("type", u32), ("flags", u32), ("pad", u32), ("u", _irq_routing_u)]


class kvm_irq_routing(KvmStruct):
    """Header only: `nr` kvm_irq_routing_entry follow (see irq_routing_type; KVM_SET_GSI_ROUTING,
    api.rst 4.52)."""

    _fields_ = [("nr", u32), ("flags", u32)]


@lru_cache(maxsize=16)
def irq_routing_type(n: int) -> type:
    """The kvm_irq_routing type with room for `n` entries, cached."""
    return type(f"kvm_irq_routing_{n}", (KvmStruct,),
                {"_fields_": kvm_irq_routing._fields_ + [("entries", kvm_irq_routing_entry * n)]})


class kvm_irqchip(KvmStruct):
    """One in-kernel chip's state: chip_id (KVM_IRQCHIP_*) and 512 bytes holding a kvm_pic_state or
    kvm_ioapic_state (KVM_GET_IRQCHIP / KVM_SET_IRQCHIP, api.rst 4.26-4.27)."""

    _fields_ = [("chip_id", u32), ("pad", u32), ("chip", u8 * 512)]


class kvm_pit_config(KvmStruct):
    """KVM_CREATE_PIT2's flags (KVM_PIT_SPEAKER_DUMMY; api.rst 4.71)."""

    _fields_ = [("flags", u32), ("pad", u32 * 15)]


class kvm_reinject_control(KvmStruct):
    """The in-kernel PIT's tick mode: pit_reinject 1 queues missed ticks, 0 injects each at once
    (KVM_REINJECT_CONTROL, api.rst 4.99)."""

    _fields_ = [("pit_reinject", u8), ("reserved", u8 * 31)]


# KVM_GET/SET_IRQCHIP payloads (the kvm_irqchip.chip union; <asm/kvm.h>)
class kvm_pic_state(KvmStruct):
    """An i8259 PIC's registers and latches (kvm_irqchip.chip for the PIC master or slave)."""

    _fields_ = [(name, u8) for name in (
        "last_irr", "irr", "imr", "isr", "priority_add", "irq_base", "read_reg_select", "poll",
        "special_mask", "init_state", "auto_eoi", "rotate_on_auto_eoi", "special_fully_nested_mode",
        "init4", "elcr", "elcr_mask")]


KVM_IOAPIC_NUM_PINS = 24


class kvm_ioapic_state(KvmStruct):
    """The IOAPIC's registers and 24 redirection entries (kvm_irqchip.chip for KVM_IRQCHIP_IOAPIC)."""

    # redirtbl[] is a union of the raw 64-bit entry ("bits") and its bit-fields; kept as the raw
    # entry: vector 7:0, delivery mode 10:8, dest mode 11, delivery status 12, polarity 13,
    # remote IRR 14, trigger mode 15, mask 16, destination 63:56 (82093AA datasheet 3.2.4).
    _fields_ = [("base_address", u64), ("ioregsel", u32), ("id", u32), ("irr", u32), ("pad", u32),
                ("redirtbl", u64 * KVM_IOAPIC_NUM_PINS)]


class kvm_pit_channel_state(KvmStruct):
    """One i8254 channel's counter, latches, mode and gate (kvm_pit_state2, api.rst 4.72)."""

    _fields_ = [("count", u32), ("latched_count", u16), ("count_latched", u8), ("status_latched", u8),
                ("status", u8), ("read_state", u8), ("write_state", u8), ("write_latch", u8),
                ("rw_mode", u8), ("mode", u8), ("bcd", u8), ("gate", u8), ("count_load_time", c_int64)]


class kvm_pit_state2(KvmStruct):
    """The three PIT channels and KVM_PIT_FLAGS_* (KVM_GET_PIT2 / KVM_SET_PIT2, api.rst 4.72-4.73)."""

    _fields_ = [("channels", kvm_pit_channel_state * 3), ("flags", u32), ("reserved", u32 * 9)]


class kvm_clock_data(KvmStruct):
    """kvmclock in ns, KVM_CLOCK_* flags, and CLOCK_REALTIME / host TSC when flagged
    (KVM_GET_CLOCK / KVM_SET_CLOCK, api.rst 4.29-4.30)."""

    _fields_ = [("clock", u64), ("flags", u32), ("pad0", u32), ("realtime", u64), ("host_tsc", u64),
                ("pad", u32 * 4)]


class kvm_xen_hvm_config(KvmStruct):
    """KVM_XEN_HVM_CONFIG's argument (api.rst 4.28): KVM_XEN_HVM_CONFIG_* flags, the MSR a guest writes
    to have its hypercall page filled, and the user-space hypercall blobs (32- and 64-bit) with
    their sizes in pages."""

    _fields_ = [("flags", u32), ("msr", u32), ("blob_addr_32", u64), ("blob_addr_64", u64),
                ("blob_size_32", u8), ("blob_size_64", u8), ("pad2", u8 * 30)]


class kvm_msi(KvmStruct):
    """An MSI message to inject (KVM_SIGNAL_MSI, api.rst 4.71)."""

    _fields_ = [("address_lo", u32), ("address_hi", u32), ("data", u32), ("flags", u32), ("devid", u32),
                ("pad", u8 * 12)]


class kvm_irqfd(KvmStruct):
    """An eventfd that raises `gsi`, with KVM_IRQFD_FLAG_* and a resample eventfd (KVM_IRQFD, api.rst 4.75)."""

    _fields_ = [("fd", u32), ("gsi", u32), ("flags", u32), ("resamplefd", u32), ("pad", u8 * 16)]


class kvm_ioeventfd(KvmStruct):
    """An eventfd signalled by guest writes of `len` bytes to `addr` (a port with
    KVM_IOEVENTFD_FLAG_PIO), optionally only of `datamatch` (KVM_IOEVENTFD, api.rst 4.59)."""

    _fields_ = [("datamatch", u64), ("addr", u64), ("len", u32), ("fd", s32), ("flags", u32), ("pad", u8 * 36)]


# --- control ------------------------------------------------------------------------------------


class kvm_enable_cap(KvmStruct):
    """A capability to enable, flags (0) and up to four arguments (KVM_ENABLE_CAP, api.rst 4.37)."""

    _fields_ = [("cap", u32), ("flags", u32), ("args", u64 * 4), ("pad", u8 * 64)]


class kvm_device_attr(KvmStruct):
    """KVM_{GET,SET,HAS}_DEVICE_ATTR (api.rst 4.80-4.81); on a vCPU fd with KVM_CAP_VCPU_ATTRIBUTES
    (devices/vcpu.rst). `addr` is the user address of the attribute's data."""

    _fields_ = [("flags", u32), ("group", u32), ("attr", u64), ("addr", u64)]


# --- binary statistics (api.rst 4.133, KVM_GET_STATS_FD) -----------------------------------------


class kvm_stats_header(KvmStruct):
    """Start of a stats fd: name size, descriptor count and the offsets of the id string, the
    descriptors and the data (api.rst 4.133)."""

    _fields_ = [
        ("flags", u32),
        ("name_size", u32),
        ("num_desc", u32),
        ("id_offset", u32),
        ("desc_offset", u32),
        ("data_offset", u32),
    ]


class kvm_stats_desc(KvmStruct):
    """One statistic's descriptor, fixed part; `name[name_size]` follows (api.rst 4.133)."""

    _fields_ = [("flags", u32), ("exponent", s16), ("size", u16), ("offset", u32), ("bucket_size", u32)]
