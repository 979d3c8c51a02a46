"""The calling thread's restartable-sequences area (rseq(2)) as glibc registers it, read for its
cpu_id: the kernel keeps that field equal to the CPU the thread runs on whenever the thread is
in user space (include/uapi/linux/rseq.h, struct rseq: "cpu_id ... Always updated").

glibc 2.35 and later register one struct rseq per thread at the thread pointer plus
__rseq_offset (with __rseq_size nonzero); on x86-64 the thread pointer is the FS base.
"""

import ctypes

from . import libc
from .errors import KvmtestError

SYS_arch_prctl = 158           # x86-64
ARCH_GET_FS = 0x1003
RSEQ_CPU_ID_OFFSET = 4         # struct rseq: __u32 cpu_id_start; __u32 cpu_id; ...
RSEQ_CPU_ID_UNINITIALIZED = 0xFFFFFFFF

_libc = ctypes.CDLL(None, use_errno=True)
_libc.sched_getcpu.restype = ctypes.c_int


def registered() -> bool:
    """Whether glibc registered an rseq area for its threads (__rseq_size > 0)."""
    try:
        return ctypes.c_uint.in_dll(_libc, "__rseq_size").value > 0
    except ValueError:  # a C library without the symbols
        return False


def _area() -> int:
    fs_base = ctypes.c_uint64()
    if libc.syscall(SYS_arch_prctl, ARCH_GET_FS, ctypes.addressof(fs_base)) != 0:
        raise KvmtestError(f"arch_prctl(ARCH_GET_FS) failed: errno {libc.get_errno()}")
    return fs_base.value + ctypes.c_long.in_dll(_libc, "__rseq_offset").value


def cpu_id() -> int:
    """This thread's rseq cpu_id (RSEQ_CPU_ID_UNINITIALIZED if never registered)."""
    if not registered():
        raise KvmtestError("glibc registered no rseq area (__rseq_size is 0: glibc older than 2.35, or "
                           "GLIBC_TUNABLES=glibc.pthread.rseq=0)")
    return ctypes.c_uint32.from_address(_area() + RSEQ_CPU_ID_OFFSET).value


def sched_getcpu() -> int:
    """sched_getcpu(3): the CPU this thread runs on, as the scheduler reports it."""
    cpu = _libc.sched_getcpu()
    if cpu < 0:
        raise KvmtestError(f"sched_getcpu failed: errno {ctypes.get_errno()}")
    return cpu
