"""The in-kernel IOAPIC's identification registers, read and written by the guest through IOREGSEL
(0xFEC00000) and IOWIN (0xFEC00010): IOAPICID (index 0, the ID in bits 27:24, read/write),
IOAPICVER (index 1, read-only) and IOAPICARB (index 2, read-only, "loaded when the IOAPIC ID
Register is written") (82093AA I/O APIC datasheet 3.1, 3.2.1-3.2.3; kvm-unit-tests ioapic.c
ioapic_reg_id, ioapic_arbitration_id, ioapic_reg_version)."""

import pytest

from kvmtest.guest.paging import KiB4
from kvmtest.x86 import PTE_P, PTE_PCD, PTE_RW

pytestmark = pytest.mark.requires_cap("KVM_CAP_IRQCHIP")
IOAPIC = 0xFEC00000
ID_FIELD = 0x0F000000             # IOAPICID / IOAPICARB bits 27:24


def _read(index: int) -> str:
    return f"mov dword ptr [rsi], {index}\nmov eax, dword ptr [rsi + 0x10]\nGUEST_SYNC rax\n"


def _write(index: int, value: int) -> str:
    return f"mov dword ptr [rsi], {index}\nmov dword ptr [rsi + 0x10], {value:#x}\n"


def _run(guest, body: str) -> list[int]:
    g = guest("long64", f"mov rsi, {IOAPIC:#x}\n{body}GUEST_DONE", irqchip=True)
    g.page_tables.map(IOAPIC, IOAPIC, KiB4, PTE_P | PTE_RW | PTE_PCD)
    return g.run_to_done()


@pytest.mark.parametrize("new_id", [0x5, 0xA, 0xF])
def test_writing_the_ioapic_id_sets_the_id_and_the_arbitration_id(guest, new_id):
    """A write of IOAPICID sets the ID field (bits 27:24) to the value written, and the same value
    is loaded into IOAPICARB's arbitration ID (bits 27:24); a later write to IOAPICARB, which is
    read-only, changes nothing (82093AA 3.2.1, 3.2.3)."""
    written = new_id << 24 | ~ID_FIELD & 0xFFFFFFFF   # every other bit set too, reserved ones included
    id_, arb, arb_after = _run(guest, _write(0, written) + _read(0) + _read(2) + _write(2, 0) + _read(2))
    assert id_ & ID_FIELD == new_id << 24, \
        f"IOAPICID {id_:#x} after writing {written:#x}: ID field expected {new_id:#x}"
    assert arb & ID_FIELD == new_id << 24, f"IOAPICARB {arb:#x} after the ID write: arbitration ID expected {new_id:#x}"
    assert arb_after == arb, f"IOAPICARB {arb_after:#x} after a write of 0 to it, expected it unchanged ({arb:#x})"


def test_ioapic_version_register_is_read_only(guest):
    """IOAPICVER reads version 0x11 in bits 7:0 and the highest redirection entry, 23 for KVM's 24
    pins, in bits 23:16; a write of its complement changes nothing (82093AA 3.2.2: read-only)."""
    before, after = _run(guest, _read(1) + "not eax\nmov dword ptr [rsi + 0x10], eax\n" + _read(1))
    assert before & 0x00FF00FF == 0x00170011, \
        f"IOAPICVER {before:#x}: expected version 0x11 and maximum redirection entry 0x17"
    assert after == before, f"IOAPICVER {after:#x} after a write of its complement, expected {before:#x}"
