"""Guards for memory kvmtest maps and hands out views of (kvm_run, dirty rings, guest memory).

A ctypes object over an mmap()ed region stays usable in Python after the region is unmapped,
and touching it then reads freed memory or kills the interpreter with SIGSEGV. So the owner
of a mapping keeps a MappingGuard, unmaps only through it, and hands out GuardedViews instead
of raw ctypes objects: every access to a view takes the guard's lock and raises ClosedError,
naming the owner and what was touched, once the mapping is gone.
"""

import ctypes
import threading

from .errors import ClosedError

_CTYPES_AGGREGATES = (ctypes.Structure, ctypes.Union, ctypes.Array)


class MappingGuard:
    """Who may touch one mapping: open until unmap(); `lock` is held while it is touched."""

    __slots__ = ("name", "lock", "open")

    def __init__(self, name: str):
        self.name = name  # e.g. "vm0/vcpu0's kvm_run"
        self.lock = threading.Lock()
        self.open = True

    def check(self, what: str) -> None:
        """Raise ClosedError for `what` if the mapping is gone. Call with `lock` held."""
        if not self.open:
            raise ClosedError(f"{what}: {self.name} was unmapped when its owner closed")

    def unmap(self, release) -> None:
        """Mark the mapping closed and call `release()` (the munmap) while no view is mid-access."""
        with self.lock:
            if self.open:
                self.open = False
                release()


class GuardedView:
    """A ctypes structure, union or array inside a guarded mapping.

    Reads and writes fields like the object it wraps; a field that is itself a structure or
    array comes back guarded too, so `vcpu.kvm_run.s.regs.regs.rbx = 1` is checked at the last
    step. Scalars come back as Python values (copies), which stay valid after the unmap.
    """

    __slots__ = ("_target", "_guard", "_what")

    def __init__(self, target, guard: MappingGuard, what: str):
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_guard", guard)
        object.__setattr__(self, "_what", what)

    def _wrap(self, value, what):
        return GuardedView(value, self._guard, what) if isinstance(value, _CTYPES_AGGREGATES) else value

    def __getattr__(self, name):
        with self._guard.lock:
            self._guard.check(f"reading {self._what}.{name}")
            return self._wrap(getattr(self._target, name), f"{self._what}.{name}")

    def __setattr__(self, name, value):
        with self._guard.lock:
            self._guard.check(f"writing {self._what}.{name}")
            setattr(self._target, name, value)

    def __getitem__(self, index):
        with self._guard.lock:
            self._guard.check(f"reading {self._what}[{index!r}]")
            value = self._target[index]
            if isinstance(value, list):  # a slice of an array: copied out already
                return value
            return self._wrap(value, f"{self._what}[{index!r}]")

    def __setitem__(self, index, value):
        with self._guard.lock:
            self._guard.check(f"writing {self._what}[{index!r}]")
            self._target[index] = value

    def __len__(self):
        return len(self._target)  # the type's length; touches no memory

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __bytes__(self):
        with self._guard.lock:
            self._guard.check(f"copying {self._what}")
            return bytes(self._target)

    def copy(self):
        """A private copy of the wrapped structure, valid after the unmap."""
        with self._guard.lock:
            self._guard.check(f"copying {self._what}")
            return type(self._target).from_buffer_copy(bytes(self._target))

    def __repr__(self):
        state = "open" if self._guard.open else "unmapped"
        return f"<{type(self._target).__name__} {self._what} in {self._guard.name} ({state})>"
