"""The one place every KVM ioctl goes through.

`ioctl()` raises KvmError naming the ioctl, the object (vm0, vm0/vcpu1) and the key arguments;
`try_ioctl()` is its twin for negative tests and returns the errno (0 on success). Both record the
call in a short ring of recent ioctls and exits that failure reports print (`recent()`).

Two checks use the ioctl table (kvmtest.abi.numbers):
- scope: an ioctl issued on a kind of fd it is not defined for (a vCPU ioctl on a VM fd, api.rst
  4 ":Type:") is refused with WrongFdError before the system call, when the caller says which kind
  of fd it holds (`scope`). A negative test that wants KVM's own answer passes wrong_fd=True, which
  in turn is refused on an fd the ioctl is defined for, so the flag always means what it says.
- capability: when `ioctl()` fails with EINVAL or ENOTTY and the caller can ask KVM_CHECK_EXTENSION
  (`has_capability`), the capability that gates the ioctl on that fd is checked; if the host
  reports 0 the error is a MissingCapabilityError naming it, instead of a bare EINVAL.
"""

import ctypes
import errno
import functools
import threading
from collections import deque
from collections.abc import Callable
from typing import NoReturn

from .abi.constants import errno_name
from .abi.numbers import IOCTLS, KVM_RUN, IoctlDef, ioctl_def
from .errors import BadArgumentError, KvmError, MissingCapabilityError, WrongFdError
from .libc import get_errno, kvm_run_function, raw_ioctl

TRACE_LENGTH = 64
# A signal that lands during an ioctl makes it return EINTR once; its handler has run by the
# time we retry. An ioctl still EINTR after this many tries never will succeed (KVM_RUN with
# immediate_exit set, a signal re-raised forever), so the errno goes back to the caller.
EINTR_RETRIES = 100
_trace: deque = deque(maxlen=TRACE_LENGTH)
_trace_lock = threading.Lock()
# The ioctl paths and the exit loop add entries with this, skipping note()'s call and lock: one
# deque.append is atomic under the GIL (and a maxlen deque drops the oldest entry in the same
# step), so the lock only keeps recent() and clear_trace() apart from each other. An entry is a
# tuple of parts, or an object whose trace_parts() gives them when read: Vcpu.run() appends each
# exit itself (kvmtest.exits.Exit.trace_parts), a tuple less to build on every exit.
trace_append = _trace.append

# How messages name each kind of fd (kvmtest.abi.numbers.SCOPES).
FD_KINDS = {"system": "system (/dev/kvm)", "vm": "VM", "vcpu": "vCPU", "device": "device"}


def note(*parts) -> None:
    """Add an entry (an exit, a guest message) to the trace ring.

    The parts are joined with spaces only when read, so the hot exit loop pays for a
    tuple append, not for formatting.
    """
    with _trace_lock:
        _trace.append(parts)


def recent(n: int = 20) -> list[str]:
    """The last `n` trace entries as text, oldest first."""
    with _trace_lock:
        entries = list(_trace)[-n:]
    return [" ".join(str(p) for p in (entry if type(entry) is tuple else entry.trace_parts())) for entry in entries]


def clear_trace() -> None:
    """Empty the trace ring (a new test starts with its own history)."""
    with _trace_lock:
        _trace.clear()


# (ioctl name, fd kind, wrong_fd) -> (request number, name) for every named call that passed
# _request and check_scope once: both depend on nothing else, so later calls skip them. At most
# every name in IOCTLS times every kind of fd, twice; a refused call is never stored.
_resolved: dict[tuple[str, str | None, bool], tuple[int, str]] = {}


def _request(request: int | str, scope: str | None) -> tuple[int, str, IoctlDef | None]:
    """(request number, name for messages, definition or None for a number kvmtest does not know)."""
    if isinstance(request, str):
        if request not in IOCTLS:
            raise BadArgumentError(f"unknown ioctl name {request!r}")
        named = IOCTLS[request]
        return named.request, request, named
    if isinstance(request, bool) or not isinstance(request, int) or not 0 <= request < 1 << 32:
        raise BadArgumentError(f"ioctl request {request!r}: expected a KVM ioctl name or a 32-bit request number")
    d = ioctl_def(request, scope)
    return request, d.name if d is not None else f"ioctl({request:#x})", d


def _kinds(d: IoctlDef) -> str:
    order = [s for s in FD_KINDS if s in d.scopes]
    return " or ".join(FD_KINDS[s] for s in order)


def check_scope(d: IoctlDef | None, scope: str | None, obj: str, wrong_fd: bool) -> None:
    """Refuse `d` on a `scope` fd it is not defined for (WrongFdError), or wrong_fd=True on one
    it is defined for (BadArgumentError). Nothing is checked without a scope (a bare fd number) or
    for a request number kvmtest does not know (a foreign ioctl, passed as is)."""
    if scope is None or d is None:
        return
    if scope not in FD_KINDS:
        raise BadArgumentError(f"{d.name} on {obj}: fd kind {scope!r} is none of {', '.join(FD_KINDS)}")
    valid = scope in d.scopes
    if valid and wrong_fd:
        raise BadArgumentError(f"{d.name} on {obj}: wrong_fd=True, but {d.name} is a {_kinds(d)} ioctl and {obj} "
                               f"is a {FD_KINDS[scope]} fd: drop wrong_fd")
    if not valid and not wrong_fd:
        raise WrongFdError(f"{d.name} is a {_kinds(d)} ioctl (api.rst 4 :Type:), but {obj} is a {FD_KINDS[scope]} "
                           "fd; a negative test that wants KVM's answer passes wrong_fd=True")


# ctypes objects an ioctl takes by pointer (_arg hands them to ctypes.byref as well).
_BY_POINTER = (ctypes.Structure, ctypes.Union, ctypes.Array, ctypes._SimpleCData, ctypes._Pointer)
_byref = ctypes.byref


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
              retry_eintr: bool = True, trace: bool = True, scope: str | None = None,
              wrong_fd: bool = False) -> tuple[int, int]:
    """Issue an ioctl; return (result, errno) without raising on a failed call. errno is 0 on success.

    `request` is a KVM ioctl name or a request number; `arg` None, an integer (the unsigned long
    argument) or a ctypes structure passed by pointer. `scope` is the kind of fd `fd` is
    ("system", "vm", "vcpu", "device"; None: not known, nothing checked): see check_scope and
    `wrong_fd`. EINTR is retried, at most EINTR_RETRIES times, except for KVM_RUN (whose EINTR
    is an answer: a signal or kvm_run.immediate_exit) and where retry_eintr=False. trace=False
    leaves the recording to the caller (the run loop records exits instead).

    Raises BadArgumentError (an unknown name, an argument ctypes cannot pass) or WrongFdError
    before any system call.
    """
    resolved = _resolved.get((request, scope, wrong_fd)) if type(request) is str else None
    if resolved is None:
        number, name, d = _request(request, scope)
        check_scope(d, scope, obj, wrong_fd)
        if type(request) is str:
            _resolved[(request, scope, wrong_fd)] = number, name
    else:
        number, name = resolved
    if arg is None:
        pointer = None
    elif isinstance(arg, _BY_POINTER):  # a UAPI struct, the usual case: what _arg would do
        pointer = _byref(arg)
    elif type(arg) is int and arg == 0:  # a zero argument (an id, a type): what _arg would do
        pointer = None
    else:
        pointer = _arg(arg, name, obj)
    tries = EINTR_RETRIES if retry_eintr and number != KVM_RUN else 0
    while True:
        ret, err = raw_ioctl(fd, number, pointer)
        if err != errno.EINTR or tries <= 0:
            break
        tries -= 1
    if trace or err:
        # recent() joins the parts with spaces: "-> 5" / "-> EINVAL", formatted only when read.
        trace_append((obj, name, args, "->", errno_name(err) if err else ret))
    return ret, err


def ioctl(fd: int, request: int | str, arg=None, *, obj: str = "?", args: str = "", hint=None,
          scope: str | None = None, wrong_fd: bool = False,
          has_capability: Callable[[str], int] | None = None) -> int:
    """Issue an ioctl and return its result (>= 0); raise KvmError naming the ioctl, `obj` and
    `args` on failure. `hint(errno)` may explain a failure in words. With `has_capability` (a
    KVM_CHECK_EXTENSION for the fd's VM or system) an EINVAL or ENOTTY where the capability that
    gates the ioctl on this kind of fd reports 0 raises MissingCapabilityError naming it."""
    ret, err = try_ioctl(fd, request, arg, obj=obj, args=args, scope=scope, wrong_fd=wrong_fd)
    if err:
        raise_error(err, request, obj=obj, args=args, hint=hint, scope=scope, has_capability=has_capability)
    return ret


def raise_error(err: int, request: int | str, *, obj: str = "?", args: str = "", hint=None,
                scope: str | None = None, has_capability: Callable[[str], int] | None = None) -> NoReturn:
    """Raise what ioctl() raises for `request` failing with `err` (its arguments, the same
    meaning): MissingCapabilityError or KvmError. For callers that issued it with try_ioctl."""
    _, name, d = _request(request, scope)
    missing = _missing_capability(d, scope, err, has_capability)
    if missing:
        raise MissingCapabilityError(err, name, obj, args, missing, recent())
    raise KvmError(err, name, obj, args, hint(err) if hint else "", recent())


def _missing_capability(d, scope, err, has_capability) -> str | None:
    """The capability gating `d` on a `scope` fd, if the failure is the one a missing ioctl gives
    (EINVAL, or ENOTTY for an ioctl KVM does not know; api.rst 4 "Capability") and the host
    reports the capability as 0. A failing probe leaves the original error alone."""
    if d is None or has_capability is None or err not in (errno.EINVAL, errno.ENOTTY):
        return None
    if d.name == "KVM_CHECK_EXTENSION":  # the probe is one: asking it about itself would recurse
        return None
    cap = d.capability_on(scope) if scope else d.capability
    if cap is None:
        return None
    try:
        return cap if not has_capability(cap) else None
    except (KvmError, BadArgumentError):
        return None


def kvm_run_entry(fd: int) -> Callable[[], int]:
    """KVM_RUN on vCPU fd `fd`, the hot path of the choke point, prepared once per vCPU: each
    call of the returned callable is one KVM_RUN system call, returning 0, or -1 with the errno
    in last_errno(). EINTR is an answer here and never retried; the caller records the exit in
    the trace (and raises KvmError with this module's trace for any other errno). No scope
    check: only Vcpu calls it, on its own fd, and only while its kvm_run is mapped (the fd open).

    A partial of the ctypes function is the cheapest call Python can make: no Python frame and
    no argtypes conversion between the caller and the system call (benchmarks/bench_harness.py
    measures the same call as the floor of any Python harness)."""
    return functools.partial(kvm_run_function, fd, KVM_RUN, None)


last_errno = get_errno  # the errno of the last failed kvm_run_entry() call on this thread
