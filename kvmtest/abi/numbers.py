"""Ioctl request numbers, computed from the structure sizes as <linux/kvm.h> does.

One table: each ioctl with the fd it is issued on and the capability that gates it
(None where the ioctl is part of the base API).
"""

from ctypes import c_uint64
from dataclasses import dataclass

from . import structs as s
from .constants import KVMIO
from .ioctl_codes import IO, IOR, IOW, IOWR


@dataclass(frozen=True)
class IoctlDef:
    name: str
    request: int
    scope: str  # "system", "vm", "vcpu" or "device" (stats fd and the like)
    capability: str | None = None


_TABLE: list[IoctlDef] = []


def _def(name, request, scope, capability=None):
    d = IoctlDef(name, request, scope, capability)
    _TABLE.append(d)
    globals()[name] = request
    return d


# system ioctls
_def("KVM_GET_API_VERSION", IO(KVMIO, 0x00), "system")
_def("KVM_CREATE_VM", IO(KVMIO, 0x01), "system")
_def("KVM_GET_MSR_INDEX_LIST", IOWR(KVMIO, 0x02, s.kvm_msr_list), "system")
_def("KVM_CHECK_EXTENSION", IO(KVMIO, 0x03), "system")
_def("KVM_GET_VCPU_MMAP_SIZE", IO(KVMIO, 0x04), "system")
_def("KVM_GET_SUPPORTED_CPUID", IOWR(KVMIO, 0x05, s.kvm_cpuid2), "system", "KVM_CAP_EXT_CPUID")
_def("KVM_GET_EMULATED_CPUID", IOWR(KVMIO, 0x09, s.kvm_cpuid2), "system", "KVM_CAP_EXT_EMUL_CPUID")
_def("KVM_GET_MSR_FEATURE_INDEX_LIST", IOWR(KVMIO, 0x0A, s.kvm_msr_list), "system", "KVM_CAP_GET_MSR_FEATURES")

# VM ioctls
_def("KVM_CREATE_VCPU", IO(KVMIO, 0x41), "vm")
_def("KVM_GET_DIRTY_LOG", IOW(KVMIO, 0x42, s.kvm_dirty_log), "vm")
_def("KVM_SET_NR_MMU_PAGES", IO(KVMIO, 0x44), "vm", "KVM_CAP_MMU_SHADOW_CACHE_CONTROL")
_def("KVM_GET_NR_MMU_PAGES", IO(KVMIO, 0x45), "vm", "KVM_CAP_MMU_SHADOW_CACHE_CONTROL")
_def("KVM_SET_USER_MEMORY_REGION", IOW(KVMIO, 0x46, s.kvm_userspace_memory_region), "vm", "KVM_CAP_USER_MEMORY")
_def("KVM_SET_TSS_ADDR", IO(KVMIO, 0x47), "vm", "KVM_CAP_SET_TSS_ADDR")
_def("KVM_SET_IDENTITY_MAP_ADDR", IOW(KVMIO, 0x48, c_uint64), "vm", "KVM_CAP_SET_IDENTITY_MAP_ADDR")
_def("KVM_SET_USER_MEMORY_REGION2", IOW(KVMIO, 0x49, s.kvm_userspace_memory_region2), "vm", "KVM_CAP_USER_MEMORY2")
_def("KVM_CREATE_IRQCHIP", IO(KVMIO, 0x60), "vm", "KVM_CAP_IRQCHIP")
_def("KVM_IRQ_LINE", IOW(KVMIO, 0x61, s.kvm_irq_level), "vm", "KVM_CAP_IRQCHIP")
_def("KVM_GET_IRQCHIP", IOWR(KVMIO, 0x62, s.kvm_irqchip), "vm", "KVM_CAP_IRQCHIP")
_def("KVM_SET_IRQCHIP", IOR(KVMIO, 0x63, s.kvm_irqchip), "vm", "KVM_CAP_IRQCHIP")
_def("KVM_CREATE_PIT", IO(KVMIO, 0x64), "vm", "KVM_CAP_PIT")
_def("KVM_IRQ_LINE_STATUS", IOWR(KVMIO, 0x67, s.kvm_irq_level), "vm", "KVM_CAP_IRQ_INJECT_STATUS")
_def("KVM_REGISTER_COALESCED_MMIO", IOW(KVMIO, 0x67, s.kvm_coalesced_mmio_zone), "vm", "KVM_CAP_COALESCED_MMIO")
_def("KVM_UNREGISTER_COALESCED_MMIO", IOW(KVMIO, 0x68, s.kvm_coalesced_mmio_zone), "vm", "KVM_CAP_COALESCED_MMIO")
_def("KVM_SET_GSI_ROUTING", IOW(KVMIO, 0x6A, s.kvm_irq_routing), "vm", "KVM_CAP_IRQ_ROUTING")
_def("KVM_IRQFD", IOW(KVMIO, 0x76, s.kvm_irqfd), "vm", "KVM_CAP_IRQFD")
_def("KVM_CREATE_PIT2", IOW(KVMIO, 0x77, s.kvm_pit_config), "vm", "KVM_CAP_PIT2")
_def("KVM_SET_CLOCK", IOW(KVMIO, 0x7B, s.kvm_clock_data), "vm", "KVM_CAP_ADJUST_CLOCK")
_def("KVM_GET_CLOCK", IOR(KVMIO, 0x7C, s.kvm_clock_data), "vm", "KVM_CAP_ADJUST_CLOCK")
_def("KVM_GET_PIT2", IOR(KVMIO, 0x9F, s.kvm_pit_state2), "vm", "KVM_CAP_PIT_STATE2")
_def("KVM_SET_PIT2", IOW(KVMIO, 0xA0, s.kvm_pit_state2), "vm", "KVM_CAP_PIT_STATE2")
_def("KVM_SET_BOOT_CPU_ID", IO(KVMIO, 0x78), "vm", "KVM_CAP_SET_BOOT_CPU_ID")
_def("KVM_IOEVENTFD", IOW(KVMIO, 0x79, s.kvm_ioeventfd), "vm", "KVM_CAP_IOEVENTFD")
_def("KVM_SIGNAL_MSI", IOW(KVMIO, 0xA5, s.kvm_msi), "vm", "KVM_CAP_SIGNAL_MSI")
_def("KVM_RESET_DIRTY_RINGS", IO(KVMIO, 0xC7), "vm", "KVM_CAP_DIRTY_LOG_RING")
_def("KVM_CLEAR_DIRTY_LOG", IOWR(KVMIO, 0xC0, s.kvm_clear_dirty_log), "vm", "KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2")
_def("KVM_X86_SET_MSR_FILTER", IOW(KVMIO, 0xC6, s.kvm_msr_filter), "vm", "KVM_CAP_X86_MSR_FILTER")
_def("KVM_GET_STATS_FD", IO(KVMIO, 0xCE), "vm", "KVM_CAP_BINARY_STATS_FD")  # also on vCPU fds
_def("KVM_CREATE_GUEST_MEMFD", IOWR(KVMIO, 0xD4, s.kvm_create_guest_memfd), "vm", "KVM_CAP_GUEST_MEMFD")

# VM and vCPU (KVM_ENABLE_CAP works on both with the right capability)
_def("KVM_ENABLE_CAP", IOW(KVMIO, 0xA3, s.kvm_enable_cap), "vm", "KVM_CAP_ENABLE_CAP_VM")

# vCPU ioctls
_def("KVM_RUN", IO(KVMIO, 0x80), "vcpu")
_def("KVM_GET_REGS", IOR(KVMIO, 0x81, s.kvm_regs), "vcpu")
_def("KVM_SET_REGS", IOW(KVMIO, 0x82, s.kvm_regs), "vcpu")
_def("KVM_GET_SREGS", IOR(KVMIO, 0x83, s.kvm_sregs), "vcpu")
_def("KVM_SET_SREGS", IOW(KVMIO, 0x84, s.kvm_sregs), "vcpu")
_def("KVM_TRANSLATE", IOWR(KVMIO, 0x85, s.kvm_translation), "vcpu")
_def("KVM_INTERRUPT", IOW(KVMIO, 0x86, s.kvm_interrupt), "vcpu")
_def("KVM_GET_MSRS", IOWR(KVMIO, 0x88, s.kvm_msrs), "vcpu")
_def("KVM_SET_MSRS", IOW(KVMIO, 0x89, s.kvm_msrs), "vcpu")
_def("KVM_SET_SIGNAL_MASK", IOW(KVMIO, 0x8B, s.kvm_signal_mask), "vcpu")
_def("KVM_GET_FPU", IOR(KVMIO, 0x8C, s.kvm_fpu), "vcpu")
_def("KVM_SET_FPU", IOW(KVMIO, 0x8D, s.kvm_fpu), "vcpu")
_def("KVM_GET_LAPIC", IOR(KVMIO, 0x8E, s.kvm_lapic_state), "vcpu", "KVM_CAP_IRQCHIP")
_def("KVM_SET_LAPIC", IOW(KVMIO, 0x8F, s.kvm_lapic_state), "vcpu", "KVM_CAP_IRQCHIP")
_def("KVM_SET_CPUID2", IOW(KVMIO, 0x90, s.kvm_cpuid2), "vcpu", "KVM_CAP_EXT_CPUID")
_def("KVM_GET_CPUID2", IOWR(KVMIO, 0x91, s.kvm_cpuid2), "vcpu", "KVM_CAP_EXT_CPUID")
_def("KVM_GET_MP_STATE", IOR(KVMIO, 0x98, s.kvm_mp_state), "vcpu", "KVM_CAP_MP_STATE")
_def("KVM_SET_MP_STATE", IOW(KVMIO, 0x99, s.kvm_mp_state), "vcpu", "KVM_CAP_MP_STATE")
_def("KVM_NMI", IO(KVMIO, 0x9A), "vcpu", "KVM_CAP_USER_NMI")
_def("KVM_SET_GUEST_DEBUG", IOW(KVMIO, 0x9B, s.kvm_guest_debug), "vcpu", "KVM_CAP_SET_GUEST_DEBUG")
_def("KVM_GET_VCPU_EVENTS", IOR(KVMIO, 0x9F, s.kvm_vcpu_events), "vcpu", "KVM_CAP_VCPU_EVENTS")
_def("KVM_SET_VCPU_EVENTS", IOW(KVMIO, 0xA0, s.kvm_vcpu_events), "vcpu", "KVM_CAP_VCPU_EVENTS")
_def("KVM_GET_DEBUGREGS", IOR(KVMIO, 0xA1, s.kvm_debugregs), "vcpu", "KVM_CAP_DEBUGREGS")
_def("KVM_SET_DEBUGREGS", IOW(KVMIO, 0xA2, s.kvm_debugregs), "vcpu", "KVM_CAP_DEBUGREGS")
_def("KVM_GET_XSAVE", IOR(KVMIO, 0xA4, s.kvm_xsave), "vcpu", "KVM_CAP_XSAVE")
_def("KVM_SET_XSAVE", IOW(KVMIO, 0xA5, s.kvm_xsave), "vcpu", "KVM_CAP_XSAVE")
_def("KVM_GET_XCRS", IOR(KVMIO, 0xA6, s.kvm_xcrs), "vcpu", "KVM_CAP_XCRS")
_def("KVM_SET_XCRS", IOW(KVMIO, 0xA7, s.kvm_xcrs), "vcpu", "KVM_CAP_XCRS")
_def("KVM_SET_TSC_KHZ", IO(KVMIO, 0xA2), "vcpu", "KVM_CAP_TSC_CONTROL")
_def("KVM_GET_TSC_KHZ", IO(KVMIO, 0xA3), "vcpu", "KVM_CAP_GET_TSC_KHZ")
_def("KVM_SMI", IO(KVMIO, 0xB7), "vcpu", "KVM_CAP_X86_SMM")
_def("KVM_GET_SREGS2", IOR(KVMIO, 0xCC, s.kvm_sregs2), "vcpu", "KVM_CAP_SREGS2")
_def("KVM_SET_SREGS2", IOW(KVMIO, 0xCD, s.kvm_sregs2), "vcpu", "KVM_CAP_SREGS2")
_def("KVM_GET_XSAVE2", IOR(KVMIO, 0xCF, s.kvm_xsave), "vcpu", "KVM_CAP_XSAVE2")
_def("KVM_GET_NESTED_STATE", IOWR(KVMIO, 0xBE, s.kvm_nested_state), "vcpu", "KVM_CAP_NESTED_STATE")
_def("KVM_SET_NESTED_STATE", IOW(KVMIO, 0xBF, s.kvm_nested_state), "vcpu", "KVM_CAP_NESTED_STATE")
# device attributes: on device fds, and on vCPU fds with KVM_CAP_VCPU_ATTRIBUTES (devices/vcpu.rst)
_def("KVM_SET_DEVICE_ATTR", IOW(KVMIO, 0xE1, s.kvm_device_attr), "vcpu", "KVM_CAP_VCPU_ATTRIBUTES")
_def("KVM_GET_DEVICE_ATTR", IOW(KVMIO, 0xE2, s.kvm_device_attr), "vcpu", "KVM_CAP_VCPU_ATTRIBUTES")
_def("KVM_HAS_DEVICE_ATTR", IOW(KVMIO, 0xE3, s.kvm_device_attr), "vcpu", "KVM_CAP_VCPU_ATTRIBUTES")

IOCTLS: dict[str, IoctlDef] = {d.name: d for d in _TABLE}
# Several ioctls share a number byte (0xA3 is KVM_ENABLE_CAP and KVM_GET_TSC_KHZ), but
# direction and size make every request distinct; the scope picks the name for messages.
_BY_SCOPE: dict[tuple[str, int], str] = {}
for _d in _TABLE:
    _BY_SCOPE.setdefault((_d.scope, _d.request), _d.name)


def ioctl_name(request: int, scope: str | None = None) -> str:
    """The name of an ioctl request number, preferring the definition for `scope`."""
    if scope and (scope, request) in _BY_SCOPE:
        return _BY_SCOPE[(scope, request)]
    for d in _TABLE:
        if d.request == request:
            return d.name
    return f"ioctl({request:#x})"
