"""A VM's dirty-page tracking: the dirty log (api.rst 4.8 KVM_GET_DIRTY_LOG, 4.117
KVM_CLEAR_DIRTY_LOG, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2) and the dirty ring (api.rst 8.29
KVM_CAP_DIRTY_LOG_RING, KVM_RESET_DIRTY_RINGS). Page numbers are relative to the slot's base,
in 4 KiB pages."""

import ctypes
from typing import TYPE_CHECKING

from . import validate
from .abi import structs as S
from .caps import cap_number
from .carried import replayable
from .errors import BadArgumentError
from .fdobject import FdObject


def bitmap_to_pages(bitmap: bytes, npages: int) -> set[int]:
    """The page numbers below `npages` whose bit is set; little-endian bit i of the bitmap is
    page i (api.rst 4.8)."""
    pages = set()
    for byte_index, byte in enumerate(bitmap):
        if byte:
            for bit in range(8):
                if byte >> bit & 1:
                    page = byte_index * 8 + bit
                    if page < npages:
                        pages.add(page)
    return pages


class VmDirtyLog(FdObject):
    """Vm's dirty-log and dirty-ring methods (mixed into kvmtest.vm.Vm)."""

    carried_dirty: dict[int, set[int]]
    setup_calls: list
    dirty_ring_size: int

    # Declarations for the type checker only (hence noqa: D102): kvmtest.vm and kvmtest.vm_memory
    # provide and document them in Vm.
    if TYPE_CHECKING:
        from .vm_memory import Memslot

        def enable_cap(self, cap: int | str, *args: int, flags: int = 0) -> None: ...  # noqa: D102

        def memslot(self, slot: int) -> Memslot: ...  # noqa: D102

    def get_dirty_log(self, slot: int) -> set[int]:
        """KVM_GET_DIRTY_LOG (api.rst 4.8): the page numbers (relative to the slot) written since the
        last call, plus any a VM this one was copied from had not reported. GuestMemoryError for a
        slot this Vm does not have."""
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
        bits set until KVM_CLEAR_DIRTY_LOG (api.rst 8, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)."""
        cap = cap_number("KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2")
        return any(name == "enable_cap" and args and cap_number(args[0]) == cap and args[1:2] != (0,)
                   for name, args, _ in self.setup_calls)

    def clear_dirty_log(self, slot: int, first_page: int, num_pages: int, pages: set[int] | None = None) -> None:
        """KVM_CLEAR_DIRTY_LOG (api.rst 4.117): re-protect `pages` (default: all) of the range
        [first_page, first_page + num_pages); KvmError if KVM refuses the range."""
        self.ioctl("KVM_CLEAR_DIRTY_LOG", self._clear_struct(slot, first_page, num_pages, pages),
                   args=f"slot={slot} first_page={first_page} num_pages={num_pages}")
        cleared = set(range(first_page, first_page + num_pages)) if pages is None else set(pages)
        self.carried_dirty.get(slot, set()).difference_update(cleared)

    def try_clear_dirty_log(self, slot: int, first_page: int, num_pages: int, pages: set[int] | None = None) -> int:
        """clear_dirty_log's twin: the errno (0 on success) instead of raising."""
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

    @replayable
    def enable_dirty_ring(self, size_bytes: int) -> None:
        """KVM_ENABLE_CAP(KVM_CAP_DIRTY_LOG_RING, size) (api.rst 8.29): one ring of `size_bytes`
        per vCPU; allowed only before the first vCPU. Each later vCPU maps its ring
        (Vcpu.dirty_ring)."""
        self.enable_cap("KVM_CAP_DIRTY_LOG_RING", size_bytes)
        self.dirty_ring_size = size_bytes

    def reset_dirty_rings(self) -> int:
        """KVM_RESET_DIRTY_RINGS (api.rst 8.29): re-protect every collected entry; returns how many."""
        return self.ioctl("KVM_RESET_DIRTY_RINGS")
