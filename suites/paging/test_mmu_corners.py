"""MMU corner cases where a shadow MMU has historically gone wrong (kvm-unit-tests access.c
check_effective_sp_permissions, corrupt_hugepage_trigger, check_pfec_on_prefetch_pte). The
expected outcomes are plain SDM Vol. 3A 4.6 (access rights are the combination of every
entry on the walk) and 4.7 (the #PF error code describes the faulting translation), whatever
page-table sharing or prefetching the host's MMU does underneath.
"""

import pytest

from kvmtest.guest import get_mode
from kvmtest.guest import layout as L
from kvmtest.guest.mode_select import select
from kvmtest.guest.paging import MiB2, encode_entry
from kvmtest.paging_model import Context, Walk, describe_pfec, page_fault
from kvmtest.x86 import PFEC_P, PFEC_U, PFEC_W, PTE_A, PTE_P, PTE_RW, PTE_US, PTE_XD

VA = 0x80010000
PAGE_A, PAGE_B = 0x10000, 0x11000
ALIAS = {"pdpte": 0xC0010000, "pde": 0x80210000}   # shares VA's PD / PT through another entry
LEVEL = {"pdpte": 1, "pde": 2}                      # 4-level index of the entry that is redirected
MODES = select(code_bits=64)


def _pfec(mode, access, *, present=True, writable=True, user=True, nx=False):
    """The error code SDM 4.7 gives for a 4-level walk whose leaf has these rights."""
    walk = Walk((True, True, True, present), (True, True, True, writable), (True, True, True, user),
                (False, False, False, nx), (False,) * 4)
    return page_fault(walk, Context(access, get_mode(mode).cpl, wp=True, nxe=True))


def _user_bit(mode):
    return PFEC_U if get_mode(mode).cpl == 3 else 0


@pytest.mark.modes(*MODES)
@pytest.mark.parametrize("level", ["pdpte", "pde"])
def test_shared_table_keeps_each_paths_write_permission(guest, mode, level):
    """One page-directory (or page-table) page reached through a writable entry and through a
    read-only one: rights are the AND of every entry on the walk (SDM Vol. 3A 4.6.1), so after
    a read through the read-only path, writes through the writable path succeed and a write
    through the read-only path raises #PF(P|W) with CR2 = the alias. A shadow MMU that keys its
    copy of the shared table by only one path's rights gets one of the two wrong."""
    alias = ALIAS[level]
    g = guest(mode, f"""
        mov rbx, {VA:#x}
        mov rcx, {alias:#x}
        mov eax, dword ptr [rcx]
        GUEST_SYNC eax
        mov dword ptr [rbx], 0x11
        mov dword ptr [rbx + 0x1000], 0x22
        GUEST_ASSERT_RAISES PF({PFEC_P | PFEC_W | _user_bit(mode):#x}), mov dword ptr [rcx], 0x33
        GUEST_DONE""", page_size=MiB2)
    pt = g.page_tables
    pt.map(VA, PAGE_A, flags=PTE_P | PTE_RW | PTE_US)
    pt.map(VA + 0x1000, PAGE_B, flags=PTE_P | PTE_RW | PTE_US)
    shared_table = pt.read_entry(VA, LEVEL[level]) & ~0xFFF & ((1 << 52) - 1)
    read_only = encode_entry(pt.fmt, shared_table, PTE_P | PTE_US)
    pt.write_entry(alias, LEVEL[level], int.from_bytes(read_only, "little"))
    g.vm.write_u32(PAGE_A, 0xAAAA0001)
    first = g.expect_sync()
    assert first == 0xAAAA0001, f"read through the read-only path: {first:#x}, expected PAGE_A's 0xaaaa0001"
    g.run_to_done()
    cr2 = g.exception_record()["cr2"]
    assert cr2 == alias, f"#PF(P|W) through the read-only {level}: CR2 {cr2:#x}, expected {alias:#x}"
    assert (g.vm.read_u32(PAGE_A), g.vm.read_u32(PAGE_B)) == (0x11, 0x22), \
        "the writes through the writable path did not land, or the faulting write did"


@pytest.mark.modes(*MODES)
def test_two_huge_page_aliases_keep_their_own_write_permission(guest, mode):
    """The same 2 MiB frame mapped by a read-only and by a writable 2 MiB PDE: after both are
    read, a write through the writable one succeeds and a write through the read-only one
    raises #PF(P|W) with CR2 in the read-only alias (SDM Vol. 3A 4.6.1; a shadow MMU splits
    each guest huge page into its own 4 KiB shadow table, which must carry that PDE's rights)."""
    rw_alias, ro_alias = 0x80000000, 0x80200000
    off = L.DATA
    g = guest(mode, f"""
        mov rbx, {rw_alias + off:#x}
        mov rcx, {ro_alias + off:#x}
        mov eax, dword ptr [rcx]
        mov eax, dword ptr [rbx]
        mov dword ptr [rbx], 0x44
        GUEST_ASSERT_RAISES PF({PFEC_P | PFEC_W | _user_bit(mode):#x}), mov dword ptr [rcx], 0x55
        GUEST_DONE""", page_size=MiB2)
    g.page_tables.map(rw_alias, 0, MiB2, PTE_P | PTE_RW | PTE_US)
    g.page_tables.map(ro_alias, 0, MiB2, PTE_P | PTE_US)
    g.run_to_done()
    cr2 = g.exception_record()["cr2"]
    assert cr2 == ro_alias + off, f"#PF(P|W) through the read-only 2 MiB alias: CR2 {cr2:#x}, " \
                                  f"expected {ro_alias + off:#x}"
    assert g.vm.read_u32(off) == 0x44, f"frame holds {g.vm.read_u32(off):#x}, expected the writable alias's 0x44"


NEIGHBOURS = {
    # neighbour PTE rights, the access to it
    "np-read": (dict(present=False), "read"),
    "np-write": (dict(present=False), "write"),
    "ro-write": (dict(writable=False), "write"),
    "nx-fetch": (dict(nx=True), "fetch"),
    "sup-read": (dict(user=False), "read"),
}
ACCESS = {"read": "mov eax, dword ptr [rcx]", "write": "mov dword ptr [rcx], 0x66", "fetch": "call rcx"}


@pytest.mark.modes(*MODES)
@pytest.mark.parametrize("neighbour", NEIGHBOURS)
def test_fault_on_a_neighbour_pte_reports_its_own_error_code(guest, mode, neighbour):
    """A PTE in the same page table as one the guest has just used (a shadow MMU may have
    prefetched it while handling that fault) faults with the error code of its own rights:
    P clear for a not-present entry, W, U and I exactly as SDM Vol. 3A 4.7 gives them, and CR2
    = the neighbour's address; a supervisor page read at CPL0 is no fault and returns its data."""
    rights, access = NEIGHBOURS[neighbour]
    neighbour_va = VA + 0x1000
    pfec = _pfec(mode, access, **rights)
    neighbour_access = f"GUEST_ASSERT_RAISES PF({pfec:#x}), {ACCESS[access]}" if pfec is not None \
        else f"{ACCESS[access]}\nGUEST_SYNC eax"
    g = guest(mode, f"""
        mov rbx, {VA:#x}
        mov rcx, {neighbour_va:#x}
        mov eax, dword ptr [rbx]
        {neighbour_access}
        GUEST_DONE""", page_size=MiB2)
    pt = g.page_tables
    pt.map(VA, PAGE_A, flags=PTE_P | PTE_RW | PTE_US | PTE_A)
    flags = PTE_A | (PTE_P if rights.get("present", True) else 0) | (PTE_RW if rights.get("writable", True) else 0) \
        | (PTE_US if rights.get("user", True) else 0) | (PTE_XD if rights.get("nx") else 0)
    pt.map(neighbour_va, PAGE_B, flags=flags)
    g.vm.write(PAGE_B, b"\xc3\x00\xbb\xbb")  # RET, should a fetch wrongly succeed; a marker for reads
    if pfec is None:
        got = g.run_to_done()
        assert got == [0xBBBB00C3], f"CPL{get_mode(mode).cpl} read of the {neighbour} neighbour returned " \
                                    f"{[hex(v) for v in got]}, expected PAGE_B's 0xbbbb00c3 (no fault: SDM 4.6.1)"
        return
    g.run_to_done()
    cr2 = g.exception_record()["cr2"]
    assert cr2 == neighbour_va, f"#PF({describe_pfec(pfec)}) on the neighbour: CR2 {cr2:#x}, " \
                                f"expected {neighbour_va:#x}"
