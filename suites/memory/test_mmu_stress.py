"""Several vCPUs against host changes to their memory: mprotect(PROT_READ) landing while they
write, and many large slots deleted with half their backing already unmapped (selftests
mmu_stress_test; test_read_only_backing.py changes the protection between KVM_RUNs instead).

api.rst 4.35: a slot's memory is the user memory at userspace_addr and KVM follows later changes of
its mappings (KVM_CAP_SYNC_MMU); 4.10 / 7.34: KVM_RUN fails with EFAULT "if KVM cannot resolve a
guest page fault", as for a write to a read-only VMA, and the access did not happen (RIP still names
it), so user space may skip it and run again. Deleting a slot (memory_size 0) needs nothing of the
host memory that was behind it.

The vCPUs run at CPL3, natively everywhere; every KVM_RUN has a timeout.
"""

import errno
import time

import pytest

from kvmtest import libc
from kvmtest.errors import KvmError
from kvmtest.guest import layout as L
from kvmtest.guest.paging import GiB1, MiB2
from kvmtest.guest.protocol import Sync
from kvmtest.guest.runloop import VcpuThread
from kvmtest.memory import HostMapping

VCPUS = 4
CONTROL = L.DATA   # the host sets it once mprotect(PROT_READ) has returned

# rsi..rdi: this vCPU's pages. r8 grows by one each pass, so a store that lands changes the page.
RACE = f"""
start:
    mov r10, {CONTROL:#x}
    mov r8, 1
    mov rbx, rsi
first:
    mov qword ptr [rbx], r8
    add rbx, 0x1000
    cmp rbx, rdi
    jb first
    GUEST_SYNC 1
race:
    inc r8
    mov rbx, rsi
race_page:
race_store:
    mov qword ptr [rbx], r8
race_next:
    add rbx, 0x1000
    cmp rbx, rdi
    jb race_page
    cmp qword ptr [r10], 0
    je race
    inc r8
    mov rbx, rsi
final_page:
final_store:
    mov qword ptr [rbx], r8
final_next:
    add rbx, 0x1000
    cmp rbx, rdi
    jb final_page
    GUEST_SYNC 3
    mov r8, 0x4444
    mov rbx, rsi
last:
    mov qword ptr [rbx], r8
    add rbx, 0x1000
    cmp rbx, rdi
    jb last
    GUEST_SYNC 4
    GUEST_DONE
"""


def _vcpus(g, base, per_vcpu):
    vcpus = [g.vcpu] + [g.add_vcpu("start") for _ in range(VCPUS - 1)]
    for i, vcpu in enumerate(vcpus):
        regs = vcpu.get_regs()
        regs.rsi, regs.rdi = base + i * per_vcpu, base + (i + 1) * per_vcpu
        vcpu.set_regs(regs)
    return vcpus


def _all_sync(g, vcpus, value):
    events = [t.join(60) for t in [g.in_thread(v, until_done=False, timeout=30) for v in vcpus]]
    assert all(isinstance(e, Sync) and e.value == value for e in events), \
        f"expected GUEST_SYNC {value} from every vCPU, got {events}"


def _race_loop(g, vcpu):
    """Run `vcpu` through the race to GUEST_SYNC 3, stepping over each store KVM_RUN refuses with
    EFAULT; the refusals counted by store site."""
    sites = {g.labels["race_store"]: "race", g.labels["final_store"]: "final"}
    length = g.labels["race_next"] - g.labels["race_store"]
    faults = {"race": 0, "final": 0}
    for _ in range(1_000_000):
        try:
            event = g.run(vcpu=vcpu)
        except KvmError as e:
            regs = vcpu.get_regs()
            if e.errno != errno.EFAULT or regs.rip not in sites:
                raise AssertionError(f"{vcpu.name}: KVM_RUN failed with {e} at RIP {regs.rip:#x}; expected EFAULT "
                                     f"at a store ({', '.join(hex(s) for s in sites)})") from None
            faults[sites[regs.rip]] += 1
            regs.rip += length
            vcpu.set_regs(regs)
            continue
        if isinstance(event, Sync) and event.value == 3:
            return faults
        raise AssertionError(f"{vcpu.name}: during the race got {event}, expected EFAULTs then GUEST_SYNC 3")
    raise AssertionError(f"{vcpu.name}: no GUEST_SYNC 3 after a million runs")


@pytest.mark.modes(code_bits=64, cpl=3)
def test_mprotect_read_only_lands_while_vcpus_write(guest, mode):
    """Four vCPUs store a pass number to every page of their 16 while the host mprotect()s the
    slot's backing PROT_READ: from the moment mprotect returns no store lands (the memory keeps
    the contents it had then), every refused store ends KVM_RUN with EFAULT and RIP at the store,
    and each vCPU's whole pass made after the host said so is refused store by store; with
    PROT_WRITE back, the stores land (api.rst 4.35, 4.10, 7.34; selftests mmu_stress_test)."""
    pages = 16
    base = 0x300000
    g = guest(mode, RACE)
    slot = g.vm.add_memory(base, VCPUS * pages * 0x1000)
    vcpus = _vcpus(g, base, pages * 0x1000)
    _all_sync(g, vcpus, 1)

    threads = [VcpuThread(lambda v=v: _race_loop(g, v)) for v in vcpus]
    protected = False
    try:
        deadline = time.monotonic() + 10
        while min(g.vm.read_u64(base + i * pages * 0x1000) for i in range(VCPUS)) < 3:
            assert time.monotonic() < deadline, "the vCPUs did not start their store passes within 10 s"
            time.sleep(0.001)
        assert libc.mprotect(slot.hva, slot.size, libc.PROT_READ) == 0, \
            f"mprotect(PROT_READ) of the slot's backing: expected 0, errno " \
            f"{errno.errorcode.get(libc.get_errno(), libc.get_errno())}"
        protected = True
        frozen = g.vm.read(base, slot.size)
    finally:
        g.vm.write_u64(CONTROL, 1)
        faults = [t.join(60) for t in threads]
    assert protected, "the backing was not made PROT_READ before the vCPUs were told to stop"
    short = {v.name: f for v, f in zip(vcpus, faults, strict=True) if f["final"] != pages}
    assert not short, f"the pass made after mprotect(PROT_READ) returned was refused {short} times, " \
                      f"expected {pages} EFAULTs per vCPU (every store)"
    assert g.vm.read(base, slot.size) == frozen, "a store landed after mprotect(PROT_READ) returned"

    assert libc.mprotect(slot.hva, slot.size, libc.PROT_READ | libc.PROT_WRITE) == 0, \
        f"mprotect(PROT_READ|PROT_WRITE) of the slot's backing: expected 0, errno " \
        f"{errno.errorcode.get(libc.get_errno(), libc.get_errno())}"
    _all_sync(g, vcpus, 4)
    words = memoryview(g.vm.read(base, slot.size)).cast("Q")[::0x1000 // 8]
    assert list(words) == [0x4444] * (VCPUS * pages), "with PROT_WRITE back, the stores did not all land"


SCALE = """
start:
    mov rbx, rsi
store:
    mov qword ptr [rbx], rbx
    add rbx, 0x1000
    cmp rbx, rdi
    jb store
    mov rbx, rsi
    xor eax, eax
load:
    add rax, qword ptr [rbx]
    add rbx, 0x1000
    cmp rbx, rdi
    jb load
    GUEST_SYNC rax
    GUEST_DONE
"""


HEADROOM = 512 << 20   # beyond the guest memory itself: page tables, the other slots, the test process


def _require_free_memory(needed: int) -> None:
    """Skip, naming both figures, when the host has less than `needed` bytes available (MemAvailable
    of /proc/meminfo): every page of the backing is touched, so a smaller host (the 2 GiB VM of
    `kvmtest run --kernel`) would reclaim or OOM-kill instead of testing KVM."""
    with open("/proc/meminfo") as f:
        fields = dict(line.split(":", 1) for line in f)
    available = int(fields["MemAvailable"].split()[0]) << 10
    if available < needed:
        pytest.skip(f"needs {needed >> 20} MiB of host memory available, MemAvailable is {available >> 20} MiB")


@pytest.mark.modes(code_bits=64, cpl=3)
@pytest.mark.parametrize("page_size,base,size", [
    pytest.param(MiB2, 0x1000000, 64 << 20, id="2m-64mib"),
    pytest.param(GiB1, 0x80000000, 2 << 30, id="1g-2gib", marks=pytest.mark.requires_cpu("pdpe1gb")),
])
def test_many_large_slots_deleted_with_half_their_backing_unmapped(guest, mode, page_size, base, size):
    """Guest memory split over eight slots and identity-mapped with 2 MiB or 1 GiB guest pages:
    four vCPUs store each 4 KiB page's GPA to it and sum them back (the sum of the GPAs); the host
    reads the same values; then half of the backing is munmap()ed and every slot deleted, each
    deletion succeeding (api.rst 4.35; selftests mmu_stress_test)."""
    _require_free_memory(size + HEADROOM)
    g = guest(mode, SCALE, page_size=page_size, identity_size=base + size)
    backing = HostMapping(size, name="mmu stress backing")
    slot_size = size // 8
    slots = [g.vm.add_memory(base + i * slot_size, slot_size, mapping=backing, offset=i * slot_size).slot
             for i in range(8)]
    per_vcpu = size // VCPUS
    vcpus = _vcpus(g, base, per_vcpu)
    threads = [g.in_thread(v, timeout=60) for v in vcpus]
    sums = [t.join(120) for t in threads]
    want = []
    for i in range(VCPUS):
        first, n = base + i * per_vcpu, per_vcpu // 0x1000
        want.append([(n * first + 0x1000 * n * (n - 1) // 2) % (1 << 64)])
    assert sums == want, f"the vCPUs' sums of their pages {sums}, expected the sums of the GPAs {want}"
    for gpa in range(base, base + size, size // 64):
        assert g.vm.read_u64(gpa) == gpa, f"the host reads {g.vm.read_u64(gpa):#x} at GPA {gpa:#x}"
    libc.munmap(backing.addr + size // 2, size // 2)
    for slot in slots:
        g.vm.delete_memslot(slot)
    assert sorted(g.vm.memslots) == [0], f"slots left after the deletions: {sorted(g.vm.memslots)}"
