"""The ioctl choke point retries EINTR a bounded number of times, and never for KVM_RUN.

api.rst 5 "immediate_exit": KVM_RUN returns -EINTR at once while immediate_exit is set, so a
retry loop around it never ends; any other ioctl still EINTR after many retries is handed
back to the caller as EINTR instead of spinning (no KVM needed: the system call is faked).
"""

import errno

import pytest

import kvmtest.ioctl
from kvmtest.ioctl import try_ioctl

LIMIT = 10_000  # far above any sane retry count; the fake stops an unbounded loop here


@pytest.fixture
def always_eintr(monkeypatch):
    calls = []

    def fake(fd, number, arg):
        calls.append(number)
        if len(calls) > LIMIT:
            raise AssertionError(f"EINTR retried more than {LIMIT} times: the loop is unbounded")
        return -1, errno.EINTR

    monkeypatch.setattr(kvmtest.ioctl, "raw_ioctl", fake)
    return calls


def test_kvm_run_eintr_is_returned_after_one_call(always_eintr):
    assert try_ioctl(-1, "KVM_RUN", obj="vm0/vcpu0") == (-1, errno.EINTR)
    assert len(always_eintr) == 1, f"KVM_RUN issued {len(always_eintr)} times for one try"


def test_other_ioctls_retry_eintr_a_bounded_number_of_times(always_eintr):
    assert try_ioctl(-1, "KVM_GET_REGS", obj="vm0/vcpu0") == (-1, errno.EINTR)
    assert 1 < len(always_eintr) <= 1000, f"KVM_GET_REGS issued {len(always_eintr)} times"


def test_eintr_is_not_retried_when_asked_not_to(always_eintr):
    assert try_ioctl(-1, "KVM_GET_REGS", retry_eintr=False) == (-1, errno.EINTR)
    assert len(always_eintr) == 1


def test_a_passing_eintr_is_still_retried(monkeypatch):
    answers = [(-1, errno.EINTR), (-1, errno.EINTR), (7, 0)]
    monkeypatch.setattr(kvmtest.ioctl, "raw_ioctl", lambda fd, number, arg: answers.pop(0))
    assert try_ioctl(-1, "KVM_CHECK_EXTENSION", 0) == (7, 0)
    assert not answers
