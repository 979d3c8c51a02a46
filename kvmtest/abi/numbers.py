"""Ioctl request numbers, computed from the structure sizes as <linux/kvm.h> does.

One table: each ioctl with the kind of fd it is issued on (api.rst 4's ":Type:": system, vm,
vcpu, device) and the capability that gates it there (None where the ioctl is part of the base
API). Some ioctls are valid on several kinds of fd, each behind its own capability
(KVM_CHECK_EXTENSION on a VM fd needs KVM_CAP_CHECK_EXTENSION_VM, api.rst 4.4): `also` lists
those. kvmtest.ioctl refuses an ioctl on a kind of fd outside `scopes` before the system call
(WrongFdError), and names the capability when a call fails where it is missing.
"""

from ctypes import c_uint64
from dataclasses import dataclass

from . import structs as s
from .constants import KVMIO
from .ioctl_codes import IO, IOR, IOW, IOWR

SCOPES = ("system", "vm", "vcpu", "device")


@dataclass(frozen=True)
class IoctlDef:
    """One KVM ioctl: its name, request number, the kind of fd api.rst gives it (`scope`, one of
    SCOPES) with the KVM_CAP_* that gates it there (`capability`, None for the base API), and the
    other kinds of fd it is valid on, each with its capability (`also`)."""

    name: str
    request: int
    scope: str
    capability: str | None = None
    also: tuple[tuple[str, str | None], ...] = ()

    @property
    def scopes(self) -> frozenset[str]:
        """Every kind of fd the ioctl may be issued on."""
        return frozenset({self.scope, *(scope for scope, _ in self.also)})

    def capability_on(self, scope: str) -> str | None:
        """The capability that gates the ioctl on a `scope` fd (None: base API, or not valid there)."""
        if scope == self.scope:
            return self.capability
        return dict(self.also).get(scope)


_TABLE: list[IoctlDef] = []


def _def(name, request, scope, capability=None, also=()):
    d = IoctlDef(name, request, scope, capability, tuple(also))
    _TABLE.append(d)
    return d


# system ioctls
_def("KVM_GET_API_VERSION", IO(KVMIO, 0x00), "system")
_def("KVM_CREATE_VM", IO(KVMIO, 0x01), "system")
_def("KVM_GET_MSR_INDEX_LIST", IOWR(KVMIO, 0x02, s.kvm_msr_list), "system")
_def("KVM_CHECK_EXTENSION", IO(KVMIO, 0x03), "system", also=[("vm", "KVM_CAP_CHECK_EXTENSION_VM")])
_def("KVM_GET_VCPU_MMAP_SIZE", IO(KVMIO, 0x04), "system")
_def("KVM_GET_SUPPORTED_CPUID", IOWR(KVMIO, 0x05, s.kvm_cpuid2), "system", "KVM_CAP_EXT_CPUID")
_def("KVM_GET_EMULATED_CPUID", IOWR(KVMIO, 0x09, s.kvm_cpuid2), "system", "KVM_CAP_EXT_EMUL_CPUID")
_def("KVM_GET_MSR_FEATURE_INDEX_LIST", IOWR(KVMIO, 0x0A, s.kvm_msr_list), "system", "KVM_CAP_GET_MSR_FEATURES")
_def("KVM_X86_GET_MCE_CAP_SUPPORTED", IOR(KVMIO, 0x9D, c_uint64), "system", "KVM_CAP_MCE")

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
_def("KVM_REINJECT_CONTROL", IO(KVMIO, 0x71), "vm", "KVM_CAP_REINJECT_CONTROL")
_def("KVM_XEN_HVM_CONFIG", IOW(KVMIO, 0x7A, s.kvm_xen_hvm_config), "vm", "KVM_CAP_XEN_HVM")
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
_def("KVM_GET_STATS_FD", IO(KVMIO, 0xCE), "vm", "KVM_CAP_BINARY_STATS_FD", also=[("vcpu", "KVM_CAP_BINARY_STATS_FD")])
_def("KVM_CREATE_GUEST_MEMFD", IOWR(KVMIO, 0xD4, s.kvm_create_guest_memfd), "vm", "KVM_CAP_GUEST_MEMFD")
_def("KVM_PRE_FAULT_MEMORY", IOWR(KVMIO, 0xD5, s.kvm_pre_fault_memory), "vcpu", "KVM_CAP_PRE_FAULT_MEMORY")

# VM and vCPU (KVM_ENABLE_CAP works on both with the right capability, api.rst 4.37)
_def("KVM_ENABLE_CAP", IOW(KVMIO, 0xA3, s.kvm_enable_cap), "vm", "KVM_CAP_ENABLE_CAP_VM",
     also=[("vcpu", "KVM_CAP_ENABLE_CAP")])

# vCPU ioctls
_def("KVM_RUN", IO(KVMIO, 0x80), "vcpu")
_def("KVM_GET_REGS", IOR(KVMIO, 0x81, s.kvm_regs), "vcpu")
_def("KVM_SET_REGS", IOW(KVMIO, 0x82, s.kvm_regs), "vcpu")
_def("KVM_GET_SREGS", IOR(KVMIO, 0x83, s.kvm_sregs), "vcpu")
_def("KVM_SET_SREGS", IOW(KVMIO, 0x84, s.kvm_sregs), "vcpu")
_def("KVM_TRANSLATE", IOWR(KVMIO, 0x85, s.kvm_translation), "vcpu")
_def("KVM_INTERRUPT", IOW(KVMIO, 0x86, s.kvm_interrupt), "vcpu")
_def("KVM_GET_MSRS", IOWR(KVMIO, 0x88, s.kvm_msrs), "vcpu", also=[("system", "KVM_CAP_GET_MSR_FEATURES")])
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
_def("KVM_X86_SETUP_MCE", IOW(KVMIO, 0x9C, c_uint64), "vcpu", "KVM_CAP_MCE")
_def("KVM_X86_SET_MCE", IOW(KVMIO, 0x9E, s.kvm_x86_mce), "vcpu", "KVM_CAP_MCE")
_def("KVM_KVMCLOCK_CTRL", IO(KVMIO, 0xAD), "vcpu", "KVM_CAP_KVMCLOCK_CTRL")
_def("KVM_GET_VCPU_EVENTS", IOR(KVMIO, 0x9F, s.kvm_vcpu_events), "vcpu", "KVM_CAP_VCPU_EVENTS")
_def("KVM_SET_VCPU_EVENTS", IOW(KVMIO, 0xA0, s.kvm_vcpu_events), "vcpu", "KVM_CAP_VCPU_EVENTS")
_def("KVM_GET_DEBUGREGS", IOR(KVMIO, 0xA1, s.kvm_debugregs), "vcpu", "KVM_CAP_DEBUGREGS")
_def("KVM_SET_DEBUGREGS", IOW(KVMIO, 0xA2, s.kvm_debugregs), "vcpu", "KVM_CAP_DEBUGREGS")
_def("KVM_GET_XSAVE", IOR(KVMIO, 0xA4, s.kvm_xsave), "vcpu", "KVM_CAP_XSAVE")
_def("KVM_SET_XSAVE", IOW(KVMIO, 0xA5, s.kvm_xsave), "vcpu", "KVM_CAP_XSAVE")
_def("KVM_GET_XCRS", IOR(KVMIO, 0xA6, s.kvm_xcrs), "vcpu", "KVM_CAP_XCRS")
_def("KVM_SET_XCRS", IOW(KVMIO, 0xA7, s.kvm_xcrs), "vcpu", "KVM_CAP_XCRS")
_def("KVM_SET_TSC_KHZ", IO(KVMIO, 0xA2), "vcpu", "KVM_CAP_TSC_CONTROL", also=[("vm", "KVM_CAP_VM_TSC_CONTROL")])
_def("KVM_GET_TSC_KHZ", IO(KVMIO, 0xA3), "vcpu", "KVM_CAP_GET_TSC_KHZ", also=[("vm", "KVM_CAP_VM_TSC_CONTROL")])
_def("KVM_SMI", IO(KVMIO, 0xB7), "vcpu", "KVM_CAP_X86_SMM")
_def("KVM_GET_SREGS2", IOR(KVMIO, 0xCC, s.kvm_sregs2), "vcpu", "KVM_CAP_SREGS2")
_def("KVM_SET_SREGS2", IOW(KVMIO, 0xCD, s.kvm_sregs2), "vcpu", "KVM_CAP_SREGS2")
_def("KVM_GET_XSAVE2", IOR(KVMIO, 0xCF, s.kvm_xsave), "vcpu", "KVM_CAP_XSAVE2")
_def("KVM_GET_NESTED_STATE", IOWR(KVMIO, 0xBE, s.kvm_nested_state), "vcpu", "KVM_CAP_NESTED_STATE")
_def("KVM_SET_NESTED_STATE", IOW(KVMIO, 0xBF, s.kvm_nested_state), "vcpu", "KVM_CAP_NESTED_STATE")
# device attributes (api.rst 4.80-4.81): on vCPU fds with KVM_CAP_VCPU_ATTRIBUTES (devices/vcpu.rst), on
# VM fds with KVM_CAP_VM_ATTRIBUTES, on /dev/kvm with KVM_CAP_SYS_ATTRIBUTES, and on device fds
_ATTR_FDS = [("vm", "KVM_CAP_VM_ATTRIBUTES"), ("system", "KVM_CAP_SYS_ATTRIBUTES"), ("device", None)]
_def("KVM_SET_DEVICE_ATTR", IOW(KVMIO, 0xE1, s.kvm_device_attr), "vcpu", "KVM_CAP_VCPU_ATTRIBUTES", also=_ATTR_FDS)
_def("KVM_GET_DEVICE_ATTR", IOW(KVMIO, 0xE2, s.kvm_device_attr), "vcpu", "KVM_CAP_VCPU_ATTRIBUTES", also=_ATTR_FDS)
_def("KVM_HAS_DEVICE_ATTR", IOW(KVMIO, 0xE3, s.kvm_device_attr), "vcpu", "KVM_CAP_VCPU_ATTRIBUTES", also=_ATTR_FDS)

IOCTLS: dict[str, IoctlDef] = {d.name: d for d in _TABLE}
# Several ioctls share a number byte (0xA3 is KVM_ENABLE_CAP and KVM_GET_TSC_KHZ), but
# direction and size make every request distinct; the scope picks the name for messages.
_BY_SCOPE: dict[tuple[str, int], IoctlDef] = {}
_BY_REQUEST: dict[int, IoctlDef] = {}
for _d in _TABLE:
    for _scope in _d.scopes:
        _BY_SCOPE.setdefault((_scope, _d.request), _d)
    _BY_REQUEST.setdefault(_d.request, _d)


def ioctl_def(request: int, scope: str | None = None) -> IoctlDef | None:
    """The definition of request number `request`, preferring one valid on `scope`; None for a
    number that is no KVM ioctl kvmtest knows."""
    if scope is not None and (scope, request) in _BY_SCOPE:
        return _BY_SCOPE[(scope, request)]
    return _BY_REQUEST.get(request)


def ioctl_name(request: int, scope: str | None = None) -> str:
    """The name of an ioctl request number, preferring the definition for `scope`;
    "ioctl(0x...)" for a number kvmtest does not know."""
    d = ioctl_def(request, scope)
    return d.name if d is not None else f"ioctl({request:#x})"


# The request numbers as module-level names (KVM_RUN, KVM_GET_REGS, ...), written out so that
# readers and type checkers see them; tests/test_abi_tables.py checks names and table agree.
KVM_GET_API_VERSION = IOCTLS["KVM_GET_API_VERSION"].request
KVM_CREATE_VM = IOCTLS["KVM_CREATE_VM"].request
KVM_GET_MSR_INDEX_LIST = IOCTLS["KVM_GET_MSR_INDEX_LIST"].request
KVM_CHECK_EXTENSION = IOCTLS["KVM_CHECK_EXTENSION"].request
KVM_GET_VCPU_MMAP_SIZE = IOCTLS["KVM_GET_VCPU_MMAP_SIZE"].request
KVM_GET_SUPPORTED_CPUID = IOCTLS["KVM_GET_SUPPORTED_CPUID"].request
KVM_GET_EMULATED_CPUID = IOCTLS["KVM_GET_EMULATED_CPUID"].request
KVM_GET_MSR_FEATURE_INDEX_LIST = IOCTLS["KVM_GET_MSR_FEATURE_INDEX_LIST"].request
KVM_CREATE_VCPU = IOCTLS["KVM_CREATE_VCPU"].request
KVM_GET_DIRTY_LOG = IOCTLS["KVM_GET_DIRTY_LOG"].request
KVM_SET_NR_MMU_PAGES = IOCTLS["KVM_SET_NR_MMU_PAGES"].request
KVM_GET_NR_MMU_PAGES = IOCTLS["KVM_GET_NR_MMU_PAGES"].request
KVM_SET_USER_MEMORY_REGION = IOCTLS["KVM_SET_USER_MEMORY_REGION"].request
KVM_SET_TSS_ADDR = IOCTLS["KVM_SET_TSS_ADDR"].request
KVM_SET_IDENTITY_MAP_ADDR = IOCTLS["KVM_SET_IDENTITY_MAP_ADDR"].request
KVM_SET_USER_MEMORY_REGION2 = IOCTLS["KVM_SET_USER_MEMORY_REGION2"].request
KVM_CREATE_IRQCHIP = IOCTLS["KVM_CREATE_IRQCHIP"].request
KVM_IRQ_LINE = IOCTLS["KVM_IRQ_LINE"].request
KVM_GET_IRQCHIP = IOCTLS["KVM_GET_IRQCHIP"].request
KVM_SET_IRQCHIP = IOCTLS["KVM_SET_IRQCHIP"].request
KVM_CREATE_PIT = IOCTLS["KVM_CREATE_PIT"].request
KVM_IRQ_LINE_STATUS = IOCTLS["KVM_IRQ_LINE_STATUS"].request
KVM_REGISTER_COALESCED_MMIO = IOCTLS["KVM_REGISTER_COALESCED_MMIO"].request
KVM_UNREGISTER_COALESCED_MMIO = IOCTLS["KVM_UNREGISTER_COALESCED_MMIO"].request
KVM_SET_GSI_ROUTING = IOCTLS["KVM_SET_GSI_ROUTING"].request
KVM_IRQFD = IOCTLS["KVM_IRQFD"].request
KVM_CREATE_PIT2 = IOCTLS["KVM_CREATE_PIT2"].request
KVM_XEN_HVM_CONFIG = IOCTLS["KVM_XEN_HVM_CONFIG"].request
KVM_SET_CLOCK = IOCTLS["KVM_SET_CLOCK"].request
KVM_GET_CLOCK = IOCTLS["KVM_GET_CLOCK"].request
KVM_GET_PIT2 = IOCTLS["KVM_GET_PIT2"].request
KVM_SET_PIT2 = IOCTLS["KVM_SET_PIT2"].request
KVM_SET_BOOT_CPU_ID = IOCTLS["KVM_SET_BOOT_CPU_ID"].request
KVM_IOEVENTFD = IOCTLS["KVM_IOEVENTFD"].request
KVM_SIGNAL_MSI = IOCTLS["KVM_SIGNAL_MSI"].request
KVM_RESET_DIRTY_RINGS = IOCTLS["KVM_RESET_DIRTY_RINGS"].request
KVM_CLEAR_DIRTY_LOG = IOCTLS["KVM_CLEAR_DIRTY_LOG"].request
KVM_X86_SET_MSR_FILTER = IOCTLS["KVM_X86_SET_MSR_FILTER"].request
KVM_GET_STATS_FD = IOCTLS["KVM_GET_STATS_FD"].request
KVM_CREATE_GUEST_MEMFD = IOCTLS["KVM_CREATE_GUEST_MEMFD"].request
KVM_PRE_FAULT_MEMORY = IOCTLS["KVM_PRE_FAULT_MEMORY"].request
KVM_ENABLE_CAP = IOCTLS["KVM_ENABLE_CAP"].request
KVM_RUN = IOCTLS["KVM_RUN"].request
KVM_GET_REGS = IOCTLS["KVM_GET_REGS"].request
KVM_SET_REGS = IOCTLS["KVM_SET_REGS"].request
KVM_GET_SREGS = IOCTLS["KVM_GET_SREGS"].request
KVM_SET_SREGS = IOCTLS["KVM_SET_SREGS"].request
KVM_TRANSLATE = IOCTLS["KVM_TRANSLATE"].request
KVM_INTERRUPT = IOCTLS["KVM_INTERRUPT"].request
KVM_GET_MSRS = IOCTLS["KVM_GET_MSRS"].request
KVM_SET_MSRS = IOCTLS["KVM_SET_MSRS"].request
KVM_SET_SIGNAL_MASK = IOCTLS["KVM_SET_SIGNAL_MASK"].request
KVM_GET_FPU = IOCTLS["KVM_GET_FPU"].request
KVM_SET_FPU = IOCTLS["KVM_SET_FPU"].request
KVM_GET_LAPIC = IOCTLS["KVM_GET_LAPIC"].request
KVM_SET_LAPIC = IOCTLS["KVM_SET_LAPIC"].request
KVM_SET_CPUID2 = IOCTLS["KVM_SET_CPUID2"].request
KVM_GET_CPUID2 = IOCTLS["KVM_GET_CPUID2"].request
KVM_GET_MP_STATE = IOCTLS["KVM_GET_MP_STATE"].request
KVM_SET_MP_STATE = IOCTLS["KVM_SET_MP_STATE"].request
KVM_NMI = IOCTLS["KVM_NMI"].request
KVM_SET_GUEST_DEBUG = IOCTLS["KVM_SET_GUEST_DEBUG"].request
KVM_X86_GET_MCE_CAP_SUPPORTED = IOCTLS["KVM_X86_GET_MCE_CAP_SUPPORTED"].request
KVM_REINJECT_CONTROL = IOCTLS["KVM_REINJECT_CONTROL"].request
KVM_X86_SETUP_MCE = IOCTLS["KVM_X86_SETUP_MCE"].request
KVM_X86_SET_MCE = IOCTLS["KVM_X86_SET_MCE"].request
KVM_KVMCLOCK_CTRL = IOCTLS["KVM_KVMCLOCK_CTRL"].request
KVM_GET_VCPU_EVENTS = IOCTLS["KVM_GET_VCPU_EVENTS"].request
KVM_SET_VCPU_EVENTS = IOCTLS["KVM_SET_VCPU_EVENTS"].request
KVM_GET_DEBUGREGS = IOCTLS["KVM_GET_DEBUGREGS"].request
KVM_SET_DEBUGREGS = IOCTLS["KVM_SET_DEBUGREGS"].request
KVM_GET_XSAVE = IOCTLS["KVM_GET_XSAVE"].request
KVM_SET_XSAVE = IOCTLS["KVM_SET_XSAVE"].request
KVM_GET_XCRS = IOCTLS["KVM_GET_XCRS"].request
KVM_SET_XCRS = IOCTLS["KVM_SET_XCRS"].request
KVM_SET_TSC_KHZ = IOCTLS["KVM_SET_TSC_KHZ"].request
KVM_GET_TSC_KHZ = IOCTLS["KVM_GET_TSC_KHZ"].request
KVM_SMI = IOCTLS["KVM_SMI"].request
KVM_GET_SREGS2 = IOCTLS["KVM_GET_SREGS2"].request
KVM_SET_SREGS2 = IOCTLS["KVM_SET_SREGS2"].request
KVM_GET_XSAVE2 = IOCTLS["KVM_GET_XSAVE2"].request
KVM_GET_NESTED_STATE = IOCTLS["KVM_GET_NESTED_STATE"].request
KVM_SET_NESTED_STATE = IOCTLS["KVM_SET_NESTED_STATE"].request
KVM_SET_DEVICE_ATTR = IOCTLS["KVM_SET_DEVICE_ATTR"].request
KVM_GET_DEVICE_ATTR = IOCTLS["KVM_GET_DEVICE_ATTR"].request
KVM_HAS_DEVICE_ATTR = IOCTLS["KVM_HAS_DEVICE_ATTR"].request
