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
from .mapped import GuardedView, MappingGuard

PAGE_SIZE = 4096


class DirtyRing:
    """The ring of one vCPU: `harvest()` returns the (slot, page offset) pairs pushed since the
    last harvest, in ring order, and marks them collected. Unmapped when its vCPU closes;
    using it after that raises ClosedError."""

    def __init__(self, vcpu, size_bytes: int):
        if size_bytes <= 0 or size_bytes % ctypes.sizeof(S.kvm_dirty_gfn):
            raise KvmtestError(f"dirty ring size {size_bytes} is not a whole, positive number of kvm_dirty_gfn entries")
        self.vcpu = vcpu
        self.size_bytes = size_bytes
        self.count = size_bytes // ctypes.sizeof(S.kvm_dirty_gfn)
        self._addr: int | None = libc.mmap(size_bytes, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_SHARED,
                                           vcpu.fd, C.KVM_DIRTY_LOG_PAGE_OFFSET * PAGE_SIZE)
        self._entries = (S.kvm_dirty_gfn * self.count).from_address(self._addr)
        self._guard = MappingGuard(f"{vcpu.name}'s dirty ring")
        self.fetch_index = 0  # free-running, like KVM's own indices

    @property
    def entries(self) -> GuardedView:
        """The ring's kvm_dirty_gfn array, as a view that refuses use after the unmap."""
        with self._guard.lock:
            self._guard.check(f"{self.vcpu.name} dirty ring entries")
        return GuardedView(self._entries, self._guard, f"{self.vcpu.name} dirty ring")

    def harvest(self) -> list[tuple[int, int]]:
        """Collect dirty entries from the fetch index until one is not DIRTY.

        At most one lap: KVM does not reuse an entry before KVM_RESET_DIRTY_RINGS, so a ring
        still DIRTY after a whole lap means the ring is not what kvmtest thinks it is.
        """
        got = []
        with self._guard.lock:
            self._guard.check(f"harvesting {self.vcpu.name}'s dirty ring")
            for _ in range(self.count):
                entry = self._entries[self.fetch_index % self.count]
                if not entry.flags & C.KVM_DIRTY_GFN_F_DIRTY:
                    break
                got.append((entry.slot, entry.offset))
                entry.flags = C.KVM_DIRTY_GFN_F_RESET
                self.fetch_index += 1
        return got

    def flags(self) -> list[int]:
        """Every entry's flags, for failure reports."""
        with self._guard.lock:
            self._guard.check(f"reading {self.vcpu.name}'s dirty ring flags")
            return [e.flags for e in self._entries]

    def close(self) -> None:
        """Unmap the ring, once no harvest is reading it."""
        if self._addr is None:
            return

        def release():
            # _entries stays: a ctypes array over the address owns nothing, and nothing reads
            # it once the guard is closed.
            addr, self._addr = self._addr, None
            if addr is not None:
                libc.munmap(addr, self.size_bytes)

        self._guard.unmap(release)
