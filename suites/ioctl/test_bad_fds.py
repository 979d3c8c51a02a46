"""ioctls on closed fds, on the wrong kind of fd, and with malformed arguments."""

import errno

import pytest

from kvmtest.abi import structs as S
from kvmtest.abi.constants import errno_name
from kvmtest.ioctl import try_ioctl


def _closed_fd(kvm, kind: str) -> int:
    """The number of a system, VM or vCPU fd that has just been closed."""
    from kvmtest import Kvm

    if kind == "system":
        obj = Kvm(kvm.path)
    elif kind == "vm":
        obj = kvm.create_vm()
    else:
        vm = kvm.create_vm()
        obj = vm.create_vcpu()
        fd = obj.fd
        vm.close()
        return fd
    fd = obj.fd
    obj.close()
    return fd


@pytest.mark.parametrize("kind,request_name,arg", [
    ("system", "KVM_GET_API_VERSION", None), ("system", "KVM_CREATE_VM", 0),
    ("vm", "KVM_CREATE_VCPU", 0), ("vm", "KVM_CHECK_EXTENSION", 3),
    ("vcpu", "KVM_RUN", None), ("vcpu", "KVM_GET_REGS", "regs"),
])
def test_ioctl_on_a_closed_fd_is_ebadf(kvm, kind, request_name, arg):
    """Any ioctl on a KVM file descriptor that has been closed fails with EBADF (ioctl(2); the
    kvm-ioctls and selftests contract for system, VM and vCPU ioctls)."""
    arg = S.kvm_regs() if arg == "regs" else arg
    # Raw on purpose: the fd's object is gone, only its closed number is left to pass.
    _, err = try_ioctl(_closed_fd(kvm, kind), request_name, arg, obj=f"closed {kind} fd")
    assert err == errno.EBADF, f"{request_name} on a closed {kind} fd: expected EBADF, got {errno_name(err)}"


def test_vm_ioctl_on_the_system_fd_is_einval(kvm):
    """/dev/kvm answers only system ioctls; x86's kvm_arch_dev_ioctl refuses anything else
    with EINVAL (api.rst 4.7 ":Type: vm ioctl"; arch/x86/kvm/x86.c)."""
    err = kvm.try_ioctl("KVM_CREATE_VCPU", 0, wrong_fd=True)  # raw on purpose: a VM ioctl on the system fd
    assert err == errno.EINVAL, f"KVM_CREATE_VCPU on /dev/kvm: expected EINVAL, got {errno_name(err)}"


def test_vcpu_ioctl_on_the_vm_fd_is_enotty(vm):
    """A vCPU ioctl on a VM fd is unknown to the VM: ENOTTY (api.rst 4.11 ":Type: vcpu ioctl";
    x86's kvm_arch_vm_ioctl default)."""
    err = vm.try_ioctl("KVM_GET_REGS", S.kvm_regs(), wrong_fd=True)  # raw on purpose: a vCPU ioctl on a VM fd
    assert err == errno.ENOTTY, f"KVM_GET_REGS on a VM fd: expected ENOTTY, got {errno_name(err)}"


def test_vm_ioctl_on_a_vcpu_fd_is_einval(vm):
    """A VM ioctl on a vCPU fd is unknown to the vCPU: EINVAL (api.rst 4.7 ":Type: vm ioctl";
    x86's kvm_arch_vcpu_ioctl default)."""
    vcpu = vm.create_vcpu()
    err = vcpu.try_ioctl("KVM_CREATE_VCPU", 1, wrong_fd=True)  # raw on purpose: a VM ioctl on a vCPU fd
    assert err == errno.EINVAL, f"KVM_CREATE_VCPU on a vCPU fd: expected EINVAL, got {errno_name(err)}"
    assert len(vm.vcpus) == 1


def test_foreign_ioctl_type_on_a_vcpu_is_einval(vm):
    """An ioctl whose type byte is not KVMIO (0xAE) is refused by kvm_vcpu_ioctl with EINVAL."""
    vcpu = vm.create_vcpu()
    err = vcpu.try_ioctl(0x5401)  # raw on purpose: TCGETS, a tty ioctl, is no KVM ioctl at all
    assert err == errno.EINVAL, f"TCGETS on a vCPU fd: expected EINVAL, got {errno_name(err)}"


def test_enable_cap_with_a_zeroed_struct_fails(vm):
    """KVM_ENABLE_CAP only works for extensions supported for enablement (api.rst 4.37);
    capability 0 (KVM_CAP_IRQCHIP) is not one: EINVAL."""
    err = vm.try_enable_cap("KVM_CAP_IRQCHIP")  # cap 0, no args, flags 0: the zeroed struct
    assert err == errno.EINVAL, f"KVM_ENABLE_CAP cap=0: expected EINVAL, got {errno_name(err)}"


def test_enable_cap_with_flags_set_fails(vm):
    """kvm_enable_cap.flags "has to be 0 for now" (api.rst 4.37)."""
    err = vm.try_enable_cap("KVM_CAP_MAX_VCPU_ID", 4, flags=1)
    assert err == errno.EINVAL, f"KVM_ENABLE_CAP flags=1: expected EINVAL, got {errno_name(err)}"


@pytest.mark.requires_cap("KVM_CAP_SIGNAL_MSI")
def test_signal_msi_without_irqchip_fails(vm):
    """KVM_SIGNAL_MSI needs an in-kernel irqchip to deliver to; without one it fails
    (api.rst KVM_SIGNAL_MSI; kvm-ioctls test_signal_msi_failure)."""
    err = vm.try_signal_msi(0, 0)
    assert err != 0, "KVM_SIGNAL_MSI without an irqchip succeeded"


def test_set_debugregs_with_flags_set_is_einval(vm):
    """KVM_SET_DEBUGREGS: "The flags field is unused yet and must be cleared on entry"
    (api.rst 4.34)."""
    vcpu = vm.create_vcpu()
    before = vcpu.get_debugregs()
    dbg = vcpu.get_debugregs()
    dbg.flags, dbg.db[0] = 1, 0x1234
    err = vcpu.try_set_debugregs(dbg)
    assert err == errno.EINVAL, f"KVM_SET_DEBUGREGS flags=1: expected EINVAL, got {errno_name(err)}"
    assert vcpu.get_debugregs().db[0] == before.db[0], "DR0 changed although KVM_SET_DEBUGREGS failed"


def test_kvm_run_with_no_memory_is_an_internal_error(vm):
    """KVM_RUN on a VM without memory cannot fetch an instruction: KVM_EXIT_INTERNAL_ERROR
    (selftests set_memory_region_test test_zero_memory_regions; api.rst 5 KVM_EXIT_INTERNAL_ERROR).

    With no memslots KVM sizes the shadow MMU at zero pages and KVM_RUN would fail with
    ENOSPC before fetching anything, so the VM is given MMU pages first (KVM_SET_NR_MMU_PAGES),
    as the kernel's selftest does."""
    from kvmtest.exits import InternalErrorExit, ShutdownExit

    if vm.check_extension("KVM_CAP_MMU_SHADOW_CACHE_CONTROL"):
        vm.set_nr_mmu_pages(64)
    vcpu = vm.create_vcpu()
    exit_ = vcpu.run(timeout=5)
    assert isinstance(exit_, InternalErrorExit), f"expected KVM_EXIT_INTERNAL_ERROR, got {exit_}"
    assert not isinstance(exit_, ShutdownExit)
