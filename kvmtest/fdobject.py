"""Base for the objects that own a KVM file descriptor (Kvm, Vm, Vcpu, stats fds)."""

import os

from . import ioctl as _ioctl
from .errors import ClosedError


class FdObject:
    """Owns one fd; every ioctl on it goes through kvmtest.ioctl with this object's name."""

    def __init__(self, fd: int, name: str):
        self._fd = fd
        self.name = name

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise ClosedError(f"{self.name} is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd is None

    def ioctl(self, request, arg=None, *, args: str = "", hint=None) -> int:
        """Issue `request` on this fd; raise KvmError naming it and this object on failure."""
        return _ioctl.ioctl(self.fd, request, arg, obj=self.name, args=args, hint=hint)

    def try_ioctl(self, request, arg=None, *, args: str = "") -> int:
        """Issue `request` on this fd and return the errno (0 on success), for negative tests."""
        return _ioctl.try_ioctl(self.fd, request, arg, obj=self.name, args=args)[1]

    def try_ioctl_result(self, request, arg=None, *, args: str = "") -> tuple[int, int]:
        """Like try_ioctl, but return (result, errno)."""
        return _ioctl.try_ioctl(self.fd, request, arg, obj=self.name, args=args)

    def _release(self) -> None:
        """Subclasses free what they own besides the fd (mappings, children)."""

    def close(self) -> None:
        if self._fd is None:
            return
        try:
            self._release()
        finally:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        # A forgotten object must not leak its fd or mappings for the rest of the session.
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self):
        state = "closed" if self.closed else f"fd={self._fd}"
        return f"<{type(self).__name__} {self.name} {state}>"
