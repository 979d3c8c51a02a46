"""The registers of struct kvm_lapic_state (KVM_GET/SET_LAPIC) against what the guest writes and
reads through the xAPIC page, and CR8 against the TPR (api.rst 4.57/4.58: "the data format and
layout are the same as documented in the architecture manual"; SDM Vol. 3A 11.4-11.8 local
APIC registers, Table 11-1 offsets, 11.8.6.1 CR8 and the TPR)."""

import struct

import pytest

from kvmtest.guest.paging import KiB4
from kvmtest.x86 import PTE_P, PTE_PCD, PTE_RW

pytestmark = pytest.mark.requires_cap("KVM_CAP_IRQCHIP")
APIC = 0xFEE00000

# offset: (value the guest or host writes, bits the SDM defines as writable/readable there)
WRITABLE = {
    0x080: (0x5C, 0xFF),                 # TPR
    0x0D0: (0x03000000, 0xFF000000),     # LDR: logical APIC ID in bits 31:24
    0x0E0: (0x0FFFFFFF, 0xF0000000),     # DFR: model in bits 31:28, 27:0 read as 1
    0x0F0: (0x1F5, 0x1FF),               # SVR: spurious vector 0xF5, APIC software-enabled
    0x310: (0x0A000000, 0xFF000000),     # ICR high: destination in bits 31:24
    0x320: (0x00010042, 0x000710FF),     # LVT timer: masked, vector 0x42, one-shot
    0x330: (0x00010043, 0x000117FF),     # LVT thermal sensor: masked, fixed, vector 0x43
    0x340: (0x00010044, 0x000117FF),     # LVT performance counter: masked, fixed, vector 0x44
    0x350: (0x00010045, 0x0001A7FF),     # LVT LINT0: masked, fixed, vector 0x45
    0x360: (0x00010046, 0x0001A7FF),     # LVT LINT1
    0x370: (0x00010047, 0x000110FF),     # LVT error: masked, vector 0x47
    0x380: (0x7FFFFFFF, 0xFFFFFFFF),     # initial count (the LVT timer is masked: no interrupt)
    0x3E0: (0x0000000A, 0x0000000B),     # divide configuration: divide by 128
}
TPR, PPR, VERSION, IRR, TMCCT = 0x080, 0x0A0, 0x030, 0x200, 0x390
SELF_IPI_VECTOR = 0x51           # ICR low: fixed, self shorthand (bits 19:18 = 01), vector 0x51


def _apic_guest(guest, body):
    g = guest("long64", f"mov rbx, {APIC:#x}\n{body}", irqchip=True)
    g.page_tables.map(APIC, APIC, KiB4, PTE_P | PTE_RW | PTE_PCD)
    return g


def _reg(lapic, offset):
    return struct.unpack_from("<I", bytes(lapic.regs), offset)[0]


def _reads(offsets):
    return "\n".join(f"mov eax, dword ptr [rbx + {o:#x}]\nGUEST_SYNC rax" for o in offsets)


def test_registers_the_guest_writes_are_what_get_lapic_reports(guest):
    """TPR, LDR, DFR, SVR, ICR high, the LVT entries, the timer's initial count and divide
    configuration written by the guest through the xAPIC page are what KVM_GET_LAPIC reports at
    the register's offset (within the bits the SDM defines), and what the guest reads back;
    PPR follows TPR with nothing in service and the version register reads the same both ways
    (SDM Vol. 3A 11.4.8, 11.5.1, 11.6.1, 11.6.2, 11.8.3.1, 11.5.4; api.rst 4.57)."""
    writes = "\n".join(f"mov dword ptr [rbx + {o:#x}], {v:#x}" for o, (v, _) in WRITABLE.items())
    offsets = [*WRITABLE, PPR, VERSION]
    g = _apic_guest(guest, f"{writes}\nGUEST_SYNC 0\n{_reads(offsets)}\nGUEST_DONE")
    assert g.expect_sync() == 0
    lapic = g.vcpu.get_lapic()
    wrong = [f"{o:#05x}: wrote {v:#x}, KVM_GET_LAPIC {_reg(lapic, o):#x}" for o, (v, mask) in WRITABLE.items()
             if _reg(lapic, o) & mask != v & mask]
    assert not wrong, "KVM_GET_LAPIC after the guest's xAPIC writes: " + "; ".join(wrong)
    seen = dict(zip(offsets, g.run_to_done(), strict=True))
    wrong = [f"{o:#05x}: wrote {v:#x}, read {seen[o]:#x}" for o, (v, mask) in WRITABLE.items()
             if o != 0x380 and seen[o] & mask != v & mask]
    assert not wrong, "the guest's reads of its own xAPIC writes: " + "; ".join(wrong)
    assert seen[0x380] == WRITABLE[0x380][0], f"initial count read back {seen[0x380]:#x}"
    assert seen[PPR] == _reg(lapic, PPR) == 0x5C, \
        f"PPR with TPR 0x5c and nothing in service: guest read {seen[PPR]:#x}, KVM_GET_LAPIC {_reg(lapic, PPR):#x}; " \
        "expected 0x5c (SDM 11.8.3.1)"
    version = _reg(lapic, VERSION)
    assert seen[VERSION] == version and 0x10 <= version & 0xFF <= 0x15, \
        f"version register: guest {seen[VERSION]:#x}, KVM_GET_LAPIC {version:#x} (bits 7:0 of an integrated " \
        "APIC are 0x10-0x15, SDM 11.4.8)"


def test_registers_the_host_sets_are_what_the_guest_reads(guest):
    """The registers written with KVM_SET_LAPIC (TPR, LDR, DFR, SVR, ICR high, LVT entries,
    initial count, divide configuration) are what the guest reads through the xAPIC page
    (api.rst 4.58; SDM Vol. 3A Table 11-1)."""
    g = _apic_guest(guest, f"{_reads(WRITABLE)}\nGUEST_DONE")
    lapic = g.vcpu.get_lapic()
    raw = bytearray(bytes(lapic.regs))
    for offset, (value, _) in WRITABLE.items():
        struct.pack_into("<I", raw, offset, value)
    lapic.regs[:] = list(raw)
    g.vcpu.set_lapic(lapic)
    seen = dict(zip(WRITABLE, g.run_to_done(), strict=True))
    wrong = [f"{o:#05x}: KVM_SET_LAPIC {v:#x}, guest read {seen[o]:#x}" for o, (v, mask) in WRITABLE.items()
             if seen[o] & mask != v & mask]
    assert not wrong, "the guest's reads after KVM_SET_LAPIC: " + "; ".join(wrong)


def test_pending_self_ipi_shows_in_irr_both_ways(guest):
    """A fixed self-IPI sent while EFLAGS.IF = 0 stays pending: its bit is set in the IRR the
    guest reads and in the IRR of KVM_GET_LAPIC, and not in the ISR or TMR (edge-triggered,
    not yet accepted) (SDM Vol. 3A 11.8.4 IRR/ISR/TMR, 11.6.1 ICR; api.rst 4.57)."""
    word, bit = SELF_IPI_VECTOR // 32, SELF_IPI_VECTOR % 32
    g = _apic_guest(guest, f"""
        cli
        mov dword ptr [rbx + 0xF0], 0x1FF
        mov dword ptr [rbx + 0x300], {0x40000 | SELF_IPI_VECTOR:#x}
        mov eax, dword ptr [rbx + {IRR + 0x10 * word:#x}]
        GUEST_SYNC rax
        GUEST_DONE""")
    (guest_irr,) = g.run_to_done()
    lapic = g.vcpu.get_lapic()
    irr, isr, tmr = (_reg(lapic, base + 0x10 * word) for base in (IRR, 0x100, 0x180))
    assert guest_irr >> bit & 1 and irr >> bit & 1, \
        f"vector {SELF_IPI_VECTOR:#x} pending: guest IRR word {word} = {guest_irr:#x}, KVM_GET_LAPIC {irr:#x}"
    assert not (isr >> bit & 1 or tmr >> bit & 1), f"ISR {isr:#x} / TMR {tmr:#x} word {word} show the pending vector"


def test_current_count_counts_down_from_the_initial_count(guest):
    """The timer's current count (TMCCT) that KVM_GET_LAPIC reports lies between 0 and what the
    guest read from it just before, which itself is below the initial count the guest wrote: the
    count only decreases (SDM Vol. 3A 11.5.4; api.rst 4.57)."""
    g = _apic_guest(guest, f"""
        mov dword ptr [rbx + 0x3E0], 0xA
        mov dword ptr [rbx + 0x320], 0x10042
        mov dword ptr [rbx + 0x380], 0x7FFFFFFF
        mov eax, dword ptr [rbx + {TMCCT:#x}]
        GUEST_SYNC rax
        GUEST_DONE""")
    guest_count = g.expect_sync()
    host_count = _reg(g.vcpu.get_lapic(), TMCCT)
    assert 0 < host_count <= guest_count < 0x7FFFFFFF, \
        f"TMCCT: the guest read {guest_count:#x}, KVM_GET_LAPIC later {host_count:#x}; initial count 0x7fffffff"
    g.run_to_done()


def test_cr8_and_the_tpr_are_one_register(guest):
    """CR8 is TPR[7:4] (SDM Vol. 3A 11.8.6.1): the guest's MOV to CR8 shows in the TPR it reads
    through the xAPIC page, in KVM_GET_LAPIC's TPR and in KVM_GET_SREGS's cr8; a TPR written
    through the xAPIC page is what MOV from CR8 reads; and cr8 written with KVM_SET_SREGS is
    what the guest reads both ways (api.rst 4.13/4.14, 4.57)."""
    g = _apic_guest(guest, f"""
        mov eax, 5
        mov cr8, rax
        mov eax, dword ptr [rbx + {TPR:#x}]
        GUEST_SYNC rax
        mov dword ptr [rbx + {TPR:#x}], 0x70
        mov rax, cr8
        GUEST_SYNC rax
        GUEST_SYNC 0
        mov rax, cr8
        GUEST_SYNC rax
        mov eax, dword ptr [rbx + {TPR:#x}]
        GUEST_SYNC rax
        GUEST_DONE""")
    tpr = g.expect_sync()
    assert (tpr, _reg(g.vcpu.get_lapic(), TPR), g.vcpu.get_sregs().cr8) == (0x50, 0x50, 5), \
        f"after MOV CR8 = 5: guest TPR {tpr:#x}, KVM_GET_LAPIC TPR {_reg(g.vcpu.get_lapic(), TPR):#x}, " \
        f"KVM_GET_SREGS cr8 {g.vcpu.get_sregs().cr8:#x}; expected 0x50, 0x50, 5"
    cr8 = g.expect_sync()
    assert (cr8, g.vcpu.get_sregs().cr8) == (7, 7), \
        f"after the TPR write of 0x70: guest CR8 {cr8:#x}, KVM_GET_SREGS cr8 {g.vcpu.get_sregs().cr8:#x}; expected 7"
    assert g.expect_sync() == 0
    sregs = g.vcpu.get_sregs()
    sregs.cr8 = 3
    g.set_sregs(sregs)
    seen = g.run_to_done()
    assert seen == [3, 0x30], f"after KVM_SET_SREGS cr8 = 3 the guest read CR8 {seen[0]:#x} and TPR {seen[1]:#x}; " \
                              "expected 3 and 0x30"


def test_illegal_vector_ipi_is_recorded_in_esr(guest):
    """A fixed IPI with a vector below 16 is an error the local APIC logs: after the next write to
    the ESR (which "updates the ESR with any errors detected since the last write"), the ESR has
    Send Illegal Vector (bit 5) set, both as the guest reads it and in KVM_GET_LAPIC (SDM Vol. 3A
    11.5.3 Figure 11-9; api.rst 4.57)."""
    g = _apic_guest(guest, """
        mov dword ptr [rbx + 0xF0], 0x1FF           # SVR: APIC software-enabled
        mov dword ptr [rbx + 0x370], 0x10047        # LVT error: masked
        mov dword ptr [rbx + 0x280], 0              # ESR: clear
        mov dword ptr [rbx + 0x300], 0x40003        # ICR: fixed, self, vector 3 (illegal)
        mov dword ptr [rbx + 0x280], 0              # ESR: latch the errors since the last write
        mov eax, dword ptr [rbx + 0x280]
        GUEST_SYNC rax
        GUEST_DONE""")
    esr = g.expect_sync()
    host = _reg(g.vcpu.get_lapic(), 0x280)
    assert esr & 0x20 and host == esr, \
        f"ESR after a self-IPI with vector 3: the guest read {esr:#x}, KVM_GET_LAPIC {host:#x}; expected bit 5 " \
        "(Send Illegal Vector) set in both"
    g.run_to_done()
