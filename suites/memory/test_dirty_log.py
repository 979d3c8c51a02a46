"""Dirty page logging (KVM_MEM_LOG_DIRTY_PAGES, KVM_GET_DIRTY_LOG api.rst 4.8,
KVM_CLEAR_DIRTY_LOG and KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 api.rst 4.117 / 7.18)."""

import errno

import pytest

from kvmtest.abi.constants import KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE, KVM_MEM_LOG_DIRTY_PAGES, errno_name
from kvmtest.guest.paging import MiB2

LOGGED = 0x400000  # a logged slot above the guest's own memory


def _writer(pages: list[int], base: int = LOGGED) -> str:
    lines = [f"mov rbx, {base + p * 0x1000 + 8:#x}\nmov qword ptr [rbx], {p + 1}" for p in pages]
    return "\n".join(lines + ["GUEST_DONE"])


def _guest(guest, pages, npages=16, flags=KVM_MEM_LOG_DIRTY_PAGES, page_size=0x1000):
    g = guest("long64", _writer(pages), identity_size=LOGGED + npages * 0x1000, page_size=page_size)
    slot = g.vm.add_memory(LOGGED, npages * 0x1000, flags=flags)
    return g, slot


def test_exactly_the_written_pages_are_dirty(guest):
    """After the guest writes two pages, KVM_GET_DIRTY_LOG reports exactly those two (bit 0
    is the slot's first page), and the bits are cleared by the read (api.rst 4.8;
    kvm-ioctls test_run_code)."""
    g, slot = _guest(guest, [3, 9])
    g.run_to_done()
    assert g.vm.get_dirty_log(slot.slot) == {3, 9}
    assert g.vm.get_dirty_log(slot.slot) == set(), "KVM_GET_DIRTY_LOG did not clear the bits it returned"


def test_pages_at_slot_edges(guest):
    """The first and the last page of a slot are reported by their indices 0 and npages-1."""
    g, slot = _guest(guest, [0, 63], npages=64)
    g.run_to_done()
    assert g.vm.get_dirty_log(slot.slot) == {0, 63}


def test_large_slot_reports_far_pages(guest):
    """In a 64 MiB slot, writes to pages 0, 1000 and 16383 are reported and nothing else."""
    g, slot = _guest(guest, [0, 1000, 16383], npages=16384, page_size=MiB2)
    g.run_to_done()
    assert g.vm.get_dirty_log(slot.slot) == {0, 1000, 16383}


def test_host_reads_do_not_dirty_and_reads_by_the_guest_do_not_dirty(guest):
    """Only writes are logged: a guest load from the slot leaves the log empty."""
    g = guest("long64", f"mov rbx, {LOGGED:#x}\nmov rax, qword ptr [rbx]\nGUEST_DONE", identity_size=LOGGED + 0x10000)
    slot = g.vm.add_memory(LOGGED, 0x10000, flags=KVM_MEM_LOG_DIRTY_PAGES)
    g.run_to_done()
    assert g.vm.get_dirty_log(slot.slot) == set()


def test_logging_switched_on_for_a_live_slot(guest):
    """KVM_MEM_LOG_DIRTY_PAGES may be set on an existing slot (api.rst 4.35: "its flags may
    be modified"); writes made after that are reported."""
    g = guest("long64", _writer([1]).replace("GUEST_DONE", "GUEST_SYNC 0\n" + _writer([5])),
              identity_size=LOGGED + 0x10000)
    slot = g.vm.add_memory(LOGGED, 0x10000)
    assert g.expect_sync() == 0
    g.vm.set_memslot_flags(slot.slot, KVM_MEM_LOG_DIRTY_PAGES)
    g.run_to_done()
    assert g.vm.get_dirty_log(slot.slot) == {5}


@pytest.fixture
def manual(guest):
    g = guest("long64", _writer([2, 4]).replace("GUEST_DONE", "GUEST_SYNC 1\n" + _writer([2])),
              identity_size=LOGGED + 0x40000)
    if not g.vm.check_extension("KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2"):
        pytest.skip("needs KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2")
    g.vm.enable_cap("KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2", KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE)
    slot = g.vm.add_memory(LOGGED, 0x40000, flags=KVM_MEM_LOG_DIRTY_PAGES)
    return g, slot


def test_manual_protect_get_does_not_clear(manual):
    """With KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 enabled, KVM_GET_DIRTY_LOG does not clear the
    bitmap (api.rst 4.8); KVM_CLEAR_DIRTY_LOG does, and a page written again is reported again
    (api.rst 4.117)."""
    g, slot = manual
    assert g.expect_sync() == 1
    assert g.vm.get_dirty_log(slot.slot) == {2, 4}
    assert g.vm.get_dirty_log(slot.slot) == {2, 4}, "KVM_GET_DIRTY_LOG cleared bits under manual protect"
    g.vm.clear_dirty_log(slot.slot, 0, 64, {2, 4})
    assert g.vm.get_dirty_log(slot.slot) == set()
    g.run_to_done()
    assert g.vm.get_dirty_log(slot.slot) == {2}, "page 2, written again after the clear, is not reported"


def test_clear_dirty_log_clears_only_the_given_pages(manual):
    """KVM_CLEAR_DIRTY_LOG clears the pages whose bits are set in its bitmap and no others."""
    g, slot = manual
    g.run()
    g.vm.clear_dirty_log(slot.slot, 0, 64, {4})
    assert g.vm.get_dirty_log(slot.slot) == {2}


@pytest.mark.parametrize("first,num", [(1, 64), (0, 63), (32, 32)])
def test_clear_dirty_log_alignment(manual, first, num):
    """first_page must be a multiple of 64, and num_pages too unless the range reaches the
    slot's end (api.rst 4.117): otherwise EINVAL."""
    g, slot = manual
    err = g.vm.try_clear_dirty_log(slot.slot, first, num)
    assert err == errno.EINVAL, f"KVM_CLEAR_DIRTY_LOG first={first} num={num}: expected EINVAL, got {errno_name(err)}"


def test_clear_dirty_log_to_the_slot_end_may_be_unaligned(guest):
    """num_pages need not be a multiple of 64 when first_page + num_pages is the slot size
    (api.rst 4.117)."""
    g = guest("long64", _writer([1]), identity_size=LOGGED + 0x50000)
    if not g.vm.check_extension("KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2"):
        pytest.skip("needs KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2")
    g.vm.enable_cap("KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2", KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE)
    slot = g.vm.add_memory(LOGGED, 0x50000, flags=KVM_MEM_LOG_DIRTY_PAGES)  # 80 pages
    g.run_to_done()
    g.vm.clear_dirty_log(slot.slot, 64, 16)
    g.vm.clear_dirty_log(slot.slot, 0, 64)
    assert g.vm.get_dirty_log(slot.slot) == set()


CONCURRENT_WRITER = f"""
    mov rsi, 0x600                      # the host's iteration number
again:
    mov rbx, {LOGGED:#x}
    mov ecx, 32
1:  mov rax, qword ptr [rsi]
    mov qword ptr [rbx], rax
    add rbx, 0x1000
    dec ecx
    jnz 1b
    cmp qword ptr [rsi], 0
    jne again
    GUEST_DONE
"""


def test_dirty_log_with_a_writer_running_concurrently(guest):
    """While a vCPU keeps writing the current iteration number to every page of a logged slot,
    each KVM_GET_DIRTY_LOG reports pages whose contents are this or the previous iteration,
    never an older value, and a page written after a collection is reported by the next one
    (selftests dirty_log_test vm_dirty_log_verify)."""
    import time

    g = guest("long64", CONCURRENT_WRITER, identity_size=LOGGED + 0x20000)
    slot = g.vm.add_memory(LOGGED, 0x20000, flags=KVM_MEM_LOG_DIRTY_PAGES)
    g.vm.write_u64(0x600, 1)
    thread = g.in_thread(timeout=30)
    for iteration in range(2, 8):
        time.sleep(0.03)
        g.vm.write_u64(0x600, iteration)
        # Collect once every page holds this iteration, so each was written after the last
        # collection (the host set the value after it): waiting for that, not for a fixed time,
        # keeps a vCPU thread the host's scheduler starves from reading as a missed dirty page.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and \
                any(g.vm.read_u64(LOGGED + p * 0x1000) != iteration for p in range(32)):
            time.sleep(0.001)
        dirty = g.vm.get_dirty_log(slot.slot)
        assert dirty == set(range(32)), f"round {iteration}: dirty pages {sorted(dirty)}, the guest writes all 32"
        stale = {p: v for p in dirty if (v := g.vm.read_u64(LOGGED + p * 0x1000)) not in (iteration - 1, iteration)}
        assert not stale, \
            f"round {iteration}: dirty pages holding other values than {iteration - 1}/{iteration}: {stale}"
    # A write that surely came after the last collection: wait until page 0 holds iteration 8
    # (otherwise the guest may see the stop value before it writes again, and nothing is owed).
    g.vm.write_u64(0x600, 8)
    deadline = time.monotonic() + 10
    while g.vm.read_u64(LOGGED) != 8 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert g.vm.read_u64(LOGGED) == 8, "the guest did not write iteration 8 to page 0 within 10 s"
    g.vm.write_u64(0x600, 0)
    thread.join(30)
    dirty = g.vm.get_dirty_log(slot.slot)
    assert 0 in dirty, \
        f"page 0 was written (value 8) after the last collection, but KVM_GET_DIRTY_LOG reports {sorted(dirty)}"
