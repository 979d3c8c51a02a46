"""A vCPU's dirty ring (api.rst 8.29 KVM_CAP_DIRTY_LOG_RING), mapped from the vCPU fd.

KVM pushes one kvm_dirty_gfn per newly dirtied page; user space collects entries in order
from where it stopped, marks each collected one RESET, and then calls KVM_RESET_DIRTY_RINGS
on the VM so that KVM write-protects those pages again and can reuse the entries.
"""

import ctypes

from . import libc
from .abi import constants as C
from .abi import structs as S
from .errors import KvmtestError

PAGE_SIZE = 4096


class DirtyRing:
    """The ring of one vCPU: `harvest()` returns the (slot, page offset) pairs pushed since the
    last harvest, in ring order, and marks them collected."""

    def __init__(self, vcpu, size_bytes: int):
        if size_bytes % ctypes.sizeof(S.kvm_dirty_gfn):
            raise KvmtestError(f"dirty ring size {size_bytes} is not a whole number of kvm_dirty_gfn entries")
        self.vcpu = vcpu
        self.size_bytes = size_bytes
        self.count = size_bytes // ctypes.sizeof(S.kvm_dirty_gfn)
        self._addr = libc.mmap(size_bytes, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_SHARED, vcpu.fd,
                               C.KVM_DIRTY_LOG_PAGE_OFFSET * PAGE_SIZE)
        self.entries = (S.kvm_dirty_gfn * self.count).from_address(self._addr)
        self.fetch_index = 0  # free-running, like KVM's own indices

    def harvest(self) -> list[tuple[int, int]]:
        """Collect dirty entries from the fetch index until one is not DIRTY."""
        if self.entries is None:
            raise KvmtestError(f"{self.vcpu.name}: the dirty ring was unmapped when its vCPU closed")
        got = []
        while True:
            entry = self.entries[self.fetch_index % self.count]
            if not entry.flags & C.KVM_DIRTY_GFN_F_DIRTY:
                break
            got.append((entry.slot, entry.offset))
            entry.flags = C.KVM_DIRTY_GFN_F_RESET
            self.fetch_index += 1
        return got

    def flags(self) -> list[int]:
        """Every entry's flags, for failure reports."""
        return [e.flags for e in self.entries]

    def close(self) -> None:
        if self._addr is not None:
            addr, self._addr, self.entries = self._addr, None, None
            libc.munmap(addr, self.size_bytes)
