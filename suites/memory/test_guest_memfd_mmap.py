"""guest_memfd files the host may map (api.rst 4.142 KVM_CREATE_GUEST_MEMFD; selftests guest_memfd_test).

api.rst: KVM_CAP_GUEST_MEMFD_FLAGS "enumerates the `flags` that can be specified via
KVM_CREATE_GUEST_MEMFD"; GUEST_MEMFD_FLAG_MMAP "Enable[s] using mmap() on the guest_memfd file
descriptor"; GUEST_MEMFD_FLAG_INIT_SHARED makes "all memory in the file shared ... (memory files
created without INIT_SHARED will be marked private). Shared memory can be faulted into host
userspace page tables. Private memory cannot."; and "when the KVM MMU performs a PFN lookup to
service a guest fault and the backing guest_memfd has the GUEST_MEMFD_FLAG_MMAP set, then the fault
will always be consumed from guest_memfd". The file is otherwise "roughly analogous to files created
via memfd_create()" and supports PUNCH_HOLE, so a punched range reads back as zeros (fallocate(2)),
and mmap(2): touching a page of a mapping past the end of the file raises SIGBUS.

SIGBUS is observed in a child process that maps the inherited fd, so the test process survives it.
"""

import errno
import os
import signal
import subprocess
import sys

import pytest

from kvmtest import libc
from kvmtest.abi.constants import GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP, KVM_MEM_GUEST_MEMFD, errno_name
from kvmtest.memory import HostMapping

PAGE = libc.PAGE_SIZE
SHARED = GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED

# The child maps the inherited guest_memfd (argv: fd, mapping length, offset to read) and reads one
# byte: exit 0 when the read completes, death by SIGBUS when the page cannot be faulted in, exit 3
# with the errno on stderr when mmap itself fails. It runs the venv's interpreter, so kvmtest imports.
# The read is a raw ctypes load from the child's own mapping on purpose: the check is whether that
# mapping faults (SIGBUS), which kvmtest's guarded accessors exist to keep from happening.
CHILD = """
import ctypes, sys
from kvmtest import libc
fd, length, offset = (int(a) for a in sys.argv[1:])
try:
    addr = libc.mmap(length, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_SHARED, fd)
except OSError as e:
    print(f"mmap failed: errno {e.errno}: {e}", file=sys.stderr)
    sys.exit(3)
ctypes.string_at(addr + offset, 1)
"""


def _flags(vm) -> int:
    return vm.check_extension("KVM_CAP_GUEST_MEMFD_FLAGS")


@pytest.fixture
def gmem_vm(vm):
    if not vm.check_extension("KVM_CAP_GUEST_MEMFD"):
        pytest.skip("needs KVM_CAP_GUEST_MEMFD on the VM (KVM_CHECK_EXTENSION on the VM fd reports 0)")
    return vm


def _require_flag(vm, flag: int, name: str) -> None:
    if not _flags(vm) & flag:
        pytest.skip(f"needs {name} in KVM_CAP_GUEST_MEMFD_FLAGS (the VM reports {_flags(vm):#x})")


@pytest.fixture
def mmap_vm(gmem_vm):
    _require_flag(gmem_vm, GUEST_MEMFD_FLAG_MMAP, "GUEST_MEMFD_FLAG_MMAP")
    return gmem_vm


def _create(vm, size, flags):
    fd, err = vm.try_create_guest_memfd(size, flags)
    assert err == 0, f"KVM_CREATE_GUEST_MEMFD size={size:#x} flags={flags:#x}: {errno_name(err)}"
    return fd


@pytest.fixture
def shared_gmem(mmap_vm):
    _require_flag(mmap_vm, GUEST_MEMFD_FLAG_INIT_SHARED, "GUEST_MEMFD_FLAG_INIT_SHARED")
    fd = _create(mmap_vm, 4 * PAGE, SHARED)
    yield fd
    os.close(fd)


def _read_in_child(fd: int, length: int, offset: int) -> int:
    """The child's exit status (negative: the signal that killed it) after it read the byte at
    `offset` of a `length`-byte shared mapping of `fd`."""
    done = subprocess.run([sys.executable, "-c", CHILD, str(fd), str(length), str(offset)], pass_fds=(fd,),
                          capture_output=True, timeout=30)
    assert done.returncode != 3, f"the child's mmap of the guest_memfd failed: {done.stderr.decode().strip()}"
    return done.returncode


def _status(code: int) -> str:
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"


def test_flags_are_exactly_those_the_capability_enumerates(gmem_vm):
    """Each flag bit KVM_CAP_GUEST_MEMFD_FLAGS reports is accepted by KVM_CREATE_GUEST_MEMFD, and
    every other bit is refused with EINVAL (api.rst 4.142)."""
    supported = _flags(gmem_vm)
    wrong = []
    for bit in range(64):
        fd, err = gmem_vm.try_create_guest_memfd(PAGE, 1 << bit)
        if not err:
            os.close(fd)
        want = 0 if supported >> bit & 1 else errno.EINVAL
        if err != want:
            wrong.append(f"flags=1<<{bit}: {errno_name(err)}, expected {errno_name(want)}")
    assert not wrong, f"KVM_CAP_GUEST_MEMFD_FLAGS reports {supported:#x}, but: " + "; ".join(wrong)


def test_mapping_is_refused_without_the_mmap_flag(mmap_vm):
    """A guest_memfd created without GUEST_MEMFD_FLAG_MMAP "cannot be mapped" (api.rst 4.142):
    mmap(MAP_SHARED) fails with ENODEV, mmap(2)'s "the underlying filesystem of the specified file
    does not support memory mapping", while the same call on one created with the flag succeeds."""
    plain, mappable = _create(mmap_vm, PAGE, 0), _create(mmap_vm, PAGE, GUEST_MEMFD_FLAG_MMAP)
    try:
        with pytest.raises(OSError) as refused:
            HostMapping(PAGE, fd=plain).close()
        assert refused.value.errno == errno.ENODEV, \
            f"mmap(MAP_SHARED) of a guest_memfd without GUEST_MEMFD_FLAG_MMAP: {errno_name(refused.value.errno)}, " \
            "expected ENODEV"
        HostMapping(PAGE, fd=mappable).close()
    finally:
        os.close(plain)
        os.close(mappable)


def test_copy_on_write_mapping_is_refused(shared_gmem):
    """Even with GUEST_MEMFD_FLAG_MMAP, a MAP_PRIVATE (copy-on-write) mapping is refused: only
    shared mappings of guest_memfd exist (selftests test_mmap_cow). mmap(2) names EINVAL for
    arguments the mapping does not accept ("We don't like addr, length, or offset"), which is what
    guest_memfd's mmap handler returns for a mapping that is not shared."""
    with pytest.raises(OSError) as refused:
        libc.mmap(PAGE, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_PRIVATE, shared_gmem)
    assert refused.value.errno == errno.EINVAL, \
        f"mmap(MAP_PRIVATE) of an MMAP|INIT_SHARED guest_memfd: {errno_name(refused.value.errno)}, expected EINVAL"


def test_shared_mappings_see_one_file_and_a_punched_hole_reads_zero(shared_gmem):
    """Bytes written through one MAP_SHARED mapping of an INIT_SHARED guest_memfd are read through
    a second mapping of the same file; FALLOC_FL_PUNCH_HOLE on the first page makes it read zero
    in both while the other pages keep their bytes, and the page can be written again (api.rst
    4.142; fallocate(2) PUNCH_HOLE)."""
    a, b = HostMapping(4 * PAGE, fd=shared_gmem), HostMapping(4 * PAGE, fd=shared_gmem)
    try:
        a.write(0, b"\xaa" * (4 * PAGE))
        assert b.read(0, 4 * PAGE) == b"\xaa" * (4 * PAGE), "a second mapping does not see the first one's bytes"
        assert libc.fallocate(shared_gmem, libc.FALLOC_FL_PUNCH_HOLE | libc.FALLOC_FL_KEEP_SIZE, 0, PAGE) == 0, \
            f"fallocate(PUNCH_HOLE|KEEP_SIZE) of the first page: expected 0, errno {errno_name(libc.get_errno())}"
        for name, m in (("first", a), ("second", b)):
            assert m.read(0, PAGE) == bytes(PAGE), f"the punched page does not read zero through the {name} mapping"
            assert m.read(PAGE, 3 * PAGE) == b"\xaa" * (3 * PAGE), \
                f"pages past the hole lost their bytes in the {name} mapping"
        b.write(0, b"\x55" * PAGE)
        assert a.read(0, PAGE) == b"\x55" * PAGE, "the punched page, written again, is not shared"
    finally:
        a.close()
        b.close()


def test_access_past_the_end_of_the_file_is_sigbus(shared_gmem):
    """A mapping longer than the 4-page file reads its last in-file byte, and touching the first
    byte past the file's end raises SIGBUS (mmap(2); selftests test_fault_overflow)."""
    inside = _read_in_child(shared_gmem, 16 * PAGE, 4 * PAGE - 1)
    assert inside == 0, f"reading the file's last byte through a shared mapping: {_status(inside)}, expected exit 0"
    past = _read_in_child(shared_gmem, 16 * PAGE, 4 * PAGE)
    assert past == -signal.SIGBUS, \
        f"reading the first byte past a {4 * PAGE:#x}-byte guest_memfd: {_status(past)}, expected SIGBUS"


def test_private_memory_cannot_be_faulted_into_user_space(mmap_vm):
    """GUEST_MEMFD_FLAG_MMAP without INIT_SHARED: the memory is private, "Private memory cannot"
    be faulted into host userspace page tables (api.rst 4.142): the mapping is made, but reading
    any page of it raises SIGBUS, while the same read of an INIT_SHARED file completes."""
    private = _create(mmap_vm, 4 * PAGE, GUEST_MEMFD_FLAG_MMAP)
    try:
        for offset in (0, 3 * PAGE):
            code = _read_in_child(private, 4 * PAGE, offset)
            assert code == -signal.SIGBUS, \
                f"reading offset {offset:#x} of a private guest_memfd mapping: {_status(code)}, expected SIGBUS"
    finally:
        os.close(private)
    if _flags(mmap_vm) & GUEST_MEMFD_FLAG_INIT_SHARED:
        shared = _create(mmap_vm, 4 * PAGE, SHARED)
        try:
            code = _read_in_child(shared, 4 * PAGE, 0)
            assert code == 0, f"the same read of an INIT_SHARED guest_memfd: {_status(code)}, expected exit 0"
        finally:
            os.close(shared)


@pytest.mark.parametrize("pages", [1, 3, 16])
def test_fstat_size_is_the_created_size(gmem_vm, pages):
    """fstat() reports st_size as the size given to KVM_CREATE_GUEST_MEMFD, and the file "cannot
    be resized": fallocate with KEEP_SIZE and a punched hole leave it (api.rst 4.142). (The peer
    also asserts st_blksize equals the page size; api.rst documents no block size.)"""
    fd = _create(gmem_vm, pages * PAGE, 0)
    try:
        assert os.fstat(fd).st_size == pages * PAGE, \
            f"guest_memfd of {pages * PAGE:#x} bytes: fstat st_size {os.fstat(fd).st_size:#x}"
        assert libc.fallocate(fd, libc.FALLOC_FL_KEEP_SIZE, 0, pages * PAGE) == 0, \
            f"fallocate(KEEP_SIZE) of all {pages} pages: expected 0, errno {errno_name(libc.get_errno())}"
        assert libc.fallocate(fd, libc.FALLOC_FL_PUNCH_HOLE | libc.FALLOC_FL_KEEP_SIZE, 0, PAGE) == 0, \
            f"fallocate(PUNCH_HOLE|KEEP_SIZE) of the first page: expected 0, errno {errno_name(libc.get_errno())}"
        assert os.fstat(fd).st_size == pages * PAGE, f"st_size changed to {os.fstat(fd).st_size:#x} by fallocate"
    finally:
        os.close(fd)


@pytest.mark.requires_cap("KVM_CAP_USER_MEMORY2")
@pytest.mark.modes("long64-cpl3")
def test_guest_faults_are_served_from_the_guest_memfd(kvm, guest, mode):
    """A slot bound to an MMAP|INIT_SHARED guest_memfd whose userspace_addr is another, unrelated
    mapping: the guest's load reads what the host wrote through the guest_memfd's own mapping, and
    its store lands there, not in the userspace_addr mapping ("the fault will always be consumed
    from guest_memfd", api.rst 4.142; selftests test_guest_memfd_guest). At CPL3 the guest's
    accesses are real guest page faults on every host; CPL0 code that KVM emulates would reach
    memory by userspace_addr, which api.rst does not specify for these slots."""
    g = guest(mode, "mov rbx, 0x300000\nmov rax, qword ptr [rbx]\nGUEST_SYNC rax\n"
                    "mov rcx, 0x1122334455667788\nmov qword ptr [rbx + 8], rcx\nGUEST_DONE")
    flags = _flags(g.vm)
    if not g.vm.check_extension("KVM_CAP_GUEST_MEMFD") or flags & SHARED != SHARED:
        pytest.skip(f"needs GUEST_MEMFD_FLAG_MMAP and INIT_SHARED in KVM_CAP_GUEST_MEMFD_FLAGS (reports {flags:#x})")
    fd = _create(g.vm, 0x10000, SHARED)
    view, elsewhere = HostMapping(0x10000, fd=fd), HostMapping(0x10000, shared=True)
    try:
        elsewhere.write(0, b"\x55" * 0x10000)
        view.write(0, (0xA5A5_0000_C0DE_F00D).to_bytes(8, "little"))
        err = g.vm.try_set_user_memory_region2(3, KVM_MEM_GUEST_MEMFD, 0x300000, 0x10000, elsewhere.addr,
                                               guest_memfd=fd, guest_memfd_offset=0)
        assert err == 0, f"KVM_SET_USER_MEMORY_REGION2 with KVM_MEM_GUEST_MEMFD: {errno_name(err)}"
        got = g.run_to_done()
        assert got == [0xA5A5_0000_C0DE_F00D], \
            f"the guest read {[hex(v) for v in got]} at GPA 0x300000; the guest_memfd holds 0xa5a50000c0def00d " \
            "and userspace_addr's mapping 0x5555555555555555"
        assert view.read(8, 8) == (0x1122334455667788).to_bytes(8, "little"), \
            f"the guest's store is not in the guest_memfd: it holds {view.read(8, 8).hex()}"
        assert elsewhere.read(8, 8) == b"\x55" * 8, "the guest's store reached the userspace_addr mapping"
        g.vm.try_set_user_memory_region2(3, KVM_MEM_GUEST_MEMFD, 0x300000, 0, elsewhere.addr, guest_memfd=fd)
    finally:
        g.close()
        view.close()
        elsewhere.close()
        os.close(fd)
