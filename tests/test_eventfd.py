"""EventFd: non-blocking both ways; values eventfd(2) cannot take are refused by name."""

import pytest

from kvmtest.errors import BadArgumentError, ClosedError, KvmtestError
from kvmtest.eventfd import EVENTFD_MAX, EventFd


def test_signal_and_count():
    with EventFd("irqfd") as efd:
        assert efd.count() == 0
        efd.signal(3)
        efd.signal()
        assert efd.count() == 4 and efd.count() == 0


@pytest.mark.parametrize("value", [-1, 2**64 - 1, 2**64, 1.5])
def test_values_eventfd_cannot_take(value):
    with EventFd("irqfd") as efd, pytest.raises(BadArgumentError, match=r"irqfd signal value"):
        efd.signal(value)


def test_a_full_counter_is_an_error_not_a_wait():
    """eventfd(2): a write that would pass 0xfffffffffffffffe blocks, or is EAGAIN when non-blocking."""
    with EventFd("irqfd") as efd:
        efd.signal(EVENTFD_MAX)
        with pytest.raises(KvmtestError, match=r"irqfd: adding 0x1 would overflow the counter"):
            efd.signal(1)
        assert efd.count() == EVENTFD_MAX


def test_use_after_close():
    efd = EventFd("irqfd")
    efd.close()
    with pytest.raises(ClosedError, match=r"irqfd is closed"):
        efd.signal()
    with pytest.raises(ClosedError):
        efd.count()
