"""A VM: memslots, guest memory, vCPUs, dirty logs, irqchip, stats (api.rst section 4, VM ioctls)."""

import ctypes
import errno
import itertools
import struct
from dataclasses import dataclass

from .abi import constants as C
from . import validate
from .abi import structs as S
from .carried import VM_STATE_IOCTLS, CarriedIoctls, carried
from .carried import replayable as _replayable
from .errors import BadArgumentError, ClosedError, GuestMemoryError
from .fdobject import FdObject
from .kvm import cap_number
from .libc import PAGE_SIZE
from .memory import ForeignMemory, HostMapping


@dataclass
class Memslot:
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
        return self.gpa + self.size

    @property
    def npages(self) -> int:
        return self.size // PAGE_SIZE

    def __contains__(self, gpa: int) -> bool:
        return self.gpa <= gpa < self.end


def memslot_args(slot, flags, gpa, size, hva=None) -> str:
    text = f"slot={slot} gpa={gpa:#x} size={size:#x}"
    if flags:
        text += f" flags={flags:#x}"
    if hva is not None:
        text += f" hva={hva:#x}"
    return text


def _region_fields(vm, slot, flags, gpa, size, hva) -> tuple[int, int, int, int, int]:
    """kvm_userspace_memory_region's fields checked against their widths (api.rst 4.35): slot and
    flags are __u32, the addresses and size __u64; ctypes would wrap anything wider unseen."""
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


class Vm(CarriedIoctls, FdObject):
    """A KVM VM. Owns its vCPUs and the host mappings behind its memslots."""

    STATE_IOCTLS = VM_STATE_IOCTLS  # see kvmtest.carried

    def __init__(self, kvm, fd: int, name: str):
        super().__init__(fd, name)
        self.kvm = kvm
        self.memslots: dict[int, Memslot] = {}
        self.vcpus: list = []
        self.irqchip = False
        self.dirty_ring_size = 0
        # What was set up through this object and has no KVM_GET_* of its own, so that a copy
        # of the VM (kvmtest.state, Guest.migrate) can set it up again.
        self.split_irqchip_routes: int | None = None   # KVM_CAP_SPLIT_IRQCHIP's argument
        self.pit_flags: int | None = None              # KVM_CREATE_PIT2's flags
        self.setup_calls: list[tuple[str, tuple, dict]] = []  # see kvmtest.carried
        self.uncarried: list[str] = []                         # ditto
        # Coalesced MMIO entries a VM this one was copied from had queued and nobody drained
        # (kvmtest.vm_state): Vcpu.drain_coalesced_ring returns them before the ring's own.
        self.carried_coalesced: list = []
        # Pages a VM this one was copied from had dirtied and not yet reported (kvmtest.state):
        # get_dirty_log reports them as well, until reported (or, with manual protect, cleared).
        self.carried_dirty: dict[int, set[int]] = {}
        self._in_setup = False
        self._extra_mappings: list[HostMapping] = []

    # --- capabilities --------------------------------------------------------------------

    def check_extension(self, cap: int | str) -> int:
        """KVM_CHECK_EXTENSION on the VM fd (api.rst 4.4, KVM_CAP_CHECK_EXTENSION_VM)."""
        number = cap_number(cap)
        return self.ioctl("KVM_CHECK_EXTENSION", number, args=C.CAPABILITY_NAMES.name(number))

    @_replayable
    def enable_cap(self, cap: int | str, *args: int, flags: int = 0) -> None:
        """KVM_ENABLE_CAP on the VM (api.rst 4.37 and section 7)."""
        self.ioctl("KVM_ENABLE_CAP", self.enable_cap_struct(cap, *args, flags=flags),
                   args=self._cap_args(cap, args, flags))

    @carried  # records itself
    def try_enable_cap(self, cap: int | str, *args: int, flags: int = 0) -> int:
        err = self.try_ioctl("KVM_ENABLE_CAP", self.enable_cap_struct(cap, *args, flags=flags),
                             args=self._cap_args(cap, args, flags))
        if not err and not self._in_setup:
            self.setup_calls.append(("enable_cap", (cap, *args), {"flags": flags}))
        return err

    @staticmethod
    def enable_cap_struct(cap, *args, flags=0) -> S.kvm_enable_cap:
        from .validate import uint

        name = C.CAPABILITY_NAMES.name(cap_number(cap))
        if len(args) > 4:
            raise BadArgumentError(f"KVM_ENABLE_CAP {name}: {len(args)} args, but kvm_enable_cap.args holds 4")
        ec = S.kvm_enable_cap(cap=uint(cap_number(cap), 32, "KVM_ENABLE_CAP cap"),
                              flags=uint(flags, 32, f"KVM_ENABLE_CAP {name} flags"))
        for i, a in enumerate(args):
            ec.args[i] = uint(a, 64, f"KVM_ENABLE_CAP {name} args[{i}]")
        return ec

    @staticmethod
    def _cap_args(cap, args, flags):
        text = C.CAPABILITY_NAMES.name(cap_number(cap))
        if args:
            text += " args=" + ",".join(hex(a) for a in args)
        return text + (f" flags={flags:#x}" if flags else "")

    # --- memslots ------------------------------------------------------------------------
    #
    # `memslots` is what KVM holds, however it was set: add_memory and its siblings, or the raw
    # set_user_memory_region calls, which keep it up to date (kvmtest.vm_state copies it).

    @carried
    def set_user_memory_region(self, slot: int, flags: int, gpa: int, size: int, hva: int) -> None:
        """KVM_SET_USER_MEMORY_REGION (api.rst 4.35), raw: size 0 deletes the slot."""
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
        slot, flags, gpa, size, hva = _region_fields(self, slot, flags, gpa, size, hva)
        region = S.kvm_userspace_memory_region(slot, flags, gpa, size, hva)
        err = self.try_ioctl("KVM_SET_USER_MEMORY_REGION", region, args=memslot_args(slot, flags, gpa, size))
        if not err:
            self._note_region(slot, flags, gpa, size, hva)
        return err

    @carried
    def try_set_user_memory_region2(self, slot, flags, gpa, size, hva, guest_memfd=0, guest_memfd_offset=0) -> int:
        """KVM_SET_USER_MEMORY_REGION2 (api.rst KVM_SET_USER_MEMORY_REGION2), for negative tests."""
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
                if isinstance(old.mapping, HostMapping) and not self._mapping_in_use(old.mapping):
                    self._extra_mappings.append(old.mapping)  # the caller may add it back; unmapped at close()
            return
        if old is not None:
            old.gpa, old.flags = gpa, flags
            return
        self.memslots[slot] = Memslot(slot, gpa, size, flags, *self._backing_of(hva, size))

    def _backing_of(self, hva: int, size: int) -> tuple:
        """(mapping, offset) for host memory [hva, hva+size): one of this VM's mappings if it lies
        inside one, else a ForeignMemory that reads it without owning it."""
        for mapping in [m.mapping for m in self.memslots.values()] + self._extra_mappings:
            if isinstance(mapping, HostMapping) and not mapping.closed and \
                    mapping.addr <= hva and hva + size <= mapping.addr + mapping.size:
                return mapping, hva - mapping.addr
        return ForeignMemory(hva, size, name=f"{self.name} host memory at {hva:#x}"), 0

    def _mapping_in_use(self, mapping) -> bool:
        return any(m.mapping is mapping for m in self.memslots.values()) or mapping in self._extra_mappings

    def free_slot(self) -> int:
        return next(i for i in itertools.count() if i not in self.memslots)

    @carried
    def add_memory(self, gpa: int, size: int, *, slot: int | None = None, flags: int = 0,
                   mapping: HostMapping | None = None, offset: int = 0) -> Memslot:
        """Back [gpa, gpa+size) with a fresh anonymous mapping in a new memslot, or with `mapping`
        from `offset` on (several slots may share one mapping: they alias each other)."""
        gpa = validate.uint(gpa, 64, f"{self.name} memslot guest_phys_addr")
        slot = self.free_slot() if slot is None else validate.uint(slot, 32, f"{self.name} memslot slot")
        if mapping is not None and not isinstance(mapping, HostMapping):
            raise BadArgumentError(f"{self.name}: memslot mapping {mapping!r:.80}: expected a HostMapping")
        if slot in self.memslots:
            raise GuestMemoryError(f"{self.name}: slot {slot} is already in use at {self.memslots[slot].gpa:#x}")
        if mapping is None:
            if isinstance(size, bool) or not isinstance(size, int):
                raise BadArgumentError(f"{self.name}: memslot size {size!r}: not an integer")
            if size <= 0 or size % PAGE_SIZE:
                raise GuestMemoryError(f"{self.name}: memslot size {size:#x} is not a positive multiple of {PAGE_SIZE:#x}")
            mapping = HostMapping(size, name=f"{self.name} memory of slot {slot} at {gpa:#x}")
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
        self.memslots[slot] = Memslot(slot, gpa, size, flags, mapping, offset)
        return self.memslots[slot]

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
        gpa = validate.uint(gpa, 64, f"{self.name} guest physical address")
        if self.closed:
            raise ClosedError(f"{self.name} is closed; its guest memory is unmapped (guest address {gpa:#x})")
        for m in self.memslots.values():
            if gpa in m:
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
        """Read guest physical memory through the host mappings (may span slots)."""
        return b"".join(m.mapping.read(off, n) for m, off, n in self._chunks(gpa, length))

    def write(self, gpa: int, data: bytes) -> None:
        """Write guest physical memory through the host mappings (may span slots)."""
        data = validate.data(data, f"{self.name} write at guest address {_addr(gpa)}")
        pos = 0
        for m, off, n in self._chunks(gpa, len(data)):
            m.mapping.write(off, data[pos: pos + n])
            pos += n

    def read_u64(self, gpa: int) -> int:
        return struct.unpack("<Q", self.read(gpa, 8))[0]

    def write_u64(self, gpa: int, value: int) -> None:
        self.write(gpa, struct.pack("<Q", validate.uint(value, 64, f"{self.name} write_u64 value")))

    def read_u32(self, gpa: int) -> int:
        return struct.unpack("<I", self.read(gpa, 4))[0]

    def write_u32(self, gpa: int, value: int) -> None:
        self.write(gpa, struct.pack("<I", validate.uint(value, 32, f"{self.name} write_u32 value")))

    def hva(self, gpa: int) -> int:
        m = self.slot_for(gpa)
        return m.hva + (gpa - m.gpa)

    # --- dirty logging ----------------------------------------------------------------------

    def get_dirty_log(self, slot: int) -> set[int]:
        """KVM_GET_DIRTY_LOG (api.rst 4.8): page indices (relative to the slot) written since the last call."""
        m = self.memslot(slot)
        nbytes = ((m.npages + 63) // 64) * 8
        bitmap = (ctypes.c_uint8 * nbytes)()
        log = S.kvm_dirty_log(slot=slot, dirty_bitmap=ctypes.addressof(bitmap))
        self.ioctl("KVM_GET_DIRTY_LOG", log, args=f"slot={slot}")
        pages = bitmap_to_pages(bytes(bitmap), m.npages)
        carried = self.carried_dirty.get(slot, set())
        if not self.manual_dirty_protect():
            self.carried_dirty.pop(slot, None)
        return pages | carried

    def manual_dirty_protect(self) -> bool:
        """Whether KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 was enabled: KVM_GET_DIRTY_LOG then leaves the
        bits set until KVM_CLEAR_DIRTY_LOG (api.rst KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)."""
        cap = cap_number("KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2")
        return any(name == "enable_cap" and args and cap_number(args[0]) == cap and args[1:2] != (0,)
                   for name, args, _ in self.setup_calls)

    def clear_dirty_log(self, slot: int, first_page: int, num_pages: int, pages: set[int] | None = None) -> None:
        """KVM_CLEAR_DIRTY_LOG (api.rst 4.117): re-protect `pages` (default: all) of the range."""
        self.ioctl("KVM_CLEAR_DIRTY_LOG", self._clear_struct(slot, first_page, num_pages, pages),
                   args=f"slot={slot} first_page={first_page} num_pages={num_pages}")
        cleared = set(range(first_page, first_page + num_pages)) if pages is None else set(pages)
        self.carried_dirty.get(slot, set()).difference_update(cleared)

    def try_clear_dirty_log(self, slot: int, first_page: int, num_pages: int, pages: set[int] | None = None) -> int:
        return self.try_ioctl("KVM_CLEAR_DIRTY_LOG", self._clear_struct(slot, first_page, num_pages, pages),
                              args=f"slot={slot} first_page={first_page} num_pages={num_pages}")

    def _clear_struct(self, slot, first_page, num_pages, pages):
        what = f"{self.name} KVM_CLEAR_DIRTY_LOG"
        slot = validate.uint(slot, 32, f"{what} slot")
        first_page = validate.uint(first_page, 64, f"{what} first_page")
        num_pages = validate.uint(num_pages, 32, f"{what} num_pages")
        if pages is not None:
            # A page outside the range would set a bit before the bitmap or past it.
            pages = validate.uints(pages, 64, f"{what} page")
            outside = [p for p in pages if not first_page <= p < first_page + num_pages]
            if outside:
                raise BadArgumentError(f"{what}: page {outside[0]} lies outside first_page {first_page} + "
                                       f"num_pages {num_pages}")
        nbytes = max(8, ((num_pages + 63) // 64) * 8)
        bits = bytearray(nbytes)
        for p in (range(num_pages) if pages is None else (p - first_page for p in pages)):
            bits[p // 8] |= 1 << (p % 8)
        self._clear_bitmap = (ctypes.c_uint8 * nbytes).from_buffer(bits)  # kept alive across the call
        log = S.kvm_clear_dirty_log(slot=slot, num_pages=num_pages, first_page=first_page,
                                    dirty_bitmap=ctypes.addressof(self._clear_bitmap))
        return log

    # --- vCPUs and devices ---------------------------------------------------------------------

    def create_vcpu(self, vcpu_id: int | None = None):
        """KVM_CREATE_VCPU (api.rst 4.7); maps its kvm_run structure."""
        from .vcpu import Vcpu

        vcpu_id = len(self.vcpus) if vcpu_id is None else validate.uint(vcpu_id, 64, f"{self.name} KVM_CREATE_VCPU id")
        fd = self.ioctl("KVM_CREATE_VCPU", vcpu_id, args=f"id={vcpu_id}")
        vcpu = Vcpu(self, fd, vcpu_id)
        self.vcpus.append(vcpu)
        return vcpu

    @_replayable
    def create_irqchip(self) -> None:
        """KVM_CREATE_IRQCHIP (api.rst 4.24): in-kernel PIC, IOAPIC and local APICs."""
        self.ioctl("KVM_CREATE_IRQCHIP")
        self.irqchip = True

    def get_irqchip(self, chip_id: int) -> S.kvm_irqchip:
        """KVM_GET_IRQCHIP (api.rst 4.26): the state of one in-kernel chip (KVM_IRQCHIP_*)."""
        chip_id = validate.uint(chip_id, 32, f"{self.name} KVM_GET_IRQCHIP chip_id")
        chip = S.kvm_irqchip(chip_id=chip_id)
        self.ioctl("KVM_GET_IRQCHIP", chip, args=f"chip={C.IRQCHIP_NAMES.name(chip_id)}")
        return chip

    def try_get_irqchip(self, chip_id: int) -> int:
        chip_id = validate.uint(chip_id, 32, f"{self.name} KVM_GET_IRQCHIP chip_id")
        return self.try_ioctl("KVM_GET_IRQCHIP", S.kvm_irqchip(chip_id=chip_id),
                              args=f"chip={C.IRQCHIP_NAMES.name(chip_id)}")

    def set_irqchip(self, chip: S.kvm_irqchip) -> None:
        """KVM_SET_IRQCHIP (api.rst 4.27)."""
        validate.instance(chip, S.kvm_irqchip, f"{self.name} KVM_SET_IRQCHIP")
        self.ioctl("KVM_SET_IRQCHIP", chip, args=f"chip={C.IRQCHIP_NAMES.name(chip.chip_id)}")

    @_replayable
    def enable_dirty_ring(self, size_bytes: int) -> None:
        """KVM_ENABLE_CAP(KVM_CAP_DIRTY_LOG_RING, size) (api.rst 8.29): one ring of `size_bytes`
        per vCPU; allowed only before the first vCPU. Each later vCPU maps its ring
        (Vcpu.dirty_ring)."""
        self.enable_cap("KVM_CAP_DIRTY_LOG_RING", size_bytes)
        self.dirty_ring_size = size_bytes

    def reset_dirty_rings(self) -> int:
        """KVM_RESET_DIRTY_RINGS (api.rst 8.29): re-protect every collected entry; returns how many."""
        return self.ioctl("KVM_RESET_DIRTY_RINGS")

    @_replayable
    def enable_split_irqchip(self, ioapic_routes: int = 24) -> None:
        """KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP) (api.rst KVM_CAP_SPLIT_IRQCHIP): local APICs in the kernel, PIC and
        IOAPIC left to user space; the first `ioapic_routes` GSI routes (MSI) stand for the user
        IOAPIC's pins and report their level-triggered EOIs as KVM_EXIT_IOAPIC_EOI."""
        self.enable_cap("KVM_CAP_SPLIT_IRQCHIP", ioapic_routes)
        self.irqchip = True
        self.split_irqchip_routes = ioapic_routes

    @_replayable
    def set_gsi_routing(self, entries: "list[S.kvm_irq_routing_entry]") -> None:
        """KVM_SET_GSI_ROUTING (api.rst 4.52): replace the whole routing table."""
        if isinstance(entries, (str, bytes)) or not hasattr(entries, "__len__"):
            raise BadArgumentError(f"{self.name} KVM_SET_GSI_ROUTING: expected a list of kvm_irq_routing_entry, "
                                   f"got {entries!r:.80}")
        for i, entry in enumerate(entries):
            validate.instance(entry, S.kvm_irq_routing_entry, f"{self.name} KVM_SET_GSI_ROUTING entry {i}")
        table = S.irq_routing_type(len(entries))(nr=len(entries))
        for i, entry in enumerate(entries):
            table.entries[i] = entry
        self.ioctl("KVM_SET_GSI_ROUTING", table, args=f"nr={len(entries)}")

    @staticmethod
    def msi_route(gsi: int, address: int, data: int) -> S.kvm_irq_routing_entry:
        gsi = validate.uint(gsi, 32, "MSI route gsi")
        address, data = validate.uint(address, 64, "MSI route address"), validate.uint(data, 32, "MSI route data")
        e = S.kvm_irq_routing_entry(gsi=gsi, type=C.KVM_IRQ_ROUTING_MSI)
        e.u.msi.address_lo, e.u.msi.address_hi, e.u.msi.data = address & 0xFFFFFFFF, address >> 32, data
        return e

    @staticmethod
    def irqchip_route(gsi: int, chip: int, pin: int) -> S.kvm_irq_routing_entry:
        gsi = validate.uint(gsi, 32, "irqchip route gsi")
        chip, pin = validate.uint(chip, 32, "irqchip route irqchip"), validate.uint(pin, 32, "irqchip route pin")
        e = S.kvm_irq_routing_entry(gsi=gsi, type=C.KVM_IRQ_ROUTING_IRQCHIP)
        e.u.irqchip.irqchip, e.u.irqchip.pin = chip, pin
        return e

    @_replayable
    def create_pit2(self, flags: int = 0) -> None:
        """KVM_CREATE_PIT2 (api.rst KVM_CREATE_PIT2): the in-kernel i8254, after KVM_CREATE_IRQCHIP."""
        flags = validate.uint(flags, 32, f"{self.name} KVM_CREATE_PIT2 flags")
        self.ioctl("KVM_CREATE_PIT2", S.kvm_pit_config(flags=flags), args=f"flags={flags:#x}")
        self.pit_flags = flags

    def get_pit2(self) -> S.kvm_pit_state2:
        """KVM_GET_PIT2 (api.rst KVM_GET_PIT2): the three PIT channels and the flags."""
        pit = S.kvm_pit_state2()
        self.ioctl("KVM_GET_PIT2", pit)
        return pit

    def set_pit2(self, pit: S.kvm_pit_state2) -> None:
        """KVM_SET_PIT2 (api.rst KVM_SET_PIT2)."""
        validate.instance(pit, S.kvm_pit_state2, f"{self.name} KVM_SET_PIT2")
        self.ioctl("KVM_SET_PIT2", pit, args=f"flags={pit.flags:#x} " + " ".join(
            f"ch{i}=mode{c.mode}/count{c.count:#x}/gate{c.gate}" for i, c in enumerate(pit.channels)))

    def get_clock(self) -> S.kvm_clock_data:
        """KVM_GET_CLOCK (api.rst KVM_GET_CLOCK): kvmclock now, with KVM_CLOCK_* flags saying which
        of realtime / host_tsc are valid."""
        clock = S.kvm_clock_data()
        self.ioctl("KVM_GET_CLOCK", clock)
        return clock

    def set_clock(self, clock: S.kvm_clock_data) -> None:
        """KVM_SET_CLOCK (api.rst KVM_SET_CLOCK); with KVM_CLOCK_REALTIME in flags KVM advances the
        clock by the CLOCK_REALTIME time elapsed since `clock.realtime`."""
        validate.instance(clock, S.kvm_clock_data, f"{self.name} KVM_SET_CLOCK")
        self.ioctl("KVM_SET_CLOCK", clock, args=f"clock={clock.clock:#x} flags={clock.flags:#x}")

    def irq_line(self, irq: int, level: int) -> int:
        """KVM_IRQ_LINE_STATUS (api.rst 4.25): returns the status (>0 delivered, 0 masked, <0 coalesced)."""
        irq = validate.uint(irq, 32, f"{self.name} KVM_IRQ_LINE_STATUS irq")
        level = validate.uint(level, 32, f"{self.name} KVM_IRQ_LINE_STATUS level")
        lvl = S.kvm_irq_level(irq=irq, level=level)
        self.ioctl("KVM_IRQ_LINE_STATUS", lvl, args=f"irq={irq} level={level}")
        return lvl.status

    # --- eventfds, coalesced MMIO, MSR filter (api.rst KVM_IRQFD, KVM_IOEVENTFD, KVM_REGISTER_COALESCED_MMIO, KVM_X86_SET_MSR_FILTER) -----------------

    @staticmethod
    def _eventfd(obj, what: str) -> int:
        """The fd of an EventFd (or any fd-owning object), or a plain int fd."""
        if isinstance(obj, int) and not isinstance(obj, bool):
            return validate.int_in(obj, 0, (1 << 31) - 1, f"{what} fd")
        fd = getattr(obj, "fd", None)
        if isinstance(fd, bool) or not isinstance(fd, int):
            raise BadArgumentError(f"{what}: expected an EventFd or an fd number, got {obj!r}")
        return fd

    @_replayable
    def assign_irqfd(self, efd, gsi: int, *, resample=None) -> None:
        """KVM_IRQFD: signalling `efd` raises `gsi`; with `resample` (an EventFd) the GSI is
        level-triggered and KVM signals `resample` at its EOI (KVM_IRQFD_FLAG_RESAMPLE)."""
        gsi = validate.uint(gsi, 32, f"{self.name} KVM_IRQFD gsi")
        arg = S.kvm_irqfd(fd=self._eventfd(efd, "KVM_IRQFD"), gsi=gsi)
        if resample is not None:
            arg.flags, arg.resamplefd = C.KVM_IRQFD_FLAG_RESAMPLE, self._eventfd(resample, "KVM_IRQFD resample")
        self.ioctl("KVM_IRQFD", arg, args=f"gsi={gsi}{' resample' if resample is not None else ''}")

    @_replayable
    def deassign_irqfd(self, efd, gsi: int) -> None:
        gsi = validate.uint(gsi, 32, f"{self.name} KVM_IRQFD gsi")
        self.ioctl("KVM_IRQFD", S.kvm_irqfd(fd=self._eventfd(efd, "KVM_IRQFD"), gsi=gsi,
                                            flags=C.KVM_IRQFD_FLAG_DEASSIGN),
                   args=f"gsi={gsi} deassign")

    @classmethod
    def _ioeventfd(cls, efd, addr, length, pio, datamatch, deassign):
        # kvm_ioeventfd (api.rst KVM_IOEVENTFD): addr and datamatch are __u64, len a __u32.
        addr, length = validate.uint(addr, 64, "KVM_IOEVENTFD addr"), validate.uint(length, 32, "KVM_IOEVENTFD len")
        if datamatch is not None:
            datamatch = validate.uint(datamatch, 64, "KVM_IOEVENTFD datamatch")
        flags = (C.KVM_IOEVENTFD_FLAG_PIO if pio else 0) | (C.KVM_IOEVENTFD_FLAG_DEASSIGN if deassign else 0) \
            | (C.KVM_IOEVENTFD_FLAG_DATAMATCH if datamatch is not None else 0)
        arg = S.kvm_ioeventfd(datamatch=datamatch or 0, addr=addr, len=length,
                              fd=cls._eventfd(efd, "KVM_IOEVENTFD"), flags=flags)
        text = f"{'port' if pio else 'gpa'}={addr:#x} len={length}" + \
            (f" datamatch={datamatch:#x}" if datamatch is not None else "") + (" deassign" if deassign else "")
        return arg, text

    @_replayable
    def assign_ioeventfd(self, efd, addr: int, length: int, *, pio: bool = False, datamatch: int | None = None) -> None:
        """KVM_IOEVENTFD: a guest write of `length` bytes to `addr` (a port with pio) signals
        `efd` instead of exiting; with `datamatch` only writes of that value do."""
        arg, text = self._ioeventfd(efd, addr, length, pio, datamatch, False)
        self.ioctl("KVM_IOEVENTFD", arg, args=text)

    @carried  # records itself
    def try_deassign_ioeventfd(self, efd, addr: int, length: int, *, pio: bool = False,
                               datamatch: int | None = None) -> int:
        """KVM_IOEVENTFD with KVM_IOEVENTFD_FLAG_DEASSIGN; returns the errno (0 on success). A
        deassign that succeeded is recorded like deassign_ioeventfd's, so a copy of the VM, which
        replays the assign, replays this too."""
        arg, text = self._ioeventfd(efd, addr, length, pio, datamatch, True)
        err = self.try_ioctl("KVM_IOEVENTFD", arg, args=text)
        if not err and not self._in_setup:
            self.setup_calls.append(("deassign_ioeventfd", (efd, addr, length), {"pio": pio, "datamatch": datamatch}))
        return err

    @_replayable
    def deassign_ioeventfd(self, efd, addr: int, length: int, *, pio: bool = False,
                           datamatch: int | None = None) -> None:
        arg, text = self._ioeventfd(efd, addr, length, pio, datamatch, True)
        self.ioctl("KVM_IOEVENTFD", arg, args=text)

    @_replayable
    def register_coalesced_mmio(self, addr: int, size: int, *, pio: bool = False) -> None:
        """KVM_REGISTER_COALESCED_MMIO: writes to the zone (ports with pio) are queued in the
        ring (Vcpu.drain_coalesced_ring) instead of exiting."""
        addr, size = self._coalesced_zone(addr, size, "KVM_REGISTER_COALESCED_MMIO")
        self.ioctl("KVM_REGISTER_COALESCED_MMIO", S.kvm_coalesced_mmio_zone(addr=addr, size=size, pio=int(pio)),
                   args=f"{'port' if pio else 'gpa'}={addr:#x} size={size:#x}")

    @_replayable
    def unregister_coalesced_mmio(self, addr: int, size: int, *, pio: bool = False) -> None:
        addr, size = self._coalesced_zone(addr, size, "KVM_UNREGISTER_COALESCED_MMIO")
        self.ioctl("KVM_UNREGISTER_COALESCED_MMIO", S.kvm_coalesced_mmio_zone(addr=addr, size=size, pio=int(pio)),
                   args=f"{'port' if pio else 'gpa'}={addr:#x} size={size:#x}")

    def _coalesced_zone(self, addr, size, ioctl) -> tuple[int, int]:
        """kvm_coalesced_mmio_zone: addr is a __u64, size a __u32."""
        return (validate.uint(addr, 64, f"{self.name} {ioctl} addr"),
                validate.uint(size, 32, f"{self.name} {ioctl} size"))

    @_replayable
    def set_msr_filter(self, ranges: "list[tuple[int, int, list[bool]]]", *, default_deny: bool = False) -> None:
        """KVM_X86_SET_MSR_FILTER with `ranges` of (KVM_MSR_FILTER_READ/WRITE flags, first MSR,
        allowed: one bool per MSR from the first); MSRs outside every range follow the default."""
        filt = S.kvm_msr_filter(flags=C.KVM_MSR_FILTER_DEFAULT_DENY if default_deny else C.KVM_MSR_FILTER_DEFAULT_ALLOW)
        if isinstance(ranges, (str, bytes)) or not hasattr(ranges, "__len__"):
            raise BadArgumentError(f"KVM_X86_SET_MSR_FILTER: expected a list of ranges, got {ranges!r:.80}")
        if len(ranges) > len(filt.ranges):
            raise BadArgumentError(f"KVM_X86_SET_MSR_FILTER takes at most {len(filt.ranges)} ranges, got {len(ranges)}")
        for i, rng in enumerate(ranges):
            if not (isinstance(rng, tuple) and len(rng) == 3 and isinstance(rng[0], int) and isinstance(rng[1], int)
                    and not isinstance(rng[2], (str, bytes)) and hasattr(rng[2], "__len__")):
                raise BadArgumentError(f"KVM_X86_SET_MSR_FILTER range {i}: expected (flags, first MSR, "
                                       f"[allowed per MSR]), got {rng!r}")
            # kvm_msr_filter_range: flags, base and nmsrs are __u32.
            validate.uint(rng[0], 32, f"KVM_X86_SET_MSR_FILTER range {i} flags")
            validate.uint(rng[1], 32, f"KVM_X86_SET_MSR_FILTER range {i} base")
            validate.uint(len(rng[2]), 32, f"KVM_X86_SET_MSR_FILTER range {i} nmsrs")
        bitmaps = []  # kept alive until KVM has copied them
        for r, (flags, base, allowed) in zip(filt.ranges, ranges):
            buf = (ctypes.c_uint8 * max(1, (len(allowed) + 7) // 8))()
            for i, ok in enumerate(allowed):
                buf[i // 8] |= int(bool(ok)) << (i % 8)
            bitmaps.append(buf)
            r.flags, r.base, r.nmsrs, r.bitmap = flags, base, len(allowed), ctypes.addressof(buf)
        self.ioctl("KVM_X86_SET_MSR_FILTER", filt, args=" ".join(
            f"[flags={flags:#x} {base:#x}+{len(allowed)}]" for flags, base, allowed in ranges))

    @_replayable
    def set_tss_addr(self, addr: int) -> None:
        """KVM_SET_TSS_ADDR (api.rst 4.36): the three-page region Intel hosts use for real mode; the
        ioctl's argument is an unsigned long."""
        addr = validate.uint(addr, 64, f"{self.name} KVM_SET_TSS_ADDR addr")
        self.ioctl("KVM_SET_TSS_ADDR", addr, args=f"addr={addr:#x}")

    @_replayable
    def set_identity_map_addr(self, addr: int) -> None:
        """KVM_SET_IDENTITY_MAP_ADDR (api.rst 4.40): the one-page identity map Intel hosts use for
        real mode, a __u64 the ioctl points to; only before the first vCPU."""
        addr = validate.uint(addr, 64, f"{self.name} KVM_SET_IDENTITY_MAP_ADDR addr")
        self.ioctl("KVM_SET_IDENTITY_MAP_ADDR", ctypes.c_uint64(addr), args=f"addr={addr:#x}")

    def stats(self):
        """KVM_GET_STATS_FD on the VM (api.rst 4.133)."""
        from .stats import Stats

        return Stats(self.ioctl("KVM_GET_STATS_FD"), f"{self.name}/stats")

    def _release(self) -> None:
        for vcpu in self.vcpus:
            vcpu.close()
        self.vcpus.clear()

    def close(self) -> None:
        # vCPUs, then the VM fd, then the memory behind the slots.
        super().close()
        for m in self.memslots.values():
            m.mapping.close()
        self.memslots.clear()
        for mapping in self._extra_mappings:
            mapping.close()
        self._extra_mappings.clear()


def bitmap_to_pages(bitmap: bytes, npages: int) -> set[int]:
    """Little-endian bit i of the bitmap = page i (api.rst 4.8)."""
    pages = set()
    for byte_index, byte in enumerate(bitmap):
        if byte:
            for bit in range(8):
                if byte >> bit & 1:
                    page = byte_index * 8 + bit
                    if page < npages:
                        pages.add(page)
    return pages
