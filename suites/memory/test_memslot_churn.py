"""Several vCPUs write all their memory while user space keeps adding and deleting memslots
(selftests memslot_modification_stress_test).

api.rst 4.35 KVM_SET_USER_MEMORY_REGION may be called while vCPUs run; a change to one slot leaves
the memory of the others what it was ("the guest address space is kept in sync"): every store the
vCPUs make to their own slot lands, and none of them sees an exit it did not ask for. Each vCPU
stores its pass number to the first qword of every page of its range, publishes the pass number,
and stops at the end of a pass once the host asks; at CPL3 it runs natively everywhere.
"""

import time

import pytest

from kvmtest.guest.page_loops import PAGE_WRITER, WRITER_CONTROL, WRITER_PROGRESS, set_page_range, writer_passes

BASE = 0x300000
VCPUS = 4
PAGES = 32                     # per vCPU
CHURN = 100                    # add/delete pairs of an unrelated slot, at least

@pytest.mark.modes(code_bits=64, cpl=3)
def test_vcpus_keep_writing_all_their_memory_through_slot_churn(guest, mode):
    """Four vCPUs store their pass number to every page of their own 32 pages while the host adds
    and deletes another 2 MiB slot (100 times at least): every vCPU completes two passes during the churn, ends
    with GUEST_DONE and no other exit, and its pages all hold its last pass number (api.rst 4.35;
    selftests memslot_modification_stress_test)."""
    g = guest(mode, PAGE_WRITER)
    g.vm.add_memory(BASE, VCPUS * PAGES * 0x1000)
    vcpus = [g.vcpu] + [g.add_vcpu("start") for _ in range(VCPUS - 1)]
    for i, vcpu in enumerate(vcpus):
        set_page_range(vcpu, BASE + i * PAGES * 0x1000, BASE + (i + 1) * PAGES * 0x1000, WRITER_PROGRESS + 8 * i)
    threads = [g.in_thread(vcpu, timeout=30) for vcpu in vcpus]
    try:
        deadline = time.monotonic() + 10
        while min(writer_passes(g.vm, VCPUS)) == 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        before = writer_passes(g.vm, VCPUS)
        assert min(before) > 0, f"passes completed before the churn: {before}; every vCPU should have started"
        # At least CHURN cycles, and on until every vCPU completed two more passes (so each wrote
        # all its memory during the churn, however the host scheduled the threads), for 10 s at most.
        cycles, deadline = 0, time.monotonic() + 10
        while cycles < CHURN or (any(p < b + 2 for p, b in zip(writer_passes(g.vm, VCPUS), before, strict=True))
                                 and time.monotonic() < deadline):
            extra = g.vm.add_memory(0x10000000, 0x200000)
            g.vm.delete_memslot(extra.slot)
            cycles += 1
        during = writer_passes(g.vm, VCPUS)
    finally:
        g.vm.write_u64(WRITER_CONTROL, 1)
        results = [t.join(30) for t in threads]
    assert results == [[]] * VCPUS, f"run_to_done per vCPU returned {results}, expected GUEST_DONE and no syncs"
    stalled = [i for i in range(VCPUS) if during[i] < before[i] + 2]
    assert not stalled, f"vCPUs {stalled} did not complete two passes in 10 s of slot churn " \
                        f"(passes before {before}, after {during})"
    final = writer_passes(g.vm, VCPUS)
    for i in range(VCPUS):
        pages = [g.vm.read_u64(BASE + (i * PAGES + p) * 0x1000) for p in range(PAGES)]
        wrong = {p: v for p, v in enumerate(pages) if v != final[i]}
        assert not wrong, f"vCPU {i} finished pass {final[i]}, but its pages hold other values: {wrong}"
