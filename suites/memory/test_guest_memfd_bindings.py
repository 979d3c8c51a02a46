"""Binding guest_memfd ranges to memslots (api.rst 4.140 KVM_SET_USER_MEMORY_REGION2, 4.142
KVM_CREATE_GUEST_MEMFD; selftests set_memory_region_test test_add_private_memory_region and
test_add_overlapping_private_memory_regions, guest_memfd_test).

api.rst 4.140: with KVM_MEM_GUEST_MEMFD, "the target guest_memfd must point at a file created via
KVM_CREATE_GUEST_MEMFD on the current VM, and the target range must not be bound to any other memory
region"; 4.142: "there can be at most one mapping per page, i.e. binding multiple memory regions to
a single guest_memfd range is not allowed (any number of memory regions can be bound to a single
guest_memfd file, but the bound ranges must not overlap)". api.rst names no errno for these
refusals, so each check asserts that the call fails and proves the cause with a control call that
differs only in the rule under test and succeeds.

Each check runs in a default VM, where a guest_memfd slot is allowed, and in a
KVM_X86_SW_PROTECTED_VM (private memory), where the peer runs them; that VM type skips by name on
hosts whose KVM_CAP_VM_TYPES does not offer it.
"""

import os

import pytest

from kvmtest import libc
from kvmtest.abi.constants import KVM_MEM_GUEST_MEMFD, KVM_X86_DEFAULT_VM, KVM_X86_SW_PROTECTED_VM, errno_name
from kvmtest.memory import HostMapping

PAGE = libc.PAGE_SIZE
SLOT_SIZE = 0x200000
GPA = 0x10000000


@pytest.fixture(params=[KVM_X86_DEFAULT_VM, KVM_X86_SW_PROTECTED_VM], ids=["default-vm", "sw-protected-vm"])
def vm_type(request):
    return request.param


@pytest.fixture
def gmem_vm(kvm, vm_type):
    if vm_type != KVM_X86_DEFAULT_VM and not kvm.check_extension("KVM_CAP_VM_TYPES") >> vm_type & 1:
        pytest.skip(f"needs KVM_X86_SW_PROTECTED_VM in KVM_CAP_VM_TYPES "
                    f"(the host offers {kvm.check_extension('KVM_CAP_VM_TYPES'):#x})")
    with kvm.create_vm(vm_type) as vm:
        for cap in ("KVM_CAP_GUEST_MEMFD", "KVM_CAP_USER_MEMORY2"):
            if not vm.check_extension(cap):
                pytest.skip(f"needs {cap} on the VM")
        yield vm


@pytest.fixture
def backing():
    """The shared half of every slot (userspace_addr): api.rst 4.140 wants a legal address there."""
    m = HostMapping(4 * SLOT_SIZE, shared=True)
    yield m
    m.close()


def _bind(vm, backing, slot, gpa, size, fd, offset) -> int:
    return vm.try_set_user_memory_region2(slot, KVM_MEM_GUEST_MEMFD, gpa, size, backing.addr, guest_memfd=fd,
                                          guest_memfd_offset=offset)


def _unbind(vm, backing, slot, gpa) -> None:
    err = vm.try_set_user_memory_region2(slot, KVM_MEM_GUEST_MEMFD, gpa, 0, backing.addr)
    assert err == 0, f"deleting slot {slot} (memory_size 0): {errno_name(err)}"


def test_binding_needs_a_guest_memfd_of_this_vm(kvm, vm_type, gmem_vm, backing):
    """KVM_SET_USER_MEMORY_REGION2 with KVM_MEM_GUEST_MEMFD is refused when guest_memfd is the
    /dev/kvm fd, the VM's own fd, a memfd_create() file or a guest_memfd of another VM, and
    accepted with a guest_memfd of this VM (api.rst 4.140)."""
    memfd = os.memfd_create("not-a-guest-memfd")
    os.ftruncate(memfd, SLOT_SIZE)
    with kvm.create_vm(vm_type) as other:
        foreign = other.create_guest_memfd(SLOT_SIZE)
        own = gmem_vm.create_guest_memfd(SLOT_SIZE)
        try:
            for what, fd in (("the /dev/kvm fd", kvm.fd), ("the VM's own fd", gmem_vm.fd),
                             ("a memfd_create() file", memfd), ("another VM's guest_memfd", foreign)):
                err = _bind(gmem_vm, backing, 1, GPA, SLOT_SIZE, fd, 0)
                assert err != 0, f"KVM_SET_USER_MEMORY_REGION2 bound {what} as guest_memfd (it returned success)"
            err = _bind(gmem_vm, backing, 1, GPA, SLOT_SIZE, own, 0)
            assert err == 0, f"binding this VM's own guest_memfd (the control): {errno_name(err)}"
            _unbind(gmem_vm, backing, 1, GPA)
        finally:
            for fd in (memfd, foreign, own):
                os.close(fd)


def test_binding_must_lie_page_aligned_inside_the_file(gmem_vm, backing):
    """guest_memfd_offset must be page aligned and [offset, offset + memory_size) inside the file
    ("all standard bounds checks apply", api.rst 4.140): offsets 1 and PAGE-1, and a range one
    page past the end, are refused; the aligned range that ends at the file's end is accepted."""
    fd = gmem_vm.create_guest_memfd(2 * SLOT_SIZE)
    try:
        for offset, size in ((1, SLOT_SIZE), (PAGE - 1, SLOT_SIZE), (SLOT_SIZE + PAGE, SLOT_SIZE),
                             (0, 2 * SLOT_SIZE + PAGE)):
            err = _bind(gmem_vm, backing, 1, GPA, size, fd, offset)
            assert err != 0, \
                f"binding guest_memfd [{offset:#x}, {offset + size:#x}) of a {2 * SLOT_SIZE:#x}-byte file succeeded"
        err = _bind(gmem_vm, backing, 1, GPA, SLOT_SIZE, fd, SLOT_SIZE)
        assert err == 0, f"binding the file's last {SLOT_SIZE:#x} bytes (the control): {errno_name(err)}"
        _unbind(gmem_vm, backing, 1, GPA)
    finally:
        os.close(fd)


def test_one_guest_memfd_range_binds_to_one_slot(gmem_vm, backing):
    """Two slots bound to the two halves of a guest_memfd are accepted; a third slot whose range
    overlaps either half by one page, or a slot at another GPA over the same range, is refused;
    once the owning slot is deleted the same binding is accepted (api.rst 4.142: the bound ranges
    must not overlap)."""
    fd = gmem_vm.create_guest_memfd(2 * SLOT_SIZE)
    try:
        assert _bind(gmem_vm, backing, 1, GPA, SLOT_SIZE, fd, 0) == 0
        err = _bind(gmem_vm, backing, 2, GPA + 2 * SLOT_SIZE, SLOT_SIZE, fd, SLOT_SIZE)
        assert err == 0, f"binding the second half of the guest_memfd to slot 2: {errno_name(err)}"
        for what, offset in (("the first half again", 0), ("one page of the first half", SLOT_SIZE - PAGE),
                             ("the second half again", SLOT_SIZE)):
            err = _bind(gmem_vm, backing, 3, GPA + 4 * SLOT_SIZE, SLOT_SIZE, fd, offset)
            assert err != 0, f"slot 3 was bound to {what} of the guest_memfd (offset {offset:#x}), already bound"
        _unbind(gmem_vm, backing, 1, GPA)
        err = _bind(gmem_vm, backing, 3, GPA + 4 * SLOT_SIZE, SLOT_SIZE, fd, 0)
        assert err == 0, f"binding the first half after deleting slot 1, its owner: {errno_name(err)}"
        for slot, gpa in ((2, GPA + 2 * SLOT_SIZE), (3, GPA + 4 * SLOT_SIZE)):
            _unbind(gmem_vm, backing, slot, gpa)
    finally:
        os.close(fd)
