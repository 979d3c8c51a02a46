"""Timers armed before a migration fire after it, in the new VM: the local APIC's TSC-deadline
and one-shot timers, the PIT, and kvmclock keeps counting (api.rst KVM_GET/SET_LAPIC, KVM_GET/SET_PIT2,
KVM_GET/SET_CLOCK "used to ensure monotonicity on scenarios such as migration"; SDM Vol. 3A
11.5.4; 8254 datasheet; kvmtest.vm_state)."""

import struct
import time

import pytest

from kvmtest.guest import layout as L
from kvmtest.guest.msr_source import wrmsr
from kvmtest.guest.paging import KiB4
from kvmtest.guest.pic import counting_irq_handler, init_master_pic
from kvmtest.guest.pit import LATCH_COUNTER0
from kvmtest.x86 import KVM_MSR_ENABLED, MSR_IA32_TSC_DEADLINE, MSR_KVM_SYSTEM_TIME_NEW, PTE_P, PTE_PCD, PTE_RW

pytestmark = pytest.mark.requires_cap("KVM_CAP_IRQCHIP")
APIC = 0xFEE00000
TIMER_VECTOR = 0x30
APIC_IRR = 0x200
DELAY = L.DATA


def _apic_guest(guest, source, **kw):
    g = guest("long64", f"mov rbx, {APIC:#x}\n" + source, irqchip=True, **kw)
    g.page_tables.map(APIC, APIC, KiB4, PTE_P | PTE_RW | PTE_PCD)
    return g


def _apic_reg(lapic, offset):
    return struct.unpack_from("<I", bytes(lapic.regs), offset)[0]


def _irr_has(lapic, vector):
    return bool(_apic_reg(lapic, APIC_IRR + 0x10 * (vector // 32)) >> (vector % 32) & 1)


WAIT_FOR_TIMER = """
    GUEST_SYNC 1
    sti
wait:
    hlt
    jmp wait
"""


@pytest.mark.requires_cpu("tsc_deadline")
@pytest.mark.waits
def test_tsc_deadline_timer_armed_before_migration_fires_after_it(guest):
    """A TSC-deadline timer armed 500 ms ahead, still armed (IA32_TSC_DEADLINE set, vector not in
    the IRR) when the VM is saved, interrupts the guest in the new VM once its TSC has passed the
    deadline, and IA32_TSC_DEADLINE then reads 0 (SDM Vol. 3A 11.5.4.1). Restoring the MSRs
    before the LAPIC would drop it: the MSR write is ignored outside TSC-deadline mode."""
    g = _apic_guest(guest, f"""
        mov dword ptr [rbx + 0xF0], 0x1FF           # SVR: software enable
        mov dword ptr [rbx + 0x320], {0x40000 | TIMER_VECTOR:#x}   # LVT timer: TSC-deadline mode
        mfence
        rdtsc
        shl rdx, 32
        or rax, rdx
        mov rsi, {DELAY:#x}
        add rax, qword ptr [rsi]                    # 500 ms of TSC ticks, written by the host
        mov r12, rax
        mov rdx, rax
        shr rdx, 32
        mov ecx, {MSR_IA32_TSC_DEADLINE:#x}
        wrmsr
        {WAIT_FOR_TIMER}
    timer:
        rdtsc
        shl rdx, 32
        or rax, rdx
        GUEST_SYNC rax
        mov ecx, {MSR_IA32_TSC_DEADLINE:#x}
        rdmsr
        GUEST_SYNC rax
        GUEST_SYNC r12
        GUEST_DONE""")
    g.set_idt_gate(TIMER_VECTOR, "timer")
    g.vm.write_u64(DELAY, g.vcpu.get_tsc_khz() * 500)
    assert g.expect_sync() == 1
    deadline = g.vcpu.get_regs().r12
    armed = g.vcpu.get_msr(MSR_IA32_TSC_DEADLINE)
    assert armed == deadline and not _irr_has(g.vcpu.get_lapic(), TIMER_VECTOR), \
        f"before the save: IA32_TSC_DEADLINE {armed:#x} (guest wrote {deadline:#x}), timer vector in the IRR: " \
        f"{_irr_has(g.vcpu.get_lapic(), TIMER_VECTOR)}; the test needs a timer still armed"
    g.migrate()
    tsc_at_interrupt, msr_after, deadline_seen = g.run_to_done()
    assert deadline_seen == deadline
    assert tsc_at_interrupt >= deadline, \
        f"the timer interrupt came at guest TSC {tsc_at_interrupt:#x}, before the deadline {deadline:#x}"
    assert msr_after == 0, f"IA32_TSC_DEADLINE after the timer fired: {msr_after:#x}, expected 0"


@pytest.mark.waits
def test_one_shot_apic_timer_armed_before_migration_fires_after_it(guest):
    """A one-shot LAPIC timer (divide by 1, initial count 2^29) still counting when the VM is
    saved delivers its vector in the new VM, and its current count then reads 0 (SDM Vol. 3A
    11.5.4: one-shot stops at zero; KVM_SET_LAPIC restarts it from the saved current count)."""
    initial = 1 << 29
    g = _apic_guest(guest, f"""
        mov dword ptr [rbx + 0xF0], 0x1FF
        mov dword ptr [rbx + 0x3E0], 0xB            # divide configuration: by 1
        mov dword ptr [rbx + 0x320], {TIMER_VECTOR:#x}   # LVT timer: one-shot
        mov dword ptr [rbx + 0x380], {initial:#x}   # initial count
        {WAIT_FOR_TIMER}
    timer:
        mov eax, dword ptr [rbx + 0x390]
        GUEST_SYNC rax
        GUEST_DONE""")
    g.set_idt_gate(TIMER_VECTOR, "timer")
    assert g.expect_sync() == 1
    lapic = g.vcpu.get_lapic()
    current = _apic_reg(lapic, 0x390)
    assert 0 < current < initial and not _irr_has(lapic, TIMER_VECTOR), \
        f"before the save: current count {current:#x} of {initial:#x}, vector in the IRR: " \
        f"{_irr_has(lapic, TIMER_VECTOR)}; the test needs a timer still counting"
    g.migrate()
    assert g.run_to_done() == [0], "the one-shot timer's current count in its interrupt handler"


PIT_COUNT = 11932  # 10 ms at 1.193182 MHz


@pytest.mark.requires_cap("KVM_CAP_PIT_STATE2")
def test_pit_keeps_counting_and_ticking_after_migration(guest):
    """PIT channel 0 programmed by the guest (mode 2, lobyte/hibyte, binary, count 11932) goes on
    after migration: the read-back command reports the programmed mode and access (status bits
    5:0 = 0x34), a latched count lies in (0, 11932], and IRQ0 keeps arriving through the PIC
    (8254 datasheet: read-back command, mode 2; api.rst KVM_GET/SET_PIT2, KVM_GET/SET_IRQCHIP)."""
    g = guest("long64", init_master_pic(0x20, unmasked=(0,)) + f"""
        mov al, 0x34
        out 0x43, al            # PIT channel 0: lobyte/hibyte, mode 2, binary
        mov al, {PIT_COUNT & 0xFF}
        out 0x40, al
        mov al, {PIT_COUNT >> 8}
        out 0x40, al
        xor r12, r12
        sti
    ticks_before:
        hlt
        cmp r12, 2
        jb ticks_before
        cli
        GUEST_SYNC 1
        mov al, 0xE2
        out 0x43, al            # read-back: latch channel 0's status only
        in al, 0x40
        and eax, 0x3F
        GUEST_SYNC rax
        {LATCH_COUNTER0}
        GUEST_SYNC rax
        sti
    ticks_after:
        hlt
        cmp r12, 4
        jb ticks_after
        GUEST_DONE
        {counting_irq_handler("irq0")}""", irqchip=True)
    g.vm.create_pit2()
    g.set_idt_gate(0x20, "irq0")
    assert g.expect_sync() == 1
    pit = g.vm.get_pit2().channels[0]
    assert (pit.mode, pit.count) == (2, PIT_COUNT), f"KVM_GET_PIT2 before the save: mode {pit.mode}, count {pit.count}"
    g.migrate()
    status, latched = g.run_to_done()
    assert status == 0x34, f"PIT read-back status after migration: {status:#x}, expected 0x34 (lobyte/hibyte, mode 2)"
    assert 0 < latched <= PIT_COUNT, f"PIT channel 0 latched count after migration {latched}, expected 1..{PIT_COUNT}"


PVCLOCK = L.DATA + 0x100
@pytest.mark.requires_cap("KVM_CAP_ADJUST_CLOCK")
def test_kvmclock_runs_on_across_migration(guest, kvm):
    """The guest's kvmclock (MSR_KVM_SYSTEM_TIME_NEW) after migration reads no less than before it
    and has advanced by no more than the host's monotonic time around both reads (+1 ms): KVM_GET/SET_CLOCK carry
    it, which api.rst KVM_GET_CLOCK says is what keeps it monotonic across a migration. A new VM
    whose clock was not set starts it near 0."""
    if MSR_KVM_SYSTEM_TIME_NEW not in kvm.msr_index_list():
        pytest.skip("KVM_GET_MSR_INDEX_LIST has no MSR_KVM_SYSTEM_TIME_NEW")
    g = guest("long64", f"""
        .include "pvclock64.S"
        {wrmsr(MSR_KVM_SYSTEM_TIME_NEW, PVCLOCK | KVM_MSR_ENABLED)}
        GUEST_SYNC 0
        mov esi, {PVCLOCK:#x}
        call pvclock_read
        GUEST_SYNC rax
        call pvclock_read
        GUEST_SYNC rax
        GUEST_DONE""")
    assert g.expect_sync() == 0
    t0 = time.monotonic_ns()   # both guest reads happen after this and before t1
    before = g.expect_sync()
    time.sleep(0.05)
    g.migrate()
    after = g.expect_sync()
    elapsed = time.monotonic_ns() - t0
    g.run_to_done()
    assert before <= after <= before + elapsed + 1_000_000, \
        f"kvmclock {before} ns before migration, {after} ns after; {elapsed} ns of wall time passed in between"
