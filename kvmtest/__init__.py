"""kvmtest: a test harness and conformance suite for Linux KVM hosts, straight on /dev/kvm."""

__version__ = "0.1.0"

from .errors import (  # noqa: F401
    AssemblyError,
    DeviceError,
    GuestFailure,
    GuestMemoryError,
    GuestTimeout,
    KvmError,
    KvmtestError,
    UnknownModeError,
)
from .kvm import Kvm  # noqa: F401
