"""Changing the local APIC timer between one-shot and periodic while it counts: "Changing the
mode of the APIC timer (from one-shot to periodic or vice versa) by writing to the timer LVT
entry does not start the timer"; only a write of the initial-count register does, and in
periodic mode the current count is reloaded from the initial count when it reaches 0 (SDM Vol.
3A 11.5.4 "APIC Timer"; kvm-unit-tests apic.c test_apic_change_mode)."""

import pytest

from kvmtest.guest.paging import KiB4
from kvmtest.x86 import APIC_DEFAULT_PHYS_BASE, PTE_P, PTE_PCD, PTE_RW

pytestmark = pytest.mark.requires_cap("KVM_CAP_IRQCHIP")
APIC = APIC_DEFAULT_PHYS_BASE
COUNT = 0x2000000                 # initial count; divide by 1, so some 33 ms at KVM's 1 GHz APIC bus
HALF = COUNT // 2
ONE_SHOT = 0x10030                # LVT timer: masked (no interrupt needed), vector 0x30, one-shot
PERIODIC = 0x30030                # the same, periodic (bits 18:17 = 01b)
SPIN = 2_000_000                  # bound on each wait loop, so a timer that never moves fails
# A mode change must find the timer counting; a vCPU preempted past half a period (16 ms) between
# seeing the count below half and the LVT write finds it run out (one-shot) or reloaded (periodic)
# instead, which says nothing about KVM: the guest tries that step again, up to this many times. A
# KVM that stops or reloads the count on every mode change still fails (the host checks the values).
ATTEMPTS = 5

# Each wait reads the current-count register (0x390) until its condition holds.
GUEST = f"""
    mov rbx, {APIC:#x}
    mov dword ptr [rbx + 0xF0], 0x1FF
    mov dword ptr [rbx + 0x3E0], 0xB            # divide by 1
    mov dword ptr [rbx + 0x320], {ONE_SHOT:#x}
    mov dword ptr [rbx + 0x380], {COUNT:#x}     # start, one-shot
    mov dword ptr [rbx + 0x320], {PERIODIC:#x}  # mode change
    mov eax, dword ptr [rbx + 0x380]
    GUEST_SYNC rax                              # initial count after the mode change
    mov edi, {ATTEMPTS}
8:  mov dword ptr [rbx + 0x320], {ONE_SHOT:#x}
    mov dword ptr [rbx + 0x380], {COUNT:#x}     # restart, one-shot
    call below_half
    mov dword ptr [rbx + 0x320], {PERIODIC:#x}  # one-shot -> periodic while counting
    mov eax, dword ptr [rbx + 0x390]
    test eax, eax                               # 0: it ran out before the change (vCPU preempted)
    jnz 9f
    dec edi
    jnz 8b
9:
    GUEST_SYNC rax                              # still counting down, not reloaded
    call reloaded
    mov eax, dword ptr [rbx + 0x390]
    GUEST_SYNC rax                              # periodic: reloaded on reaching 0
    mov edi, {ATTEMPTS}
10: call below_half
    mov dword ptr [rbx + 0x320], {ONE_SHOT:#x}  # periodic -> one-shot while counting
    mov eax, dword ptr [rbx + 0x390]
    cmp eax, {HALF:#x}                          # above half: reloaded before the change (vCPU preempted)
    jb 11f
    mov dword ptr [rbx + 0x320], {PERIODIC:#x}  # back to periodic (a mode change starts nothing) and again
    dec edi
    jnz 10b
11:
    GUEST_SYNC rax                              # still counting down
    call at_zero
    mov eax, dword ptr [rbx + 0x390]
    GUEST_SYNC rax                              # one-shot: stopped at 0
    mov dword ptr [rbx + 0x320], {PERIODIC:#x}  # a mode change does not start the timer
    mov eax, dword ptr [rbx + 0x390]
    GUEST_SYNC rax
    GUEST_DONE
below_half:
    mov ecx, {SPIN}
1:  cmp dword ptr [rbx + 0x390], {HALF:#x}
    jb 2f
    dec ecx
    jnz 1b
    GUEST_FAIL "the current count did not fall below half the initial count"
2:  ret
reloaded:
    mov ecx, {SPIN}
3:  cmp dword ptr [rbx + 0x390], {HALF:#x}
    ja 4f
    dec ecx
    jnz 3b
    GUEST_FAIL "the periodic timer's current count was not reloaded"
4:  ret
at_zero:
    mov ecx, {SPIN}
5:  cmp dword ptr [rbx + 0x390], 0
    je 6f
    dec ecx
    jnz 5b
    GUEST_FAIL "the one-shot timer's current count did not reach 0"
6:  ret
"""


def test_timer_mode_change_neither_restarts_nor_stops_the_count(guest):
    """With the timer counting (LVT masked, so no interrupt is involved): a mode change leaves the
    initial count as written; one-shot -> periodic keeps the current count below half (no reload
    by the LVT write) and the count is then reloaded above half on reaching 0; periodic -> one-shot
    keeps counting below half, stops at 0 and stays there; a change back to periodic with the
    count at 0 does not start the timer again (SDM Vol. 3A 11.5.4)."""
    g = guest("long64", GUEST, irqchip=True)
    g.page_tables.map(APIC, APIC, KiB4, PTE_P | PTE_RW | PTE_PCD)
    initial, to_periodic, reloaded, to_one_shot, stopped, still = g.run_to_done()
    assert initial == COUNT, f"initial-count register after an LVT mode change: {initial:#x}, expected {COUNT:#x}"
    assert 0 < to_periodic < HALF, \
        f"current count right after one-shot -> periodic: {to_periodic:#x}, expected it still counting below " \
        f"{HALF:#x} (a mode change does not reload it)"
    assert reloaded > HALF, f"periodic current count after reaching 0: {reloaded:#x}, expected a reload above {HALF:#x}"
    assert 0 < to_one_shot < HALF, \
        f"current count right after periodic -> one-shot: {to_one_shot:#x}, expected it still counting below {HALF:#x}"
    assert (stopped, still) == (0, 0), \
        f"current count once the one-shot count ran out: {stopped:#x}, after a change to periodic: {still:#x}; " \
        "expected 0 and 0 (only an initial-count write starts the timer)"
