"""One physical page behind many translations (kvm-unit-tests rmap_chain): the shadow MMU's
reverse map for the page grows long, and every alias must still read and write the same bytes."""

from kvmtest.guest.paging import KiB4, MiB2
from kvmtest.x86 import PTE_P, PTE_RW

ALIASES = 1000
BASE = 0x80000000
PAGE = 0x10000

WALK = f"""
    mov rbx, {BASE:#x}
    mov ecx, {ALIASES}
    xor rdx, rdx
1:  add rdx, qword ptr [rbx]
    add rbx, 0x1000
    dec ecx
    jnz 1b
    GUEST_SYNC rdx
    mov rbx, {BASE + (ALIASES - 1) * 0x1000:#x}
    mov qword ptr [rbx], 0x77
    GUEST_DONE
"""


def test_a_page_mapped_a_thousand_times(guest):
    """Reading one physical page through 1000 different linear addresses returns its value each
    time (the sum is 1000 x the value); a write through the last alias lands in that page (SDM
    Vol. 3A 4.4 translation; kvm-unit-tests rmap_chain)."""
    g = guest("long64", WALK, page_size=MiB2)
    for i in range(ALIASES):
        g.page_tables.map(BASE + i * 0x1000, PAGE, KiB4, PTE_P | PTE_RW)
    g.vm.write_u64(PAGE, 3)
    assert g.expect_sync() == 3 * ALIASES
    g.run_to_done()
    assert g.vm.read_u64(PAGE) == 0x77
