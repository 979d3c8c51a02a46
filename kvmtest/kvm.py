"""The system handle: /dev/kvm and its system ioctls (api.rst 4.1-4.5, 4.18, 4.46, 4.88)."""

import ctypes
import errno
import itertools
import os

from . import validate
from .abi import structs as S
from .abi.buffers import cpuid2_buffer, msr_list_buffer, msrs_buffer
from .abi.capabilities import CAPABILITIES, CAPABILITY_NAMES
from .abi.constants import KVM_MAX_CPUID_ENTRIES
from .caps import cap_number
from .errors import BadArgumentError, DeviceError, KvmError
from .fdobject import FdObject
from .vcpu_watchdog import install_kick_handler
from .vm import Vm

DEFAULT_DEVICE = "/dev/kvm"
__all__ = ["DEFAULT_DEVICE", "KVM_MAX_CPUID_ENTRIES", "Kvm", "cap_number", "open_device"]


def open_device(path: str = DEFAULT_DEVICE) -> int:
    """Open the KVM device read-write (O_CLOEXEC) and return the fd, turning the usual failures into
    one DeviceError naming the path and the cause (missing, permission with mode and uid, other)."""
    if not isinstance(path, (str, os.PathLike)):
        raise BadArgumentError(f"KVM device path = {path!r}: expected a path such as {DEFAULT_DEVICE!r}")
    try:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise DeviceError(f"no {path} (is KVM loaded?)") from None
    except PermissionError:
        raise DeviceError(
            f"{path}: permission denied: kvmtest needs read and write access "
            f"(mode {oct(os.stat(path).st_mode & 0o777)}, uid {os.getuid()}; add yourself to the kvm group)"
        ) from None
    except OSError as e:
        raise DeviceError(f"{path}: cannot open: {os.strerror(e.errno or 0)}") from None


class Kvm(FdObject):
    """An open /dev/kvm (system ioctls, api.rst 4). Creates VMs and answers the system-wide
    queries. Owns its fd: close it or use `with`. DeviceError if `path` cannot be opened or is
    not a KVM device."""

    SCOPE = "system"

    def __init__(self, path: str = DEFAULT_DEVICE):
        super().__init__(open_device(path), "kvm")
        # The watchdog's signal handler, which only the main thread can install: done here, where a process
        # opens KVM (nearly always on its main thread), a vCPU made later on any thread can be kicked; Vcpu
        # refuses to exist without it. Not on import: the plugin, dormant in other projects, changes nothing.
        install_kick_handler()
        self.path = path
        self._vm_ids = itertools.count()
        self._mmap_size: int | None = None
        self._supported_cpuid: list[S.kvm_cpuid_entry2] | None = None
        self._check_is_kvm()

    def _check_is_kvm(self) -> None:
        """A device that opens but is not KVM (/dev/null, a regular file) would fail every later
        ioctl with ENOTTY, which a test would report as KVM's verdict: refuse it here instead.
        KVM_GET_API_VERSION is 12 on every kernel kvmtest can test (api.rst 4.1)."""
        try:
            version = self.api_version()
        except KvmError as e:
            self.close()
            raise DeviceError(f"{self.path} is not a KVM device: KVM_GET_API_VERSION failed with "
                              f"{e.errno_name}") from None
        if version != 12:
            self.close()
            raise DeviceError(f"{self.path}: KVM_GET_API_VERSION is {version}, kvmtest needs 12 (api.rst 4.1)")

    def api_version(self) -> int:
        """KVM_GET_API_VERSION (api.rst 4.1): 12 on every kernel since 2.6.22."""
        return self.ioctl("KVM_GET_API_VERSION")

    def check_extension(self, cap: int | str) -> int:
        """KVM_CHECK_EXTENSION (api.rst 4.4) for a KVM_CAP_* name or number: 0 when unsupported, else
        a capability-defined value (1, a count, a size in bytes, a bit mask)."""
        number = cap_number(cap)
        return self.ioctl("KVM_CHECK_EXTENSION", number, args=CAPABILITY_NAMES.name(number))

    def has_capability(self, cap: str) -> int:
        """check_extension(cap): what MissingCapabilityError is decided on (kvmtest.ioctl)."""
        return self.check_extension(cap)

    def capabilities(self) -> dict[str, int]:
        """Every capability kvmtest knows by name (kvmtest.abi.capabilities) with its value on this host."""
        return {name: self.check_extension(num) for name, num in CAPABILITIES.items()}

    def vcpu_mmap_size(self) -> int:
        """KVM_GET_VCPU_MMAP_SIZE (api.rst 4.5): the size in bytes of a vCPU's mapping (kvm_run and
        the pages after it), asked once."""
        if self._mmap_size is None:
            self._mmap_size = self.ioctl("KVM_GET_VCPU_MMAP_SIZE")
        return self._mmap_size

    # --- CPUID -------------------------------------------------------------------------------

    def _cpuid_nent(self, nent, request: str) -> int:
        return validate.int_in(nent, 0, KVM_MAX_CPUID_ENTRIES, f"{self.name} {request} nent")

    def _try_get_cpuid(self, request: str, nent: int):
        buf = cpuid2_buffer(nent=self._cpuid_nent(nent, request), what=f"{self.name} {request}")
        return buf, self.try_ioctl(request, buf, args=f"nent={buf.nent}")

    def try_get_supported_cpuid(self, nent: int):
        """KVM_GET_SUPPORTED_CPUID (api.rst 4.46) once, with room for `nent` entries (0 to
        KVM_MAX_CPUID_ENTRIES): (the kvm_cpuid2 buffer as KVM left it, errno). KVM answers E2BIG
        when nent is too small and leaves nent as passed; on success it sets nent to the number
        of valid entries."""
        return self._try_get_cpuid("KVM_GET_SUPPORTED_CPUID", nent)

    def get_supported_cpuid(self, nent: int):
        """try_get_supported_cpuid, raising KvmError (E2BIG where nent is too small): the
        kvm_cpuid2 buffer with KVM's nent, for checks of the ioctl itself. supported_cpuid()
        gives the entries."""
        buf, err = self.try_get_supported_cpuid(nent)
        if err:
            raise KvmError(err, "KVM_GET_SUPPORTED_CPUID", self.name, f"nent={nent}")
        return buf

    def _get_cpuid(self, request: str) -> list[S.kvm_cpuid_entry2]:
        """All entries of `request`: 64 entries first, KVM_MAX_CPUID_ENTRIES after an E2BIG."""
        nent = 64
        while True:
            buf, err = self._try_get_cpuid(request, nent)
            if err == errno.E2BIG and nent < KVM_MAX_CPUID_ENTRIES:
                nent = KVM_MAX_CPUID_ENTRIES
                continue
            if err:
                raise KvmError(err, request, self.name, f"nent={nent}")
            return [buf.entries[i] for i in range(buf.nent)]

    def supported_cpuid(self) -> list[S.kvm_cpuid_entry2]:
        """KVM_GET_SUPPORTED_CPUID (api.rst 4.46): the CPUID entries KVM can give a guest, as many
        as KVM reports (its nent)."""
        return self._get_cpuid("KVM_GET_SUPPORTED_CPUID")

    def cached_supported_cpuid(self) -> list[S.kvm_cpuid_entry2]:
        """supported_cpuid(), asked once per Kvm (guests set it on every vCPU). Shared: copy before
        editing (supported_cpuid_copy)."""
        if self._supported_cpuid is None:
            self._supported_cpuid = self.supported_cpuid()
        return self._supported_cpuid

    def supported_cpuid_copy(self) -> list[S.kvm_cpuid_entry2]:
        """A private copy of the cached table, for a test to edit and hand to KVM_SET_CPUID2."""
        return [S.kvm_cpuid_entry2.from_buffer_copy(bytes(e)) for e in self.cached_supported_cpuid()]

    def has_feature(self, name: str) -> bool:
        """Whether KVM_GET_SUPPORTED_CPUID reports CPU feature `name` (kvmtest.cpuid.FEATURES)."""
        from .cpuid import has_feature

        return has_feature(self.cached_supported_cpuid(), name)

    def mce_cap_supported(self) -> int:
        """KVM_X86_GET_MCE_CAP_SUPPORTED (api.rst KVM_X86_SETUP_MCE, KVM_CAP_MCE): the IA32_MCG_CAP
        capability bits (MCG_*_P) a vCPU's KVM_X86_SETUP_MCE may ask for."""
        value = ctypes.c_uint64()
        self.ioctl("KVM_X86_GET_MCE_CAP_SUPPORTED", value)
        return value.value

    def emulated_cpuid(self) -> list[S.kvm_cpuid_entry2]:
        """KVM_GET_EMULATED_CPUID (api.rst 4.88): the CPUID bits KVM emulates rather than passes on."""
        return self._get_cpuid("KVM_GET_EMULATED_CPUID")

    # --- MSRs ----------------------------------------------------------------------------------

    def _msr_list(self, request: str) -> list[int]:
        """An MSR index list: nmsrs=0 first, which KVM answers with E2BIG and the count (api.rst 4.3),
        then a buffer of that size."""
        probe = msr_list_buffer(0, what=f"{self.name} {request}")
        err = self.try_ioctl(request, probe, args="nmsrs=0")
        if err not in (0, errno.E2BIG):
            raise KvmError(err, request, self.name, "nmsrs=0")
        buf = msr_list_buffer(probe.nmsrs, what=f"{self.name} {request}")
        self.ioctl(request, buf, args=f"nmsrs={buf.nmsrs}")
        return list(buf.indices[: buf.nmsrs])

    def msr_index_list(self) -> list[int]:
        """KVM_GET_MSR_INDEX_LIST (api.rst 4.3): MSRs saved and restored with KVM_GET/SET_MSRS."""
        return self._msr_list("KVM_GET_MSR_INDEX_LIST")

    def msr_feature_index_list(self) -> list[int]:
        """KVM_GET_MSR_FEATURE_INDEX_LIST (api.rst 4.3, KVM_CAP_GET_MSR_FEATURES): the feature MSRs
        read_feature_msrs can read."""
        return self._msr_list("KVM_GET_MSR_FEATURE_INDEX_LIST")

    def read_feature_msrs(self, indices: list[int]) -> dict[int, int]:
        """KVM_GET_MSRS on the system fd (api.rst 4.18, KVM_CAP_GET_MSR_FEATURES): the values of
        feature MSRs, index -> value. The ioctl returns how many it read, so the dict may be
        shorter than `indices` when KVM stops at one it does not read."""
        buf = msrs_buffer(indices, what=f"{self.name} KVM_GET_MSRS")
        n = self.ioctl("KVM_GET_MSRS", buf, args="msrs=" + ",".join(hex(e.index) for e in buf.entries))
        return {buf.entries[i].index: buf.entries[i].data for i in range(n)}

    # --- VMs -------------------------------------------------------------------------------------

    def create_vm(self, vm_type: int = 0) -> Vm:
        """KVM_CREATE_VM (api.rst 4.2) of `vm_type` (an unsigned long; 0 is the default x86 VM).
        The returned Vm owns its fd; close it or use `with`."""
        if type(vm_type) is not int or not 0 <= vm_type < 1 << 64:  # else no message to build
            vm_type = validate.uint(vm_type, 64, f"{self.name} KVM_CREATE_VM type")
        fd = self.ioctl("KVM_CREATE_VM", vm_type, args=f"type={vm_type}")
        return Vm(self, fd, f"vm{next(self._vm_ids)}")
