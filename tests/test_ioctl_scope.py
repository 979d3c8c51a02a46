"""The choke point's use of the ioctl table (no /dev/kvm needed): an ioctl on the wrong kind of fd
is refused before the system call unless asked for on purpose, and an ioctl that fails where its
capability is missing names the capability."""

import errno

import pytest

import kvmtest.ioctl
from kvmtest.errors import (
    BadArgumentError,
    KvmError,
    MissingCapabilityError,
    WrongFdError,
)
from kvmtest.ioctl import ioctl, try_ioctl


@pytest.fixture
def kernel(monkeypatch):
    """A fake raw_ioctl that records the calls and answers from `answers` (default success)."""
    calls, answers = [], []

    def raw(fd, number, arg):
        calls.append(number)
        return answers.pop(0) if answers else (0, 0)

    monkeypatch.setattr(kvmtest.ioctl, "raw_ioctl", raw)
    return calls, answers


@pytest.mark.parametrize("request_name, scope, kinds", [
    ("KVM_GET_REGS", "vm", "vCPU"), ("KVM_CREATE_VCPU", "vcpu", "VM"), ("KVM_CREATE_VCPU", "system", "VM"),
    ("KVM_CREATE_VM", "vm", r"system \(/dev/kvm\)"), ("KVM_CHECK_EXTENSION", "vcpu", r"system \(/dev/kvm\) or VM"),
])
def test_an_ioctl_on_the_wrong_kind_of_fd_is_refused_before_the_call(kernel, request_name, scope, kinds):
    calls, _ = kernel
    with pytest.raises(WrongFdError, match=rf"{request_name} is a {kinds} ioctl .* but vm0 is a"):
        try_ioctl(7, request_name, obj="vm0", scope=scope)
    assert calls == [], "the refused ioctl reached the kernel"


def test_wrong_fd_passes_it_on_purpose(kernel):
    calls, answers = kernel
    answers.append((-1, errno.ENOTTY))
    assert try_ioctl(7, "KVM_GET_REGS", obj="vm0", scope="vm", wrong_fd=True) == (-1, errno.ENOTTY)
    assert len(calls) == 1


def test_wrong_fd_on_the_right_fd_is_refused(kernel):
    with pytest.raises(BadArgumentError, match=r"wrong_fd=True, but KVM_GET_REGS is a vCPU ioctl"):
        try_ioctl(7, "KVM_GET_REGS", obj="vm0/vcpu0", scope="vcpu", wrong_fd=True)


@pytest.mark.parametrize("request_name, scope", [
    ("KVM_ENABLE_CAP", "vcpu"), ("KVM_ENABLE_CAP", "vm"), ("KVM_GET_MSRS", "system"), ("KVM_GET_STATS_FD", "vcpu"),
    ("KVM_CHECK_EXTENSION", "vm"), ("KVM_HAS_DEVICE_ATTR", "vm"), ("KVM_GET_TSC_KHZ", "vm"),
])
def test_ioctls_of_several_kinds_of_fd_pass_on_each(kernel, request_name, scope):
    assert try_ioctl(7, request_name, obj="x", scope=scope) == (0, 0)


def test_no_scope_or_an_unknown_number_checks_nothing(kernel):
    assert try_ioctl(7, "KVM_GET_REGS", obj="fd 7") == (0, 0)
    assert try_ioctl(7, 0x5401, obj="vm0", scope="vm") == (0, 0)  # TCGETS: no KVM ioctl


def test_a_failure_where_the_capability_is_missing_names_it(kernel):
    _, answers = kernel
    answers.append((-1, errno.EINVAL))
    asked = []

    def has(cap):
        asked.append(cap)
        return 0

    with pytest.raises(MissingCapabilityError, match=r"KVM_SET_TSC_KHZ on vm0/vcpu0: EINVAL .*lacks "
                                                     r"KVM_CAP_TSC_CONTROL") as e:
        ioctl(7, "KVM_SET_TSC_KHZ", 1000, obj="vm0/vcpu0", scope="vcpu", has_capability=has)
    assert e.value.capability == "KVM_CAP_TSC_CONTROL" and e.value.errno == errno.EINVAL
    assert isinstance(e.value, KvmError) and asked == ["KVM_CAP_TSC_CONTROL"]


@pytest.mark.parametrize("err, reported", [(errno.EINVAL, 1), (errno.EBUSY, 0), (errno.ENOTTY, 3)])
def test_other_failures_stay_plain_kvm_errors(kernel, err, reported):
    _, answers = kernel
    answers.append((-1, err))
    with pytest.raises(KvmError) as e:
        ioctl(7, "KVM_SET_TSC_KHZ", 1000, obj="vm0/vcpu0", scope="vcpu", has_capability=lambda cap: reported)
    assert type(e.value) is KvmError and e.value.errno == err


def test_a_base_api_ioctl_never_blames_a_capability(kernel):
    _, answers = kernel
    answers.append((-1, errno.EINVAL))
    with pytest.raises(KvmError) as e:
        ioctl(7, "KVM_SET_REGS", 0, obj="vm0/vcpu0", scope="vcpu", has_capability=lambda cap: 0)
    assert type(e.value) is KvmError


def test_a_failing_capability_probe_leaves_the_error_alone(kernel):
    """KVM_CHECK_EXTENSION on a VM fd is gated by KVM_CAP_CHECK_EXTENSION_VM; its own failure must not
    ask KVM_CHECK_EXTENSION again (the probe would recurse), and a probe that fails is no verdict."""
    _, answers = kernel
    answers.append((-1, errno.EINVAL))
    with pytest.raises(KvmError) as e:
        ioctl(7, "KVM_CHECK_EXTENSION", 3, obj="vm0", scope="vm", has_capability=lambda cap: 0)
    assert type(e.value) is KvmError

    def failing_probe(cap):
        raise KvmError(errno.EBADF, "KVM_CHECK_EXTENSION", "vm0")

    answers.append((-1, errno.EINVAL))
    with pytest.raises(KvmError) as e:
        ioctl(7, "KVM_SET_TSC_KHZ", 1000, obj="vm0/vcpu0", scope="vcpu", has_capability=failing_probe)
    assert type(e.value) is KvmError and e.value.errno == errno.EINVAL
