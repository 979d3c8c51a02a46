"""Changes made from the host side reach a guest that already touched the page: no stale
translation may survive in KVM's MMU (api.rst 4.35, KVM_CAP_SYNC_MMU: "changes in the backing
of the memory region are automatically reflected into the guest")."""

import pytest

from kvmtest.guest.mode_select import select
from kvmtest.guest.paging import MiB2

TARGET = 0x10000
READ_TWICE = f"""
    mov rbx, {TARGET:#x}
    mov rax, qword ptr [rbx]
    GUEST_SYNC rax
    mov rax, qword ptr [rbx]
    GUEST_SYNC rax
    GUEST_DONE
"""
MODES = select(code_bits=64) + select(code_bits=32, paging=False, cpl=0)


def _src(mode):
    if mode == "pm32":
        return READ_TWICE.replace("rbx", "ebx").replace("rax, qword", "eax, dword").replace("rax", "eax")
    return READ_TWICE


@pytest.mark.modes(*MODES)
def test_host_write_after_guest_read(guest, mode):
    """A host write to guest memory between two guest reads is seen by the second read."""
    g = guest(mode, _src(mode), page_size=MiB2 if mode != "pm32" else 0x1000)
    g.vm.write_u64(TARGET, 0x1111)
    assert g.expect_sync() == 0x1111
    g.vm.write_u64(TARGET, 0x2222)
    assert g.expect_sync() == 0x2222
    g.run_to_done()


@pytest.mark.requires_cap("KVM_CAP_SYNC_MMU")
@pytest.mark.modes(*MODES)
def test_madvise_dontneed_of_the_backing_reads_as_zero(guest, mode):
    """madvise(MADV_DONTNEED) of the backing drops the page; with KVM_CAP_SYNC_MMU the guest's
    next read sees the fresh zero page, not the old contents (api.rst 4.35)."""
    g = guest(mode, _src(mode), page_size=MiB2 if mode != "pm32" else 0x1000)
    g.vm.write_u64(TARGET, 0x1111)
    assert g.expect_sync() == 0x1111
    g.vm.slot_for(TARGET).mapping.discard(TARGET & ~0xFFF, 0x1000)
    assert g.expect_sync() == 0
    g.run_to_done()


@pytest.mark.modes(*MODES)
def test_slot_replaced_under_a_touched_page(guest, mode):
    """Deleting a slot the guest has read and adding a new one at the same address with other
    contents: the guest's next read returns the new contents (api.rst 4.35)."""
    g = guest(mode, _src(mode).replace(f"{TARGET:#x}", "0x300000"), page_size=MiB2 if mode != "pm32" else 0x1000)
    slot = g.vm.add_memory(0x300000, 0x1000)
    g.vm.write_u64(0x300000, 0x1111)
    assert g.expect_sync() == 0x1111
    g.vm.delete_memslot(slot.slot)
    g.vm.add_memory(0x300000, 0x1000)
    g.vm.write_u64(0x300000, 0x3333)
    assert g.expect_sync() == 0x3333
    g.run_to_done()
