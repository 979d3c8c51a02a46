"""Host mappings that back guest memory (anonymous, or of a file), and a page allocator over guest memory."""

import ctypes
import numbers
import os

from . import libc
from .errors import ClosedError, GuestMemoryError
from .mapped import MappingGuard


class HostMapping:
    """A mapping of `size` bytes the guest sees through a memslot: anonymous (private, or
    `shared`), or with `fd` the first `size` bytes of that file, shared (the page cache is the
    guest's memory; mmap(2) MAP_SHARED). The caller keeps `fd` open as long as it needs it.

    Reads, writes and `addr` after close() raise ClosedError; close() waits for a read or
    write in progress on another thread, so none touches the memory after the munmap.
    """

    def __init__(self, size: int, *, shared: bool = False, name: str | None = None, fd: int | None = None):
        integral = type(size) is int or (not isinstance(size, bool) and isinstance(size, numbers.Integral))
        if not integral or size <= 0 or size % libc.PAGE_SIZE:
            raise GuestMemoryError(f"a host mapping needs a positive multiple of {libc.PAGE_SIZE:#x} bytes, "
                                   f"not {size!r}")
        if fd is not None and (isinstance(fd, bool) or not isinstance(fd, numbers.Integral) or fd < 0):
            raise GuestMemoryError(f"a file-backed host mapping needs an open file descriptor, not {fd!r}")
        if fd is None:
            flags = (libc.MAP_SHARED if shared else libc.MAP_PRIVATE) | libc.MAP_ANONYMOUS | libc.MAP_NORESERVE
        else:
            flags = libc.MAP_SHARED
        self.size: int = size
        self._guard: MappingGuard = MappingGuard(name or f"host mapping of {size:#x} bytes")
        self._addr: int | None = libc.mmap(size, libc.PROT_READ | libc.PROT_WRITE, flags, -1 if fd is None else fd)

    @property
    def addr(self) -> int:
        """The host virtual address (for KVM_SET_USER_MEMORY_REGION's userspace_addr)."""
        if self._addr is None:
            raise ClosedError(f"{self._guard.name} is unmapped")
        return self._addr

    @property
    def closed(self) -> bool:
        """Whether close() has unmapped the memory."""
        return self._addr is None

    def _check(self, offset: int, length: int, what: str) -> int:
        """The mapping's address, once the range is checked. Call with the guard's lock held."""
        if not self._guard.open:  # the message only when it is raised: every guest read and write comes here
            self._guard.check(f"{what} {length:#x} bytes at offset {offset:#x}")
        if self._addr is None:  # unmapped by a close() that began before the guard was set up
            raise ClosedError(f"{what}: {self._guard.name} is unmapped")
        if offset < 0 or length < 0 or offset + length > self.size:
            raise GuestMemoryError(f"range {offset:#x}+{length:#x} outside a mapping of {self.size:#x} bytes")
        return self._addr

    def read(self, offset: int, length: int) -> bytes:
        """`length` bytes from `offset` (bytes into the mapping); GuestMemoryError outside it,
        ClosedError once closed."""
        with self._guard.lock:
            addr = self._check(offset, length, "reading")
            return ctypes.string_at(addr + offset, length)

    def write(self, offset: int, data: bytes) -> None:
        """Copy `data` to `offset` (bytes into the mapping); GuestMemoryError outside it,
        ClosedError once closed."""
        data = bytes(data)
        with self._guard.lock:
            addr = self._check(offset, len(data), "writing")
            ctypes.memmove(addr + offset, data, len(data))

    def discard(self, offset: int, length: int) -> None:
        """madvise(MADV_DONTNEED): the pages read back as zero and the host frees them."""
        with self._guard.lock:
            addr = self._check(offset, length, "discarding")
            libc.madvise(addr + offset, length, libc.MADV_DONTNEED)

    def resident(self) -> list[bool]:
        """For each page, whether it is in host memory now (mincore(2)); for a file mapping, whether
        the page cache holds it."""
        with self._guard.lock:
            addr = self._check(0, self.size, "checking residency of")
            return libc.mincore(addr, self.size)

    def close(self) -> None:
        """munmap the memory, once no read or write is in progress; closing twice does nothing."""
        if getattr(self, "_addr", None) is None:
            return

        def release():
            addr, self._addr = self._addr, None
            if addr is not None:
                libc.munmap(addr, self.size)

        self._guard.unmap(release)

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class ForeignMemory:
    """Host memory kvmtest did not map: the userspace_addr of a memslot made with a raw
    KVM_SET_USER_MEMORY_REGION. Read and written through /proc/self/mem, so memory that is not
    (or no longer) mapped raises GuestMemoryError instead of crashing the interpreter; kvmtest
    never unmaps it (close() only stops using it)."""

    def __init__(self, addr: int, size: int, *, name: str | None = None):
        self.addr, self.size = addr, size
        self.name = name or f"host memory at {addr:#x}"
        self.closed = False

    def _access(self, offset: int, length: int, what: str, fn):
        if self.closed:
            raise ClosedError(f"{self.name} is no longer used (its VM is closed)")
        if offset < 0 or length < 0 or offset + length > self.size:
            raise GuestMemoryError(f"range {offset:#x}+{length:#x} outside {self.name} ({self.size:#x} bytes)")
        fd = os.open("/proc/self/mem", os.O_RDWR)
        try:
            return fn(fd, self.addr + offset)
        except OSError as e:
            raise GuestMemoryError(f"{what} {length:#x} bytes at host address {self.addr + offset:#x} ({self.name}): "
                                   f"{e.strerror} (is it mapped?)") from None
        finally:
            os.close(fd)

    def read(self, offset: int, length: int) -> bytes:
        """`length` bytes at `offset` into the memory, read through /proc/self/mem; GuestMemoryError
        outside it or where the host memory is not mapped, ClosedError once its VM is closed."""
        data = self._access(offset, length, "reading", lambda fd, at: os.pread(fd, length, at))
        if len(data) != length:
            raise GuestMemoryError(f"reading {length:#x} bytes at host address {self.addr + offset:#x} "
                                   f"({self.name}): only {len(data):#x} are mapped")
        return data

    def write(self, offset: int, data: bytes) -> None:
        """Write `data` at `offset` into the memory through /proc/self/mem; GuestMemoryError outside it
        or where the host memory is not mapped, ClosedError once its VM is closed."""
        data = bytes(data)
        done = self._access(offset, len(data), "writing", lambda fd, at: os.pwrite(fd, data, at))
        if done != len(data):
            raise GuestMemoryError(f"writing {len(data):#x} bytes at host address {self.addr + offset:#x} "
                                   f"({self.name}): only {done:#x} are mapped")

    def discard(self, offset: int, length: int) -> None:
        """Always GuestMemoryError: only whoever mapped this memory can madvise it away."""
        raise GuestMemoryError(f"{self.name} is not kvmtest's mapping; discard it where it was mapped")

    def close(self) -> None:
        """Stop using the memory (it stays mapped: kvmtest did not map it)."""
        self.closed = True


class PageAllocator:
    """Hands out zeroed, page-aligned guest physical pages from [start, end)."""

    def __init__(self, vm, start: int, end: int, page_size: int = 0x1000):
        self.vm, self.next, self.end, self.page_size = vm, start, end, page_size

    def alloc(self, count: int = 1, align: int = 0x1000) -> int:
        """The guest physical address of `count` pages (of page_size bytes) aligned to `align`,
        zeroed in guest memory; GuestMemoryError when they do not fit before the region's end."""
        gpa = (self.next + align - 1) & ~(align - 1)
        size = count * self.page_size
        if gpa + size > self.end:
            raise GuestMemoryError(
                f"page allocator exhausted: {count} page(s) wanted at {gpa:#x}, region ends at {self.end:#x}")
        self.next = gpa + size
        self.vm.write(gpa, bytes(size))
        return gpa
