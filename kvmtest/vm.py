"""A VM (api.rst section 4, VM ioctls): capabilities, vCPUs, setup ioctls, kvmclock, guest_memfd and
stats here; memslots and guest memory in kvmtest.vm_memory, dirty logs in kvmtest.vm_dirty, the
irqchip, PIT and interrupt routing in kvmtest.vm_irq, ioeventfds, coalesced MMIO and the MSR filter
in kvmtest.vm_io. Vm puts them together."""

import ctypes

from . import validate
from .abi import structs as S
from .abi.capabilities import CAPABILITY_NAMES
from .caps import cap_number, enable_cap_args, enable_cap_struct
from .carried import VM_STATE_IOCTLS, CarriedIoctls, carried, replayable
from .errors import BadArgumentError
from .fdobject import FdObject
from .memory import HostMapping
from .stats import Stats
from .vcpu import Vcpu
from .vm_dirty import VmDirtyLog
from .vm_io import VmIo
from .vm_irq import VmIrq
from .vm_memory import Memslot, VmMemory
from .vm_xen import VmXen

__all__ = ["Memslot", "Vm"]


class Vm(VmMemory, VmDirtyLog, VmIrq, VmIo, VmXen, CarriedIoctls, FdObject):
    """A KVM VM, from Kvm.create_vm. Owns its fd, its vCPUs and the host mappings behind its
    memslots: close it (or use `with`) and all of them go."""

    SCOPE = "vm"
    STATE_IOCTLS = VM_STATE_IOCTLS  # see kvmtest.carried

    def __init__(self, kvm, fd: int, name: str):
        super().__init__(fd, name)
        self.kvm = kvm
        self.memslots: dict[int, Memslot] = {}
        self.vcpus: list[Vcpu] = []
        self.irqchip = False
        self.dirty_ring_size = 0
        # What was set up through this object and has no KVM_GET_* of its own, so that a copy
        # of the VM (kvmtest.state, Guest.migrate) can set it up again.
        self.split_irqchip_routes: int | None = None   # KVM_CAP_SPLIT_IRQCHIP's argument
        self.pit_flags: int | None = None              # KVM_CREATE_PIT2's flags
        self.setup_calls: list[tuple[str, tuple, dict]] = []  # see kvmtest.carried
        self.uncarried: list[str] = []                         # ditto
        # Coalesced MMIO entries a VM this one was copied from had queued and nobody drained
        # (kvmtest.vm_state): Vcpu.drain_coalesced_ring returns them before the ring's own.
        self.carried_coalesced: list = []
        # Pages a VM this one was copied from had dirtied and not yet reported (kvmtest.state):
        # get_dirty_log reports them as well, until reported (or, with manual protect, cleared).
        self.carried_dirty: dict[int, set[int]] = {}
        self._in_setup = False
        self._extra_mappings: list[HostMapping] = []
        self._slot_mappings: dict[int, list] = {}  # kvmtest.vm_memory.VmMemory: mappings behind memslots

    # --- capabilities --------------------------------------------------------------------

    def check_extension(self, cap: int | str) -> int:
        """KVM_CHECK_EXTENSION on the VM fd (api.rst 4.4, KVM_CAP_CHECK_EXTENSION_VM): 0 when this VM
        lacks the capability, else its capability-defined value."""
        number = cap_number(cap)
        return self.ioctl("KVM_CHECK_EXTENSION", number, args=CAPABILITY_NAMES.name(number))

    def has_capability(self, cap: str) -> int:
        """check_extension(cap), what MissingCapabilityError is decided on (kvmtest.ioctl)."""
        return self.check_extension(cap)

    @replayable
    def enable_cap(self, cap: int | str, *args: int, flags: int = 0) -> None:
        """KVM_ENABLE_CAP on the VM (api.rst 4.37 and section 7): `cap` by name or number with up to
        four u64 arguments; recorded for a copy of the VM. KvmError if KVM refuses."""
        self.ioctl("KVM_ENABLE_CAP", enable_cap_struct(cap, *args, flags=flags),
                   args=enable_cap_args(cap, args, flags))

    @carried  # records itself
    def try_enable_cap(self, cap: int | str, *args: int, flags: int = 0) -> int:
        """enable_cap's twin: the errno (0 on success, recorded like enable_cap's)."""
        err = self.try_ioctl("KVM_ENABLE_CAP", enable_cap_struct(cap, *args, flags=flags),
                             args=enable_cap_args(cap, args, flags))
        if not err and not self._in_setup:
            self.setup_calls.append(("enable_cap", (cap, *args), {"flags": flags}))
        return err

    # --- vCPUs ---------------------------------------------------------------------------

    def _vcpu_id(self, vcpu_id) -> int:
        # KVM_CREATE_VCPU's argument is an unsigned long (api.rst 4.7).
        if vcpu_id is None:
            return len(self.vcpus)
        if type(vcpu_id) is int and 0 <= vcpu_id < 1 << 64:  # the usual case: no message to build
            return vcpu_id
        return validate.uint(vcpu_id, 64, f"{self.name} KVM_CREATE_VCPU id")

    def create_vcpu(self, vcpu_id: int | None = None) -> Vcpu:
        """KVM_CREATE_VCPU (api.rst 4.7) with id `vcpu_id` (default: the number of vCPUs so far);
        maps its kvm_run. The Vcpu is this VM's (closed with it). KvmError if KVM refuses (EINVAL
        at or above KVM_CAP_MAX_VCPU_ID, EEXIST for an id in use)."""
        vcpu_id = self._vcpu_id(vcpu_id)
        fd = self.ioctl("KVM_CREATE_VCPU", vcpu_id, args=f"id={vcpu_id}")
        vcpu = Vcpu(self, fd, vcpu_id)
        self.vcpus.append(vcpu)
        return vcpu

    def try_create_vcpu(self, vcpu_id: int) -> int:
        """create_vcpu's twin: the errno (0 on success, the new Vcpu then being vcpus[-1])."""
        vcpu_id = self._vcpu_id(vcpu_id)
        fd, err = self.try_ioctl_result("KVM_CREATE_VCPU", vcpu_id, args=f"id={vcpu_id}")
        if not err:
            self.vcpus.append(Vcpu(self, fd, vcpu_id))
        return err

    # --- setup before the first vCPU ------------------------------------------------------

    @replayable
    def set_tss_addr(self, addr: int) -> None:
        """KVM_SET_TSS_ADDR (api.rst 4.36): the three-page region Intel hosts use for real mode; the
        ioctl's argument is an unsigned long."""
        addr = validate.uint(addr, 64, f"{self.name} KVM_SET_TSS_ADDR addr")
        self.ioctl("KVM_SET_TSS_ADDR", addr, args=f"addr={addr:#x}")

    def _identity_map(self, addr) -> tuple[ctypes.c_uint64, str]:
        addr = validate.uint(addr, 64, f"{self.name} KVM_SET_IDENTITY_MAP_ADDR addr")
        return ctypes.c_uint64(addr), f"addr={addr:#x}"

    @replayable
    def set_identity_map_addr(self, addr: int) -> None:
        """KVM_SET_IDENTITY_MAP_ADDR (api.rst 4.40): the one-page identity map Intel hosts use for
        real mode, a __u64 the ioctl points to; fails once any vCPU exists."""
        arg, text = self._identity_map(addr)
        self.ioctl("KVM_SET_IDENTITY_MAP_ADDR", arg, args=text)

    @carried  # records itself
    def try_set_identity_map_addr(self, addr: int) -> int:
        """set_identity_map_addr's twin: the errno (0 on success, recorded for a copy of the VM)."""
        arg, text = self._identity_map(addr)
        err = self.try_ioctl("KVM_SET_IDENTITY_MAP_ADDR", arg, args=text)
        if not err and not self._in_setup:
            self.setup_calls.append(("set_identity_map_addr", (addr,), {}))
        return err

    @replayable
    def set_boot_cpu_id(self, vcpu_id: int) -> None:
        """KVM_SET_BOOT_CPU_ID (api.rst 4.41): which vCPU id is the BSP (an unsigned long, the ids of
        KVM_CREATE_VCPU); EBUSY once a vCPU exists."""
        vcpu_id = validate.uint(vcpu_id, 64, f"{self.name} KVM_SET_BOOT_CPU_ID id")
        self.ioctl("KVM_SET_BOOT_CPU_ID", vcpu_id, args=f"id={vcpu_id:#x}")

    @carried  # records itself
    def try_set_boot_cpu_id(self, vcpu_id: int) -> int:
        """set_boot_cpu_id's twin: the errno (0 on success, recorded for a copy of the VM)."""
        vcpu_id = validate.uint(vcpu_id, 64, f"{self.name} KVM_SET_BOOT_CPU_ID id")
        err = self.try_ioctl("KVM_SET_BOOT_CPU_ID", vcpu_id, args=f"id={vcpu_id:#x}")
        if not err and not self._in_setup:
            self.setup_calls.append(("set_boot_cpu_id", (vcpu_id,), {}))
        return err

    @replayable
    def set_tsc_khz(self, khz: int) -> None:
        """KVM_SET_TSC_KHZ on the VM (api.rst 4.55, KVM_CAP_VM_TSC_CONTROL): the TSC frequency, in
        kHz, of every vCPU created afterwards. 0 is refused here (KVM would read it as the host's
        rate); a kHz value must fit the ioctl's 32-bit argument."""
        khz = validate.uint(khz, 32, f"{self.name} KVM_SET_TSC_KHZ kHz")
        if khz == 0:
            raise BadArgumentError(f"{self.name} KVM_SET_TSC_KHZ kHz = 0: no frequency")
        self.ioctl("KVM_SET_TSC_KHZ", khz, args=f"khz={khz}")

    @replayable
    def set_nr_mmu_pages(self, pages: int) -> None:
        """KVM_SET_NR_MMU_PAGES (<linux/kvm.h>, KVM_CAP_MMU_SHADOW_CACHE_CONTROL): the number of
        shadow MMU pages the VM may use (an unsigned long)."""
        pages = validate.uint(pages, 64, f"{self.name} KVM_SET_NR_MMU_PAGES pages")
        self.ioctl("KVM_SET_NR_MMU_PAGES", pages, args=f"pages={pages}")

    # --- guest_memfd, kvmclock, stats ------------------------------------------------------

    def _gmem(self, size, flags) -> tuple[S.kvm_create_guest_memfd, str]:
        what = f"{self.name} KVM_CREATE_GUEST_MEMFD"
        size, flags = validate.uint(size, 64, f"{what} size"), validate.uint(flags, 64, f"{what} flags")
        return S.kvm_create_guest_memfd(size=size, flags=flags), f"size={size:#x} flags={flags:#x}"

    def create_guest_memfd(self, size: int, flags: int = 0) -> int:
        """KVM_CREATE_GUEST_MEMFD (api.rst 4.142): a guest_memfd of `size` bytes (a page multiple);
        returns the new fd, which the caller owns and closes. KvmError if KVM refuses."""
        arg, text = self._gmem(size, flags)
        return self.ioctl("KVM_CREATE_GUEST_MEMFD", arg, args=text)

    def try_create_guest_memfd(self, size: int, flags: int = 0) -> tuple[int, int]:
        """create_guest_memfd's twin: (fd, errno); the fd (the caller's to close) only when errno is 0."""
        arg, text = self._gmem(size, flags)
        return self.try_ioctl_result("KVM_CREATE_GUEST_MEMFD", arg, args=text)

    def get_clock(self) -> S.kvm_clock_data:
        """KVM_GET_CLOCK (api.rst 4.29): kvmclock now in ns, with KVM_CLOCK_* flags saying which of
        realtime / host_tsc are valid."""
        clock = S.kvm_clock_data()
        self.ioctl("KVM_GET_CLOCK", clock)
        return clock

    def set_clock(self, clock: S.kvm_clock_data) -> None:
        """KVM_SET_CLOCK (api.rst 4.30); with KVM_CLOCK_REALTIME in flags KVM advances the clock by
        the CLOCK_REALTIME time elapsed since `clock.realtime`."""
        validate.instance(clock, S.kvm_clock_data, f"{self.name} KVM_SET_CLOCK")
        self.ioctl("KVM_SET_CLOCK", clock, args=f"clock={clock.clock:#x} flags={clock.flags:#x}")

    def stats(self):
        """KVM_GET_STATS_FD on the VM (api.rst 4.133): a kvmtest.stats.Stats owning the new fd."""
        return Stats(self.ioctl("KVM_GET_STATS_FD"), f"{self.name}/stats")

    def _release(self) -> None:
        for vcpu in self.vcpus:
            vcpu.close()
        self.vcpus.clear()

    def close(self) -> None:
        """Close the vCPUs, then the VM fd, then unmap the memory behind the slots."""
        super().close()
        for m in self.memslots.values():
            m.mapping.close()
        self.memslots.clear()
        self._slot_mappings.clear()
        for mapping in self._extra_mappings:
            mapping.close()
        self._extra_mappings.clear()
