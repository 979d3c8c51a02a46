"""Which eventfd may drive which GSI (KVM_IRQFD, api.rst 4.75; selftests irqfd_test).

api.rst says how an irqfd is made and removed ("specifying both kvm_irqfd.fd and kvm_irqfd.gsi")
but names no errno for an eventfd that already drives one. KVM has refused a second binding of
an eventfd within one VM with EBUSY since irqfds exist (virt/kvm/eventfd.c), and in any VM of
the host since commit 2cdd64cbf990 (Linux 6.17: "ensure an eventfd is bound to at most one
irqfd through the entire host"); deassigning a pair that was never bound succeeds as long as
the eventfd is valid.
"""

import errno
import threading

import pytest

from kvmtest.abi.constants import errno_name
from kvmtest.eventfd import EventFd

pytestmark = pytest.mark.requires_cap("KVM_CAP_IRQFD")

RACE_ROUNDS = 2000


@pytest.fixture
def two_vms(kvm):
    """Two VMs with in-kernel irqchips (KVM_IRQFD needs one on x86)."""
    with kvm.create_vm() as vm1, kvm.create_vm() as vm2:
        vm1.create_irqchip()
        vm2.create_irqchip()
        yield vm1, vm2


def test_an_eventfd_bound_to_a_gsi_cannot_drive_another(two_vms):
    """Once an eventfd drives GSI 10 of one VM, binding it to GSI 11 of that VM fails with EBUSY;
    after KVM_IRQFD_FLAG_DEASSIGN of the first pair another VM may have it (GSI 12)."""
    vm1, vm2 = two_vms
    with EventFd() as efd:
        vm1.assign_irqfd(efd, 10)
        err = vm1.try_assign_irqfd(efd, 11)
        assert err == errno.EBUSY, f"KVM_IRQFD of a bound eventfd to GSI 11 of the same VM: {errno_name(err)}, " \
                                   "expected EBUSY"
        vm1.deassign_irqfd(efd, 10)
        err = vm2.try_assign_irqfd(efd, 12)
        assert err == 0, f"KVM_IRQFD of the eventfd to another VM after its deassign: {errno_name(err)}, expected 0"


def test_an_eventfd_bound_in_one_vm_cannot_drive_a_gsi_of_another(two_vms):
    """An eventfd that drives GSI 10 of one VM cannot be bound to GSI 12 of another VM: KVM_IRQFD
    fails with EBUSY, since an eventfd has at most one irqfd on the whole host (commit
    2cdd64cbf990, Linux 6.17; selftests irqfd_test)."""
    vm1, vm2 = two_vms
    with EventFd() as efd:
        vm1.assign_irqfd(efd, 10)
        err = vm2.try_assign_irqfd(efd, 12)
        assert err == errno.EBUSY, f"KVM_IRQFD of a bound eventfd to GSI 12 of another VM: {errno_name(err)}, " \
                                   "expected EBUSY (KVM commit 2cdd64cbf990, Linux 6.17)"


def test_deassigning_a_pair_never_assigned_succeeds(two_vms):
    """KVM_IRQFD_FLAG_DEASSIGN of a valid eventfd with GSIs it never drove returns 0 and leaves
    its real binding alone: a second deassign of that binding returns 0 as well, and the eventfd
    is then free for another GSI."""
    vm1, _ = two_vms
    with EventFd() as efd:
        vm1.assign_irqfd(efd, 10)
        for gsi in (11, 12, 13, 14):
            err = vm1.try_deassign_irqfd(efd, gsi)
            assert err == 0, f"KVM_IRQFD deassign of GSI {gsi}, never assigned: {errno_name(err)}, expected 0"
        err = vm1.try_assign_irqfd(efd, 11)
        assert err == errno.EBUSY, f"the deassigns of other GSIs freed the eventfd bound to GSI 10: {errno_name(err)}"
        vm1.deassign_irqfd(efd, 10)
        vm1.assign_irqfd(efd, 11)


def _antagonist(vms, current, swap, stop, problems):
    """Bind whatever eventfd is current to GSI 0x30 of each VM and unbind it, over and over: 0 or
    EBUSY for the bind (the other thread may hold it), 0 for the unbind. It holds `swap` while it
    uses an eventfd, so the other thread cannot close it meanwhile: a closed eventfd's number may be
    reused at once by any file, which KVM_IRQFD rightly refuses with EINVAL (seen under QEMU's TCG)."""
    while not stop.is_set():
        with swap:
            efd = current[0]
            for vm in vms:
                err = vm.try_assign_irqfd(efd, 0x30)
                if err not in (0, errno.EBUSY):
                    problems.append(f"{vm.name} assign GSI 0x30: {errno_name(err)}")
                err = vm.try_deassign_irqfd(efd, 0x30)
                if err != 0:
                    problems.append(f"{vm.name} deassign GSI 0x30: {errno_name(err)}")


def test_assign_and_deassign_racing_across_two_vms(two_vms):
    """A thread binding and unbinding each new eventfd in both VMs while this one does the same
    with other GSIs: of two binds of one eventfd by this thread at most one succeeds and every
    failure is EBUSY; every deassign succeeds; the other thread sees only 0 or EBUSY; afterwards a
    fresh eventfd binds at once (no binding leaked)."""
    current = [EventFd()]
    swap, stop = threading.Lock(), threading.Event()
    problems: list[str] = []
    other = threading.Thread(target=_antagonist, args=(two_vms, current, swap, stop, problems), daemon=True)
    other.start()
    try:
        for rnd in range(RACE_ROUNDS):
            efd = current[0]
            for vm in two_vms:
                first, second = vm.try_assign_irqfd(efd, 0x20), vm.try_assign_irqfd(efd, 0x21)
                bad = [e for e in (first, second) if e not in (0, errno.EBUSY)]
                assert not bad and not (first == 0 and second == 0), \
                    f"round {rnd}, {vm.name}: binds of one eventfd to GSI 0x20 and 0x21 returned " \
                    f"{errno_name(first)}, {errno_name(second)}; expected at most one 0, the rest EBUSY"
                for gsi in (0x20, 0x21):
                    err = vm.try_deassign_irqfd(efd, gsi)
                    assert err == 0, f"round {rnd}, {vm.name}: deassign GSI {gsi:#x}: {errno_name(err)}, expected 0"
            with swap:
                current[0] = EventFd()
                efd.close()
    finally:
        stop.set()
        other.join(10)
        current[0].close()
    assert not problems, f"the racing thread saw: {'; '.join(problems[:5])}"
    with EventFd() as efd:
        for vm in two_vms:
            err = vm.try_assign_irqfd(efd, 0x40)
            assert err == 0, f"{vm.name}: a fresh eventfd after the race: KVM_IRQFD {errno_name(err)}, expected 0"
            vm.deassign_irqfd(efd, 0x40)
