"""Anonymous host mappings that back guest memory, and a page allocator over guest memory."""

import ctypes

from . import libc
from .errors import GuestMemoryError


class HostMapping:
    """An anonymous private mapping of `size` bytes; the guest sees it through a memslot."""

    def __init__(self, size: int, *, shared: bool = False):
        if size <= 0 or size % libc.PAGE_SIZE:
            raise GuestMemoryError(f"a host mapping needs a positive multiple of {libc.PAGE_SIZE:#x} bytes, not {size:#x}")
        flags = (libc.MAP_SHARED if shared else libc.MAP_PRIVATE) | libc.MAP_ANONYMOUS | libc.MAP_NORESERVE
        self.size = size
        self.addr = libc.mmap(size, libc.PROT_READ | libc.PROT_WRITE, flags)

    def _check(self, offset: int, length: int) -> None:
        if self.addr is None:
            raise GuestMemoryError("host mapping already unmapped")
        if offset < 0 or length < 0 or offset + length > self.size:
            raise GuestMemoryError(f"range {offset:#x}+{length:#x} outside a mapping of {self.size:#x} bytes")

    def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        return ctypes.string_at(self.addr + offset, length)

    def write(self, offset: int, data: bytes) -> None:
        self._check(offset, len(data))
        ctypes.memmove(self.addr + offset, bytes(data), len(data))

    def discard(self, offset: int, length: int) -> None:
        """madvise(MADV_DONTNEED): the pages read back as zero and the host frees them."""
        self._check(offset, length)
        libc.madvise(self.addr + offset, length, libc.MADV_DONTNEED)

    def close(self) -> None:
        if self.addr is not None:
            addr, self.addr = self.addr, None
            libc.munmap(addr, self.size)

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class PageAllocator:
    """Hands out zeroed, page-aligned guest physical pages from [start, end)."""

    def __init__(self, vm, start: int, end: int, page_size: int = 0x1000):
        self.vm, self.next, self.end, self.page_size = vm, start, end, page_size

    def alloc(self, count: int = 1, align: int = 0x1000) -> int:
        gpa = (self.next + align - 1) & ~(align - 1)
        size = count * self.page_size
        if gpa + size > self.end:
            raise GuestMemoryError(
                f"page allocator exhausted: {count} page(s) wanted at {gpa:#x}, region ends at {self.end:#x}")
        self.next = gpa + size
        self.vm.write(gpa, bytes(size))
        return gpa
