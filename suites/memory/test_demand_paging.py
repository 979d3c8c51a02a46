"""Guest memory supplied on first touch by user space through userfaultfd while vCPUs run
(selftests demand_paging_test).

api.rst 4.35 KVM_SET_USER_MEMORY_REGION: a memslot's memory is the user memory at userspace_addr,
so KVM reaches it as any access by the process would, and the kernel's userfaultfd
(Documentation/admin-guide/mm/userfaultfd.rst) holds every access to a missing page of a range
registered in MISSING mode until user space resolves it (UFFDIO_COPY), then lets it complete with
the copied contents. The vCPU that touched the page waits inside KVM_RUN meanwhile.
"""

import pytest

from kvmtest.guest.demand_paging import expect_one_fault_per_page, run_checkers_serving_faults
from kvmtest.guest.mode_select import select
from kvmtest.guest.page_loops import page_checker
from kvmtest.memory import HostMapping
from kvmtest.userfaultfd import UserfaultFd

BASE = 0x200000
PAGES = 64
MAGIC = 0x5EED0000C0DE0000
FAULT_WAIT = 10

@pytest.mark.modes(*select(code_bits=64))
@pytest.mark.parametrize("access", ["read", "write"])
def test_vcpus_fault_in_pages_user_space_supplies_through_userfaultfd(guest, mode, access):
    """Two vCPUs each touch every page of their half of a 64-page slot whose host memory is
    registered with userfaultfd (MISSING) and was never touched, first with a load or a store.
    User space sees one fault per page, at that page's host address, a write fault exactly when
    the first access is a store, and answers each with UFFDIO_COPY of a page holding its GPA ^
    MAGIC; both vCPUs then read that value in all 32 of their pages, and the slot's host memory
    holds what was copied plus what the guest stored (api.rst 4.35; userfaultfd.rst)."""
    g = guest(mode, page_checker(MAGIC, store_first=access == "write"))
    second = g.add_vcpu("start")
    backing = HostMapping(PAGES * 0x1000, name="userfaultfd-backed guest memory")
    with UserfaultFd() as uffd:
        uffd.register_missing(backing.addr, backing.size)
        g.vm.add_memory(BASE, backing.size, mapping=backing)

        def copy_page(fault):
            gpa = BASE + (fault.page - backing.addr)
            uffd.copy(fault.page, (gpa ^ MAGIC).to_bytes(8, "little"))

        run = run_checkers_serving_faults(g, [g.vcpu, second], BASE, PAGES, uffd, copy_page, timeout=FAULT_WAIT)
    expect_one_fault_per_page(run, backing.addr, PAGES, write=access == "write")
    for i in range(PAGES):
        gpa = BASE + i * 0x1000
        assert g.vm.read_u64(gpa) == gpa ^ MAGIC, f"page {i} does not hold what was copied"
        assert g.vm.read_u64(gpa + 8) == (gpa if access == "write" else 0), \
            f"page {i}: qword 1 reads {g.vm.read_u64(gpa + 8):#x} after the guest's {access}"
