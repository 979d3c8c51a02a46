"""TLB maintenance and coherence as the guest sees it (SDM Vol. 3A 4.10.4 invalidation; the
shadow-paging write-protect case behind CVE-2021-38198)."""

import pytest

from kvmtest.guest.mode_select import select
from kvmtest.guest.paging import KiB4, MiB2
from kvmtest.x86 import PFEC_P, PFEC_U, PFEC_W, PTE_A, PTE_D, PTE_G, PTE_P, PTE_RW, PTE_US

VA = 0x80010000
PAGE_A, PAGE_B = 0x10000, 0x11000
MODES = select(code_bits=64) + select(paging=("pae", "32"), cpl=0, order="widest")


def _map(g, va, pa, flags=PTE_P | PTE_RW | PTE_US):
    return g.page_tables.map(va, pa, KiB4, flags)


def _pte_write(mode, new_pte_value):
    """Guest code that rewrites the PTE for VA (address in rdi/edi) to point at PAGE_B."""
    if mode.startswith("long64") or mode.startswith("pae"):
        return f"mov dword ptr [{{di}}], {new_pte_value & 0xFFFFFFFF:#x}\nmov dword ptr [{{di}} + 4], 0"
    return f"mov dword ptr [{{di}}], {new_pte_value:#x}"


def _point_rdi_at(g, pte):
    """The guest rewrites the PTE whose address the host hands it in RDI."""
    regs = g.vcpu.get_regs()
    regs.rdi = pte
    g.vcpu.set_regs(regs)


def _regs(mode):
    return ("rbx", "rdi") if mode.startswith("long64") else ("ebx", "edi")


@pytest.mark.modes(sample="per-paging-form", cpl=0, order="widest")
@pytest.mark.parametrize("flush", ["invlpg", "cr3"])
def test_changed_pte_is_used_after_invlpg_or_cr3_write(guest, mode, flush):
    """After the guest repoints a PTE and invalidates the translation (INVLPG, or a MOV to CR3
    for a non-global page), the next access uses the new mapping (SDM Vol. 3A 4.10.4.1)."""
    b, di = _regs(mode)
    flush_code = f"invlpg [{b}]" if flush == "invlpg" else ("mov rax, cr3\nmov cr3, rax" if b == "rbx"
                                                            else "mov eax, cr3\nmov cr3, eax")
    g = guest(mode, f"""
        mov {b}, {VA:#x}
        mov eax, dword ptr [{b}]
        GUEST_SYNC eax
        {_pte_write(mode, PAGE_B | PTE_P | PTE_RW | PTE_US).format(di=di)}
        {flush_code}
        mov eax, dword ptr [{b}]
        GUEST_SYNC eax
        GUEST_DONE""", page_size=MiB2 if mode != "paging32" else 0x400000)
    pte = _map(g, VA, PAGE_A)
    g.vm.write_u32(PAGE_A, 0xAAAA0001)
    g.vm.write_u32(PAGE_B, 0xBBBB0002)
    _point_rdi_at(g, pte)
    assert g.run_to_done() == [0xAAAA0001, 0xBBBB0002], "the access after the flush did not use the new PTE"


@pytest.mark.requires_cpu("pge")
def test_toggling_cr4_pge_flushes_global_translations(guest):
    """Clearing CR4.PGE invalidates all TLB entries including global ones (SDM Vol. 3A
    4.10.4.1): a global PTE repointed before the toggle is used afterwards."""
    g = guest("long64", f"""
        mov rbx, {VA:#x}
        mov eax, dword ptr [rbx]
        {_pte_write('long64', PAGE_B | PTE_P | PTE_RW | PTE_US | PTE_G).format(di='rdi')}
        mov rax, cr4
        and rax, ~0x80
        mov cr4, rax
        or rax, 0x80
        mov cr4, rax
        mov eax, dword ptr [rbx]
        GUEST_SYNC eax
        GUEST_DONE""", page_size=MiB2)
    pte = _map(g, VA, PAGE_A, PTE_P | PTE_RW | PTE_US | PTE_G)
    g.vm.write_u32(PAGE_A, 0xAAAA0001)
    g.vm.write_u32(PAGE_B, 0xBBBB0002)
    sregs = g.vcpu.get_sregs()
    sregs.cr4 |= 0x80
    g.set_sregs(sregs)
    _point_rdi_at(g, pte)
    assert g.run_to_done() == [0xBBBB0002]


@pytest.mark.regression(cve="CVE-2021-38198", commit="b1bd5cba3306691c771d558e94baa73e8b0b96b7")
@pytest.mark.modes(*MODES)
def test_read_only_alias_of_a_writable_page_faults(guest, mode):
    """One physical page mapped writable at VA and read-only at VA+0x1000: after writing through
    the writable alias, a write through the read-only alias still raises #PF(P|W) with CR2 = the
    alias (SDM Vol. 3A 4.6; the shadow-paging write-protect inheritance bug, CVE-2021-38198, LTP
    kvm_pagefault01)."""
    b = _regs(mode)[0]
    user = PFEC_U if mode.endswith("cpl3") else 0
    g = guest(mode, f"""
        mov {b}, {VA:#x}
        mov dword ptr [{b}], 1
        GUEST_ASSERT_RAISES PF({PFEC_P | PFEC_W | user:#x}), mov dword ptr [{b} + 0x1000], 2
        GUEST_DONE""", page_size=MiB2 if mode not in ("paging32",) else 0x400000)
    _map(g, VA, PAGE_A, PTE_P | PTE_RW | PTE_US)
    _map(g, VA + 0x1000, PAGE_A, PTE_P | PTE_US)
    g.run_to_done()
    assert g.exception_record()["cr2"] == VA + 0x1000
    assert g.vm.read_u32(PAGE_A) == 1, "the write through the read-only alias changed memory"


@pytest.mark.modes(code_bits=64)
def test_page_table_page_written_as_data_then_used(guest, mode):
    """A page-table page the guest also writes as ordinary data (through another mapping)
    takes effect as paging structure once invalidated (SDM Vol. 3A 4.10.4): the shadow MMU
    must notice writes to guest page tables."""
    g = guest(mode, f"""
        mov rbx, {VA:#x}
        mov eax, dword ptr [rbx]
        GUEST_SYNC eax
        {_pte_write('long64', PAGE_B | PTE_P | PTE_RW | PTE_US).format(di='rdi')}
        GUEST_DONE""", page_size=MiB2)
    pte = _map(g, VA, PAGE_A)
    g.vm.write_u32(PAGE_A, 0xAAAA0001)
    g.vm.write_u32(PAGE_B, 0xBBBB0002)
    _point_rdi_at(g, pte)
    assert g.expect_sync() == 0xAAAA0001
    g.run_to_done()
    assert g.page_tables.read_entry(VA, 3) & ~0xFFF == PAGE_B, "the guest's PTE write did not land in memory"
    tr = g.vcpu.translate(VA)
    assert tr.valid and tr.physical_address == PAGE_B, f"KVM_TRANSLATE after the guest's PTE write: {tr}"


def test_guest_toggling_cr0_wp_changes_supervisor_writes(guest):
    """A supervisor write to a read-only page faults with CR0.WP=1 and succeeds after the guest
    clears WP itself, then faults again once WP is set back (SDM Vol. 3A 4.6.1; kvm-unit-tests
    access.c check_toggle_cr0_wp)."""
    g = guest("long64", f"""
        mov rbx, {VA:#x}
        GUEST_ASSERT_RAISES PF(3), mov dword ptr [rbx], 1
        mov rax, cr0
        and rax, ~0x10000
        mov cr0, rax
        mov dword ptr [rbx], 2
        or rax, 0x10000
        mov cr0, rax
        GUEST_ASSERT_RAISES PF(3), mov dword ptr [rbx], 3
        GUEST_DONE""", page_size=MiB2)
    _map(g, VA, PAGE_A, PTE_P | PTE_US)
    g.run_to_done()
    assert g.vm.read_u32(PAGE_A) == 2, f"page holds {g.vm.read_u32(PAGE_A)}, expected the WP=0 write (2)"


@pytest.mark.modes(code_bits=64)
def test_page_table_page_behind_a_read_only_mapping_faults(guest, mode):
    """The page-table page holding VA's PTE, mapped read-only at another address: a guest write
    to the PTE through that mapping raises #PF(P|W, U at CPL3) with CR2 = the mapped PTE address,
    the PTE keeps its value and VA still reads PAGE_A (SDM Vol. 3A 4.6, 4.7). A shadow MMU
    write-protects guest page tables for its own bookkeeping; the guest must see only the
    fault its own tables call for."""
    table_va = 0x80200000
    user = PFEC_U if mode.endswith("cpl3") else 0
    g = guest(mode, f"""
        mov rbx, {VA:#x}
        mov eax, dword ptr [rbx]
        GUEST_ASSERT_RAISES PF({PFEC_P | PFEC_W | user:#x}), mov dword ptr [rdi], {PAGE_B | PTE_P | PTE_RW | PTE_US:#x}
        mov eax, dword ptr [rbx]
        GUEST_SYNC eax
        GUEST_DONE""", page_size=MiB2)
    pte = _map(g, VA, PAGE_A)
    table_page = pte & ~0xFFF
    _map(g, table_va, table_page, PTE_P | PTE_US)
    _point_rdi_at(g, table_va + (pte & 0xFFF))
    g.vm.write_u32(PAGE_A, 0xAAAA0001)
    before = g.page_tables.read_entry(VA, 3)
    assert g.run_to_done() == [0xAAAA0001], "VA no longer reads PAGE_A after the refused PTE write"
    cr2 = g.exception_record()["cr2"]
    assert cr2 == table_va + (pte & 0xFFF), f"#PF CR2 {cr2:#x}, expected the PTE's alias {table_va + (pte & 0xFFF):#x}"
    after = g.page_tables.read_entry(VA, 3)
    assert after & ~(PTE_A | PTE_D) == before & ~(PTE_A | PTE_D), \
        f"the faulting write changed the PTE: {before:#x} -> {after:#x} (accessed/dirty aside)"
