"""Vcpu.get_cpuid() against simulated kernels, through the ioctl choke point (no KVM needed).

api.rst KVM_GET_CPUID2: E2BIG while nent is below the vCPU's entry count. Kernels differ in
what they write back into nent on success: current ones write the count, 6.1 leaves it as
passed. Either way get_cpuid() must return exactly the entries set, never unused zeroed ones.
"""

import ctypes
import errno
import os

import pytest

import kvmtest.ioctl
from kvmtest.abi import structs as S
from kvmtest.abi.numbers import IOCTLS
from kvmtest.fdobject import FdObject
from kvmtest.vcpu import Vcpu

KVM_GET_CPUID2 = IOCTLS["KVM_GET_CPUID2"].request


class SimulatedKernel:
    """KVM_GET_CPUID2 for a vCPU holding `table`; writes nent back only if `updates_nent`."""

    def __init__(self, table, updates_nent: bool):
        self.table, self.updates_nent, self.calls = table, updates_nent, []

    def __call__(self, fd, number, arg):
        assert number == KVM_GET_CPUID2, f"unexpected ioctl {number:#x}"
        buf = arg._obj  # the structure behind ctypes.byref
        self.calls.append(buf.nent)
        if buf.nent < len(self.table):
            return -1, errno.E2BIG
        for i, e in enumerate(self.table):
            ctypes.memmove(ctypes.addressof(buf.entries[i]), ctypes.addressof(e), ctypes.sizeof(e))
        if self.updates_nent:
            buf.nent = len(self.table)
        return 0, 0


def _table(n):
    return [S.kvm_cpuid_entry2(function=0x1000 + i, index=i % 3, flags=i & 1, eax=i, ebx=~i & 0xFFFFFFFF,
                               ecx=0xC0DE0000 | i, edx=0x5A5A5A5A) for i in range(n)]


@pytest.fixture
def fake_vcpu():
    """A Vcpu object with a harmless fd and no kvm_run: enough for get_cpuid()."""
    vcpu = Vcpu.__new__(Vcpu)
    FdObject.__init__(vcpu, os.open(os.devnull, os.O_RDONLY), "vm9/vcpu0")
    vcpu._cpuid_nent = None
    yield vcpu
    vcpu.close()


@pytest.mark.parametrize("updates_nent", [False, True], ids=["nent-left-as-passed", "nent-written-back"])
@pytest.mark.parametrize("count", [0, 1, 30, 255, 256])
@pytest.mark.parametrize("hint", ["none", "exact", "high", "low"])
def test_get_cpuid_returns_exactly_the_entries_set(monkeypatch, fake_vcpu, updates_nent, count, hint):
    table = _table(count)
    kernel = SimulatedKernel(table, updates_nent)
    monkeypatch.setattr(kvmtest.ioctl, "raw_ioctl", kernel)
    fake_vcpu._cpuid_nent = {"none": None, "exact": count, "high": min(count + 7, 256), "low": max(count - 5, 0)}[hint]
    got = fake_vcpu.get_cpuid()
    assert len(got) == count, f"{count} entries set, get_cpuid returned {len(got)} (ioctl nents {kernel.calls})"
    assert [bytes(e) for e in got] == [bytes(e) for e in table], "entries differ from the table set"
    assert len(kernel.calls) <= (2 if hint == "exact" else 12), f"too many KVM_GET_CPUID2 calls: {kernel.calls}"


def test_a_hint_from_kvm_set_cpuid2_costs_two_calls(monkeypatch, fake_vcpu):
    kernel = SimulatedKernel(_table(30), updates_nent=False)
    monkeypatch.setattr(kvmtest.ioctl, "raw_ioctl", kernel)
    fake_vcpu._cpuid_nent = 30
    fake_vcpu.get_cpuid()
    assert kernel.calls == [30, 29]
