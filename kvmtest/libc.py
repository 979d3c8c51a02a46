"""The few libc calls Python's standard library does not expose the way kvmtest needs.

ioctl goes through ctypes rather than fcntl.ioctl: from CPython 3.14 fcntl.ioctl retries
EINTR by itself, which would make a KVM_RUN interrupted by a signal never return.
"""

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)

_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_libc.ioctl.restype = ctypes.c_int
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.mmap.restype = ctypes.c_void_p
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.munmap.restype = ctypes.c_int
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.madvise.restype = ctypes.c_int
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.mprotect.restype = ctypes.c_int

_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
_libc.fallocate.restype = ctypes.c_int
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_libc.mincore.restype = ctypes.c_int
_libc.syscall.restype = ctypes.c_long
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.prctl.restype = ctypes.c_int

PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
MAP_SHARED, MAP_PRIVATE, MAP_ANONYMOUS, MAP_NORESERVE = 0x01, 0x02, 0x20, 0x4000
MADV_DONTNEED = 4
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
MAP_FAILED = ctypes.c_void_p(-1).value
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


get_errno = ctypes.get_errno

# ioctl(2) once more, without argtypes, for KVM_RUN alone (kvmtest.ioctl.kvm_run_entry): its
# arguments never vary (a vCPU fd, the request KVM_RUN = 0xae80, NULL), all three pass exactly
# as C ints and a NULL pointer, and the argtypes conversion would cost ~0.2 us on every exit.
kvm_run_function = _libc._FuncPtr(("ioctl", _libc))
kvm_run_function.restype = ctypes.c_int


def raw_ioctl(fd: int, request: int, arg) -> tuple[int, int]:
    """One ioctl system call. Returns (result, errno); errno is 0 on success. (The errno is read
    only when the call returns -1, which the system call sets it for: no reset beforehand.)"""
    ret = _libc.ioctl(fd, request, arg)
    return (ret, ctypes.get_errno()) if ret == -1 else (ret, 0)


def mmap(length: int, prot: int, flags: int, fd: int = -1, offset: int = 0) -> int:
    """mmap(2) of `length` bytes with `prot` and `flags` (of `fd` at `offset`, or anonymous with fd
    -1); the address. OSError naming the length and fd when it fails."""
    addr = _libc.mmap(None, length, prot, flags, fd, offset)
    if addr in (None, MAP_FAILED):
        err = ctypes.get_errno()
        raise OSError(err, f"mmap of {length:#x} bytes (fd {fd}): {os.strerror(err)}")
    return addr


def munmap(addr: int, length: int) -> None:
    """munmap(2) of [`addr`, `addr` + `length`); OSError when it fails."""
    if _libc.munmap(addr, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"munmap({addr:#x}, {length:#x}): {os.strerror(err)}")


def madvise(addr: int, length: int, advice: int) -> None:
    """madvise(2) `advice` (e.g. MADV_DONTNEED) over [`addr`, `addr` + `length`); OSError when it fails."""
    if _libc.madvise(addr, length, advice) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"madvise({addr:#x}, {length:#x}, {advice}): {os.strerror(err)}")


def mprotect(addr: int, length: int, prot: int) -> int:
    """mprotect(2); returns the errno (0 on success)."""
    ctypes.set_errno(0)
    return ctypes.get_errno() if _libc.mprotect(addr, length, prot) != 0 else 0


def fallocate(fd: int, mode: int, offset: int, length: int) -> int:
    """fallocate(2); returns the errno (0 on success), for tests of files like guest_memfd."""
    ctypes.set_errno(0)
    return ctypes.get_errno() if _libc.fallocate(fd, mode, offset, length) != 0 else 0


def syscall(number: int, *args: int) -> int:
    """syscall(2) `number` with integer arguments (as C longs), for system calls glibc has no wrapper
    for (userfaultfd); its result, -1 with get_errno() set on failure."""
    ctypes.set_errno(0)
    return _libc.syscall(ctypes.c_long(number), *(ctypes.c_long(a) for a in args))


def mincore(addr: int, length: int) -> list[bool]:
    """mincore(2): for each page of [`addr`, `addr` + `length`), whether it is resident in memory
    (for a file mapping: in the page cache). OSError when it fails."""
    pages = (length + PAGE_SIZE - 1) // PAGE_SIZE
    vec = (ctypes.c_ubyte * pages)()
    if _libc.mincore(addr, length, vec) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mincore of {length:#x} bytes at {addr:#x}: {os.strerror(err)}")
    return [bool(v & 1) for v in vec]


def die_with_parent(signum: int) -> None:
    """prctl(PR_SET_PDEATHSIG, `signum`): this process gets `signum` when the thread that started it
    exits; OSError when the call fails."""
    if _libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG, {signum}): {os.strerror(err)}")
