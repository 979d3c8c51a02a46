"""A VM's memslots and guest physical memory (api.rst 4.35 KVM_SET_USER_MEMORY_REGION, 4.140
KVM_SET_USER_MEMORY_REGION2): the Vm methods that add, move, flag and delete slots, and read and
write guest memory through the host mappings behind them.

`Vm.memslots` is what KVM holds, however it was set: add_memory and its siblings, or the raw
set_user_memory_region calls, which keep it up to date (kvmtest.vm_state copies it).
"""

import errno
import struct
from dataclasses import dataclass

from . import validate
from .abi import constants as C
from .abi import structs as S
from .carried import carried
from .errors import BadArgumentError, ClosedError, GuestMemoryError
from .fdobject import FdObject
from .libc import PAGE_SIZE
from .memory import ForeignMemory, HostMapping


@dataclass
class Memslot:
    """One memslot as KVM holds it: slot number, guest physical base `gpa`, `size` in bytes,
    KVM_MEM_* flags, and the host memory behind it (`mapping` from `offset` on)."""

    slot: int
    gpa: int
    size: int
    flags: int
    mapping: "HostMapping | ForeignMemory"
    offset: int = 0  # where in `mapping` the slot's memory starts

    @property
    def hva(self) -> int:
        """The slot's userspace_addr."""
        return self.mapping.addr + self.offset

    @property
    def end(self) -> int:
        """The first guest physical address past the slot."""
        return self.gpa + self.size

    @property
    def npages(self) -> int:
        """The slot's size in 4 KiB pages (one dirty-log bit each)."""
        return self.size // PAGE_SIZE

    def __contains__(self, gpa: int) -> bool:
        return self.gpa <= gpa < self.end


def memslot_args(slot, flags, gpa, size, hva=None) -> str:
    """The key arguments of a memslot ioctl for messages and the trace ("slot=1 gpa=0x0 size=...")."""
    text = f"slot={slot} gpa={gpa:#x} size={size:#x}"
    if flags:
        text += f" flags={flags:#x}"
    if hva is not None:
        text += f" hva={hva:#x}"
    return text


def _region_fields(vm, slot, flags, gpa, size, hva) -> tuple[int, int, int, int, int]:
    """kvm_userspace_memory_region's fields checked against their widths (api.rst 4.35): slot and
    flags are __u32, the addresses and size __u64; ctypes would wrap anything wider unseen."""
    if (type(slot) is int and type(flags) is int and type(gpa) is int and type(size) is int and type(hva) is int
            and 0 <= slot < 1 << 32 and 0 <= flags < 1 << 32 and 0 <= gpa < 1 << 64 and 0 <= size < 1 << 64
            and 0 <= hva < 1 << 64):
        return slot, flags, gpa, size, hva  # the usual case: plain ints that fit, no message to build
    what = f"{vm.name} KVM_SET_USER_MEMORY_REGION"
    return (validate.uint(slot, 32, f"{what} slot"), validate.uint(flags, 32, f"{what} flags"),
            validate.uint(gpa, 64, f"{what} guest_phys_addr"), validate.uint(size, 64, f"{what} memory_size"),
            validate.uint(hva, 64, f"{what} userspace_addr"))


def _addr(value) -> str:
    return f"{value:#x}" if isinstance(value, int) else repr(value)


def _memslot_hint(vm, slot, gpa, size, hva):
    """Explain the usual reasons KVM_SET_USER_MEMORY_REGION fails (api.rst 4.35)."""

    def hint(err):
        if err == errno.EINVAL:
            bad = [what for what, value in (("gpa", gpa), ("size", size), ("host address", hva or 0))
                   if value % PAGE_SIZE]
            if bad:
                return f"{' and '.join(bad)} not page-aligned"
        if err == errno.EEXIST:
            for other in vm.memslots.values():
                if other.slot != slot and gpa < other.end and other.gpa < gpa + size:
                    return f"overlaps slot {other.slot} at {other.gpa:#x}-{other.end:#x}"
        return ""

    return hint


class VmMemory(FdObject):
    """Vm's memslot and guest-memory methods (mixed into kvmtest.vm.Vm)."""

    memslots: dict[int, Memslot]
    uncarried: list[str]
    _extra_mappings: list[HostMapping]
    # id(HostMapping) -> [mapping, number of memslots backed by it]: finding the mapping behind a new
    # slot's host address looks at each mapping once, not at every slot (32,764 slots sharing one
    # mapping made that quadratic: 40 s of Python for the slot-limit check)
    _slot_mappings: dict[int, list]

    def _hold(self, mapping) -> None:
        if isinstance(mapping, HostMapping):
            held = self._slot_mappings.setdefault(id(mapping), [mapping, 0])
            held[1] += 1

    def _release_slot_mapping(self, mapping) -> None:
        held = self._slot_mappings.get(id(mapping)) if isinstance(mapping, HostMapping) else None
        if held is not None:
            held[1] -= 1
            if not held[1]:
                del self._slot_mappings[id(mapping)]

    @carried
    def set_user_memory_region(self, slot: int, flags: int, gpa: int, size: int, hva: int) -> None:
        """KVM_SET_USER_MEMORY_REGION (api.rst 4.35), raw: `slot` (__u32), KVM_MEM_* `flags`, guest
        physical base, size in bytes (0 deletes the slot) and host address. KvmError with a hint
        (misaligned, overlapping) on failure; `memslots` follows what KVM holds."""
        slot, flags, gpa, size, hva = self._set_region(slot, flags, gpa, size, hva)
        self._note_region(slot, flags, gpa, size, hva)

    def _set_region(self, slot, flags, gpa, size, hva) -> tuple[int, int, int, int, int]:
        slot, flags, gpa, size, hva = _region_fields(self, slot, flags, gpa, size, hva)
        region = S.kvm_userspace_memory_region(slot, flags, gpa, size, hva)
        self.ioctl("KVM_SET_USER_MEMORY_REGION", region, args=memslot_args(slot, flags, gpa, size),
                   hint=_memslot_hint(self, slot, gpa, size, hva))
        return slot, flags, gpa, size, hva

    @carried
    def try_set_user_memory_region(self, slot: int, flags: int, gpa: int, size: int, hva: int) -> int:
        """set_user_memory_region's twin: the errno (0 on success) instead of raising."""
        slot, flags, gpa, size, hva = _region_fields(self, slot, flags, gpa, size, hva)
        region = S.kvm_userspace_memory_region(slot, flags, gpa, size, hva)
        err = self.try_ioctl("KVM_SET_USER_MEMORY_REGION", region, args=memslot_args(slot, flags, gpa, size))
        if not err:
            self._note_region(slot, flags, gpa, size, hva)
        return err

    @carried
    def try_set_user_memory_region2(self, slot, flags, gpa, size, hva, guest_memfd=0, guest_memfd_offset=0) -> int:
        """KVM_SET_USER_MEMORY_REGION2 (api.rst 4.140), for negative tests: the region fields as
        set_user_memory_region, plus a guest_memfd fd (__u32) and the offset in it; the errno."""
        slot, flags, gpa, size, hva = _region_fields(self, slot, flags, gpa, size, hva)
        guest_memfd = validate.uint(guest_memfd, 32, f"{self.name} KVM_SET_USER_MEMORY_REGION2 guest_memfd")
        guest_memfd_offset = validate.uint(guest_memfd_offset, 64,
                                           f"{self.name} KVM_SET_USER_MEMORY_REGION2 guest_memfd_offset")
        region = S.kvm_userspace_memory_region2(slot=slot, flags=flags, guest_phys_addr=gpa, memory_size=size,
                                                userspace_addr=hva, guest_memfd=guest_memfd,
                                                guest_memfd_offset=guest_memfd_offset)
        err = self.try_ioctl("KVM_SET_USER_MEMORY_REGION2", region, args=memslot_args(slot, flags, gpa, size))
        if not err and flags & C.KVM_MEM_GUEST_MEMFD and size:
            # Private memory is not readable through userspace_addr: a copy would lack it.
            self.uncarried.append(f"KVM_SET_USER_MEMORY_REGION2 {memslot_args(slot, flags, gpa, size)} "
                                  "(KVM_MEM_GUEST_MEMFD: guest_memfd contents are not readable by user space)")
        elif not err:
            self._note_region(slot, flags, gpa, size, hva)
        return err

    def _note_region(self, slot, flags, gpa, size, hva) -> None:
        """Make `memslots` what KVM holds after a raw region call succeeded: size 0 deletes the slot,
        an existing slot can only move or change flags (api.rst 4.35), a new one is backed by the
        host memory at `hva`, which may be one of this VM's mappings (an alias of another slot)."""
        old = self.memslots.get(slot)
        if not size:
            if old is not None:
                del self.memslots[slot]
                self._release_slot_mapping(old.mapping)
                if isinstance(old.mapping, HostMapping) and not self._mapping_in_use(old.mapping):
                    self._extra_mappings.append(old.mapping)  # the caller may add it back; unmapped at close()
            return
        if old is not None:
            old.gpa, old.flags = gpa, flags
            return
        self.memslots[slot] = new = Memslot(slot, gpa, size, flags, *self._backing_of(hva, size))
        self._hold(new.mapping)

    def _backing_of(self, hva: int, size: int) -> tuple:
        """(mapping, offset) for host memory [hva, hva+size): one of this VM's mappings if it lies
        inside one, else a ForeignMemory that reads it without owning it."""
        for mapping in [held[0] for held in self._slot_mappings.values()] + self._extra_mappings:
            if not mapping.closed and mapping.addr <= hva and hva + size <= mapping.addr + mapping.size:
                return mapping, hva - mapping.addr
        return ForeignMemory(hva, size, name=f"{self.name} host memory at {hva:#x}"), 0

    def _mapping_in_use(self, mapping) -> bool:
        """Whether a memslot of this VM, or its list of mappings kept for re-use, holds `mapping`."""
        if isinstance(mapping, HostMapping):
            return id(mapping) in self._slot_mappings or mapping in self._extra_mappings
        return any(m.mapping is mapping for m in self.memslots.values()) or mapping in self._extra_mappings

    def free_slot(self) -> int:
        """The lowest slot number no memslot of this VM uses."""
        slot = 0
        while slot in self.memslots:
            slot += 1
        return slot

    @carried
    def add_memory(self, gpa: int, size: int, *, slot: int | None = None, flags: int = 0,
                   mapping: HostMapping | None = None, offset: int = 0) -> Memslot:
        """Back [gpa, gpa+size) with a fresh anonymous mapping in a new memslot (size a positive
        multiple of 4 KiB), or with `mapping` from `offset` on (several slots may share one
        mapping: they alias each other). KVM_SET_USER_MEMORY_REGION, api.rst 4.35; GuestMemoryError
        for a slot in use or a size that does not fit, KvmError if KVM refuses."""
        # Plain ints that fit skip validate.uint, and with it the message it is handed.
        if type(gpa) is not int or not 0 <= gpa < 1 << 64:
            gpa = validate.uint(gpa, 64, f"{self.name} memslot guest_phys_addr")
        if slot is None:
            slot = self.free_slot()
        elif type(slot) is not int or not 0 <= slot < 1 << 32:
            slot = validate.uint(slot, 32, f"{self.name} memslot slot")
        if mapping is not None and not isinstance(mapping, HostMapping):
            raise BadArgumentError(f"{self.name}: memslot mapping {mapping!r:.80}: expected a HostMapping")
        if slot in self.memslots:
            raise GuestMemoryError(f"{self.name}: slot {slot} is already in use at {self.memslots[slot].gpa:#x}")
        if mapping is None:
            if isinstance(size, bool) or not isinstance(size, int):
                raise BadArgumentError(f"{self.name}: memslot size {size!r}: not an integer")
            if size <= 0 or size % PAGE_SIZE:
                raise GuestMemoryError(f"{self.name}: memslot size {size:#x} is not a positive multiple "
                                       f"of {PAGE_SIZE:#x}")
            mapping = HostMapping(size, name=f"{self.name} memory of slot {slot} at {gpa:#x}")
        if type(offset) is not int or not 0 <= offset < 1 << 64:
            offset = validate.uint(offset, 64, f"{self.name} memslot offset in its mapping")
        if isinstance(size, int) and offset + size > mapping.size:
            raise GuestMemoryError(f"{self.name}: slot {slot} of {size:#x} bytes at offset {offset:#x} does not fit "
                                   f"its {mapping.size:#x}-byte mapping")
        try:
            self._set_region(slot, flags, gpa, size, mapping.addr + offset)
        except Exception:
            if not self._mapping_in_use(mapping):
                mapping.close()
            raise
        self.memslots[slot] = new = Memslot(slot, gpa, size, flags, mapping, offset)
        self._hold(mapping)
        return new

    @carried
    def move_memslot(self, slot: int, new_gpa: int) -> None:
        """Re-register a slot at another guest physical address (api.rst 4.35: moves are allowed)."""
        m = self.memslot(slot)
        self._set_region(slot, m.flags, new_gpa, m.size, m.hva)
        m.gpa = new_gpa

    @carried
    def set_memslot_flags(self, slot: int, flags: int) -> None:
        """Change a live slot's flags (only KVM_MEM_LOG_DIRTY_PAGES may change, api.rst 4.35)."""
        m = self.memslot(slot)
        self._set_region(slot, flags, m.gpa, m.size, m.hva)
        m.flags = flags

    @carried
    def delete_memslot(self, slot: int) -> None:
        """Delete a slot (size 0); accesses to its range then exit as MMIO. Its host memory is
        unmapped unless another slot (an alias) still uses it."""
        m = self.memslot(slot)
        self._set_region(slot, m.flags, m.gpa, 0, m.hva)
        del self.memslots[m.slot]
        self._release_slot_mapping(m.mapping)
        if not self._mapping_in_use(m.mapping):
            m.mapping.close()

    def memslot(self, slot: int) -> Memslot:
        """The memslot numbered `slot` that this Vm added; GuestMemoryError naming the ones it has
        otherwise (not a KeyError)."""
        try:
            return self.memslots[slot]
        except (KeyError, TypeError):
            have = ", ".join(f"{m.slot} at {m.gpa:#x}-{m.end:#x}" for m in self.memslots.values()) or "none"
            raise GuestMemoryError(f"{self.name} has no memslot {slot!r} (memslots: {have})") from None

    # --- guest physical memory --------------------------------------------------------------

    def slot_for(self, gpa: int) -> Memslot:
        """The memslot holding guest physical address `gpa`; GuestMemoryError listing the slots if
        none does, ClosedError once the VM is closed."""
        if type(gpa) is not int or not 0 <= gpa < 1 << 64:
            gpa = validate.uint(gpa, 64, f"{self.name} guest physical address")
        if self._fd is None:  # self.closed
            raise ClosedError(f"{self.name} is closed; its guest memory is unmapped (guest address {gpa:#x})")
        for m in self.memslots.values():
            if m.gpa <= gpa < m.gpa + m.size:  # gpa in m
                return m
        slots = ", ".join(f"{m.slot}:{m.gpa:#x}-{m.end:#x}" for m in self.memslots.values()) or "none"
        raise GuestMemoryError(f"guest address {gpa:#x} is outside every memslot of {self.name} (slots: {slots})")

    def _chunks(self, gpa: int, length: int):
        if isinstance(length, bool) or not isinstance(length, int):
            raise BadArgumentError(f"{self.name}: length {length!r} at guest address {_addr(gpa)}: not an integer")
        if length < 0:
            raise GuestMemoryError(f"{self.name}: negative length {length} at guest address {gpa:#x}")
        while length > 0:
            m = self.slot_for(gpa)
            n = min(length, m.end - gpa)
            yield m, m.offset + gpa - m.gpa, n
            gpa, length = gpa + n, length - n

    def read(self, gpa: int, length: int) -> bytes:
        """`length` bytes of guest physical memory from `gpa`, through the host mappings (may span slots)."""
        if type(length) is int and length > 0:  # within one slot, the usual case, without _chunks
            m = self.slot_for(gpa)
            start = gpa - m.gpa
            if start + length <= m.size:
                return m.mapping.read(m.offset + start, length)
        return b"".join(m.mapping.read(off, n) for m, off, n in self._chunks(gpa, length))

    def write(self, gpa: int, data: bytes) -> None:
        """Write `data` to guest physical memory at `gpa` through the host mappings (may span slots)."""
        if type(data) is not bytes:
            data = validate.data(data, f"{self.name} write at guest address {_addr(gpa)}")
        if data:  # within one slot, the usual case, without _chunks (which checks as slot_for does)
            m = self.slot_for(gpa)
            start = gpa - m.gpa
            if start + len(data) <= m.size:
                m.mapping.write(m.offset + start, data)
                return
        pos = 0
        for m, off, n in self._chunks(gpa, len(data)):
            m.mapping.write(off, data[pos: pos + n])
            pos += n

    def read_u64(self, gpa: int) -> int:
        """The little-endian 64-bit value at guest physical `gpa`."""
        return struct.unpack("<Q", self.read(gpa, 8))[0]

    def write_u64(self, gpa: int, value: int) -> None:
        """Store `value` (a u64) little-endian at guest physical `gpa`."""
        self.write(gpa, struct.pack("<Q", validate.uint(value, 64, f"{self.name} write_u64 value")))

    def read_u32(self, gpa: int) -> int:
        """The little-endian 32-bit value at guest physical `gpa`."""
        return struct.unpack("<I", self.read(gpa, 4))[0]

    def write_u32(self, gpa: int, value: int) -> None:
        """Store `value` (a u32) little-endian at guest physical `gpa`."""
        self.write(gpa, struct.pack("<I", validate.uint(value, 32, f"{self.name} write_u32 value")))

    def hva(self, gpa: int) -> int:
        """The host virtual address backing guest physical `gpa`."""
        m = self.slot_for(gpa)
        return m.hva + (gpa - m.gpa)
