"""userfaultfd(2): user space supplies the contents of anonymous memory on first touch, for tests
of guest memory that is demand-paged while vCPUs run (the kernel's
Documentation/admin-guide/mm/userfaultfd.rst; structures and ioctls of <linux/userfaultfd.h>,
checked against the system header by tests/test_userfaultfd_abi.py).

    with UserfaultFd() as uffd:
        uffd.register_missing(addr, length)
        fault = uffd.read_fault(timeout=5)     # a thread touched a missing page and now waits
        uffd.copy(fault.page, data)            # fill the page and wake the thread

MINOR mode (UserfaultFd(UFFD_FEATURE_MINOR_SHMEM), register_minor) is for shared file memory whose
page cache is filled through another mapping; a fault there is resolved with cont(fault.page).

The fd is opened non-blocking; read_fault waits with poll() for at most `timeout` seconds, so a
fault that never comes is an error naming the wait, not a hang.
"""

import ctypes
import errno
import os
import select
from dataclasses import dataclass

from . import libc, validate
from .abi.ioctl_codes import IOWR
from .errors import BadArgumentError, ClosedError, KvmtestError

SYS_userfaultfd = 323          # x86-64 (arch/x86/entry/syscalls/syscall_64.tbl)
UFFD_API = 0xAA
UFFDIO = 0xAA
UFFDIO_REGISTER_MODE_MISSING = 1 << 0
UFFDIO_REGISTER_MODE_MINOR = 1 << 2
UFFD_FEATURE_MINOR_SHMEM = 1 << 10  # MINOR mode on shmem (memfd, MAP_SHARED anonymous) ranges
UFFD_EVENT_PAGEFAULT = 0x12
UFFD_PAGEFAULT_FLAG_WRITE = 1 << 0
UFFD_PAGEFAULT_FLAG_MINOR = 1 << 2
O_CLOEXEC, O_NONBLOCK = os.O_CLOEXEC, os.O_NONBLOCK


class uffdio_api(ctypes.Structure):
    """UFFDIO_API's argument: the API version in, the features and ioctls the fd offers out."""

    _fields_ = [("api", ctypes.c_uint64), ("features", ctypes.c_uint64), ("ioctls", ctypes.c_uint64)]


class uffdio_range(ctypes.Structure):
    """A range of the process's address space: start and length in bytes."""

    _fields_ = [("start", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class uffdio_register(ctypes.Structure):
    """UFFDIO_REGISTER's argument: the range and mode in, the ioctls the range allows out."""

    _fields_ = [("range", uffdio_range), ("mode", ctypes.c_uint64), ("ioctls", ctypes.c_uint64)]


class uffdio_copy(ctypes.Structure):
    """UFFDIO_COPY's argument: copy `len` bytes from `src` to `dst`; `copy` returns the bytes copied."""

    _fields_ = [("dst", ctypes.c_uint64), ("src", ctypes.c_uint64), ("len", ctypes.c_uint64),
                ("mode", ctypes.c_uint64), ("copy", ctypes.c_int64)]


class uffdio_continue(ctypes.Structure):
    """UFFDIO_CONTINUE's argument: the range to map from the page cache; `mapped` returns the bytes mapped."""

    _fields_ = [("range", uffdio_range), ("mode", ctypes.c_uint64), ("mapped", ctypes.c_int64)]


class uffd_msg(ctypes.Structure):
    """The page-fault form of struct uffd_msg (the union's other members are the same size)."""
    _fields_ = [("event", ctypes.c_uint8), ("reserved1", ctypes.c_uint8), ("reserved2", ctypes.c_uint16),
                ("reserved3", ctypes.c_uint32), ("flags", ctypes.c_uint64), ("address", ctypes.c_uint64),
                ("ptid", ctypes.c_uint32), ("reserved4", ctypes.c_uint32)]


UFFDIO_API = IOWR(UFFDIO, 0x3F, uffdio_api)
UFFDIO_REGISTER = IOWR(UFFDIO, 0x00, uffdio_register)
UFFDIO_COPY = IOWR(UFFDIO, 0x03, uffdio_copy)
UFFDIO_CONTINUE = IOWR(UFFDIO, 0x07, uffdio_continue)


@dataclass(frozen=True)
class Fault:
    """One UFFD_EVENT_PAGEFAULT: the faulting `address`, its `page` (address rounded down), whether
    the access was a `write`, the faulting thread's id `ptid` (0 unless requested), and whether it
    is a `minor` fault (the page cache has the page; only ranges registered in MINOR mode)."""
    address: int
    write: bool
    ptid: int
    minor: bool = False

    @property
    def page(self) -> int:
        """The faulting address rounded down to its page."""
        return self.address & ~(libc.PAGE_SIZE - 1)


class UserfaultFd:
    """A userfaultfd, handshaken with UFFDIO_API; a context manager that closes it."""

    def __init__(self, features: int = 0):
        """`features`: UFFD_FEATURE_* bits to ask UFFDIO_API for (e.g. UFFD_FEATURE_MINOR_SHMEM); the
        handshake fails with OSError (EINVAL) when the kernel lacks one."""
        features = validate.uint(features, 64, "userfaultfd features")
        fd = libc.syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK)
        if fd < 0:
            err = libc.get_errno()
            raise KvmtestError(f"userfaultfd(O_CLOEXEC | O_NONBLOCK) failed: {errno.errorcode.get(err, err)} "
                               f"({os.strerror(err)}; unprivileged use needs vm.unprivileged_userfaultfd=1)")
        self.fd: int | None = fd
        api = uffdio_api(api=UFFD_API, features=features)
        try:
            self._ioctl(UFFDIO_API, api, "UFFDIO_API", f" features {features:#x}")
        except OSError:
            self.close()
            raise
        self.api_ioctls = api.ioctls
        self._source: ctypes.Array[ctypes.c_char] | None = None  # one page the kernel copies from in copy()

    def _ioctl(self, request, arg, name, what=""):
        if self.fd is None:
            raise ClosedError(f"{name} on a closed userfaultfd")
        ret, err = libc.raw_ioctl(self.fd, request, ctypes.byref(arg))
        if ret < 0:
            raise OSError(err, f"{name} on userfaultfd {self.fd}{what}: {errno.errorcode.get(err, err)} "
                               f"({os.strerror(err)})")

    def register_missing(self, addr: int, length: int) -> int:
        """UFFDIO_REGISTER [addr, addr + length) in MISSING mode: a first touch of a page there
        blocks the toucher and queues a fault for read_fault(). Returns the ioctls the range allows."""
        return self._register(addr, length, UFFDIO_REGISTER_MODE_MISSING)

    def register_minor(self, addr: int, length: int) -> int:
        """UFFDIO_REGISTER [addr, addr + length) of a shared file mapping in MINOR mode (needs
        UFFD_FEATURE_MINOR_SHMEM from the handshake): a touch of a page the page cache holds but this
        mapping does not map yet blocks the toucher and queues a minor fault; cont() maps it.
        Returns the ioctls the range allows."""
        return self._register(addr, length, UFFDIO_REGISTER_MODE_MINOR)

    def _register(self, addr: int, length: int, mode: int) -> int:
        addr = validate.uint(addr, 64, "userfaultfd range start")
        length = validate.uint(length, 64, "userfaultfd range length")
        if addr % libc.PAGE_SIZE or not length or length % libc.PAGE_SIZE:
            raise BadArgumentError(f"userfaultfd range {addr:#x}+{length:#x}: start and length must be "
                                   f"nonzero multiples of {libc.PAGE_SIZE:#x}")
        reg = uffdio_register(range=uffdio_range(addr, length), mode=mode)
        self._ioctl(UFFDIO_REGISTER, reg, "UFFDIO_REGISTER", f" range {addr:#x}+{length:#x} mode {mode:#x}")
        return reg.ioctls

    def read_fault(self, timeout: float) -> Fault:
        """The next page fault, waiting at most `timeout` seconds (KvmtestError naming the wait
        if none comes; any other event is an error too)."""
        timeout = validate.timeout(timeout, "userfaultfd read_fault timeout")
        if self.fd is None:
            raise ClosedError("read_fault on a closed userfaultfd")
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            raise KvmtestError(f"no userfaultfd event within {timeout} s")
        raw = os.read(self.fd, ctypes.sizeof(uffd_msg))
        msg = uffd_msg.from_buffer_copy(raw)
        if msg.event != UFFD_EVENT_PAGEFAULT:
            raise KvmtestError(f"userfaultfd event {msg.event:#x}, expected UFFD_EVENT_PAGEFAULT "
                               f"({UFFD_EVENT_PAGEFAULT:#x})")
        return Fault(msg.address, bool(msg.flags & UFFD_PAGEFAULT_FLAG_WRITE), msg.ptid,
                     bool(msg.flags & UFFD_PAGEFAULT_FLAG_MINOR))

    def cont(self, page: int) -> None:
        """UFFDIO_CONTINUE one page: map what the page cache holds at `page` into the registered
        range and wake the threads waiting on it."""
        page = validate.uint(page, 64, "userfaultfd continue address")
        if page % libc.PAGE_SIZE:
            raise BadArgumentError(f"userfaultfd continue at {page:#x}: not page aligned")
        arg = uffdio_continue(range=uffdio_range(page, libc.PAGE_SIZE))
        self._ioctl(UFFDIO_CONTINUE, arg, "UFFDIO_CONTINUE", f" at {page:#x}")
        if arg.mapped != libc.PAGE_SIZE:
            raise KvmtestError(f"UFFDIO_CONTINUE at {page:#x} mapped {arg.mapped} bytes, expected {libc.PAGE_SIZE}")

    def copy(self, page: int, data: bytes) -> None:
        """UFFDIO_COPY one page of `data` (zero-padded to a page) to `page` and wake the threads
        waiting on it."""
        data = validate.data(data, "userfaultfd page contents")
        if len(data) > libc.PAGE_SIZE or page % libc.PAGE_SIZE:
            raise BadArgumentError(f"userfaultfd copy to {page:#x} of {len(data)} bytes: one aligned page at most")
        if self._source is None:
            self._source = ctypes.create_string_buffer(libc.PAGE_SIZE)
        ctypes.memset(self._source, 0, libc.PAGE_SIZE)
        ctypes.memmove(self._source, data, len(data))
        arg = uffdio_copy(dst=page, src=ctypes.addressof(self._source), len=libc.PAGE_SIZE)
        self._ioctl(UFFDIO_COPY, arg, "UFFDIO_COPY", f" to {page:#x}")
        if arg.copy != libc.PAGE_SIZE:
            raise KvmtestError(f"UFFDIO_COPY to {page:#x} copied {arg.copy} bytes, expected {libc.PAGE_SIZE}")

    def close(self) -> None:
        """Close the fd; threads still waiting on a fault are woken (the page is then an ordinary one)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
