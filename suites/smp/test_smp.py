"""Several vCPUs on threads: shared memory with locked instructions, and application-processor
bring-up with INIT and SIPI through the in-kernel local APIC (SDM Vol. 3A 8.1.2.2 locked
operations, 8.4.4 MP initialization, 11.6 ICR; api.rst 4.7, 4.24, 4.38 MP state)."""

import os

import pytest

from kvmtest.abi import constants as C
from kvmtest.exits import IntrExit
from kvmtest.guest.paging import KiB4
from kvmtest.x86 import PTE_P, PTE_PCD, PTE_RW

COUNTER = 0x600
ITERATIONS = 30000

ARRIVED = 0x6C0


def _barrier(bits: int, vcpus: int) -> str:
    """Count this vCPU in and wait for all `vcpus`, so that the loops after it really overlap."""
    b = "rbx" if bits == 64 else "ebx"
    return f"""
    mov {b}, {ARRIVED:#x}
    lock inc dword ptr [{b}]
3:  cmp dword ptr [{b}], {vcpus}
    jne 3b
"""


def _locked_increments(bits: int) -> str:
    b, width = ("rbx", "qword") if bits == 64 else ("ebx", "dword")
    return f"""{_barrier(bits, 3)}
    mov {b}, {COUNTER:#x}
    mov ecx, {ITERATIONS}
1:  lock inc {width} ptr [{b}]
    dec ecx
    jnz 1b
    GUEST_DONE
"""


MIXED = f"""{_locked_increments(64)}
user64:
GUEST_AT_CPL 3
{_locked_increments(64)}
GUEST_AT_CPL 0
.code32
compat:
{_locked_increments(32)}
"""


def test_locked_increments_from_vcpus_in_different_modes_add_up(guest):
    """Three vCPUs — 64-bit CPL0, compatibility mode and 64-bit CPL3 — each LOCK INC a shared
    counter; the total is exactly the sum of their increments (SDM Vol. 3A 8.1.2.2)."""
    g = guest("long64", MIXED, user_pages=True)
    vcpus = [g.vcpu, g.add_vcpu("compat", mode="compat32"), g.add_vcpu("user64", mode="long64-cpl3")]
    for thread in [g.in_thread(v, timeout=60) for v in vcpus]:
        thread.join(120)
    total = g.vm.read_u64(COUNTER)
    assert total == 3 * ITERATIONS, f"counter {total}, expected {3 * ITERATIONS} (lost or duplicated increments)"


APIC = 0xFEE00000
BRINGUP = f"""
    mov rbx, {APIC:#x}
    mov dword ptr [rbx + 0xF0], 0x1FF           # SVR: APIC software-enabled, spurious vector 0xFF
    mov dword ptr [rbx + 0x310], 0x01000000     # ICR high: destination APIC ID 1
    mov dword ptr [rbx + 0x300], 0x00004500     # ICR low: INIT, assert
    mov dword ptr [rbx + 0x300], 0x00004609     # ICR low: start-up, vector 9 -> 0x9000
    GUEST_DONE
.code16
.org 0x9000
ap_entry:
    mov ax, cs
    GUEST_SYNC ax
    GUEST_DONE
"""


@pytest.mark.requires_cap("KVM_CAP_IRQCHIP")
def test_ap_starts_at_the_sipi_vector(guest):
    """With an in-kernel irqchip an AP waits in KVM_MP_STATE_UNINITIALIZED (api.rst 4.38); INIT
    then a start-up IPI with vector 9 from the BSP starts it in real mode at 0900:0000 (SDM
    Vol. 3A 8.4.4.1, 11.6.1)."""
    g = guest("long64", BRINGUP, irqchip=True)
    g.page_tables.map(APIC, APIC, KiB4, PTE_P | PTE_RW | PTE_PCD)
    ap = g.vm.create_vcpu(1)
    ap.set_cpuid(g.kvm.cached_supported_cpuid())
    assert ap.get_mp_state() == C.KVM_MP_STATE_UNINITIALIZED, C.MP_STATE_NAMES.name(ap.get_mp_state())
    ap_thread = g.in_thread(ap, timeout=20)
    g.run_to_done()
    syncs = ap_thread.join(30)
    assert syncs == [0x0900], f"AP code segment {syncs}, expected [0x900]"


LOCK, SHARED = 0x640, 0x680
LOCKED_ROUNDS = 3000


def _spinlock_loop(bits: int, vcpus: int) -> str:
    """Wait at a start barrier until all `vcpus` arrived (so the loops really overlap), then take
    an XCHG spinlock, do a deliberately non-atomic load/increment/store of the shared counter
    and release with a plain store; LOCKED_ROUNDS times."""
    b = "rbx" if bits == 64 else "ebx"
    return f"""{_barrier(bits, vcpus)}
    mov {b}, {LOCK:#x}
    mov ecx, {LOCKED_ROUNDS}
1:  mov eax, 1
    xchg dword ptr [{b}], eax
    test eax, eax
    jz 2f
    pause
    jmp 1b
2:  mov edx, dword ptr [{b} + {SHARED - LOCK:#x}]
    inc edx
    mov dword ptr [{b} + {SHARED - LOCK:#x}], edx
    mov dword ptr [{b}], 0
    dec ecx
    jnz 1b
    GUEST_DONE
"""


SPINLOCK_GROUPS = {
    # first mode is the guest's own; the others join it as further vCPUs
    "long64-compat32-long64cpl3": ("long64", [("compat32", 32, 0), ("long64-cpl3", 64, 3)]),
    "pm32-pm32cpl3": ("pm32", [("pm32-cpl3", 32, 3)]),
}


@pytest.mark.parametrize("group", sorted(SPINLOCK_GROUPS))
def test_xchg_spinlock_serialises_a_non_atomic_update(guest, group):
    """XCHG with a memory operand is locked whether or not LOCK is given (SDM Vol. 2B XCHG;
    Vol. 3A 8.1.2.1), so a spinlock built on it lets vCPUs in different modes do a plain
    load/increment/store of a shared counter without losing an update; the counter ends at
    the exact total."""
    first, others = SPINLOCK_GROUPS[group]
    vcpus = 1 + len(others)
    code = _spinlock_loop(64 if first == "long64" else 32, vcpus)
    for i, (_mode, bits, cpl) in enumerate(others):
        code += f".code{bits}\njoiner{i}:\nGUEST_AT_CPL {cpl}\n{_spinlock_loop(bits, vcpus)}GUEST_AT_CPL 0\n"
    g = guest(first, code, user_pages=True)
    joiners = [g.add_vcpu(f"joiner{i}", mode=mode) for i, (mode, _, _) in enumerate(others)]
    for thread in [g.in_thread(v, timeout=60) for v in [g.vcpu] + joiners]:
        thread.join(120)
    total = int.from_bytes(g.vm.read(SHARED, 4), "little")
    expected = vcpus * LOCKED_ROUNDS
    assert total == expected, f"counter {total}, expected {expected}: the XCHG lock let updates overlap"
    assert int.from_bytes(g.vm.read(LOCK, 4), "little") == 0, "lock left held after every vCPU finished"


FLAG, DATA, MISMATCHES = 0x700, 0x708, 0x710
MESSAGES = 3000

MESSAGE_PASSING = f"""
    mov rbx, {FLAG:#x}
    mov ecx, 1
1:  cmp dword ptr [rbx], 0          # wait for the consumer to take the last message
    jne 1b
    mov dword ptr [rbx + 8], ecx    # data first ...
    mov dword ptr [rbx], 1          # ... then the flag
    inc ecx
    cmp ecx, {MESSAGES + 1}
    jne 1b
    GUEST_DONE
.code32
consumer:
GUEST_AT_CPL 3
    mov ebx, {FLAG:#x}
    mov ecx, 1
1:  cmp dword ptr [ebx], 1          # flag seen ...
    jne 1b
    mov eax, dword ptr [ebx + 8]    # ... so the data written before it must be seen too
    cmp eax, ecx
    je 2f
    inc dword ptr [ebx + 16]
2:  mov dword ptr [ebx], 0
    inc ecx
    cmp ecx, {MESSAGES + 1}
    jne 1b
    GUEST_DONE
GUEST_AT_CPL 0
"""


def test_stores_are_seen_in_program_order_by_another_vcpu(guest):
    """Stores are not reordered with other stores and loads not with other loads (SDM Vol. 3A
    8.2.3.2): a 64-bit CPL0 producer writes a message then a flag, a compatibility-mode CPL3
    consumer that sees the flag always reads that message, never an older one. Needs two host CPUs:
    on one, every handoff waits for the scheduler to switch vCPU threads (a 1-CPU VM under QEMU's
    TCG took over 60 s for the 3,000 messages), and ordering between vCPUs that never run at the same
    time says nothing about the memory model."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("the producer and consumer vCPUs need two host CPUs to run at the same time; "
                    f"this process may use {len(os.sched_getaffinity(0))}")
    g = guest("long64", MESSAGE_PASSING, user_pages=True)
    consumer = g.add_vcpu("consumer", mode="compat32-cpl3")
    threads = [g.in_thread(v, timeout=60) for v in (g.vcpu, consumer)]
    for thread in threads:
        thread.join(120)
    stale = int.from_bytes(g.vm.read(MISMATCHES, 4), "little")
    assert stale == 0, f"{stale} of {MESSAGES} messages read stale data after their flag was seen"


UNKNOWN_MSR = 0x4B564D7F      # no MSR has this index: RDMSR of it raises #GP(0) (SDM Vol. 2B RDMSR)
OWN_RECORDS = f"""
    GUEST_ASSERT_RAISES UD, GUEST_SYNC 1        # armed; the host injects #UD here, later
    GUEST_DONE
second:
    mov ecx, {UNKNOWN_MSR:#x}
    GUEST_ASSERT_RAISES GP(0), faulting_rdmsr: rdmsr
    GUEST_DONE
"""


@pytest.mark.requires_cap("KVM_CAP_VCPU_EVENTS")
def test_an_exception_on_one_vcpu_leaves_another_vcpus_pending_check_alone(guest):
    """An exception is delivered to the processor that raised it, through that processor's IDT
    and stack (SDM Vol. 3A 6.1, 6.12; a vCPU's events are its own, api.rst 4.31/4.32). vCPU 0
    waits in a GUEST_ASSERT_RAISES for an #UD the host injects with KVM_SET_VCPU_EVENTS; in the
    meantime vCPU 1 raises, catches and checks #GP(0) from RDMSR of an unknown MSR. vCPU 0's #UD
    must then still be caught as expected, and each vCPU's exception record must hold its own
    exception: saved RIP, error code and a count of one. vCPU 0's GUEST_SYNC OUT is completed
    (KVM_RUN with immediate_exit) before its RIP is read and the #UD set: at a KVM_EXIT_IO the
    operation and the guest state are complete only once KVM_RUN is re-entered (api.rst 5, the
    note on KVM_EXIT_IO)."""
    g = guest("long64", OWN_RECORDS)
    second = g.add_vcpu("second")
    assert g.expect_sync() == 1, "vCPU 0 did not reach its GUEST_ASSERT_RAISES"
    g.run_to_done(vcpu=second)
    g.vcpu.kvm_run.immediate_exit = 1
    completed = g.vcpu.run()
    assert isinstance(completed, IntrExit), f"KVM_RUN with immediate_exit: expected KVM_EXIT_INTR, got {completed}"
    injected_at = g.vcpu.get_regs().rip
    ev = g.vcpu.get_events()
    ev.exception.injected, ev.exception.nr, ev.exception.has_error_code, ev.flags = 1, 6, 0, 0
    g.vcpu.set_events(ev)
    g.run_to_done()
    first_rec, second_rec = g.exception_record(g.vcpu), g.exception_record(second)
    want_first = {"rip": injected_at, "error_code": 0, "count": 1}
    want_second = {"rip": g.labels["faulting_rdmsr"], "error_code": 0, "count": 1}
    got_first = {k: first_rec[k] for k in want_first}
    got_second = {k: second_rec[k] for k in want_second}
    assert (got_first, got_second) == (want_first, want_second), \
        f"exception records: vCPU 0 {_hex(got_first)}, expected {_hex(want_first)} (#UD injected at its RIP); " \
        f"vCPU 1 {_hex(got_second)}, expected {_hex(want_second)} (#GP(0) at its RDMSR)"


def _hex(record):
    return "{" + ", ".join(f"{k}: {v:#x}" for k, v in record.items()) + "}"
