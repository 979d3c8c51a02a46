"""PageTables.map_range writes runs of leaf entries at once (kvmtest.guest.paging): it must leave
guest memory, the table index and the PDPTE reload flag exactly as map() page by page does, on
success and when it fails part-way."""

import pytest

from kvmtest.errors import GuestMemoryError
from kvmtest.guest import paging as PG
from kvmtest.memory import PageAllocator
from kvmtest.x86 import PTE_P, PTE_PCD, PTE_RW, PTE_US, PTE_XD


class FakeVm:
    """Guest memory as a bytearray, counting the writes that reach it."""

    def __init__(self):
        self.mem = bytearray(0x400000)
        self.writes = 0

    def write(self, gpa, data):
        if gpa + len(data) > len(self.mem):
            raise GuestMemoryError(f"write at {gpa:#x} outside the fake guest memory")
        self.mem[gpa:gpa + len(data)] = data
        self.writes += 1

    def read(self, gpa, size):
        return bytes(self.mem[gpa:gpa + size])


def _pair(fmt, pool_end=0x400000):
    """Two empty page-table trees of `fmt`, each in its own fake guest memory."""
    out = []
    for _ in range(2):
        vm = FakeVm()
        out.append(PG.PageTables(vm, PageAllocator(vm, 0x20000, pool_end), fmt))
    return out


def _one_by_one(pt, va, pa, size, page_size, flags, table_flags):
    for off in range(0, size, page_size):
        pt.map(va + off, pa + off, page_size, flags, table_flags)


def _same(a, b):
    assert a.vm.mem == b.vm.mem
    assert a.tables == b.tables
    assert a.alloc.next == b.alloc.next
    assert a.pdptes_changed == b.pdptes_changed


RANGES = [  # (format, va, pa, size, page size): within one leaf table, across several, large pages
    ("32", 0, 0, 0x400000, PG.KiB4),
    ("32", 0x3FF000, 0x1000, 0x3000, PG.KiB4),  # crosses a page-table boundary
    ("32", 0, 0, 0x800000, PG.MiB4),
    ("32", 0xFFC00000, 0, 0x800000, PG.MiB4),  # past 4 GiB the root index wraps onto entry 0
    ("pae", 0x3FE00000, 0, 0x600000, PG.KiB4),  # crosses a PDPTE (1 GiB) boundary
    ("pae", 0, 0, 0x1000000, PG.MiB2),
    ("4level", 0, 0, 0x400000, PG.KiB4),
    ("4level", 0x40000000, 0x40000000, 0x200000, PG.KiB4),
    ("4level", 0x7FFFFFE000, 0x2000, 0x5000, PG.KiB4),  # crosses a PML4E's 512 GiB
    ("4level", 0, 0, 0x80000000, PG.GiB1),
    ("5level", 0xFFFFF000, 0, 0x3000, PG.KiB4),
    ("5level", 0, 0, 0x800000, PG.MiB2),
]


@pytest.mark.parametrize("fmt,va,pa,size,page_size", RANGES)
def test_map_range_writes_what_map_writes(fmt, va, pa, size, page_size):
    batched, single = _pair(fmt)
    flags, table_flags = PTE_P | PTE_RW | PTE_US, PTE_P | PTE_RW | PTE_US | PTE_PCD
    if fmt != "32":
        flags |= PTE_XD
    batched.map_range(va, pa, size, page_size, flags, table_flags)
    _one_by_one(single, va, pa, size, page_size, flags, table_flags)
    _same(batched, single)
    assert batched.vm.writes <= single.vm.writes


def test_map_range_writes_each_leaf_table_once():
    # The point of it: 4 MiB of 4-KiB pages is two page tables' worth, not 1,024 writes.
    batched, single = _pair("4level")
    batched.map_range(0, 0, 0x400000)
    _one_by_one(single, 0, 0, 0x400000, PG.KiB4, PTE_P | PTE_RW, PTE_P | PTE_RW | PTE_US)
    _same(batched, single)
    tables = len(batched.tables)  # root, PDPT, PD, two PTs: each zeroed once when allocated
    assert batched.vm.writes == tables + (tables - 1) + 2  # + an entry pointing at each table + 2 leaf runs
    assert single.vm.writes == tables + (tables - 1) + 1024


def test_map_range_over_existing_tables_and_entries():
    batched, single = _pair("4level")
    for pt in (batched, single):
        pt.map(0x3000, 0x9000, PG.KiB4, PTE_P)  # an entry map_range overwrites, in a table it reuses
        pt.map(0x400000, 0, PG.MiB2, PTE_P)      # a large page it replaces with a page table's entries
    batched.map_range(0, 0, 0x600000, PG.KiB4, PTE_P | PTE_RW)
    _one_by_one(single, 0, 0, 0x600000, PG.KiB4, PTE_P | PTE_RW, PTE_P | PTE_RW | PTE_US)
    _same(batched, single)


def test_map_range_that_fails_part_way_leaves_what_map_left():
    # Room for the root and three more tables: the fourth table a 4-KiB range needs is refused.
    batched, single = _pair("4level", pool_end=0x24000)
    with pytest.raises(GuestMemoryError, match="exhausted") as got:
        batched.map_range(0, 0, 0x600000, PG.KiB4)
    with pytest.raises(GuestMemoryError, match="exhausted") as want:
        _one_by_one(single, 0, 0, 0x600000, PG.KiB4, PTE_P | PTE_RW, PTE_P | PTE_RW | PTE_US)
    assert str(got.value) == str(want.value)
    _same(batched, single)


def test_map_range_refuses_what_map_refuses():
    pt, _ = _pair("32")
    with pytest.raises(ValueError, match="not aligned"):
        pt.map_range(0x1000, 0, 0x400000, PG.MiB4)
    with pytest.raises(ValueError, match="no 0x200000-byte pages"):
        pt.map_range(0, 0, 0x400000, PG.MiB2)
    pt.map_range(0x1000, 0, 0, PG.MiB4)  # nothing to map: nothing checked, as before


@pytest.mark.parametrize("pa,size,flags", [
    (0xFFFFE000, 0x4000, PTE_P),    # the third page is past 4 GiB: the two before it are mapped
    (0x100000000, 0x2000, PTE_P),   # the first page is
    (0x1000, 0x2000, PTE_P | PTE_XD),  # flags a 32-bit entry cannot hold
])
def test_a_32bit_entry_that_cannot_be_held_is_refused_where_map_refuses_it(pa, size, flags):
    batched, single = _pair("32")
    with pytest.raises(ValueError, match="32-bit paging cannot hold") as got:
        batched.map_range(0, pa, size, PG.KiB4, flags)
    with pytest.raises(ValueError, match="32-bit paging cannot hold") as want:
        _one_by_one(single, 0, pa, size, PG.KiB4, flags, PTE_P | PTE_RW | PTE_US)
    assert str(got.value) == str(want.value)
    _same(batched, single)
