"""Several vCPUs work a large slot backed by transparent huge pages, mapped by the guest with 2 MiB
pages, while dirty logging is switched on and off (selftests kvm_page_table_test).

api.rst 4.35: a slot's memory is the user memory at userspace_addr, and KVM_MEM_LOG_DIRTY_PAGES may
be set and cleared on a live slot ("its flags may be modified"); 4.8 KVM_GET_DIRTY_LOG: the pages
dirtied since the last call. KVM maps large host pages with large mappings and must break them up
to track single 4 KiB pages once logging starts; none of that may show: what the guest wrote is in
the host's memory, and while logging is on exactly the 4 KiB pages written are reported.

Four vCPUs run at CPL3 (natively everywhere) over their own quarter of a 16 MiB slot, one stage
at a time; each stage stores a value to the first qword of every page of the quarter (or every
other page), or sums them.
"""

import pytest

from kvmtest import libc
from kvmtest.abi.constants import KVM_MEM_LOG_DIRTY_PAGES
from kvmtest.guest import layout as L
from kvmtest.guest.paging import MiB2
from kvmtest.guest.protocol import Sync
from kvmtest.memory import HostMapping

BASE = 0x1000000               # 16 MiB, 2 MiB aligned, inside the identity map below
SIZE = 16 << 20
VCPUS = 4
PAGES = SIZE // 0x1000
CONTROL = L.DATA               # value, page step, first page offset, 1 = sum instead of store
MADV_HUGEPAGE = 14             # <asm-generic/mman-common.h>
THP = "/sys/kernel/mm/transparent_hugepage/enabled"

STAGES = f"""
start:
    mov r10, {CONTROL:#x}
stage:
    mov rbx, rsi
    add rbx, qword ptr [r10 + 16]
    mov rax, qword ptr [r10]
    mov rcx, qword ptr [r10 + 8]
    xor edx, edx
    cmp qword ptr [r10 + 24], 0
    jne sum
store:
    mov qword ptr [rbx], rax
    add rbx, rcx
    cmp rbx, rdi
    jb store
    GUEST_SYNC 0
    jmp stage
sum:
    add rdx, qword ptr [rbx]
    add rbx, rcx
    cmp rbx, rdi
    jb sum
    GUEST_SYNC rdx
    jmp stage
"""


def _thp_backing():
    """A 2 MiB-aligned view of an anonymous mapping with MADV_HUGEPAGE (mapping, offset)."""
    try:
        mode = open(THP).read()
    except OSError:
        pytest.skip(f"needs transparent huge pages ({THP} is missing)")
    if "[never]" in mode:
        pytest.skip(f"needs transparent huge pages ({THP}: {mode.strip()})")
    m = HostMapping(SIZE + MiB2, name="THP backing")
    offset = -m.addr % MiB2
    libc.madvise(m.addr + offset, SIZE, MADV_HUGEPAGE)
    return m, offset


def _stage(g, vcpus, value, step=0x1000, first=0, total=False) -> list[int]:
    """Run every vCPU through one stage concurrently; each one's GUEST_SYNC value."""
    for i, v in enumerate((value, step, first, int(total))):
        g.vm.write_u64(CONTROL + 8 * i, v)
    threads = [g.in_thread(vcpu, until_done=False, timeout=30) for vcpu in vcpus]
    events = [t.join(60) for t in threads]
    bad = [e for e in events if not isinstance(e, Sync)]
    assert not bad, f"stage {value}: expected a GUEST_SYNC from every vCPU, got {bad}"
    return [e.value for e in events]


def _first_qwords(g) -> list[int]:
    return list(memoryview(g.vm.read(BASE, SIZE)).cast("Q")[::0x1000 // 8])


@pytest.mark.modes(code_bits=64, cpl=3)
def test_vcpus_work_a_huge_page_slot_across_dirty_logging_on_and_off(guest, mode):
    """Four vCPUs store to every 4 KiB page of a THP-backed 16 MiB slot (first touch, then again);
    logging switched on, a store to every page is reported page by page, a pass of loads reports
    nothing, stores to even pages report exactly the even pages; logging switched off, stores to
    every page land; switched on again, stores to odd pages report exactly those. After each stage
    the host memory holds what the guest stored, and the guest's sums match it (api.rst 4.35, 4.8;
    selftests kvm_page_table_test)."""
    g = guest(mode, STAGES, page_size=MiB2, identity_size=BASE + SIZE)
    backing, offset = _thp_backing()
    slot = g.vm.add_memory(BASE, SIZE, mapping=backing, offset=offset).slot
    vcpus = [g.vcpu] + [g.add_vcpu("start") for _ in range(VCPUS - 1)]
    quarter = SIZE // VCPUS
    for i, vcpu in enumerate(vcpus):
        regs = vcpu.get_regs()
        regs.rsi, regs.rdi = BASE + i * quarter, BASE + (i + 1) * quarter
        vcpu.set_regs(regs)

    _stage(g, vcpus, 1)
    _stage(g, vcpus, 2)
    assert _first_qwords(g) == [2] * PAGES, "logging off: the host memory does not hold the second stores"

    g.vm.set_memslot_flags(slot, KVM_MEM_LOG_DIRTY_PAGES)
    _stage(g, vcpus, 3)
    dirty = g.vm.get_dirty_log(slot)
    assert dirty == set(range(PAGES)), \
        f"logging on, every page stored to: {PAGES - len(dirty)} pages not reported, e.g. " \
        f"{sorted(set(range(PAGES)) - dirty)[:8]}"
    sums = _stage(g, vcpus, 0, total=True)
    assert sums == [3 * (PAGES // VCPUS)] * VCPUS, f"the vCPUs' sums {sums} do not match the stores of value 3"
    assert g.vm.get_dirty_log(slot) == set(), "a pass of loads made pages dirty"
    _stage(g, vcpus, 4, step=0x2000)
    dirty = g.vm.get_dirty_log(slot)
    assert dirty == set(range(0, PAGES, 2)), \
        f"stores to the even pages: reported {len(dirty)} pages, odd ones among them " \
        f"{sorted(p for p in dirty if p % 2)[:8]}, even ones missing {sorted(set(range(0, PAGES, 2)) - dirty)[:8]}"
    assert _first_qwords(g) == [4, 3] * (PAGES // 2), \
        "stores of value 4 to the even pages: expected first qwords 4, 3 alternating (odd pages keep stage 3's)"

    g.vm.set_memslot_flags(slot, 0)
    _stage(g, vcpus, 5)
    assert _first_qwords(g) == [5] * PAGES, "logging off again: the stores did not all land"
    g.vm.set_memslot_flags(slot, KVM_MEM_LOG_DIRTY_PAGES)
    _stage(g, vcpus, 6, step=0x2000, first=0x1000)
    dirty = g.vm.get_dirty_log(slot)
    assert dirty == set(range(1, PAGES, 2)), \
        f"logging on again, stores to the odd pages: {len(dirty)} reported, missing " \
        f"{sorted(set(range(1, PAGES, 2)) - dirty)[:8]}, extra {sorted(dirty - set(range(1, PAGES, 2)))[:8]}"
    assert _first_qwords(g) == [5, 6] * (PAGES // 2), \
        "stores of value 6 to the odd pages: expected first qwords 5, 6 alternating (even pages keep stage 5's)"
