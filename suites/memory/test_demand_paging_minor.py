"""Guest memory mapped on first touch by user space through userfaultfd MINOR faults while vCPUs run
(selftests demand_paging_test -u MINOR with shared backing; test_demand_paging.py covers MISSING).

api.rst 4.35: a slot's memory is the user memory at userspace_addr, reached as any access by the
process would. The kernel's userfaultfd (Documentation/admin-guide/mm/userfaultfd.rst), MINOR mode:
for a registered range of shared memory, an access to a page the page cache already holds but the
range does not map yet is a minor fault; the toucher waits until user space maps the page cache's
page with UFFDIO_CONTINUE, and then sees its contents. User space fills the page cache through a
second mapping of the same file (the "alias"), which faults nothing in the registered range.

The backing is a memfd (shmem), or a guest_memfd created with GUEST_MEMFD_FLAG_MMAP and
INIT_SHARED used as plain shared memory (the slot is an ordinary one whose userspace_addr is the
guest_memfd mapping); that variant skips where the kernel refuses userfaultfd on guest_memfd.
"""

import errno
import os

import pytest

from kvmtest.abi.constants import GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP
from kvmtest.guest.demand_paging import expect_one_fault_per_page, run_checkers_serving_faults
from kvmtest.guest.page_loops import page_checker
from kvmtest.memory import HostMapping
from kvmtest.userfaultfd import UFFD_FEATURE_MINOR_SHMEM, UserfaultFd

BASE = 0x200000
PAGES = 64
MAGIC = 0x0DDBA11C0FFEE000
WAIT = 10

def _file(vm, backing):
    if backing == "shmem":
        fd = os.memfd_create("minor-fault backing")
        os.ftruncate(fd, PAGES * 0x1000)
        return fd
    shared = GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED
    if not vm.check_extension("KVM_CAP_GUEST_MEMFD") or \
            vm.check_extension("KVM_CAP_GUEST_MEMFD_FLAGS") & shared != shared:
        pytest.skip("needs KVM_CAP_GUEST_MEMFD with GUEST_MEMFD_FLAG_MMAP and INIT_SHARED")
    return vm.create_guest_memfd(PAGES * 0x1000, shared)


def _register_minor(uffd, view, backing):
    try:
        uffd.register_minor(view.addr, view.size)
    except OSError as e:
        if backing == "guest_memfd" and e.errno == errno.EINVAL:
            pytest.skip("this kernel refuses userfaultfd MINOR registration of a guest_memfd mapping "
                        "(UFFDIO_REGISTER: EINVAL)")
        raise


@pytest.mark.modes(code_bits=64, cpl=3)
@pytest.mark.parametrize("access", ["read", "write"])
@pytest.mark.parametrize("backing", ["shmem", "guest_memfd"])
def test_vcpus_wait_for_user_space_to_map_page_cache_pages(guest, mode, access, backing):
    """The host writes GPA ^ MAGIC to each page of a 64-page file through an alias mapping; the
    slot is a second mapping of the file registered with userfaultfd in MINOR mode. Two vCPUs
    touch every page of their half, first with a load or a store: user space sees one minor
    fault per page at its address in the registered mapping, a write fault exactly when the first
    access is a store, and maps each with UFFDIO_CONTINUE, copying nothing; both vCPUs then read
    GPA ^ MAGIC in all 32 of their pages, and their stores show through the alias (api.rst 4.35;
    userfaultfd.rst, MINOR mode)."""
    g = guest(mode, page_checker(MAGIC, store_first=access == "write"))
    second = g.add_vcpu("start")
    fd = _file(g.vm, backing)
    alias = HostMapping(PAGES * 0x1000, fd=fd, name="alias")
    view = HostMapping(PAGES * 0x1000, fd=fd, name="registered view")
    try:
        for i in range(PAGES):
            gpa = BASE + i * 0x1000
            alias.write(i * 0x1000, (gpa ^ MAGIC).to_bytes(8, "little"))
        try:
            uffd = UserfaultFd(UFFD_FEATURE_MINOR_SHMEM)
        except OSError as e:
            pytest.skip(f"needs UFFD_FEATURE_MINOR_SHMEM from UFFDIO_API ({e})")
        with uffd:
            _register_minor(uffd, view, backing)
            g.vm.add_memory(BASE, view.size, mapping=view)
            run = run_checkers_serving_faults(g, [g.vcpu, second], BASE, PAGES, uffd, lambda f: uffd.cont(f.page),
                                              timeout=WAIT)
        assert all(f.minor for f in run.faults), "a fault on a page the page cache holds was not flagged minor"
        expect_one_fault_per_page(run, view.addr, PAGES, write=access == "write")
        for i in range(PAGES):
            gpa = BASE + i * 0x1000
            stored = int.from_bytes(alias.read(i * 0x1000 + 8, 8), "little")
            assert stored == (gpa if access == "write" else 0), \
                f"page {i}: the alias reads {stored:#x} at offset 8 after the guest's {access}"
    finally:
        g.close()
        alias.close()
        view.close()
        os.close(fd)
