"""The one place every KVM ioctl goes through.

`ioctl()` raises KvmError naming the ioctl, the object (vm0, vm0/vcpu1) and the key
arguments; `try_ioctl()` is its twin for negative tests and returns the errno (0 on
success). Both record the call in a short ring of recent ioctls and exits that failure
reports print (`recent()`).
"""

import ctypes
import errno
import threading
from collections import deque

from .abi.constants import errno_name
from .abi.numbers import IOCTLS, ioctl_name
from .errors import BadArgumentError, KvmError
from .abi.numbers import KVM_RUN
from .libc import get_errno, ioctl_function, raw_ioctl

TRACE_LENGTH = 64
# A signal that lands during an ioctl makes it return EINTR once; its handler has run by the
# time we retry. An ioctl still EINTR after this many tries never will succeed (KVM_RUN with
# immediate_exit set, a signal re-raised forever), so the errno goes back to the caller.
EINTR_RETRIES = 100
_trace: deque = deque(maxlen=TRACE_LENGTH)
_trace_lock = threading.Lock()


def note(*parts) -> None:
    """Add an entry (an exit, a guest message) to the trace ring.

    The parts are joined with spaces only when read, so the hot exit loop pays for a
    tuple append, not for formatting.
    """
    with _trace_lock:
        _trace.append(parts)


def recent(n: int = 20) -> list[str]:
    """The last n trace entries as text, oldest first."""
    with _trace_lock:
        entries = list(_trace)[-n:]
    return [" ".join(str(p) for p in parts) for parts in entries]


def clear_trace() -> None:
    with _trace_lock:
        _trace.clear()


def _request(request: int | str) -> tuple[int, str]:
    if isinstance(request, str):
        if request not in IOCTLS:
            raise BadArgumentError(f"unknown ioctl name {request!r}")
        return IOCTLS[request].request, request
    if isinstance(request, bool) or not isinstance(request, int) or not 0 <= request < 1 << 32:
        raise BadArgumentError(f"ioctl request {request!r}: expected a KVM ioctl name or a 32-bit request number")
    return request, ioctl_name(request)


def _arg(arg, name: str, obj: str):
    """The ioctl's third argument: an integer (an unsigned long, or a signed one for a negative
    test) or a pointer to a ctypes object. Anything else is refused naming the ioctl, rather than
    left to ctypes ("byref() argument must be a ctypes instance")."""
    if arg is None:
        return None
    if isinstance(arg, int):
        if not -(1 << 63) <= arg < 1 << 64:
            raise BadArgumentError(f"{name} on {obj}: argument {arg:#x} does not fit the ioctl's unsigned long")
        return ctypes.c_void_p(arg) if arg else None
    try:
        return ctypes.byref(arg)
    except TypeError:
        raise BadArgumentError(f"{name} on {obj}: argument {arg!r:.80}: expected an integer or a UAPI "
                               "struct (a ctypes object)") from None


def try_ioctl(fd: int, request: int | str, arg=None, *, obj: str = "?", args: str = "",
              retry_eintr: bool = True, trace: bool = True) -> tuple[int, int]:
    """Issue an ioctl; return (result, errno) without raising. errno is 0 on success.

    EINTR is retried, at most EINTR_RETRIES times, except for KVM_RUN (whose EINTR is an
    answer: a signal or kvm_run.immediate_exit) and where retry_eintr=False.
    trace=False leaves the recording to the caller (the run loop records exits instead).
    """
    number, name = _request(request)
    pointer = _arg(arg, name, obj)
    tries = EINTR_RETRIES if retry_eintr and number != KVM_RUN else 0
    while True:
        ret, err = raw_ioctl(fd, number, pointer)
        if err != errno.EINTR or tries <= 0:
            break
        tries -= 1
    if trace or err:
        note(obj, name, args, f"-> {errno_name(err)}" if err else f"-> {ret}")
    return ret, err


def ioctl(fd: int, request: int | str, arg=None, *, obj: str = "?", args: str = "", hint=None) -> int:
    """Issue an ioctl; raise KvmError on failure. `hint(errno)` may explain a failure."""
    ret, err = try_ioctl(fd, request, arg, obj=obj, args=args)
    if err:
        _, name = _request(request)
        raise KvmError(err, name, obj, args, hint(err) if hint else "", recent())
    return ret


def run_vcpu(fd: int) -> int:
    """KVM_RUN, the hot path of the choke point: returns the errno (0 on success).

    EINTR is an answer here and never retried; the caller records the exit in the trace
    (and raises KvmError with this module's trace for any other errno).
    """
    if ioctl_function(fd, KVM_RUN, None) == -1:
        return get_errno()
    return 0
