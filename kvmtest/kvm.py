"""The system handle: /dev/kvm and its system ioctls (api.rst 4.1-4.4, 4.46, 4.8x)."""

import errno
import itertools
import os

from .abi import constants as C
from .abi import structs as S
from . import validate
from .errors import BadArgumentError, DeviceError, KvmError
from .fdobject import FdObject

DEFAULT_DEVICE = "/dev/kvm"
KVM_MAX_CPUID_ENTRIES = 256  # arch/x86/include/asm/kvm_host.h


def cap_number(cap: int | str) -> int:
    """A capability's number, from the number or its name (with or without KVM_CAP_)."""
    if isinstance(cap, int) and not isinstance(cap, bool):
        return validate.uint(cap, 32, "capability number")  # KVM_CHECK_EXTENSION's arg is an int
    if not isinstance(cap, str):
        raise BadArgumentError(f"capability {cap!r}: expected a KVM_CAP_* name or number")
    name = cap if cap.startswith("KVM_CAP_") else f"KVM_CAP_{cap}"
    if name not in C.CAPABILITIES:
        raise BadArgumentError(f"unknown capability {cap!r}")
    return C.CAPABILITIES[name]


def open_device(path: str = DEFAULT_DEVICE) -> int:
    """Open the KVM device, turning the usual failures into one clear DeviceError."""
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
        raise DeviceError(f"{path}: cannot open: {os.strerror(e.errno)}") from None


class Kvm(FdObject):
    """An open /dev/kvm. Creates VMs and answers the system-wide queries."""

    def __init__(self, path: str = DEFAULT_DEVICE):
        super().__init__(open_device(path), "kvm")
        self.path = path
        self._vm_ids = itertools.count()
        self._mmap_size = None
        self._supported_cpuid = None
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
        """KVM_CHECK_EXTENSION (api.rst 4.4): 0 when unsupported, else a capability-defined value."""
        number = cap_number(cap)
        return self.ioctl("KVM_CHECK_EXTENSION", number, args=C.CAPABILITY_NAMES.name(number))

    def capabilities(self) -> dict[str, int]:
        """Every capability kvmtest knows by name with its value on this host."""
        return {name: self.check_extension(num) for name, num in C.CAPABILITIES.items()}

    def vcpu_mmap_size(self) -> int:
        """KVM_GET_VCPU_MMAP_SIZE (api.rst 4.5): the size of the kvm_run mapping."""
        if self._mmap_size is None:
            self._mmap_size = self.ioctl("KVM_GET_VCPU_MMAP_SIZE")
        return self._mmap_size

    def _get_cpuid(self, request: str) -> list[S.kvm_cpuid_entry2]:
        nent = 64
        while True:
            buf = S.cpuid2_type(nent)()
            buf.nent = nent
            err = self.try_ioctl(request, buf, args=f"nent={nent}")
            if err == errno.E2BIG and nent < KVM_MAX_CPUID_ENTRIES:
                nent = KVM_MAX_CPUID_ENTRIES
                continue
            if err:
                raise KvmError(err, request, self.name, f"nent={nent}")
            return [buf.entries[i] for i in range(buf.nent)]

    def supported_cpuid(self) -> list[S.kvm_cpuid_entry2]:
        """KVM_GET_SUPPORTED_CPUID (api.rst 4.46)."""
        return self._get_cpuid("KVM_GET_SUPPORTED_CPUID")

    def cached_supported_cpuid(self) -> list[S.kvm_cpuid_entry2]:
        """supported_cpuid(), asked once per Kvm (guests set it on every vCPU)."""
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

    def emulated_cpuid(self) -> list[S.kvm_cpuid_entry2]:
        """KVM_GET_EMULATED_CPUID (api.rst KVM_GET_EMULATED_CPUID)."""
        return self._get_cpuid("KVM_GET_EMULATED_CPUID")

    def _msr_list(self, request: str) -> list[int]:
        probe = S.msr_list_type(0)()
        err = self.try_ioctl(request, probe, args="nmsrs=0")
        if err not in (0, errno.E2BIG):
            raise KvmError(err, request, self.name, "nmsrs=0")
        n = probe.nmsrs
        buf = S.msr_list_type(n)()
        buf.nmsrs = n
        self.ioctl(request, buf, args=f"nmsrs={n}")
        return list(buf.indices[: buf.nmsrs])

    def msr_index_list(self) -> list[int]:
        """KVM_GET_MSR_INDEX_LIST (api.rst 4.3): MSRs saved and restored with KVM_GET/SET_MSRS."""
        return self._msr_list("KVM_GET_MSR_INDEX_LIST")

    def msr_feature_index_list(self) -> list[int]:
        """KVM_GET_MSR_FEATURE_INDEX_LIST (api.rst 4.3)."""
        return self._msr_list("KVM_GET_MSR_FEATURE_INDEX_LIST")

    def read_feature_msrs(self, indices: list[int]) -> dict[int, int]:
        """KVM_GET_MSRS on the system fd (api.rst 4.18, KVM_CAP_GET_MSR_FEATURES): the values of
        feature MSRs. The ioctl returns how many it read, so the dict may be shorter than
        `indices` when KVM stops at one it does not read."""
        indices = validate.uints(indices, 32, f"{self.name} KVM_GET_MSRS index")
        buf = S.msrs_type(len(indices))()
        buf.nmsrs = len(indices)
        for i, index in enumerate(indices):
            buf.entries[i].index = index
        n = self.ioctl("KVM_GET_MSRS", buf, args="msrs=" + ",".join(hex(i) for i in indices))
        return {buf.entries[i].index: buf.entries[i].data for i in range(n)}

    def create_vm(self, vm_type: int = 0):
        """KVM_CREATE_VM (api.rst 4.2). The returned Vm owns its fd; close it or use `with`."""
        from .vm import Vm

        vm_type = validate.uint(vm_type, 64, f"{self.name} KVM_CREATE_VM type")  # an unsigned long
        fd = self.ioctl("KVM_CREATE_VM", vm_type, args=f"type={vm_type}")
        return Vm(self, fd, f"vm{next(self._vm_ids)}")
