"""Guest memory supplied on first touch by user space through userfaultfd while vCPUs run
(selftests demand_paging_test).

api.rst 4.35 KVM_SET_USER_MEMORY_REGION: a memslot's memory is the user memory at userspace_addr,
so KVM reaches it as any access by the process would, and the kernel's userfaultfd
(Documentation/admin-guide/mm/userfaultfd.rst) holds every access to a missing page of a range
registered in MISSING mode until user space resolves it (UFFDIO_COPY), then lets it complete with
the copied contents. The vCPU that touched the page waits inside KVM_RUN meanwhile.
"""

import pytest

from kvmtest.guest.mode_select import select
from kvmtest.guest.page_loops import page_checker, set_page_range
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
        half = BASE + PAGES // 2 * 0x1000
        set_page_range(g.vcpu, BASE, half)
        set_page_range(second, half, BASE + PAGES * 0x1000)
        threads = [g.in_thread(vcpu, timeout=FAULT_WAIT) for vcpu in (g.vcpu, second)]
        faults = []
        for _ in range(PAGES):
            fault = uffd.read_fault(timeout=FAULT_WAIT)
            faults.append(fault)
            gpa = BASE + (fault.page - backing.addr)
            uffd.copy(fault.page, (gpa ^ MAGIC).to_bytes(8, "little"))
        results = [t.join(FAULT_WAIT) for t in threads]
    pages = sorted(f.page for f in faults)
    assert pages == [backing.addr + i * 0x1000 for i in range(PAGES)], \
        f"userfaultfd reported faults at {[hex(p) for p in pages]}, expected one per page of " \
        f"{backing.addr:#x}+{backing.size:#x}"
    assert [f.write for f in faults] == [access == "write"] * PAGES, \
        f"userfaultfd write flags {[f.write for f in faults]}; every first access was a {access}"
    assert results == [[PAGES // 2], [PAGES // 2]], \
        f"the vCPUs found GPA ^ MAGIC in {results} of their {PAGES // 2} pages each, expected all of them"
    for i in range(PAGES):
        gpa = BASE + i * 0x1000
        assert g.vm.read_u64(gpa) == gpa ^ MAGIC, f"page {i} does not hold what was copied"
        assert g.vm.read_u64(gpa + 8) == (gpa if access == "write" else 0), \
            f"page {i}: qword 1 reads {g.vm.read_u64(gpa + 8):#x} after the guest's {access}"
