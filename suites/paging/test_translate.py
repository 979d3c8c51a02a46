"""KVM_TRANSLATE agrees with the guest's own page tables (api.rst 4.15)."""

import pytest

from kvmtest.guest.mode_select import select
from kvmtest.guest.paging import KiB4, MiB2
from kvmtest.x86 import PTE_P, PTE_RW, PTE_US

VA = 0x80010000


@pytest.mark.modes(*select(code_bits=64) + select(paging=("pae", "32"), cpl=0, order="widest"))
@pytest.mark.parametrize("flags", [PTE_P | PTE_RW | PTE_US, PTE_P | PTE_US, PTE_P | PTE_RW],
                         ids=["rw-user", "ro-user", "rw-supervisor"])
def test_translate_reports_the_physical_address(guest, mode, flags):
    """For a mapped address KVM_TRANSLATE returns valid=1 and the physical address the guest's
    tables give, whatever the page's rights. (writeable and usermode are not checked: api.rst
    does not define them, and KVM reports 1 and 0 whatever the tables say.)"""
    g = guest(mode, "GUEST_DONE", page_size=MiB2 if mode != "paging32" else 0x400000)
    g.page_tables.map(VA, 0x12000, KiB4, flags)
    # Load CR3 again, as an OS does after changing a PDPT: with PAE paging the walk uses the PDPTE
    # registers loaded then, not memory (SDM Vol. 3A 4.4.1).
    g.set_sregs(g.vcpu.get_sregs())
    tr = g.vcpu.translate(VA + 0x123)
    assert (tr.valid, tr.physical_address) == (1, 0x12123), f"KVM_TRANSLATE({VA + 0x123:#x}): {tr}"


@pytest.mark.modes(sample="per-paging-form", cpl=0, order="widest")
def test_translate_of_an_unmapped_address_is_invalid(guest, mode):
    """An address no present entry maps translates to valid=0."""
    g = guest(mode, "GUEST_DONE", page_size=MiB2 if mode != "paging32" else 0x400000)
    tr = g.vcpu.translate(0x90000000)
    assert tr.valid == 0, f"KVM_TRANSLATE of an unmapped address: {tr}"
