"""A memslot whose host memory is gone: the slot stays registered, but its userspace_addr range
is munmap()ed, or mprotect()ed to PROT_NONE, after KVM_SET_USER_MEMORY_REGION.

api.rst 7.34 KVM_CAP_MEMORY_FAULT_INFO: KVM_RUN fills kvm_run.memory_fault "if KVM cannot
resolve a guest page fault VM-Exit, e.g. if there is a valid memslot but no backing VMA for the
corresponding host virtual address"; the information is valid when KVM_RUN fails with EFAULT (or
EHWPOISON) and exit_reason is KVM_EXIT_MEMORY_FAULT. api.rst 5 KVM_EXIT_MEMORY_FAULT: [gpa,
gpa + size) is the range of the fault; flags without KVM_MEMORY_EXIT_FLAG_PRIVATE mean a shared
(ordinary) access. The note under KVM_CAP_MEMORY_FAULT_INFO expects user space to resolve the
fault and run again: the access then completes."""

import errno

import pytest

from kvmtest import libc
from kvmtest.abi import constants as C
from kvmtest.errors import KvmError
from kvmtest.guest.mode_select import select
from kvmtest.guest.modes import MODES

pytestmark = pytest.mark.requires_cap("KVM_CAP_MEMORY_FAULT_INFO")

KVM_MEMORY_EXIT_FLAG_PRIVATE = 1 << 3   # api.rst 5, KVM_EXIT_MEMORY_FAULT
EHWPOISON = 133               # Linux errno; Python's errno module does not name it
PAGE = libc.PAGE_SIZE
SLOT = 5
SLOT_GPA = 0x300000           # inside the identity map of the paged modes, outside slot 0
REAL_MEM, REAL_SLOT_GPA = 0x20000, 0x30000   # real mode: a smaller slot 0, the slot below 1 MiB
OFFSET = 0x10
STORE_VALUE, LOAD_VALUE = 0x5EED1234, 0xC0DEF00D
FAULT_MODES = select(sample="per-code-size", cpl=0) + select(sample="per-code-size", long=True, cpl=3)


class Backing:
    """Three anonymous host pages; the memslot uses the middle one (`hva`), so once that page is
    unmapped it stays a hole between two pages this test owns. close() unmaps only what is
    still this test's. The pages are mapped with libc directly, not as a kvmtest HostMapping,
    because the test is about the raw mapping: it unmaps or mprotect()s one page of it under the
    slot, which HostMapping (one mapping, unmapped whole) does not offer. Their contents are read
    and written through the Vm's guest memory accessors."""

    def __init__(self):
        self.base = libc.mmap(3 * PAGE, libc.PROT_READ | libc.PROT_WRITE,
                              libc.MAP_PRIVATE | libc.MAP_ANONYMOUS | libc.MAP_NORESERVE)
        self.hva = self.base + PAGE
        self.middle_mapped = True

    def unmap(self) -> None:
        libc.munmap(self.hva, PAGE)
        self.middle_mapped = False

    def protect(self, prot: int) -> None:
        err = libc.mprotect(self.hva, PAGE, prot)
        assert err == 0, f"mprotect({self.hva:#x}, {PAGE:#x}, {prot}) failed: {errno.errorcode.get(err, err)}"

    def close(self) -> None:
        for i in (0, 1, 2):
            if i != 1 or self.middle_mapped:
                libc.munmap(self.base + i * PAGE, PAGE)


@pytest.fixture
def backing():
    b = Backing()
    yield b
    b.close()


def _slot_gpa(mode):
    return SLOT_GPA if MODES[mode].protected else REAL_SLOT_GPA


def _source(mode, access):
    if not MODES[mode].protected:       # ES reaches the slot; the far JMP goes through CS
        return {"read": f"mov eax, dword ptr es:[{OFFSET:#x}]\nGUEST_SYNC eax",
                "write": f"mov dword ptr es:[{OFFSET:#x}], eax",
                "fetch": f"FARJMP {REAL_SLOT_GPA >> 4:#x}, {OFFSET:#x}"}[access]
    b = "rbx" if MODES[mode].code_bits == 64 else "ebx"
    return {"read": f"mov eax, dword ptr [{b}]\nGUEST_SYNC eax",
            "write": f"mov dword ptr [{b}], eax",
            "fetch": f"jmp {b}"}[access]


def _guest(guest, mode, access, hva):
    protected = MODES[mode].protected
    g = guest(mode, f"access:\n{_source(mode, access)}\nGUEST_DONE", **({} if protected else {"mem_size": REAL_MEM}))
    gpa = _slot_gpa(mode)
    g.vm.set_user_memory_region(SLOT, 0, gpa, PAGE, hva)
    regs = g.vcpu.get_regs()
    regs.rax, regs.rbx = STORE_VALUE, gpa + OFFSET
    g.vcpu.set_regs(regs)
    if not protected:
        sregs = g.vcpu.get_sregs()
        sregs.es.selector, sregs.es.base = gpa >> 4, gpa
        g.set_sregs(sregs)
    return g


def _expect_memory_fault(g, mode, access, how):
    """Run once; KVM_RUN must fail with EFAULT and kvm_run must describe the fault."""
    where = f"guest {access} of a memslot page whose host memory is {how} ({mode})"
    access_gpa = _slot_gpa(mode) + OFFSET
    try:
        event = g.run()
    except KvmError as e:
        err = e.errno
    else:
        rip = g.vcpu.get_regs().rip
        raise AssertionError(f"{where}: KVM_RUN returned {event} (RIP {rip:#x}); expected it to fail with EFAULT "
                             f"and exit_reason KVM_EXIT_MEMORY_FAULT covering GPA {access_gpa:#x} (api.rst 7.34)")
    run = g.vcpu.kvm_run
    reason = run.exit_reason
    assert err in (errno.EFAULT, EHWPOISON) and reason == C.KVM_EXIT_MEMORY_FAULT, \
        f"{where}: KVM_RUN failed with {errno.errorcode.get(err, err)} and exit_reason " \
        f"{C.EXIT_REASON_NAMES.name(reason)}; expected EFAULT with KVM_EXIT_MEMORY_FAULT filled (api.rst 7.34, " \
        "KVM_CAP_MEMORY_FAULT_INFO = 1)"
    fault = run.exit.memory_fault
    flags, gpa, size = fault.flags, fault.gpa, fault.size
    assert gpa <= access_gpa < gpa + size, \
        f"{where}: KVM_EXIT_MEMORY_FAULT gpa={gpa:#x} size={size:#x} does not cover the accessed GPA {access_gpa:#x}"
    assert not flags & KVM_MEMORY_EXIT_FLAG_PRIVATE, \
        f"{where}: KVM_EXIT_MEMORY_FAULT flags={flags:#x} say private; the access was to shared memory"
    # The access did not complete, so RIP still names it (for a fetch: the fetched address) and
    # KVM_RUN can retry it once user space has fixed the memory.
    at = g.labels["access"] if access != "fetch" else (OFFSET if not MODES[mode].protected else access_gpa)
    rip = g.vcpu.get_regs().rip
    assert rip == at, f"{where}: RIP {rip:#x} at the KVM_EXIT_MEMORY_FAULT, expected {at:#x} (the access to retry)"


@pytest.mark.modes(*FAULT_MODES)
@pytest.mark.parametrize("access", ["read", "write", "fetch"])
def test_access_to_a_munmapped_backing_is_a_memory_fault(guest, backing, mode, access):
    """With the slot's host page munmap()ed (no VMA left), a guest read, write or instruction
    fetch there ends KVM_RUN with -1/EFAULT and kvm_run.exit_reason = KVM_EXIT_MEMORY_FAULT,
    gpa/size covering the access, not a private access (api.rst 7.34, 5 KVM_EXIT_MEMORY_FAULT)."""
    g = _guest(guest, mode, access, backing.hva)
    backing.unmap()
    _expect_memory_fault(g, mode, access, "unmapped")


@pytest.mark.modes(*FAULT_MODES)
@pytest.mark.parametrize("access", ["read", "write", "fetch"])
def test_access_to_a_prot_none_backing_is_a_memory_fault_and_resumes(guest, backing, mode, access):
    """With the slot's host page mprotect()ed to PROT_NONE, a guest read, write or fetch there
    ends KVM_RUN with -1/EFAULT and KVM_EXIT_MEMORY_FAULT covering the access (api.rst 7.34).
    Once user space makes the page readable and writable again, KVM_RUN retries the access: the
    load returns the bytes the host put there, the store lands in the page (api.rst 7.34 note)."""
    g = _guest(guest, mode, access, backing.hva)
    backing.protect(0)
    _expect_memory_fault(g, mode, access, "PROT_NONE")
    backing.protect(libc.PROT_READ | libc.PROT_WRITE)
    if access == "fetch":
        return
    gpa = _slot_gpa(mode) + OFFSET
    g.vm.write_u32(gpa, LOAD_VALUE)
    syncs = g.run_to_done()
    if access == "read":
        assert syncs == [LOAD_VALUE], f"after restoring the page the load returned {syncs}, expected {LOAD_VALUE:#x}"
    else:
        stored = g.vm.read_u32(gpa)
        assert stored == STORE_VALUE, f"after restoring the page the store left {stored:#x}, expected {STORE_VALUE:#x}"
