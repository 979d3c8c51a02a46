"""KVM's paravirtual time structures as the host reads them from guest memory
(Documentation/virt/kvm/x86/msr.rst): struct pvclock_vcpu_time_info (MSR_KVM_SYSTEM_TIME_NEW),
struct pvclock_wall_clock (MSR_KVM_WALL_CLOCK_NEW) and struct kvm_steal_time
(MSR_KVM_STEAL_TIME), with msr.rst's conversion from a TSC value to kvmclock nanoseconds.

The guest's own reader of the same structure is guests/pvclock64.S.
"""

import struct
from dataclasses import dataclass

from .errors import KvmtestError

PVCLOCK_TIME_INFO_SIZE = 32   # msr.rst: "/* 32 bytes */"
PVCLOCK_WALL_CLOCK_SIZE = 12
STEAL_TIME_SIZE = 64          # msr.rst: 64-byte aligned; steal, version, flags, preempted, pads


def _stable(what: str, version: int) -> None:
    # msr.rst: "An odd version indicates an in-progress update"; 0 means KVM never wrote it.
    if version == 0 or version % 2:
        raise KvmtestError(f"{what}: version {version} (odd: an update in progress; 0: never written)")


@dataclass(frozen=True)
class PvclockTimeInfo:
    """struct pvclock_vcpu_time_info (msr.rst, MSR_KVM_SYSTEM_TIME_NEW)."""

    version: int
    tsc_timestamp: int
    system_time: int
    tsc_to_system_mul: int
    tsc_shift: int
    flags: int

    @classmethod
    def parse(cls, raw: bytes) -> "PvclockTimeInfo":
        """The structure from its 32 bytes (KvmtestError if fewer)."""
        if len(raw) < PVCLOCK_TIME_INFO_SIZE:
            raise KvmtestError(f"pvclock_vcpu_time_info is {PVCLOCK_TIME_INFO_SIZE} bytes, got {len(raw)}")
        version, _pad, tsc, system_time, mul, shift, flags = struct.unpack_from("<IIQQIbB", raw)
        return cls(version, tsc, system_time, mul, shift, flags)

    @classmethod
    def read(cls, vm, gpa: int) -> "PvclockTimeInfo":
        """The structure at guest physical `gpa`, requiring a complete update (even, non-zero version)."""
        info = cls.parse(vm.read(gpa, PVCLOCK_TIME_INFO_SIZE))
        _stable(f"pvclock_vcpu_time_info at {gpa:#x}", info.version)
        return info

    def ns_at(self, tsc: int) -> int:
        """kvmclock nanoseconds at guest TSC value `tsc`, by msr.rst's algorithm: (tsc -
        tsc_timestamp) shifted by tsc_shift, times tsc_to_system_mul, >> 32, plus system_time
        (64-bit arithmetic, as a guest does it)."""
        delta = (tsc - self.tsc_timestamp) % 2**64
        delta = (delta << self.tsc_shift) % 2**64 if self.tsc_shift >= 0 else delta >> -self.tsc_shift
        return (self.system_time + ((delta * self.tsc_to_system_mul) >> 32)) % 2**64


@dataclass(frozen=True)
class PvclockWallClock:
    """struct pvclock_wall_clock (msr.rst, MSR_KVM_WALL_CLOCK_NEW): the wall clock when kvmclock was 0."""

    version: int
    sec: int
    nsec: int

    @classmethod
    def read(cls, vm, gpa: int) -> "PvclockWallClock":
        """The structure at guest physical `gpa`, requiring a complete update."""
        clock = cls(*struct.unpack("<III", vm.read(gpa, PVCLOCK_WALL_CLOCK_SIZE)))
        _stable(f"pvclock_wall_clock at {gpa:#x}", clock.version)
        return clock

    @property
    def ns(self) -> int:
        """The boot wall clock in nanoseconds since the epoch."""
        return self.sec * 10**9 + self.nsec


@dataclass(frozen=True)
class StealTime:
    """struct kvm_steal_time (msr.rst, MSR_KVM_STEAL_TIME)."""

    steal: int
    version: int
    flags: int
    preempted: int

    @classmethod
    def read(cls, vm, gpa: int) -> "StealTime":
        """The structure at guest physical `gpa`, requiring a complete update."""
        st = cls(*struct.unpack_from("<QIIB", vm.read(gpa, STEAL_TIME_SIZE)))
        _stable(f"kvm_steal_time at {gpa:#x}", st.version)
        return st
