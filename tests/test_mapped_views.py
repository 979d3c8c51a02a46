"""Views over mappings kvmtest owns refuse use once the mapping is gone (no KVM needed).

A ctypes object over an unmapped page reads freed memory or kills the interpreter; every
view kvmtest hands out (guest memory, kvm_run and its nested fields, an Exit's response
target) raises ClosedError instead, and a response to an exit kvm_run no longer describes
raises StaleExitError.
"""

import ctypes

import pytest

from kvmtest.abi import constants as C
from kvmtest.abi.structs import kvm_run
from kvmtest.errors import BadArgumentError, ClosedError, KvmtestError, StaleExitError
from kvmtest.exit_parsers import parse_exit
from kvmtest.exits import HypercallExit, IoExit, MmioExit, MsrExit
from kvmtest.mapped import GuardedView, MappingGuard
from kvmtest.memory import HostMapping
from kvmtest.vcpu import Vcpu


def test_host_mapping_after_close():
    m = HostMapping(0x2000, name="vm7 memory of slot 2 at 0x100000")
    m.write(0x10, b"abc")
    assert m.read(0x10, 3) == b"abc"
    m.close()
    for action in (lambda: m.read(0x10, 3), lambda: m.write(0, b"x"), lambda: m.discard(0, 0x1000),
                   lambda: m.addr):
        with pytest.raises(ClosedError, match=r"vm7 memory of slot 2 at 0x100000"):
            action()
    m.close()  # closing twice is harmless


def test_guarded_view_of_a_structure_in_a_mapping():
    """Fields, nested structures and arrays of a view read and write the mapping while it is
    there, and raise ClosedError (never touch the page) after the unmap."""
    m = HostMapping(0x1000)
    guard = MappingGuard("vm7/vcpu0's kvm_run")
    run = GuardedView(kvm_run.from_address(m.addr), guard, "vm7/vcpu0 kvm_run")
    run.request_interrupt_window = 1
    run.s.regs.regs.rbx = 0xCAFE
    run.padding1[2] = 9
    assert (run.request_interrupt_window, run.s.regs.regs.rbx, run.padding1[2]) == (1, 0xCAFE, 9)
    assert m.read(0, 1) == b"\x01" and len(run.padding1) == 6 and list(run.padding1)[2] == 9
    saved = run.copy()
    nested = run.s.regs.regs
    guard.unmap(m.close)
    assert saved.s.regs.regs.rbx == 0xCAFE  # a copy stays valid
    for action in (lambda: run.exit_reason, lambda: setattr(run, "immediate_exit", 1), lambda: nested.rip,
                   lambda: run.padding1[0], lambda: bytes(run), lambda: run.copy()):
        with pytest.raises(ClosedError, match=r"vm7/vcpu0's kvm_run was unmapped"):
            action()


class RunPage(ctypes.Structure):
    _fields_ = [("run", kvm_run), ("extra", ctypes.c_uint8 * 4096)]


class FakeVcpu:
    """What an exit needs from its vCPU: Vcpu.write_response over a kvm_run in memory."""

    name = "vm7/vcpu0"
    write_response = Vcpu.write_response

    def __init__(self, page):
        self._guard = MappingGuard(f"{self.name}'s kvm_run")
        self._kvm_run = page.run
        self._mmap_size = ctypes.sizeof(page)
        self.exits = 1


def _exits(page):
    """One exit of each kind that takes a response, read from `page` as Vcpu.run() reads it."""
    run = page.run
    made = []
    run.exit_reason = C.KVM_EXIT_IO
    run.exit.io.direction, run.exit.io.size, run.exit.io.port, run.exit.io.count = C.KVM_EXIT_IO_IN, 4, 0x10, 1
    run.exit.io.data_offset = ctypes.sizeof(kvm_run)
    made.append((parse_exit(run), 0xDEADBEEF, lambda: bytes(page.extra[:4]) == (0xDEADBEEF).to_bytes(4, "little")))
    run.exit_reason = C.KVM_EXIT_MMIO
    run.exit.mmio.phys_addr, run.exit.mmio.len, run.exit.mmio.is_write = 0xD0000000, 2, 0
    made.append((parse_exit(run), 0x1234, lambda: bytes(run.exit.mmio.data[:2]) == b"\x34\x12"))
    run.exit_reason = C.KVM_EXIT_X86_RDMSR
    run.exit.msr.index = 0x4B564D00
    made.append((parse_exit(run), 0x1122334455667788, lambda: run.exit.msr.data == 0x1122334455667788))
    run.exit_reason = C.KVM_EXIT_HYPERCALL
    made.append((parse_exit(run), -1000, lambda: run.exit.hypercall.ret == 2**64 - 1000))
    return made


def _from_vcpu(exit_, vcpu, generation):
    """The same exit as Vcpu.run() makes it: its source is (vcpu, KVM_RUN count)."""
    return type(exit_)(**{**exit_.__dict__, "_run": (vcpu, generation)})


def test_every_response_goes_through_its_vcpu():
    page = RunPage()
    vcpu = FakeVcpu(page)
    for exit_, value, written in _exits(page):
        _from_vcpu(exit_, vcpu, 1).respond(value)
        assert written(), f"{exit_}: the response did not reach kvm_run"


def test_responses_after_the_next_run_are_stale():
    page = RunPage()
    vcpu = FakeVcpu(page)
    made = _exits(page)
    vcpu.exits = 2
    for exit_, value, _ in made:
        with pytest.raises(StaleExitError, match=r"cannot respond to .* from vm7/vcpu0: KVM_RUN was entered 1 more"):
            _from_vcpu(exit_, vcpu, 1).respond(value)


def test_responses_after_close_are_closed_error():
    page = RunPage()
    vcpu = FakeVcpu(page)
    made = _exits(page)
    vcpu._guard.unmap(lambda: None)
    for exit_, value, _ in made:
        with pytest.raises(ClosedError, match=r"vm7/vcpu0 is closed and its kvm_run unmapped"):
            _from_vcpu(exit_, vcpu, 1).respond(value)


def test_io_response_never_writes_past_the_mapping():
    """data_offset comes from KVM; one pointing past the vCPU mapping is refused, not followed."""
    page = RunPage()
    vcpu = FakeVcpu(page)
    exit_ = IoExit(C.KVM_EXIT_IO, (vcpu, 1), C.KVM_EXIT_IO_IN, 4, 0x10, 1, ctypes.sizeof(page) - 2)
    with pytest.raises(KvmtestError, match=r"lies outside the 0x[0-9a-f]+-byte kvm_run mapping"):
        exit_.respond(1)


@pytest.mark.parametrize("make, value, message", [
    (lambda run: IoExit(C.KVM_EXIT_IO, run, C.KVM_EXIT_IO_IN, 1, 0x10, 1, 0), 0x100, "does not fit 1 byte"),
    (lambda run: IoExit(C.KVM_EXIT_IO, run, C.KVM_EXIT_IO_IN, 1, 0x10, 1, 0), -1, "does not fit 1 byte"),
    (lambda run: MmioExit(C.KVM_EXIT_MMIO, run, 0x1000, 4, False), "x", "takes an int or bytes"),
    (lambda run: MsrExit(C.KVM_EXIT_X86_RDMSR, run, 0, 0, 0x174), 2**64, "is not a 64-bit unsigned"),
    (lambda run: MsrExit(C.KVM_EXIT_X86_RDMSR, run, 0, 0, 0x174), -1, "is not a 64-bit unsigned"),
    (lambda run: HypercallExit(C.KVM_EXIT_HYPERCALL, run), 2**64, "is not a 64-bit integer"),
], ids=["io-too-wide", "io-negative", "mmio-str", "msr-too-wide", "msr-negative", "hypercall-too-wide"])
def test_response_values_that_do_not_fit(make, value, message):
    """A response value wider than its kvm_run field is refused, not truncated by ctypes."""
    page = RunPage()
    with pytest.raises(BadArgumentError, match=message):
        make(page.run).respond(value)
