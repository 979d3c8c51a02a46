"""Dirty-page collection while a vCPU keeps writing random pages (selftests dirty_log_test), in each
collection mode: KVM_GET_DIRTY_LOG (api.rst 4.8), KVM_GET_DIRTY_LOG + KVM_CLEAR_DIRTY_LOG under
KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 (4.117, 7.18), and the dirty ring harvested and reset with
KVM_RESET_DIRTY_RINGS (8.29) while the vCPU runs.

The contract: a page written after a collection completed is reported by a later collection. The
verdict must not depend on timing, so the host checks an invariant that holds however the two
threads interleave. Round k: the host stores k in a control word, waits until the guest has made
some writes since, collects the set D(k) and then snapshots every page. A page whose contents
differ between snapshots k-1 and k was written after collection k-1 returned (snapshot k-1 was
taken after it), so it must be in D(k) or, if the write landed after its page was collected, in
D(k+1). After the last round the guest stops and a final collection closes the account.

The guest runs at CPL3 so that its loop runs natively everywhere (kvm_pvm emulates CPL0 code one
instruction at a time); every KVM_RUN has a timeout.
"""

import time

import pytest

from kvmtest.abi.constants import KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE, KVM_MEM_LOG_DIRTY_PAGES
from kvmtest.guest import layout as L

LOGGED = 0x300000          # the logged slot, inside the guest's identity map
PAGES = 64
CONTROL = L.DATA           # the round number the guest writes; 0 stops it
PROGRESS = L.DATA + 8      # how many stores the guest has made
ROUNDS = 6
WAIT = 10                  # seconds the host waits for the guest to make progress
RING = 64 * 1024

# xorshift64 (r8) picks the page; each store writes the round number to the page's first qword.
WRITER = f"""
    mov r8, 0x9E3779B97F4A7C15
    mov rsi, {CONTROL:#x}
    mov rdi, {LOGGED:#x}
next:
    mov rax, qword ptr [rsi]
    test rax, rax
    jz stop
    mov rdx, r8
    shl rdx, 13
    xor r8, rdx
    mov rdx, r8
    shr rdx, 7
    xor r8, rdx
    mov rdx, r8
    shl rdx, 17
    xor r8, rdx
    mov rdx, r8
    and edx, {PAGES - 1}
    shl rdx, 12
    mov qword ptr [rdi + rdx], rax
    inc qword ptr [rsi + 8]
    jmp next
stop:
    GUEST_DONE
"""


class Collector:
    """One collection mode: `collect()` returns the logged slot's pages reported since the last call
    and leaves them armed again (write-protected) before it returns."""

    def __init__(self, g, slot, mode):
        self.vm, self.slot, self.mode = g.vm, slot, mode
        self.ring = g.vcpu.dirty_ring if mode == "ring" else None

    def collect(self) -> set[int]:
        if self.mode == "ring":
            pages = {offset for slot, offset in self.ring.harvest() if slot == self.slot}
            self.vm.reset_dirty_rings()
            return pages
        pages = self.vm.get_dirty_log(self.slot)
        if self.mode == "get-clear" and pages:
            self.vm.clear_dirty_log(self.slot, 0, PAGES, pages)
        return pages


def _setup(guest, vm, mode, collection):
    if collection == "get-clear":
        if not vm.check_extension("KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2"):
            pytest.skip("needs KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2")
        vm.enable_cap("KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2", KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE)
    if collection == "ring":
        if not vm.check_extension("KVM_CAP_DIRTY_LOG_RING"):
            pytest.skip("needs KVM_CAP_DIRTY_LOG_RING")
        vm.enable_dirty_ring(RING)  # before the vCPU exists (api.rst 8.29)
    g = guest(mode, WRITER, vm=vm)
    slot = vm.add_memory(LOGGED, PAGES * 0x1000, flags=KVM_MEM_LOG_DIRTY_PAGES).slot
    return g, Collector(g, slot, collection)


def _snapshot(vm) -> list[int]:
    return [vm.read_u64(LOGGED + p * 0x1000) for p in range(PAGES)]


def _await_progress(vm, stores: int) -> None:
    start = vm.read_u64(PROGRESS)
    deadline = time.monotonic() + WAIT
    while vm.read_u64(PROGRESS) - start < stores:
        if time.monotonic() > deadline:
            raise AssertionError(f"the guest made {vm.read_u64(PROGRESS) - start} stores in {WAIT} s, "
                                 f"expected {stores}")
        time.sleep(0.001)


@pytest.mark.modes(code_bits=64, cpl=3)
@pytest.mark.parametrize("collection", ["get", "get-clear", "ring"])
def test_no_write_is_missed_while_the_vcpu_keeps_writing(guest, vm, mode, collection):
    """Over six rounds of collection while the vCPU stores the round number to random pages of a
    64-page logged slot, every page whose contents changed after a collection is reported by the
    next collection or the one after it, and the final collection, after the vCPU stopped,
    reports every change still owed (api.rst 4.8, 4.117, 8.29; selftests dirty_log_test)."""
    g, collector = _setup(guest, vm, mode, collection)
    collector.collect()  # nothing is written yet: start from an empty log
    before = _snapshot(vm)
    vm.write_u64(CONTROL, 1)
    thread = g.in_thread(timeout=30)
    owed: dict[int, int] = {}   # page -> the round whose collection must report it at the latest
    seen_values = set()
    try:
        for k in range(1, ROUNDS + 1):
            vm.write_u64(CONTROL, k)
            _await_progress(vm, 200)
            dirty = collector.collect()
            after = _snapshot(vm)
            changed = {p for p in range(PAGES) if after[p] != before[p]}
            missed = sorted(p for p, due in owed.items() if due <= k and p not in dirty)
            assert not missed, f"{collection} round {k}: pages {missed} changed after collection {k - 2} and " \
                               f"were reported by neither collection {k - 1} nor {k}"
            owed = {p: due for p, due in owed.items() if p not in dirty}
            owed.update({p: k + 1 for p in changed - dirty if p not in owed})
            seen_values.update(after)
            before = after
    finally:
        vm.write_u64(CONTROL, 0)
        thread.join(30)
    final = collector.collect()
    changed = {p for p in range(PAGES) if _snapshot(vm)[p] != before[p]}
    missed = sorted((set(owed) | changed) - final)
    assert not missed, f"{collection}: after the vCPU stopped, pages {missed} were written but never reported"
    assert len(seen_values - {0}) >= ROUNDS - 1, \
        f"the guest wrote round numbers {sorted(seen_values)}; the check needs writes in (nearly) every round"
