"""KVM_PRE_FAULT_MEMORY: map guest memory ahead of its first use, with partial progress reported in
the struct and its range rules (selftests pre_fault_memory_test).

api.rst 4.143 KVM_PRE_FAULT_MEMORY (KVM_CAP_PRE_FAULT_MEMORY, vcpu ioctl): returns 0 if at least
one page was processed, and on return gpa/size describe the range still left ("If size > 0 on
return, the caller can just issue the ioctl again"); EINVAL for a gpa/size that is not page
aligned, overflows or is zero, ENOENT for a gpa outside the memslots, EINTR when a signal is pending
and no page was processed; flags must be zero. Memory mapped this way is read by the guest as
any other (api.rst 4.35). Shadow paging answers EOPNOTSUPP "even if KVM_CHECK_EXTENSION reports
the capability"; a host that reports it for the VM runs these checks.
"""

import contextlib
import errno
import threading

import pytest

from kvmtest.errors import KvmError
from kvmtest.vcpu_watchdog import send_kick

pytestmark = pytest.mark.requires_cap("KVM_CAP_PRE_FAULT_MEMORY")

PAGE = 0x1000
BASE = 0x400000              # 2 MiB aligned, above slot 0
SIZE = 0x200000 + PAGE       # 2 MiB and one page, as the peer maps
PAGES = SIZE // PAGE

READ_ALL = f"""
    mov rax, {BASE:#x}
again:
    mov rbx, qword ptr [rax]
    add rax, {PAGE:#x}
    cmp rax, {BASE + SIZE:#x}
    jb again
    GUEST_DONE
"""


def _pre_fault(vcpu, gpa, size, retry_eagain=False, expired=None):
    """Issue KVM_PRE_FAULT_MEMORY until it maps everything or fails: (errno, bytes left). Each
    success must have made progress and each failure none (api.rst 4.143). EINTR is retried
    unless `expired` (a threading.Event) is set: then it is the deadline's kick, and returned."""
    while True:
        err, new_gpa, left = vcpu.try_pre_fault_memory(gpa, size)
        if err:
            assert (new_gpa, left) == (gpa, size), \
                f"KVM_PRE_FAULT_MEMORY failed ({errno.errorcode.get(err, err)}) but moved the range from " \
                f"{gpa:#x}+{size:#x} to {new_gpa:#x}+{left:#x}"
            if expired is not None and expired.is_set():
                return err, size
            if err == errno.EINTR or (retry_eagain and err == errno.EAGAIN):
                continue
            return err, size
        assert left < size and new_gpa == gpa + (size - left), \
            f"KVM_PRE_FAULT_MEMORY succeeded without progress: {gpa:#x}+{size:#x} -> {new_gpa:#x}+{left:#x}"
        if not left:
            return 0, 0
        gpa, size = new_gpa, left


DEADLINE = 10  # seconds; the churn takes milliseconds


@contextlib.contextmanager
def _kicked_after(seconds):
    """Bound the ioctls of the `with` body, which no KVM_RUN watchdog watches: past `seconds`, set
    the event it yields and send SIG_KICK to this thread every 50 ms until the body ends. KVM
    ioctls that loop in the kernel leave on a pending signal with EINTR (api.rst 4.143: "EINTR"
    when a signal is pending); the body must check the event to stop retrying. The helper thread
    is joined on exit, so no kick outlives the body (one sent before the join is taken then)."""
    expired, done = threading.Event(), threading.Event()
    target = threading.get_ident()

    def kick():
        if not done.wait(seconds):
            expired.set()
            while not done.wait(0.05):
                send_kick(target)

    kicker = threading.Thread(target=kick, name="kvmtest-pre-fault-deadline", daemon=True)
    kicker.start()
    try:
        yield expired
    finally:
        done.set()
        kicker.join()


def _guest(guest):
    g = guest("long64", READ_ALL, identity_size=BASE + SIZE + PAGE)
    g.vm.add_memory(BASE, SIZE)
    return g


def test_pre_faulting_a_memslot_range_maps_all_of_it(guest):
    """Pre-faulting the first 2 MiB of a slot completes (0 bytes left); the guest then reads every
    page of the slot (api.rst 4.143)."""
    g = _guest(guest)
    err, left = _pre_fault(g.vcpu, BASE, 0x200000)
    assert (err, left) == (0, 0), f"KVM_PRE_FAULT_MEMORY of {BASE:#x}+0x200000: {errno.errorcode.get(err, err)}, " \
                                  f"{left:#x} bytes left"
    g.run_to_done()


def test_pre_faulting_past_the_end_of_a_memslot_stops_with_enoent(guest):
    """Two pages from the slot's last page on: the page inside is mapped, then KVM_PRE_FAULT_MEMORY
    fails with ENOENT leaving exactly the page past the slot (api.rst 4.143)."""
    g = _guest(guest)
    err, left = _pre_fault(g.vcpu, BASE + SIZE - PAGE, 2 * PAGE)
    assert (err, left) == (errno.ENOENT, PAGE), \
        f"expected ENOENT with {PAGE:#x} bytes left, got {errno.errorcode.get(err, err)} with {left:#x}"


def test_pre_faulting_outside_every_memslot_is_enoent(guest):
    """A page past the slot, in no memslot: ENOENT at once, the range untouched (api.rst 4.143)."""
    g = _guest(guest)
    err, gpa, left = g.vcpu.try_pre_fault_memory(BASE + SIZE, PAGE)
    assert (err, gpa, left) == (errno.ENOENT, BASE + SIZE, PAGE), \
        f"KVM_PRE_FAULT_MEMORY of {BASE + SIZE:#x}+{PAGE:#x}: {errno.errorcode.get(err, err)}, range {gpa:#x}+{left:#x}"


@pytest.mark.parametrize("gpa,size,flags", [
    pytest.param(BASE, 0, 0, id="size-zero"),
    pytest.param(BASE + 0x10, PAGE, 0, id="gpa-unaligned"),
    pytest.param(BASE, PAGE + 0x10, 0, id="size-unaligned"),
    pytest.param((1 << 64) - PAGE, 2 * PAGE, 0, id="range-overflows"),
    pytest.param(BASE, PAGE, 1, id="flags-nonzero"),
])
def test_bad_ranges_and_flags_are_einval(guest, gpa, size, flags):
    """A zero size, a gpa or size that is not page aligned, a range that overflows, or nonzero flags:
    EINVAL, with gpa and size left as they were (api.rst 4.143)."""
    g = _guest(guest)
    err, new_gpa, left = g.vcpu.try_pre_fault_memory(gpa, size, flags)
    assert (err, new_gpa, left) == (errno.EINVAL, gpa, size), \
        f"KVM_PRE_FAULT_MEMORY gpa={gpa:#x} size={size:#x} flags={flags}: {errno.errorcode.get(err, err)}, " \
        f"range {new_gpa:#x}+{left:#x}; expected EINVAL, untouched"


def test_pre_faulting_while_the_memslot_is_deleted_and_recreated(guest):
    """A thread deletes the slot and adds it again while KVM_PRE_FAULT_MEMORY runs over it: every
    call either progresses or fails without moving the range (EAGAIN and EINTR retried, ENOENT only
    while the slot is gone); once the slot is back the pre-fault completes and the guest reads every
    page (api.rst 4.143, 4.35)."""
    g = _guest(guest)
    slot = g.vm.slot_for(BASE).slot
    gone = threading.Event()

    def churn():
        g.vm.delete_memslot(slot)
        gone.set()
        g.vm.add_memory(BASE, SIZE, slot=slot)

    worker = threading.Thread(target=churn)
    worker.start()
    with _kicked_after(DEADLINE) as expired:
        err, left = _pre_fault(g.vcpu, BASE, 0x200000, retry_eagain=True, expired=expired)
    worker.join(DEADLINE)  # first: once the kick has ended the pre-fault, the deletion can finish
    assert not expired.is_set(), \
        f"KVM_PRE_FAULT_MEMORY did not complete within {DEADLINE} s while another thread deleted and re-added " \
        f"its memslot (ended by a signal: {errno.errorcode.get(err, err)}; the deletion then " \
        f"{'was still waiting' if worker.is_alive() else 'finished'})"
    assert not worker.is_alive(), "deleting and re-adding the memslot did not finish"
    if err:
        assert err == errno.ENOENT and gone.is_set(), \
            f"KVM_PRE_FAULT_MEMORY during the slot churn failed with {errno.errorcode.get(err, err)}"
        try:
            err, left = _pre_fault(g.vcpu, BASE + 0x200000 - left, left)
        except KvmError as e:
            raise AssertionError(f"KVM_PRE_FAULT_MEMORY after the slot came back: {e}") from e
    assert (err, left) == (0, 0), f"KVM_PRE_FAULT_MEMORY after the slot came back: {errno.errorcode.get(err, err)}, " \
                                  f"{left:#x} bytes left"
    g.run_to_done()
