"""Every error kvmtest raises names what was wrong; none is a bare ctypes traceback."""

from .abi.constants import errno_name


class KvmtestError(Exception):
    """Base class for kvmtest's own errors (bad input, guest failures, timeouts)."""


class KvmError(OSError, KvmtestError):
    """An ioctl failed. Names the ioctl, the object it was issued on and its key arguments.

    str(): "KVM_SET_USER_MEMORY_REGION on vm0: EEXIST (17) slot=1 gpa=0x0 size=0x200000"
    """

    errno: int  # OSError's may be None; a KvmError is always made with the ioctl's errno

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
        """The errno's symbolic name (EINVAL, ENOTTY, ...)."""
        return errno_name(self.errno)


class MissingCapabilityError(KvmError):
    """An ioctl failed with EINVAL or ENOTTY on a host that does not report the capability that
    gates it there (KVM_CHECK_EXTENSION returned 0; api.rst 4, "Capability:"). `capability` names it.

    str(): "KVM_SET_TSC_KHZ on vm0/vcpu0: EINVAL (22) khz=1000 (this host lacks KVM_CAP_TSC_CONTROL, ...)"
    """

    def __init__(self, err: int, ioctl: str, obj: str, args: str, capability: str, trace: list[str] | None = None):
        self.capability = capability
        super().__init__(err, ioctl, obj, args, f"this host lacks {capability}: KVM_CHECK_EXTENSION reports 0, "
                                                "so the ioctl is not available here", trace)


class ClosedError(KvmtestError):
    """An operation on a Kvm, Vm, Vcpu or mapping that was already closed: also any use of a
    view kvmtest handed out over a mapping since unmapped (an Exit's kvm_run, a dirty ring,
    guest memory), which would otherwise read freed memory or crash the interpreter."""


class StaleExitError(KvmtestError):
    """A response to an Exit whose kvm_run has since been overwritten by another KVM_RUN."""


class BadArgumentError(KvmtestError, ValueError):
    """A caller's value that kvmtest would otherwise truncate, wrap or hand to ctypes
    unchecked (an MSR value wider than 64 bits, a ninth debug register, ...)."""


class WrongFdError(BadArgumentError):
    """A KVM ioctl issued on a kind of file descriptor it is not defined for (a vCPU ioctl on a VM
    fd, ...; api.rst 4 ":Type:"), refused before the system call. Negative tests that want KVM's
    own answer to a wrong fd say so with wrong_fd=True."""


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
