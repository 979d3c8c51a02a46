"""Descriptor, gate, TSS and page-table encoders against the SDM's bit layouts."""

import struct

import pytest

from kvmtest.guest import descriptors as D
from kvmtest.guest import paging as PG
from kvmtest.x86 import PTE_P, PTE_PS, PTE_RW, PTE_US, PTE_XD, SYS_TYPE_INT_GATE


def test_flat_code32_descriptor_has_the_sdm_encoding():
    # Base 0, limit 0xFFFFF, G=1, D=1, P=1, DPL0, S=1, type 0xB: 0x00CF9B000000FFFF
    assert D.code32().encode() == struct.pack("<Q", 0x00CF9B000000FFFF)


def test_code64_sets_l_and_clears_d():
    raw = struct.unpack("<Q", D.code64().encode())[0]
    assert raw >> 53 & 1 == 1 and raw >> 54 & 1 == 0


def test_user_data_descriptor_has_dpl3():
    assert D.Descriptor.decode(D.data(dpl=3).encode()).dpl == 3


def test_descriptor_decode_inverts_encode():
    d = D.Descriptor(base=0x12345678, limit=0xABCDE, type=0x3, dpl=2, g=0, db=1, avl=1)
    assert D.Descriptor.decode(d.encode()) == d


def test_system_descriptor_in_long_mode_carries_base_high():
    raw = D.tss(0xFFFF800012345000, 0x67).encode_system64()
    assert len(raw) == 16
    assert struct.unpack_from("<I", raw, 8)[0] == 0xFFFF8000


def test_kvm_segment_limit_is_byte_granular():
    seg = D.code32().to_kvm_segment(0x18)
    assert seg.limit == 0xFFFFFFFF and seg.selector == 0x18 and seg.type == 0xB and seg.db == 1


def test_limit_wider_than_20_bits_is_refused():
    with pytest.raises(ValueError, match="20 bits"):
        D.Descriptor(limit=0x100000).encode()


def test_64bit_interrupt_gate_layout():
    raw = D.gate(0xFFFFFFFF81234567, 0x08, SYS_TYPE_INT_GATE, dpl=3, bits=64, ist=2)
    lo, sel, ist, attrs, mid, hi, _ = struct.unpack("<HHBBHII", raw)
    assert (lo, sel, ist, attrs, mid, hi) == (0x4567, 0x08, 2, 0xEE, 0x8123, 0xFFFFFFFF)


def test_32bit_gate_refuses_64bit_offset():
    with pytest.raises(ValueError):
        D.gate(1 << 32, 0x18, SYS_TYPE_INT_GATE)


def test_tss64_rsp0_and_iomap():
    t = D.tss64(0x7000)
    assert len(t) == 0x68
    assert struct.unpack_from("<Q", t, 4)[0] == 0x7000 and struct.unpack_from("<H", t, 102)[0] == 0x68


def test_tss32_task_fields_at_the_sdm_offsets():
    """SDM Vol. 3A Figure 7-2: link 00h, CR3 1Ch, EIP 20h, EFLAGS 24h, ESP 38h, ES/CS/SS/DS/FS/GS
    48h-5Ch, I/O map base 66h."""
    t = D.tss32_task(0x8010, 0x6800, cs=0x18, data=0x10, eflags=0x20002, cr3=0x20000, link=0x48,
                     segments={"ds": 0x1234})
    assert len(t) == 0x68
    assert struct.unpack_from("<I", t, 0x00)[0] == 0x48
    assert struct.unpack_from("<III", t, 0x1C) == (0x20000, 0x8010, 0x20002)
    assert struct.unpack_from("<I", t, 0x38)[0] == 0x6800
    assert struct.unpack_from("<6I", t, 0x48) == (0x10, 0x18, 0x10, 0x1234, 0x10, 0x10)
    assert struct.unpack_from("<H", t, 0x66)[0] == 0x68


def test_ivt_entry_is_offset_then_segment():
    assert D.ivt_entry(0xF000, 0x1234) == bytes([0x34, 0x12, 0x00, 0xF0])


class FakeVm:
    def __init__(self):
        self.mem = bytearray(0x200000)

    def read(self, gpa, n):
        return bytes(self.mem[gpa:gpa + n])

    def write(self, gpa, data):
        self.mem[gpa:gpa + len(data)] = data


@pytest.fixture
def alloc():
    from kvmtest.memory import PageAllocator

    return PageAllocator(FakeVm(), 0x20000, 0x200000)


@pytest.mark.parametrize("fmt,levels", [("32", 2), ("pae", 3), ("4level", 4), ("5level", 5)])
def test_4k_mapping_walks_every_level(alloc, fmt, levels):
    pt = PG.PageTables(alloc.vm, alloc, fmt)
    leaf = pt.map(0x40123000, 0x5000, PG.KiB4, PTE_P | PTE_RW)
    walk = pt.walk(0x40123000)
    assert len(walk) == levels
    assert walk[-1][1] == leaf and walk[-1][2] & ~0xFFF == 0x5000


def test_pae_pdpte_carries_only_present(alloc):
    # PAE PDPTEs have RW/US reserved (SDM Vol. 3A Table 4-8): setting them would #GP on CR3 load.
    pt = PG.PageTables(alloc.vm, alloc, "pae")
    pt.map(0, 0, PG.KiB4, PTE_P | PTE_RW | PTE_US)
    assert pt.read_entry(0, 0) & 0xFFF == PTE_P


def test_large_page_sets_ps(alloc):
    pt = PG.PageTables(alloc.vm, alloc, "4level")
    pt.map(0x40000000, 0x40000000, PG.GiB1, PTE_P)
    assert pt.read_entry(0x40000000, 1) & PTE_PS


def test_32bit_paging_has_no_2m_pages(alloc):
    pt = PG.PageTables(alloc.vm, alloc, "32")
    with pytest.raises(ValueError, match="no 0x200000-byte pages"):
        pt.map(0, 0, PG.MiB2)


def test_misaligned_mapping_is_refused(alloc):
    pt = PG.PageTables(alloc.vm, alloc, "4level")
    with pytest.raises(ValueError, match="not aligned"):
        pt.map(0x1000, 0x1000, PG.MiB2)


def test_allocator_reports_exhaustion(alloc):
    from kvmtest.errors import GuestMemoryError

    alloc.end = alloc.next + 0x1000
    alloc.alloc()
    with pytest.raises(GuestMemoryError, match="exhausted"):
        alloc.alloc()


def test_flag_names():
    assert PG.describe_flags(PTE_P | PTE_US | PTE_XD) == "P|US|XD"


def test_pae_pdpte_writes_are_flagged_for_a_cr3_reload():
    """PAE PDPTEs are loaded with CR3 (SDM Vol. 3A 4.4.1), so the tables say when one changed; other
    levels and other formats never ask for a reload."""
    from kvmtest.guest.paging import PageTables

    class FakeVm:
        def __init__(self):
            self.mem = bytearray(0x100000)

        def write(self, gpa, data):
            self.mem[gpa:gpa + len(data)] = data

        def read(self, gpa, size):
            return bytes(self.mem[gpa:gpa + size])

    class Alloc:
        def __init__(self):
            self.next = 0x10000

        def alloc(self):
            self.next += 0x1000
            return self.next - 0x1000

    pae = PageTables(FakeVm(), Alloc(), "pae")
    pae.map(0x1000, 0x1000)
    assert pae.pdptes_changed  # a new PD needed a PDPTE
    pae.pdptes_changed = False
    pae.map(0x2000, 0x2000)  # same PD, same PT: no PDPTE written
    assert not pae.pdptes_changed
    pae.write_entry(0x2000, 2, 0)  # a PTE
    assert not pae.pdptes_changed
    pae.map(0x40000000, 0x3000)  # second GiB: a new PDPTE
    assert pae.pdptes_changed
    four = PageTables(FakeVm(), Alloc(), "4level")
    four.map(0x1000, 0x1000)
    assert not four.pdptes_changed
