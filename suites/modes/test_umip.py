"""User-mode instruction prevention (CR4.UMIP; SDM Vol. 3A 2.5, Vol. 2B SGDT/SIDT/SLDT/SMSW/STR)."""

import pytest

from kvmtest.x86 import CR4_UMIP

pytestmark = pytest.mark.requires_cpu("umip")


@pytest.mark.modes(long=True, cpl=3)
@pytest.mark.parametrize("insn", ["sgdt [{b}]", "sidt [{b}]", "smsw ax", "str ax", "sldt ax"])
def test_umip_makes_descriptor_table_reads_fault_at_cpl3(guest, mode, insn):
    """With CR4.UMIP set, SGDT, SIDT, SLDT, SMSW and STR at CPL3 raise #GP(0) (kvm-unit-tests umip.c)."""
    b = "rbx" if mode.startswith("long") else "ebx"
    g = guest(mode, f"mov {b}, 0x600\nGUEST_ASSERT_RAISES GP(0), {insn.format(b=b)}\nGUEST_DONE")
    sregs = g.vcpu.get_sregs()
    sregs.cr4 |= CR4_UMIP
    g.set_sregs(sregs)
    g.run_to_done()


@pytest.mark.modes(long=True, cpl=3)
def test_without_umip_sgdt_works_at_cpl3(guest, mode):
    """Without CR4.UMIP, SGDT at CPL3 stores the GDTR (limit and base) and raises nothing."""
    b = "rbx" if mode.startswith("long") else "ebx"
    g = guest(mode, f"mov {b}, 0x600\nsgdt [{b}]\nGUEST_DONE")
    g.run_to_done()
    assert g.vm.read(0x600, 2) == (0xFFF).to_bytes(2, "little"), "SGDT stored another GDT limit"
