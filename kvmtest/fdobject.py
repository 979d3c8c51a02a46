"""Base for the objects that own a KVM file descriptor (Kvm, Vm, Vcpu, stats fds)."""

import os

from . import ioctl as _ioctl
from .errors import ClosedError


class FdObject:
    """Owns one fd; every ioctl on it goes through kvmtest.ioctl with this object's name and
    SCOPE, the kind of fd it is ("system", "vm", "vcpu"; None for fds that are no KVM object, such
    as an eventfd), so that an ioctl of another kind is refused before the system call
    (kvmtest.ioctl.check_scope)."""

    SCOPE: str | None = None

    def __init__(self, fd: int, name: str):
        self._fd: int | None = fd
        self.name = name

    @property
    def fd(self) -> int:
        """The fd number; ClosedError once closed."""
        if self._fd is None:
            raise ClosedError(f"{self.name} is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        """Whether close() has run."""
        return self._fd is None

    def has_capability(self, cap: str) -> int:
        """KVM_CHECK_EXTENSION(cap) for this object (0 where it cannot be asked): the capability
        check behind MissingCapabilityError. Kvm and Vm ask themselves, a Vcpu asks its VM."""
        return 1  # nothing to ask: never claim a capability is missing

    def ioctl(self, request, arg=None, *, args: str = "", hint=None, wrong_fd: bool = False) -> int:
        """Issue `request` on this fd; raise KvmError naming it and this object on failure
        (MissingCapabilityError where the capability gating it reports 0; kvmtest.ioctl.ioctl)."""
        # kvmtest.ioctl.ioctl written out (try_ioctl, then raise_error on failure) and self.fd
        # without its property: every setup ioctl comes through here or CarriedIoctls.ioctl.
        fd = self._fd
        if fd is None:
            raise ClosedError(f"{self.name} is closed")
        ret, err = _ioctl.try_ioctl(fd, request, arg, obj=self.name, args=args, scope=self.SCOPE, wrong_fd=wrong_fd)
        if err:
            _ioctl.raise_error(err, request, obj=self.name, args=args, hint=hint, scope=self.SCOPE,
                               has_capability=self.has_capability)
        return ret

    def try_ioctl(self, request, arg=None, *, args: str = "", wrong_fd: bool = False) -> int:
        """Issue `request` on this fd and return the errno (0 on success), for negative tests;
        wrong_fd=True issues an ioctl of another kind of fd on purpose (kvmtest.ioctl.check_scope)."""
        return _ioctl.try_ioctl(self.fd, request, arg, obj=self.name, args=args, scope=self.SCOPE,
                                wrong_fd=wrong_fd)[1]

    def try_ioctl_result(self, request, arg=None, *, args: str = "", wrong_fd: bool = False) -> tuple[int, int]:
        """Like try_ioctl, but return (result, errno)."""
        return _ioctl.try_ioctl(self.fd, request, arg, obj=self.name, args=args, scope=self.SCOPE,
                                wrong_fd=wrong_fd)

    def _release(self) -> None:
        """Subclasses free what they own besides the fd (mappings, children)."""

    def close(self) -> None:
        """Free what the object owns (_release), then close the fd; closing twice does nothing."""
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
        # A forgotten object must not leak its fd or mappings for the rest of the session. One
        # already closed has nothing left (a Vm's memslot mappings unmap themselves when freed).
        if getattr(self, "_fd", None) is None:
            return
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self):
        state = "closed" if self.closed else f"fd={self._fd}"
        return f"<{type(self).__name__} {self.name} {state}>"
