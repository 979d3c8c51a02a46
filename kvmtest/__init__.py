"""kvmtest: a test harness and conformance suite for Linux KVM hosts, straight on /dev/kvm.

PYTEST_DONT_REWRITE: pytest marks an installed plugin's package for assertion rewriting when a
session starts, and warns that a package imported before then "cannot be rewritten". `kvmtest run`
imports kvmtest before it starts pytest, and so does a pytest session that starts another in the
same process (pytester), so the warning came in every such session. The marker keeps this module
unrewritten and silences that warning; it has no assert. Submodules a session imports later are
still rewritten, as before; the checks' asserts (suites/, tests/) are test modules, rewritten anyway.
"""

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
