"""An eventfd(2) owned like any other kvmtest fd, for KVM_IRQFD and KVM_IOEVENTFD."""

import os

from .fdobject import FdObject


class EventFd(FdObject):
    """A non-blocking eventfd; `count()` reads and resets its counter (0 when nothing came)."""

    def __init__(self, name: str = "eventfd"):
        super().__init__(os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC), name)

    def signal(self, value: int = 1) -> None:
        os.eventfd_write(self.fd, value)

    def count(self) -> int:
        try:
            return os.eventfd_read(self.fd)
        except BlockingIOError:
            return 0
