"""ctypes mirrors of the x86 structures in <linux/kvm.h> and <asm/kvm.h>, one module per area.

Names and field names are exactly the kernel's, so a reader can hold these files next to the
header: vcpu_state (registers, FPU/XSAVE, events, LAPIC, debug, nested state), cpuid_msr
(CPUID, MSRs, MSR filter), vm_devices (memslots, dirty logs, irqchip, PIT, clock, eventfds,
capabilities, stats), run_page (struct kvm_run, the shared run page). This package is the one place that names
them all (`kvmtest.abi.structs.kvm_regs`). tests/test_abi.py compiles a C program against the
installed header and compares every size and offset below; structures newer than that header are
compared with the values the upstream header documents. Variable-length structures are built with
kvmtest.abi.buffers.
"""

from ctypes import sizeof

from .base import KvmStruct, s16, s32, u8, u16, u32, u64  # noqa: F401
from .cpuid_msr import (  # noqa: F401
    KVM_MSR_FILTER_MAX_RANGES,
    cpuid2_type,
    kvm_cpuid2,
    kvm_cpuid_entry2,
    kvm_msr_entry,
    kvm_msr_filter,
    kvm_msr_filter_range,
    kvm_msr_list,
    kvm_msrs,
    msr_list_type,
    msrs_type,
)
from .run_page import SYNC_REGS_SIZE_BYTES, kvm_debug_exit_arch, kvm_run, kvm_xen_exit  # noqa: F401
from .vcpu_state import (  # noqa: F401
    KVM_MAX_XCRS,
    KVM_NR_INTERRUPTS,
    SEGMENT_NAMES,
    kvm_debugregs,
    kvm_dtable,
    kvm_fpu,
    kvm_guest_debug,
    kvm_guest_debug_arch,
    kvm_interrupt,
    kvm_lapic_state,
    kvm_mp_state,
    kvm_nested_state,
    kvm_regs,
    kvm_segment,
    kvm_signal_mask,
    kvm_sregs,
    kvm_sregs2,
    kvm_sync_regs,
    kvm_translation,
    kvm_vcpu_events,
    kvm_x86_mce,
    kvm_xcr,
    kvm_xcrs,
    kvm_xsave,
    nested_state_type,
    xsave_type,
)
from .vm_devices import (  # noqa: F401
    KVM_IOAPIC_NUM_PINS,
    irq_routing_type,
    kvm_clear_dirty_log,
    kvm_clock_data,
    kvm_coalesced_mmio,
    kvm_coalesced_mmio_ring,
    kvm_coalesced_mmio_zone,
    kvm_create_guest_memfd,
    kvm_device_attr,
    kvm_dirty_gfn,
    kvm_dirty_log,
    kvm_enable_cap,
    kvm_ioapic_state,
    kvm_ioeventfd,
    kvm_irq_level,
    kvm_irq_routing,
    kvm_irq_routing_entry,
    kvm_irq_routing_irqchip,
    kvm_irq_routing_msi,
    kvm_irqchip,
    kvm_irqfd,
    kvm_msi,
    kvm_pic_state,
    kvm_pit_channel_state,
    kvm_pit_config,
    kvm_pit_state2,
    kvm_pre_fault_memory,
    kvm_reinject_control,
    kvm_stats_desc,
    kvm_stats_header,
    kvm_userspace_memory_region,
    kvm_userspace_memory_region2,
    kvm_xen_hvm_config,
)

# Structures whose layout tests/test_abi.py checks; the C side names them `struct <name>`.
ABI_STRUCTS = [
    kvm_regs, kvm_segment, kvm_dtable, kvm_sregs, kvm_sregs2, kvm_fpu, kvm_xsave, kvm_xcr,
    kvm_xcrs, kvm_debugregs, kvm_vcpu_events, kvm_lapic_state, kvm_mp_state, kvm_sync_regs,
    kvm_cpuid_entry2, kvm_cpuid2, kvm_msr_entry, kvm_msrs, kvm_msr_list, kvm_msr_filter_range,
    kvm_msr_filter, kvm_userspace_memory_region, kvm_userspace_memory_region2, kvm_dirty_log,
    kvm_clear_dirty_log, kvm_dirty_gfn, kvm_create_guest_memfd, kvm_pre_fault_memory, kvm_coalesced_mmio_zone,
    kvm_coalesced_mmio,
    kvm_coalesced_mmio_ring, kvm_translation,
    kvm_interrupt, kvm_x86_mce, kvm_irq_level, kvm_irq_routing_irqchip, kvm_irq_routing_msi, kvm_irq_routing_entry,
    kvm_irq_routing, kvm_irqchip, kvm_pit_config, kvm_reinject_control, kvm_pic_state, kvm_ioapic_state,
    kvm_pit_channel_state,
    kvm_pit_state2, kvm_clock_data, kvm_device_attr, kvm_nested_state, kvm_msi, kvm_irqfd,
    kvm_ioeventfd, kvm_enable_cap, kvm_guest_debug_arch, kvm_guest_debug, kvm_signal_mask,
    kvm_stats_header, kvm_stats_desc, kvm_debug_exit_arch, kvm_run, kvm_xen_hvm_config, kvm_xen_exit,
]

assert sizeof(kvm_run) == 304 + SYNC_REGS_SIZE_BYTES
