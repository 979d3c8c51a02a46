"""Page tables for 32-bit paging, PAE, 4-level and 5-level paging (SDM Vol. 3A chapter 4).

The builder writes entries into guest memory through a Vm and remembers where each
entry lives, so tests can change a PTE and check what the guest then sees.
"""

import functools
import struct
from dataclasses import dataclass

from ..x86 import PTE_A, PTE_D, PTE_G, PTE_P, PTE_PCD, PTE_PS, PTE_PWT, PTE_RW, PTE_US, PTE_XD

# Entry flags by name for failure messages, without the PTE_ prefix; bit 7 shows as PS (PAT in
# a 4-KByte PTE is the same bit).
FLAG_NAMES = {"P": PTE_P, "RW": PTE_RW, "US": PTE_US, "PWT": PTE_PWT, "PCD": PTE_PCD, "A": PTE_A, "D": PTE_D,
              "PS": PTE_PS, "G": PTE_G, "XD": PTE_XD}

KiB4, MiB2, MiB4, GiB1 = 0x1000, 0x200000, 0x400000, 0x40000000


@dataclass(frozen=True)
class PagingFormat:
    """One paging mode: entry width, index bits per level (root first), leaf sizes allowed."""

    name: str
    entry_size: int
    shifts: tuple[int, ...]     # va shift of each level's index, root first
    index_bits: tuple[int, ...]
    large_pages: dict          # page size -> level index (in `shifts`) whose entry maps it
    table_flags_mask: int = ~0  # flags allowed in non-leaf entries (PAE PDPTEs allow only P, PWT, PCD)

    @property
    def levels(self) -> int:
        """How many levels of tables a walk reads (2 for 32-bit paging, 3 for PAE, 4 or 5)."""
        return len(self.shifts)


PAGING_32 = PagingFormat("32", 4, (22, 12), (10, 10), {MiB4: 0})
PAGING_PAE = PagingFormat("pae", 8, (30, 21, 12), (2, 9, 9), {MiB2: 1})
PAGING_4LEVEL = PagingFormat("4level", 8, (39, 30, 21, 12), (9, 9, 9, 9), {GiB1: 1, MiB2: 2})
PAGING_5LEVEL = PagingFormat("5level", 8, (48, 39, 30, 21, 12), (9, 9, 9, 9, 9), {GiB1: 2, MiB2: 3})
FORMATS = {f.name: f for f in (PAGING_32, PAGING_PAE, PAGING_4LEVEL, PAGING_5LEVEL)}

LEVEL_NAMES = {
    "32": ("pde", "pte"),
    "pae": ("pdpte", "pde", "pte"),
    "4level": ("pml4e", "pdpte", "pde", "pte"),
    "5level": ("pml5e", "pml4e", "pdpte", "pde", "pte"),
}


_FRAME = ~0xFFF & ((1 << 52) - 1)  # the address bits an entry keeps


def encode_entry(fmt: PagingFormat, address: int, flags: int) -> bytes:
    """One paging-structure entry: the frame address with the flag bits."""
    value = (address & _FRAME) | flags
    if fmt.entry_size == 4:
        if address >> 32 or flags >> 32:
            raise ValueError(f"32-bit paging cannot hold address {address:#x} or flags {flags:#x}")
        return struct.pack("<I", value)
    return struct.pack("<Q", value)


@functools.lru_cache(maxsize=64)
def _leaf_entries(first: int, count: int, page_size: int, leaf_flags: int, entry_size: int) -> bytes:
    """`count` leaf entries mapping pages of `page_size` from `first` up, each with `leaf_flags`
    (encode_entry's value), packed: every paged guest writes the same identity map, so its tables'
    bytes are made once per process, not per guest."""
    values = [address & _FRAME | leaf_flags for address in range(first, first + count * page_size, page_size)]
    return struct.pack(f"<{count}{'I' if entry_size == 4 else 'Q'}", *values)


class PageTables:
    """Page tables in guest memory, allocated from a PageAllocator."""

    def __init__(self, vm, allocator, fmt: PagingFormat | str):
        self.vm = vm
        self.alloc = allocator
        self.fmt = FORMATS[fmt] if isinstance(fmt, str) else fmt
        self.root = allocator.alloc()
        self.tables: dict[tuple[int, int], int] = {(0, 0): self.root}  # (level, va prefix) -> gpa
        # PAE PDPTEs are loaded into the CPU when CR3 is loaded, not read at each walk (SDM Vol. 3A
        # 4.4.1): a PDPTE written after the vCPU's CR3 was set is not used until CR3 is loaded again.
        # Guest.run reloads CR3 (KVM_SET_SREGS) when this is set, as an OS would after changing them.
        self.pdptes_changed = False

    @property
    def cr3(self) -> int:
        """The root table's guest physical address, the value CR3 gets."""
        return self.root

    def _index(self, va: int, level: int) -> int:
        return (va >> self.fmt.shifts[level]) & ((1 << self.fmt.index_bits[level]) - 1)

    def _prefix(self, va: int, level: int) -> int:
        return va >> (self.fmt.shifts[level] + self.fmt.index_bits[level]) if level else 0

    def entry_address(self, va: int, level: int) -> int:
        """Guest physical address of the level-`level` entry (0 = root) that translates va."""
        table = self.tables.get((level, self._prefix(va, level)))
        if table is None:
            raise KeyError(f"no level-{level} table covers {va:#x}")
        return table + self._index(va, level) * self.fmt.entry_size

    def read_entry(self, va: int, level: int) -> int:
        """The entry at `level` (0 = root) on the walk of `va`, as an integer read from guest memory."""
        raw = self.vm.read(self.entry_address(va, level), self.fmt.entry_size)
        return int.from_bytes(raw, "little")

    def write_entry(self, va: int, level: int, value: int) -> None:
        """Write `value` into the entry at `level` (0 = root) on the walk of `va`. A PAE PDPTE so written
        sets pdptes_changed: the CPU reads PDPTEs only when CR3 is loaded (SDM Vol. 3A 4.4.1)."""
        self.vm.write(self.entry_address(va, level), value.to_bytes(self.fmt.entry_size, "little"))
        self.pdptes_changed |= self.fmt.name == "pae" and level == 0

    def leaf_level(self, page_size: int) -> int:
        """The level whose entry maps a page of `page_size` bytes (the last level for 4 KiB);
        ValueError for a size this paging format has no pages of."""
        if page_size == KiB4:
            return self.fmt.levels - 1
        if page_size not in self.fmt.large_pages:
            raise ValueError(f"{self.fmt.name} paging has no {page_size:#x}-byte pages")
        return self.fmt.large_pages[page_size]

    def _leaf_of(self, va: int, pa: int, page_size: int) -> int:
        leaf = self.leaf_level(page_size)
        if va % page_size or pa % page_size:
            raise ValueError(f"va {va:#x} / pa {pa:#x} not aligned to the {page_size:#x}-byte page")
        return leaf

    def _make_tables(self, va: int, leaf: int, table_flags: int) -> None:
        """Allocate the tables above level `leaf` on the walk of `va` that do not exist yet, each
        pointed to by an entry with `table_flags` (a PAE PDPTE keeps only P, PWT and PCD)."""
        for level in range(leaf):
            key = (level + 1, self._prefix(va, level + 1))
            if key not in self.tables:
                self.tables[key] = self.alloc.alloc()
                pdpte = self.fmt.name == "pae" and level == 0
                tflags = PTE_P | (PTE_PWT | PTE_PCD) & table_flags if pdpte else table_flags
                self.vm.write(self.entry_address(va, level), encode_entry(self.fmt, self.tables[key], tflags))
                self.pdptes_changed |= self.fmt.name == "pae" and level == 0

    def _leaf_flags(self, leaf: int, flags: int) -> int:
        return flags | (PTE_PS if leaf != self.fmt.levels - 1 else 0)

    def map(self, va: int, pa: int, page_size: int = KiB4, flags: int = PTE_P | PTE_RW,
            table_flags: int = PTE_P | PTE_RW | PTE_US) -> int:
        """Map one page; returns the guest physical address of its leaf entry."""
        leaf = self._leaf_of(va, pa, page_size)
        self._make_tables(va, leaf, table_flags)
        addr = self.entry_address(va, leaf)
        self.vm.write(addr, encode_entry(self.fmt, pa, self._leaf_flags(leaf, flags)))
        return addr

    def map_range(self, va: int, pa: int, size: int, page_size: int = KiB4, flags: int = PTE_P | PTE_RW,
                  table_flags: int = PTE_P | PTE_RW | PTE_US) -> None:
        """Map [`va`, `va` + `size`) to [`pa`, ...) with pages of `page_size` bytes, each leaf with
        `flags` and each table entry created on the way with `table_flags` (see map()).

        The same entries map() page by page would write, in the same order, but the entries that
        fall in one leaf table go to guest memory in one write, encoded together, and the tables
        above it are looked at once: every paged guest identity-maps 1,536 4-KiB pages, and an
        entry at a time was most of its build."""
        offsets = range(0, size, page_size)
        if not offsets:
            return
        leaf = self._leaf_of(va, pa, page_size)  # every page is aligned as the first one is
        leaf_flags, entry_size = self._leaf_flags(leaf, flags), self.fmt.entry_size
        # A leaf entry's index grows by one per page (the leaf level's shift is the page size's).
        per_table = 1 << self.fmt.index_bits[leaf]
        done = 0
        while done < len(offsets):
            page_va = va + offsets[done]
            self._make_tables(page_va, leaf, table_flags)
            index = self._index(page_va, leaf)
            first = pa + offsets[done]
            addresses = range(first, first + min(len(offsets) - done, per_table - index) * page_size, page_size)
            if entry_size == 4 and (addresses[-1] >> 32 or leaf_flags >> 32):
                # What fits is written, then encode_entry refuses the first page that does not, as in map().
                addresses = addresses[:0] if leaf_flags >> 32 else range(first, 1 << 32, page_size)
                refused = first + len(addresses) * page_size
            else:
                refused = None
            if addresses:
                table = self.tables[(leaf, self._prefix(page_va, leaf))]
                self.vm.write(table + index * entry_size,
                              _leaf_entries(addresses.start, len(addresses), page_size, leaf_flags, entry_size))
            if refused is not None:
                encode_entry(self.fmt, refused, leaf_flags)  # raises ValueError naming the address
            done += len(addresses)

    def walk(self, va: int) -> list[tuple[str, int, int]]:
        """(level name, entry address, entry value) from the root to the leaf."""
        out = []
        for level in range(self.fmt.levels):
            try:
                value = self.read_entry(va, level)
            except KeyError:
                break
            out.append((LEVEL_NAMES[self.fmt.name][level], self.entry_address(va, level), value))
            if not value & PTE_P or (value & PTE_PS and level < self.fmt.levels - 1 and level > 0) or \
                    (value & PTE_PS and self.fmt.name == "32" and level == 0):
                break
        return out


def describe_flags(value: int) -> str:
    """Entry flags by name, for failure messages: 'P|RW|US|A'."""
    return "|".join(name for name, bit in FLAG_NAMES.items() if value & bit) or "0"
