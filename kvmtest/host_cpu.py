"""The host CPU's own CPUID and RDTSC, for checks that must not take KVM's word for it.

KVM_GET_SUPPORTED_CPUID is "the host cpuid as returned by the cpuid instruction, with unknown
or unsupported features masked out" (api.rst KVM_GET_SUPPORTED_CPUID). To hold KVM to that,
kvmtest runs the CPUID instruction itself: a few bytes of x86-64 code in an executable
anonymous mapping, called through ctypes. RDTSC the same way gives the host's time-stamp counter,
against which KVM_GET_CLOCK's host_tsc and the vCPU's TSC offset are checked. The kernel does
not take part (CPUID does not trap to it unless CPUID faulting is on, which kvmtest checks for
nowhere because no distribution enables it by default).
"""

import ctypes
import platform

from . import libc
from .errors import KvmtestError

# void cpuid(u32 leaf [edi], u32 subleaf [esi], u32 out[4] [rdx]) in the SysV x86-64 ABI.
_CPUID_CODE = bytes([
    0x53,                    # push rbx            (callee-saved; CPUID writes it)
    0x49, 0x89, 0xD0,        # mov r8, rdx
    0x89, 0xF8,              # mov eax, edi
    0x89, 0xF1,              # mov ecx, esi
    0x0F, 0xA2,              # cpuid
    0x41, 0x89, 0x00,        # mov [r8], eax
    0x41, 0x89, 0x58, 0x04,  # mov [r8 + 4], ebx
    0x41, 0x89, 0x48, 0x08,  # mov [r8 + 8], ecx
    0x41, 0x89, 0x50, 0x0C,  # mov [r8 + 12], edx
    0x5B,                    # pop rbx
    0xC3,                    # ret
])
# u64 rdtsc(void)
_RDTSC_CODE = bytes([
    0x0F, 0x31,              # rdtsc
    0x48, 0xC1, 0xE2, 0x20,  # shl rdx, 32
    0x48, 0x09, 0xD0,        # or rax, rdx
    0xC3,                    # ret
])
_RDTSC_AT = 64               # offset of the RDTSC stub in the page

_function = None
_rdtsc = None


def _load():
    global _function, _rdtsc
    if _function is None:
        if platform.machine() not in ("x86_64", "AMD64"):
            raise KvmtestError(f"host CPUID needs an x86-64 host, this one is {platform.machine()}")
        try:
            addr = libc.mmap(libc.PAGE_SIZE, libc.PROT_READ | libc.PROT_WRITE,
                             libc.MAP_PRIVATE | libc.MAP_ANONYMOUS)
        except OSError as e:
            raise KvmtestError(f"host CPUID: cannot map a page for the CPUID stub: {e}") from None
        ctypes.memmove(addr, _CPUID_CODE, len(_CPUID_CODE))
        ctypes.memmove(addr + _RDTSC_AT, _RDTSC_CODE, len(_RDTSC_CODE))
        if libc.mprotect(addr, libc.PAGE_SIZE, libc.PROT_READ | libc.PROT_EXEC) != 0:
            libc.munmap(addr, libc.PAGE_SIZE)
            raise KvmtestError("host CPUID: the kernel refused to make the CPUID stub executable "
                               "(mprotect PROT_EXEC; a W^X policy such as SELinux execmem?)")
        proto = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32 * 4))
        _function = proto(addr)
        _rdtsc = ctypes.CFUNCTYPE(ctypes.c_uint64)(addr + _RDTSC_AT)
    return _function


def cpuid(leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
    """(EAX, EBX, ECX, EDX) of the CPUID instruction run natively on this host (SDM Vol. 2A CPUID)."""
    out = (ctypes.c_uint32 * 4)()
    _load()(leaf, subleaf, ctypes.byref(out))
    return tuple(out)


def rdtsc() -> int:
    """The host's time-stamp counter, read with RDTSC natively (SDM Vol. 2B RDTSC)."""
    _load()
    if _rdtsc is None:  # _load() maps both stubs or raises
        raise KvmtestError("host RDTSC: the stub was not mapped")
    return _rdtsc()
