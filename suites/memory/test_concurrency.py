"""Memslots changed while a vCPU runs in them (api.rst 4.35; selftests set_memory_region_test,
memslot_modification_stress_test)."""

import time

from kvmtest.exits import MmioExit

TARGET = 0x300000
PATTERN = 0x0BADC0DE0BADC0DE

SPIN = f"""
    mov rbx, {TARGET:#x}
    mov rcx, {PATTERN:#x}
spin:
    mov rax, qword ptr [rbx]
    cmp rax, rcx
    je spin
    GUEST_SYNC rax
    GUEST_DONE
"""


def test_deleting_a_slot_under_a_running_vcpu(guest):
    """A vCPU spinning on a qword in a slot that is deleted sees either the old value or an
    MMIO exit for that qword, never other data (selftests test_delete_memory_region)."""
    g = guest("long64", SPIN)
    slot = g.vm.add_memory(TARGET, 0x1000)
    g.vm.write_u64(TARGET, PATTERN)
    thread = g.in_thread(until_done=False, timeout=20)
    time.sleep(0.05)
    g.vm.delete_memslot(slot.slot)
    event = thread.join(30)
    assert isinstance(event, MmioExit) and event.phys_addr == TARGET and event.len == 8, \
        f"expected KVM_EXIT_MMIO read of 8 bytes at {TARGET:#x} after the delete, got {event}"


def test_moving_a_slot_under_a_running_vcpu(guest):
    """A vCPU spinning on a qword whose slot moves away sees the old value, then an MMIO exit
    (the range is no longer memory) — never garbage (selftests test_move_memory_region)."""
    g = guest("long64", SPIN)
    slot = g.vm.add_memory(TARGET, 0x1000)
    g.vm.write_u64(TARGET, PATTERN)
    thread = g.in_thread(until_done=False, timeout=20)
    time.sleep(0.05)
    g.vm.move_memslot(slot.slot, TARGET + 0x100000)
    event = thread.join(30)
    assert isinstance(event, MmioExit) and event.phys_addr == TARGET, event


def test_repeated_add_and_delete_beside_a_running_vcpu(guest):
    """Adding and deleting an unrelated slot 200 times while a vCPU runs does not disturb it
    (selftests memslot_modification_stress_test)."""
    g = guest("long64", SPIN)
    slot = g.vm.add_memory(TARGET, 0x1000)
    g.vm.write_u64(TARGET, PATTERN)
    thread = g.in_thread(until_done=False, timeout=20)
    for _ in range(200):
        extra = g.vm.add_memory(0x10000000, 0x1000)
        g.vm.delete_memslot(extra.slot)
    assert thread.alive(), "the vCPU stopped while an unrelated slot changed"
    g.vm.write_u64(TARGET, 0x77)
    event = thread.join(30)
    assert getattr(event, "value", None) == 0x77, f"expected GUEST_SYNC(0x77), got {event}"
    del slot


def test_deleting_the_slot_the_vcpu_runs_from(guest):
    """Deleting the slot that holds the running guest's code and page tables leaves it nothing
    to fetch: KVM_RUN ends with KVM_EXIT_SHUTDOWN or KVM_EXIT_INTERNAL_ERROR, never a hang or a
    host error (selftests test_delete_memory_region)."""
    from kvmtest.exits import InternalErrorExit, ShutdownExit

    g = guest("long64", "spin: jmp spin")
    thread = g.in_thread(until_done=False, timeout=20)
    time.sleep(0.05)
    g.vm.delete_memslot(0)
    event = thread.join(30)
    assert isinstance(event, (ShutdownExit, InternalErrorExit)), \
        f"expected KVM_EXIT_SHUTDOWN or KVM_EXIT_INTERNAL_ERROR after deleting slot 0, got {event}"
