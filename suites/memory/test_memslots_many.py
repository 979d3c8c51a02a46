"""Guest memory split over many small memslots (selftests memslot_perf_test, whose timings are
benchmarks/bench_memslot_access.py and bench_memslots.py).

api.rst 4.35: each slot maps [guest_phys_addr, + memory_size) to its own user memory at
userspace_addr, and slots may be many (up to KVM_CAP_NR_MEMSLOTS). With 256 slots of two pages,
each backed by its own host mapping, a guest access must reach exactly the host memory of the slot
that holds its address: what the guest stores the host reads there, and what the host stores the
guest reads. The guest runs at CPL3, natively everywhere.
"""

import pytest

from kvmtest.guest.page_loops import page_loop

BASE = 0x200000
SLOTS = 256
SLOT_SIZE = 0x2000
END = BASE + SLOTS * SLOT_SIZE
MAGIC = 0x5EC0_0000_0000_5EC0

# Stores each page's GPA to its first qword; then counts the pages whose second qword is GPA ^ MAGIC.
SOURCE = "\n".join([
    page_loop("store", BASE, END, "mov qword ptr [rbx], rbx", reg="rbx"),
    "GUEST_SYNC 0",
    f"mov rcx, {MAGIC:#x}",
    "xor edx, edx",
    page_loop("load", BASE, END, "mov rax, qword ptr [rbx + 8]\nxor rax, rbx\ncmp rax, rcx\njne next\ninc edx\nnext:",
              reg="rbx"),
    "GUEST_SYNC rdx",
    "GUEST_DONE",
])


@pytest.mark.modes(code_bits=64, cpl=3)
def test_guest_and_host_meet_in_each_of_256_slots(guest, mode):
    """Across 256 two-page slots, each with its own host mapping: the GPA the guest stores in each
    page is what the host reads in that slot's memory, and the GPA ^ MAGIC the host stores there is
    what the guest reads, in all 512 pages (api.rst 4.35; selftests memslot_perf_test rw)."""
    g = guest(mode, SOURCE)
    if g.vm.check_extension("KVM_CAP_NR_MEMSLOTS") <= SLOTS:
        pytest.skip(f"needs more than {SLOTS} memslots (KVM_CAP_NR_MEMSLOTS)")
    slots = [g.vm.add_memory(BASE + i * SLOT_SIZE, SLOT_SIZE) for i in range(SLOTS)]
    assert len({s.hva for s in slots}) == SLOTS
    assert g.expect_sync() == 0
    wrong = {}
    for s in slots:
        for page in (0, 0x1000):
            got = int.from_bytes(s.mapping.read(s.offset + page, 8), "little")
            if got != s.gpa + page:
                wrong[hex(s.gpa + page)] = hex(got)
            s.mapping.write(s.offset + page + 8, ((s.gpa + page) ^ MAGIC).to_bytes(8, "little"))
    assert not wrong, f"{len(wrong)} pages hold other values than the GPA the guest stored (GPA: host read): " \
                      f"{dict(list(wrong.items())[:6])}"
    found = g.expect_sync()
    assert found == 2 * SLOTS, f"the guest found GPA ^ MAGIC in {found} of {2 * SLOTS} pages the host wrote"
    g.run_to_done()
