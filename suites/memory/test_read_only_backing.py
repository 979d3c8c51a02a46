"""Guest writes against host mprotect() of a memslot's backing: while the host memory is PROT_READ
the guest reads it but every write ends KVM_RUN with EFAULT and lands nowhere; once it is writable
again the writes complete (selftests mmu_stress_test).

api.rst 4.35 KVM_SET_USER_MEMORY_REGION: the slot's memory is the user memory at userspace_addr,
so KVM maps it with the protection user space gives it, and follows later changes of it ("the
guest address space is kept in sync with the process's", via the MMU notifier; KVM_CAP_SYNC_MMU).
api.rst 4.10 KVM_RUN returns -1 with errno; 7.34 KVM_CAP_MEMORY_FAULT_INFO: EFAULT "if KVM cannot
resolve a guest page fault", as for a write to a read-only VMA, and user space may fix the memory
(or skip the access) and run again. The access did not happen: RIP still names the store.
"""

import errno

import pytest

from kvmtest import libc
from kvmtest.errors import KvmError
from kvmtest.guest.mode_select import select
from kvmtest.guest.page_loops import page_loop
from kvmtest.x86 import CR0_WP

BASE = 0x200000
PAGES = 256
END = BASE + PAGES * 0x1000
STORE_LENGTH = 3   # 48 89 00, MOV [RAX], RAX: the store user space steps over after each EFAULT

# Stage 0 writes each page's GPA to it and stage 1 GPA + 1; stage 2 sums the pages (read-only by
# then); stage 3 tries to store each page's GPA again; stage 4 writes GPA + 4.
SOURCE = "\n".join([
    page_loop("stage0", BASE, END, "mov qword ptr [rax], rax"),
    "GUEST_SYNC 0",
    page_loop("stage1", BASE, END, "lea rbx, [rax + 1]\nmov qword ptr [rax], rbx"),
    "GUEST_SYNC 1",
    "xor ecx, ecx",
    page_loop("stage2", BASE, END, "add rcx, qword ptr [rax]"),
    "GUEST_SYNC rcx",
    page_loop("stage3", BASE, END, "ro_store:\nmov qword ptr [rax], rax"),
    "GUEST_SYNC 3",
    page_loop("stage4", BASE, END, "lea rbx, [rax + 4]\nmov qword ptr [rax], rbx"),
    "GUEST_SYNC 4",
    "GUEST_DONE",
])


def _pages(vm):
    """Each page's first qword as the slot's host memory holds it (read through the slot's mapping,
    which PROT_READ leaves readable)."""
    return [vm.read_u64(BASE + i * 0x1000) for i in range(PAGES)]


def _protect(slot, prot):
    err = libc.mprotect(slot.hva, slot.size, prot)
    assert err == 0, f"mprotect({slot.hva:#x}, {slot.size:#x}, {prot}) failed: {errno.errorcode.get(err, err)}"


@pytest.mark.modes(*select(code_bits=64))
def test_writes_to_a_read_only_backing_fail_with_efault_and_resume(guest, mode):
    """A vCPU writes every page of a 1 MiB slot, the host toggles CR0.WP (an MMU reset) and it
    writes them again; with the backing mprotect()ed PROT_READ it reads them all (the sum of what
    it wrote), then each of its 256 stores ends KVM_RUN with EFAULT, RIP at the store, and changes
    nothing (user space steps over each one); with PROT_READ|PROT_WRITE back, its stores land
    (api.rst 4.35, 4.10, 7.34; selftests mmu_stress_test)."""
    g = guest(mode, SOURCE)
    slot = g.vm.add_memory(BASE, END - BASE)
    gpas = [BASE + i * 0x1000 for i in range(PAGES)]

    assert g.run().value == 0, "stage 0: expected GUEST_SYNC 0 after the guest stored each page's GPA"
    assert _pages(g.vm) == gpas, "stage 0: the host memory does not hold the GPAs the guest stored"
    sregs = g.vcpu.get_sregs()
    sregs.cr0 ^= CR0_WP
    g.vcpu.set_sregs(sregs)
    assert g.run().value == 1, "stage 1: expected GUEST_SYNC 1 after the CR0.WP toggle and the stores of GPA + 1"
    assert _pages(g.vm) == [gpa + 1 for gpa in gpas], "stage 1: the host memory does not hold GPA + 1 per page"

    _protect(slot, libc.PROT_READ)
    want = sum(gpa + 1 for gpa in gpas) & (1 << 64) - 1
    total = g.run().value
    assert total == want, f"stage 2: the guest's reads of the PROT_READ backing sum to {total:#x}, expected {want:#x}"

    store = g.labels["ro_store"]
    for i, gpa in enumerate(gpas):
        try:
            event = g.run()
        except KvmError as e:
            assert e.errno == errno.EFAULT, f"stage 3, page {i}: KVM_RUN failed with {e}, expected EFAULT"
        else:
            raise AssertionError(f"stage 3, page {i} (GPA {gpa:#x}): KVM_RUN returned {event} for a store to a "
                                 "PROT_READ backing; expected -1/EFAULT (api.rst 7.34)")
        regs = g.vcpu.get_regs()
        assert (regs.rip, regs.rax) == (store, gpa), \
            f"stage 3, page {i}: after EFAULT RIP {regs.rip:#x} RAX {regs.rax:#x}, expected the store at " \
            f"{store:#x} with RAX {gpa:#x} (the access did not happen)"
        regs.rip += STORE_LENGTH
        g.vcpu.set_regs(regs)
    assert g.run().value == 3, "stage 3: the guest did not reach its sync after the last refused store"
    assert _pages(g.vm) == [gpa + 1 for gpa in gpas], "stage 3: a store refused with EFAULT changed host memory"

    _protect(slot, libc.PROT_READ | libc.PROT_WRITE)
    assert g.run().value == 4, "stage 4: expected GUEST_SYNC 4 after the stores to the PROT_READ|PROT_WRITE backing"
    assert _pages(g.vm) == [gpa + 4 for gpa in gpas], "stage 4: after PROT_WRITE came back the stores did not land"
    assert g.run_to_done() == [], "after stage 4: expected GUEST_DONE with no further GUEST_SYNC"
