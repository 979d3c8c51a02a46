"""Page tables for 32-bit paging, PAE, 4-level and 5-level paging (SDM Vol. 3A chapter 4).

The builder writes entries into guest memory through a Vm and remembers where each
entry lives, so tests can change a PTE and check what the guest then sees.
"""

import struct
from dataclasses import dataclass

# Entry bits (SDM Vol. 3A Tables 4-4 to 4-20)
P, RW, US, PWT, PCD, A, D, PS, G = 1 << 0, 1 << 1, 1 << 2, 1 << 3, 1 << 4, 1 << 5, 1 << 6, 1 << 7, 1 << 8
PAT_LARGE = 1 << 12
NX = 1 << 63
PKEY_SHIFT = 59

FLAG_NAMES = {"P": P, "RW": RW, "US": US, "PWT": PWT, "PCD": PCD, "A": A, "D": D, "PS": PS, "G": G, "NX": NX}

KiB4, MiB2, MiB4, GiB1 = 0x1000, 0x200000, 0x400000, 0x40000000


@dataclass(frozen=True)
class PagingFormat:
    """One paging mode: entry width, index bits per level (root first), leaf sizes allowed."""

    name: str
    entry_size: int
    shifts: tuple[int, ...]     # va shift of each level's index, root first
    index_bits: tuple[int, ...]
    large_pages: dict          # page size -> level index (in `shifts`) whose entry maps it
    table_flags_mask: int = ~0  # flags allowed in non-leaf entries (PAE PDPTEs allow only P/PWT/PCD)

    @property
    def levels(self) -> int:
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


def encode_entry(fmt: PagingFormat, address: int, flags: int) -> bytes:
    """One paging-structure entry: the frame address with the flag bits."""
    value = (address & ~0xFFF & ((1 << 52) - 1)) | flags
    if fmt.entry_size == 4:
        if address >> 32 or flags >> 32:
            raise ValueError(f"32-bit paging cannot hold address {address:#x} or flags {flags:#x}")
        return struct.pack("<I", value)
    return struct.pack("<Q", value)


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
        raw = self.vm.read(self.entry_address(va, level), self.fmt.entry_size)
        return int.from_bytes(raw, "little")

    def write_entry(self, va: int, level: int, value: int) -> None:
        self.vm.write(self.entry_address(va, level), value.to_bytes(self.fmt.entry_size, "little"))
        self.pdptes_changed |= self.fmt.name == "pae" and level == 0

    def leaf_level(self, page_size: int) -> int:
        if page_size == KiB4:
            return self.fmt.levels - 1
        if page_size not in self.fmt.large_pages:
            raise ValueError(f"{self.fmt.name} paging has no {page_size:#x}-byte pages")
        return self.fmt.large_pages[page_size]

    def map(self, va: int, pa: int, page_size: int = KiB4, flags: int = P | RW,
            table_flags: int = P | RW | US) -> int:
        """Map one page; returns the guest physical address of its leaf entry."""
        leaf = self.leaf_level(page_size)
        if va % page_size or pa % page_size:
            raise ValueError(f"va {va:#x} / pa {pa:#x} not aligned to the {page_size:#x}-byte page")
        for level in range(leaf):
            key = (level + 1, self._prefix(va, level + 1))
            if key not in self.tables:
                self.tables[key] = self.alloc.alloc()
                tflags = P | (PWT | PCD) & table_flags if self.fmt.name == "pae" and level == 0 else table_flags
                self.vm.write(self.entry_address(va, level), encode_entry(self.fmt, self.tables[key], tflags))
                self.pdptes_changed |= self.fmt.name == "pae" and level == 0
        leaf_flags = flags | (PS if leaf != self.fmt.levels - 1 else 0)
        addr = self.entry_address(va, leaf)
        self.vm.write(addr, encode_entry(self.fmt, pa, leaf_flags))
        return addr

    def map_range(self, va: int, pa: int, size: int, page_size: int = KiB4, flags: int = P | RW,
                  table_flags: int = P | RW | US) -> None:
        for off in range(0, size, page_size):
            self.map(va + off, pa + off, page_size, flags, table_flags)

    def walk(self, va: int) -> list[tuple[str, int, int]]:
        """(level name, entry address, entry value) from the root to the leaf."""
        out = []
        for level in range(self.fmt.levels):
            try:
                value = self.read_entry(va, level)
            except KeyError:
                break
            out.append((LEVEL_NAMES[self.fmt.name][level], self.entry_address(va, level), value))
            if not value & P or (value & PS and level < self.fmt.levels - 1 and level > 0) or \
                    (value & PS and self.fmt.name == "32" and level == 0):
                break
        return out


def describe_flags(value: int) -> str:
    """Entry flags by name, for failure messages: 'P|RW|US|A'."""
    return "|".join(name for name, bit in FLAG_NAMES.items() if value & bit) or "0"
