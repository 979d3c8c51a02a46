"""vCPUs spinning with PAUSE on one lock all make progress (kvm-unit-tests vmexit
ple_round_robin, whose timing is benchmarks/bench_vmexit.py).

PAUSE has no architectural effect besides the hint (SDM Vol. 2B PAUSE); a host that intercepts it
(pause-loop exiting) must still run every vCPU on, so each spinning vCPU eventually takes the lock.
XCHG with a memory operand is locked (SDM Vol. 2B XCHG), so the lock admits one vCPU at a time and
the plain read-increment-write of the shared counter inside it loses no update. The vCPUs run at
CPL3, natively everywhere; every KVM_RUN has a timeout.
"""

import pytest

from kvmtest.guest import layout as L

VCPUS = 4
ROUNDS = 1000
LOCK = L.DATA
COUNTER = L.DATA + 8
OWN = L.DATA + 0x100       # vCPU i's critical sections at OWN + 8 * i (r9)

SPIN = f"""
start:
    mov r10, {LOCK:#x}
    mov r11, {COUNTER:#x}
    mov r12d, {ROUNDS}
again:
    mov eax, 1
    xchg eax, dword ptr [r10]
    test eax, eax
    jz locked
    pause
    jmp again
locked:
    mov rax, qword ptr [r11]
    inc rax
    mov qword ptr [r11], rax
    inc qword ptr [r9]
    mov dword ptr [r10], 0
    dec r12d
    jnz again
    GUEST_DONE
"""


@pytest.mark.modes(code_bits=64, cpl=3)
def test_vcpus_spinning_with_pause_on_one_lock_all_finish(guest, mode):
    """Four vCPUs each take a PAUSE spin lock 1,000 times and increment a shared counter inside it
    with a plain load and store: every vCPU finishes (none is starved by the others' spinning),
    each made its 1,000 critical sections and the counter is 4,000 (SDM Vol. 2B PAUSE, XCHG)."""
    g = guest(mode, SPIN)
    vcpus = [g.vcpu] + [g.add_vcpu("start") for _ in range(VCPUS - 1)]
    for i, vcpu in enumerate(vcpus):
        regs = vcpu.get_regs()
        regs.r9 = OWN + 8 * i
        vcpu.set_regs(regs)
    threads = [g.in_thread(v, timeout=20) for v in vcpus]
    results = [t.join(60) for t in threads]
    assert results == [[]] * VCPUS, f"each vCPU should end with GUEST_DONE and no sync, got {results}"
    own = [g.vm.read_u64(OWN + 8 * i) for i in range(VCPUS)]
    assert own == [ROUNDS] * VCPUS, f"critical sections per vCPU {own}, expected {ROUNDS} each"
    total = g.vm.read_u64(COUNTER)
    assert total == VCPUS * ROUNDS, \
        f"the shared counter reads {total} after {VCPUS * ROUNDS} locked increments: the lock let two vCPUs in"
