"""An eventfd(2) owned like any other kvmtest fd, for KVM_IRQFD and KVM_IOEVENTFD."""

import os

from . import validate
from .errors import BadArgumentError, KvmtestError
from .fdobject import FdObject

EVENTFD_MAX = 2**64 - 2  # eventfd(2): the counter's largest value; writing 2^64-1 is EINVAL


class EventFd(FdObject):
    """A non-blocking eventfd; `count()` reads and resets its counter (0 when nothing came).

    Non-blocking, so neither call can wait: a read with nothing pending returns 0, and a
    write that would overflow the counter is refused by name instead of blocking.
    """

    def __init__(self, name: str = "eventfd"):
        super().__init__(os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC), name)

    def signal(self, value: int = 1) -> None:
        """Add `value` (at most EVENTFD_MAX, 2**64 - 2) to the counter, as the other side of an
        irqfd or ioeventfd would (eventfd(2) write). BadArgumentError for a value outside that range,
        KvmtestError when the counter would overflow (a blocking eventfd would wait instead)."""
        value = validate.uint(value, 64, f"{self.name} signal value")
        if value > EVENTFD_MAX:
            raise BadArgumentError(f"{self.name} signal value = {value:#x}: more than the eventfd maximum "
                                   f"{EVENTFD_MAX:#x} (eventfd(2))")
        try:
            os.eventfd_write(self.fd, value)
        except BlockingIOError:
            raise KvmtestError(f"{self.name}: adding {value:#x} would overflow the counter "
                               f"(at most {EVENTFD_MAX:#x}); read it with count() first") from None

    def count(self) -> int:
        """Read and reset the counter (eventfd(2) read): the sum of what was signalled since the
        last read, e.g. how many times KVM signalled an ioeventfd; 0 when nothing came."""
        try:
            return os.eventfd_read(self.fd)
        except BlockingIOError:
            return 0
