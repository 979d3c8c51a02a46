"""What a migration cannot carry is refused by name, and the guest goes on in its VM: an exit that
awaits the data only user space supplies (api.rst 5, KVM_RUN: the state is not consistent until
KVM_RUN completes it), setup made through a raw ioctl that nothing records or reads back
(kvmtest.carried), and a vCPU still inside KVM_RUN (kvmtest.state.CannotCarry)."""

import ctypes
import time

import pytest

from kvmtest.abi import constants as C
from kvmtest.caps import enable_cap_struct
from kvmtest.exits import IntrExit, IoExit, MmioExit, MsrExit
from kvmtest.guest import layout as L
from kvmtest.state import CannotCarry, ExitAwaitsResponse

UNKNOWN_MSR = 0x4B564D7F  # no CPU or KVM defines it

PENDING_READS = {  # access: (guest code, exit type, fields it must have)
    "in": ("in eax, 0x40", IoExit, {"port": 0x40, "size": 4}),
    "mmio-read": (f"mov rbx, {L.MMIO_BASE:#x}\nmov eax, dword ptr [rbx]", MmioExit,
                  {"phys_addr": L.MMIO_BASE, "len": 4, "is_write": False}),
    "rdmsr": (f"mov ecx, {UNKNOWN_MSR:#x}\nrdmsr", MsrExit,
              {"reason": C.KVM_EXIT_X86_RDMSR, "index": UNKNOWN_MSR}),
}


@pytest.mark.parametrize("access", [
    "in", "mmio-read", pytest.param("rdmsr", marks=pytest.mark.requires_cap("KVM_CAP_X86_USER_SPACE_MSR"))])
def test_an_exit_awaiting_its_data_is_refused_until_answered(guest, access):
    """A vCPU stopped at an IN, an MMIO read or an RDMSR handed to user space has not finished the
    instruction: KVM completes it on the next KVM_RUN with the data user space wrote into kvm_run
    (api.rst 5 KVM_EXIT_IO, KVM_EXIT_MMIO, KVM_EXIT_X86_RDMSR). Migrating before respond() raises
    ExitAwaitsResponse and leaves the guest in its VM; the response then reaches the live vCPU, a
    migration after it carries the data, and the guest reads it."""
    code, exit_type, fields = PENDING_READS[access]
    g = guest("long64", f"{code}\nGUEST_SYNC rax\nGUEST_DONE")
    if access == "rdmsr":
        g.vm.enable_cap("KVM_CAP_X86_USER_SPACE_MSR", C.KVM_MSR_EXIT_REASON_UNKNOWN)
    exit_ = g.expect_exit(exit_type, **fields)
    old_vm = g.vm
    with pytest.raises(ExitAwaitsResponse, match=rf"{g.vcpu.name} stopped at .*call respond\(\)"):
        g.migrate()
    assert g.vm is old_vm and not old_vm.closed, "a refused migration replaced or closed the VM"
    exit_.respond(0xC0DE1234)
    g.migrate()
    assert g.vm is not old_vm
    assert g.run_to_done() == [0xC0DE1234], "the guest's read after the migration (host answered 0xc0de1234)"


@pytest.mark.requires_cap("KVM_CAP_SET_IDENTITY_MAP_ADDR")
def test_a_raw_vm_ioctl_nothing_records_is_refused_by_name(guest, vm):
    """KVM has no KVM_GET_* for KVM_SET_IDENTITY_MAP_ADDR (api.rst 4.40): issued raw on the VM fd,
    nothing records it for the copy, so migrating raises CannotCarry naming it instead of building
    a VM without it; the guest runs on in its VM."""
    # Raw on purpose: Vm.set_identity_map_addr records the call; the test is about one nothing records.
    vm.ioctl("KVM_SET_IDENTITY_MAP_ADDR", ctypes.c_uint64(0xFFFBC000), args="addr=0xfffbc000")
    g = guest("long64", "GUEST_SYNC 1\nGUEST_DONE", vm=vm)
    assert g.expect_sync() == 1
    with pytest.raises(CannotCarry, match=rf"{vm.name} .*KVM_SET_IDENTITY_MAP_ADDR addr=0xfffbc000"):
        g.migrate()
    assert g.vm is vm
    g.run_to_done()


@pytest.mark.requires_cap("KVM_CAP_ENFORCE_PV_FEATURE_CPUID")
def test_a_raw_vcpu_ioctl_nothing_records_is_refused_by_name(guest):
    """A vCPU capability enabled with a raw KVM_ENABLE_CAP on the vCPU fd (api.rst 4.37), not
    through Vcpu.enable_cap, which records it, cannot be read back: migrating raises CannotCarry
    naming the vCPU and the ioctl."""
    g = guest("long64", "GUEST_SYNC 1\nGUEST_DONE")
    # Raw on purpose: Vcpu.enable_cap records the call; the test is about one nothing records.
    g.vcpu.ioctl("KVM_ENABLE_CAP", enable_cap_struct("KVM_CAP_ENFORCE_PV_FEATURE_CPUID", 1),
                 args="KVM_CAP_ENFORCE_PV_FEATURE_CPUID")
    assert g.expect_sync() == 1
    with pytest.raises(CannotCarry, match=rf"{g.vcpu.name} .*KVM_ENABLE_CAP KVM_CAP_ENFORCE_PV_FEATURE_CPUID"):
        g.migrate()
    g.run_to_done()


def test_a_vcpu_inside_kvm_run_is_refused_at_once(guest):
    """A vCPU inside KVM_RUN on another thread is still changing its state, and KVM makes the other
    vCPU ioctls wait for it (api.rst 4.10 KVM_RUN): migrating raises CannotCarry naming it at once
    instead of waiting and saving a vCPU that runs on; kicked out (immediate_exit and a signal,
    api.rst 5), it migrates."""
    g = guest("long64", "GUEST_SYNC 1\nspin:\njmp spin")
    assert g.expect_sync() == 1
    running = g.in_thread(until_done=False, timeout=30)
    deadline = time.monotonic() + 10
    while not g.vcpu.in_run and time.monotonic() < deadline:
        time.sleep(0.01)
    assert g.vcpu.in_run, "the vCPU thread did not enter KVM_RUN within 10 s"
    started = time.monotonic()
    with pytest.raises(CannotCarry, match=rf"{g.vcpu.name} is inside KVM_RUN on another thread"):
        g.migrate()
    assert time.monotonic() - started < 5, "the refusal waited for the running vCPU"
    g.vcpu.kick()
    assert isinstance(running.join(30), IntrExit), "the kicked vCPU did not leave KVM_RUN with KVM_EXIT_INTR"
    g.migrate()
