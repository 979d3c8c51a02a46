"""The dirty ring (api.rst 8.29 KVM_CAP_DIRTY_LOG_RING): per-vCPU rings of kvm_dirty_gfn
entries mapped at KVM_DIRTY_LOG_PAGE_OFFSET of the vCPU fd, KVM_RESET_DIRTY_RINGS, and
KVM_EXIT_DIRTY_RING_FULL (api.rst 5)."""

import pytest

from kvmtest.abi.constants import KVM_MEM_LOG_DIRTY_PAGES
from kvmtest.exits import DirtyRingFullExit
from kvmtest.guest.modes import regs_for
from kvmtest.guest.protocol import Done
from kvmtest.ioctl import errno_name

pytestmark = pytest.mark.requires_cap("KVM_CAP_DIRTY_LOG_RING")
LOGGED = 0x400000  # a logged slot above the guest's own memory
RING = 64 * 1024   # api.rst recommends at least 64 KiB (4096 entries)


def _store(page: int, value: int = 1) -> str:
    return f"mov rbx, {LOGGED + page * 0x1000 + 8:#x}\nmov qword ptr [rbx], {value}"


def _ring_guest(guest, vm, source, npages=16, ring=RING, mode="long64"):
    vm.enable_dirty_ring(ring)
    g = guest(mode, source, vm=vm, identity_size=LOGGED + npages * 0x1000)
    slot = vm.add_memory(LOGGED, npages * 0x1000, flags=KVM_MEM_LOG_DIRTY_PAGES)
    return g, slot.slot


def test_ring_is_refused_once_a_vcpu_exists(vm):
    """KVM_CAP_DIRTY_LOG_RING "is only allowed before creating any vCPU" (api.rst 8.29)."""
    vm.create_vcpu()
    err = vm.try_enable_cap("KVM_CAP_DIRTY_LOG_RING", RING)
    assert err != 0, "KVM_ENABLE_CAP(KVM_CAP_DIRTY_LOG_RING) succeeded after KVM_CREATE_VCPU"


def test_ring_size_must_be_a_power_of_two(vm):
    """"The size of the ring must be a power of two" (api.rst 8.29): 3 pages is refused, and a
    later valid size still succeeds (the refusal left no ring behind)."""
    err = vm.try_enable_cap("KVM_CAP_DIRTY_LOG_RING", 3 * 4096)
    assert err != 0, "KVM_ENABLE_CAP(KVM_CAP_DIRTY_LOG_RING, 12288) succeeded; 12288 is not a power of two"
    err = vm.try_enable_cap("KVM_CAP_DIRTY_LOG_RING", RING)
    assert err == 0, f"KVM_ENABLE_CAP(KVM_CAP_DIRTY_LOG_RING, {RING}) after a refused size: {errno_name(err)}"


@pytest.mark.modes(code_bits=64)
def test_written_pages_and_only_those_are_pushed(guest, vm, mode):
    """Writes to a KVM_MEM_LOG_DIRTY_PAGES slot push (slot, page offset) entries with the DIRTY
    flag to the writing vCPU's ring: every written page appears and no other page or slot does
    (api.rst 8.29). Whether a page written twice appears twice is not specified there, so
    repeats are allowed."""
    g, slot = _ring_guest(guest, vm, "\n".join([_store(3), _store(9), _store(3, 2), _store(5), "GUEST_DONE"]),
                          mode=mode)
    g.run_to_done()
    got = g.vcpu.dirty_ring.harvest()
    assert {s for s, _ in got} == {slot} and {o for _, o in got} == {3, 9, 5}, \
        f"dirty ring entries (slot, offset): {got}, expected pages 3, 9 and 5 of slot {slot} only"


@pytest.mark.modes(code_bits=64)
def test_reset_rearms_the_collected_pages(guest, vm, mode):
    """After user space collects an entry (flags DIRTY -> RESET) and calls
    KVM_RESET_DIRTY_RINGS, "the kernel will reprotect those collected GFNs" (api.rst 8.29):
    the next guest write to the page is pushed to the ring again."""
    source = "\n".join([_store(4), "GUEST_SYNC 1", _store(4, 2), "GUEST_DONE"])
    g, slot = _ring_guest(guest, vm, source, mode=mode)
    ring = g.vcpu.dirty_ring
    assert g.expect_sync() == 1
    first = ring.harvest()
    assert set(first) == {(slot, 4)}, f"entries after the first write: {first}, expected page 4 of slot {slot}"
    vm.reset_dirty_rings()
    g.run_to_done()
    again = ring.harvest()
    assert set(again) == {(slot, 4)}, \
        f"entries after a write following KVM_RESET_DIRTY_RINGS: {again}, expected page 4 of slot {slot} again"


@pytest.mark.modes(code_bits=64)
def test_full_ring_exits_and_resumes_after_the_reset(guest, vm, mode):
    """A 4 KiB ring holds 256 entries; a guest dirtying 512 pages must fill it, and "when it
    happens, the KVM_RUN of the vcpu will return with exit reason KVM_EXIT_DIRTY_RING_FULL"
    (api.rst 8.29, 5). After each such exit user space harvests and calls
    KVM_RESET_DIRTY_RINGS; the guest then goes on, and every page ends up reported."""
    pages = 512
    r = regs_for(mode)
    loop = f"""
        mov {r['bx']}, {LOGGED:#x}
        mov ecx, {pages}
    1:  mov dword ptr [{r['bx']}], ecx
        add {r['bx']}, 0x1000
        dec ecx
        jnz 1b
        GUEST_DONE"""
    g, slot = _ring_guest(guest, vm, loop, npages=pages, ring=4096, mode=mode)
    ring = g.vcpu.dirty_ring
    seen, fulls = [], 0
    while not isinstance(event := g.run(), Done):
        if not isinstance(event, DirtyRingFullExit):
            raise g.failure(f"expected KVM_EXIT_DIRTY_RING_FULL or GUEST_DONE, got {event}")
        fulls += 1
        got = ring.harvest()
        if not got or fulls > pages:
            raise g.failure(f"KVM_EXIT_DIRTY_RING_FULL #{fulls} with no DIRTY entry at fetch index "
                            f"{ring.fetch_index} (flags there: {ring.flags()[ring.fetch_index % ring.count]:#x})")
        seen += got
        vm.reset_dirty_rings()
    assert fulls >= 1, f"{pages} dirtied pages in a 256-entry ring never gave KVM_EXIT_DIRTY_RING_FULL"
    seen += ring.harvest()
    missing = set(range(pages)) - {o for s, o in seen if s == slot}
    assert not missing and {s for s, _ in seen} == {slot}, \
        f"{len(seen)} entries after {fulls} ring-full exits; pages of slot {slot} never reported: {sorted(missing)}"
