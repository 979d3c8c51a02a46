"""Every error kvmtest raises names what was wrong; none is a bare ctypes traceback."""

from .abi.constants import errno_name


class KvmtestError(Exception):
    """Base class for kvmtest's own errors (bad input, guest failures, timeouts)."""


class KvmError(OSError, KvmtestError):
    """An ioctl failed. Names the ioctl, the object it was issued on and its key arguments.

    str(): "KVM_SET_USER_MEMORY_REGION on vm0: EEXIST (17) slot=1 gpa=0x0 size=0x200000"
    """

    def __init__(self, err: int, ioctl: str, obj: str, args: str = "", hint: str = "", trace: list[str] | None = None):
        self.ioctl = ioctl
        self.obj = obj
        self.args_text = args
        self.hint = hint
        self.trace = list(trace or [])
        super().__init__(err, self._message(err))

    def _message(self, err):
        text = f"{self.ioctl} on {self.obj}: {errno_name(err)} ({err})"
        if self.args_text:
            text += f" {self.args_text}"
        if self.hint:
            text += f" ({self.hint})"
        return text

    def __str__(self):
        return self.strerror

    @property
    def errno_name(self) -> str:
        return errno_name(self.errno)


class ClosedError(KvmtestError):
    """An operation on a Kvm, Vm, Vcpu or mapping that was already closed: also any use of a
    view kvmtest handed out over a mapping since unmapped (an Exit's kvm_run, a dirty ring,
    guest memory), which would otherwise read freed memory or crash the interpreter."""


class StaleExitError(KvmtestError):
    """A response to an Exit whose kvm_run has since been overwritten by another KVM_RUN."""


class BadArgumentError(KvmtestError, ValueError):
    """A caller's value that kvmtest would otherwise truncate, wrap or hand to ctypes
    unchecked (an MSR value wider than 64 bits, a ninth debug register, ...)."""


class InvalidTimeoutError(BadArgumentError):
    """A timeout that is not a finite number of seconds above 0; names the value and where it came from."""


class DeviceError(KvmtestError):
    """/dev/kvm is missing or cannot be opened."""


class GuestMemoryError(KvmtestError):
    """A guest physical address that no memslot backs, or a bad memory request."""


class AssemblyError(KvmtestError):
    """Guest source that does not assemble, or that Keystone would mis-encode."""


class UnknownModeError(KvmtestError, ValueError):
    """A CPU mode name that kvmtest does not define."""


class GuestTimeout(KvmtestError):
    """A guest ran past its timeout; names the mode and the last RIP."""


class GuestFailure(KvmtestError, AssertionError):
    """The guest reported a failure (assertion, unexpected exception) or exited unexpectedly.

    An AssertionError so pytest shows it as a test failure, not an error.
    """
