"""guest_memfd file rules (api.rst KVM_CREATE_GUEST_MEMFD; selftests guest_memfd_test)."""

import errno
import os

import pytest

from kvmtest import libc
from kvmtest.abi.constants import errno_name

PAGE = libc.PAGE_SIZE


@pytest.fixture
def gmem_vm(vm):
    if not vm.check_extension("KVM_CAP_GUEST_MEMFD"):
        pytest.skip("needs KVM_CAP_GUEST_MEMFD on the VM (KVM_CHECK_EXTENSION on the VM fd reports 0)")
    return vm


def _create(vm, size, flags=0):
    return vm.try_create_guest_memfd(size, flags)


@pytest.fixture
def gmem(gmem_vm):
    fd, err = _create(gmem_vm, 4 * PAGE)
    assert err == 0, f"KVM_CREATE_GUEST_MEMFD size={4 * PAGE:#x}: {errno_name(err)}"
    yield fd
    os.close(fd)


@pytest.mark.parametrize("size", [0, PAGE + 1, PAGE // 2])
def test_size_must_be_a_positive_page_multiple(gmem_vm, size):
    """The size of a guest_memfd must be page aligned and non-zero (api.rst KVM_CREATE_GUEST_MEMFD): EINVAL."""
    fd, err = _create(gmem_vm, size)
    if not err:
        os.close(fd)
    assert err == errno.EINVAL, f"KVM_CREATE_GUEST_MEMFD size={size:#x}: expected EINVAL, got {errno_name(err)}"


def test_unknown_flag_is_einval(gmem_vm):
    """Undefined flags are refused (api.rst KVM_CREATE_GUEST_MEMFD): EINVAL."""
    fd, err = _create(gmem_vm, PAGE, flags=1 << 63)
    if not err:
        os.close(fd)
    assert err == errno.EINVAL, f"KVM_CREATE_GUEST_MEMFD flags=1<<63: expected EINVAL, got {errno_name(err)}"


def test_read_and_write_fail(gmem):
    """guest_memfd has no read or write: both system calls fail with EINVAL (selftests
    test_file_read_write)."""
    for name, call in (("read", lambda: os.read(gmem, PAGE)), ("write", lambda: os.write(gmem, b"x" * PAGE))):
        with pytest.raises(OSError) as info:
            call()
        assert info.value.errno == errno.EINVAL, \
            f"{name} on guest_memfd: expected EINVAL, got {errno_name(info.value.errno)}"


def test_private_mapping_is_refused(gmem):
    """A MAP_PRIVATE mapping of guest_memfd is refused (selftests test_mmap)."""
    with pytest.raises(OSError):
        libc.mmap(PAGE, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_PRIVATE, gmem)


def test_fallocate_alignment(gmem):
    """fallocate on guest_memfd (with FALLOC_FL_KEEP_SIZE: its size is fixed) takes page-aligned
    offsets and lengths; unaligned ones and hole punching of unaligned ranges are EINVAL, and
    a size-changing fallocate is EOPNOTSUPP (selftests test_fallocate)."""
    keep = libc.FALLOC_FL_KEEP_SIZE
    assert libc.fallocate(gmem, keep, 0, PAGE) == 0
    err = libc.fallocate(gmem, 0, 0, PAGE)
    assert err == errno.EOPNOTSUPP, f"fallocate without KEEP_SIZE: expected EOPNOTSUPP, got {errno_name(err)}"
    for mode, off, length in ((keep, 1, PAGE), (keep, 0, PAGE - 1),
                              (libc.FALLOC_FL_PUNCH_HOLE | keep, PAGE - 1, PAGE)):
        err = libc.fallocate(gmem, mode, off, length)
        assert err == errno.EINVAL, \
            f"fallocate mode={mode} off={off:#x} len={length:#x}: expected EINVAL, got {errno_name(err)}"
    assert libc.fallocate(gmem, libc.FALLOC_FL_PUNCH_HOLE | libc.FALLOC_FL_KEEP_SIZE, 0, PAGE) == 0


def test_each_guest_memfd_is_its_own_file(gmem_vm, gmem):
    """Two guest_memfds are distinct inodes (selftests test_create_guest_memfd_multiple)."""
    other, err = _create(gmem_vm, PAGE)
    assert not err
    try:
        assert os.fstat(other).st_ino != os.fstat(gmem).st_ino
        assert os.fstat(gmem).st_size == 4 * PAGE
    finally:
        os.close(other)


@pytest.mark.requires_cap("KVM_CAP_USER_MEMORY2")
def test_guest_memfd_slot_shares_bytes_between_guest_and_host(kvm, guest):
    """A slot bound to a guest_memfd (KVM_MEM_GUEST_MEMFD, api.rst KVM_SET_USER_MEMORY_REGION2) in a VM without private
    memory is accessed through its userspace_addr: a byte the host writes there the guest reads,
    and a byte the guest writes the host sees (selftests guest_memfd_test test_guest_memfd_guest)."""
    from kvmtest.abi.constants import KVM_MEM_GUEST_MEMFD
    from kvmtest.memory import HostMapping

    g = guest("long64", "mov rbx, 0x300000\nmovzx eax, byte ptr [rbx]\nGUEST_SYNC eax\n"
                        "mov byte ptr [rbx + 1], 0xff\nGUEST_DONE")
    if not g.vm.check_extension("KVM_CAP_GUEST_MEMFD"):
        pytest.skip("needs KVM_CAP_GUEST_MEMFD on the VM")
    fd, err = _create(g.vm, 0x10000)
    assert not err, errno_name(err)
    backing = HostMapping(0x10000, shared=True)
    try:
        err = g.vm.try_set_user_memory_region2(3, KVM_MEM_GUEST_MEMFD, 0x300000, 0x10000, backing.addr,
                                               guest_memfd=fd, guest_memfd_offset=0)
        assert err == 0, f"KVM_SET_USER_MEMORY_REGION2 with KVM_MEM_GUEST_MEMFD: {errno_name(err)}"
        backing.write(0, b"\xaa")
        assert g.run_to_done() == [0xAA]
        assert backing.read(1, 1) == b"\xff", "the guest's store did not reach the host mapping"
        g.vm.try_set_user_memory_region2(3, KVM_MEM_GUEST_MEMFD, 0x300000, 0, backing.addr, guest_memfd=fd)
    finally:
        g.close()
        backing.close()
        os.close(fd)
