"""More of the page-permission matrix (kvmtest.paging_matrix; kvm-unit-tests access,
access-reduced-maxphyaddr): the same accesses with EFER.NXE clear, with the accessed and dirty
flags already set, made twice, with the guest's MAXPHYADDR at 36 bits, and with bit 13 of a
large-page entry set. Expected outcomes from kvmtest.paging_model (SDM Vol. 3A 4.6-4.8).
"""

import pytest

from kvmtest.guest.mode_select import select
from kvmtest.guest.paging import GiB1, MiB2
from kvmtest.paging_matrix import ACCESSES, cases, requirement, run_case

MODES = select(sample="per-paging-form", order="widest")
# NXE=0 changes what the XD bit means and whether a fetch sets the error code's I bit.
NXE_FLAGS = [(), ("nx",), ("np",), ("ro", "nx"), ("sup", "nx")]
LEAF_FLAGS = [(), ("ro",), ("sup",), ("nx",), ("np",)]


def _params(case_list):
    return [pytest.param(c, id=c.id) for c in case_list]


def _run(guest, kvm, case):
    reason = requirement(kvm, case)
    if reason:
        pytest.skip(reason)
    run_case(guest, kvm, case)


@pytest.mark.parametrize("case", _params(cases(MODES, flag_sets=NXE_FLAGS, features=("-", "smep"), nxe=False)))
def test_access_with_efer_nxe_clear(guest, kvm, case):
    """With IA32_EFER.NXE = 0 in PAE and 4-level paging the XD bit of a present entry is reserved:
    any access through it raises #PF with P and RSVD (SDM Vol. 3A 4.4.2, 4.5.4); an entry without
    it executes, and a fetch's #PF sets the I/D bit only with CR4.SMEP = 1 (4.7)."""
    _run(guest, kvm, case)


@pytest.mark.parametrize("case", _params(cases(MODES, flag_sets=LEAF_FLAGS, levels=("leaf",), features=("-",),
                                               preset_ad=True)))
def test_access_with_accessed_and_dirty_preset(guest, kvm, case):
    """With A already set in every entry of the walk and D in the leaf, an access faults exactly
    as with them clear, and afterwards both are still set whether it faulted or not: the
    processor never clears them (SDM Vol. 3A 4.8)."""
    _run(guest, kvm, case)


@pytest.mark.parametrize("case", _params(cases(MODES, flag_sets=LEAF_FLAGS, levels=("leaf",), features=("-",),
                                               twice=True)))
def test_access_repeated(guest, kvm, case):
    """The same access made a second time, when the first one has filled the TLB (and a shadow
    MMU's tables), gives the same outcome: a fault with the same error code and CR2, or success
    with the same A/D flags (SDM Vol. 3A 4.6-4.8)."""
    _run(guest, kvm, case)


MAXPHY36 = list(cases(MODES, maxphyaddr=36))


@pytest.mark.parametrize("case", _params(MAXPHY36))
def test_access_with_a_36_bit_maxphyaddr(guest, kvm, case):
    """The whole matrix with the guest's CPUID.80000008H:EAX[7:0] set to 36: the same outcomes,
    and bit 36 of an entry is now a reserved bit (#PF with RSVD), as the bits from MAXPHYADDR to 51
    are (SDM Vol. 3A 4.1.4, 4.4.2, 4.5.4; KVM_CAP_SMALLER_MAXPHYADDR)."""
    _run(guest, kvm, case)


BIT13 = list(cases(MODES, flag_sets=[("rsvd",)], accesses=ACCESSES, levels=("leaf",), features=("-",),
                   sizes=(MiB2, GiB1), rsvd_bit=13))


@pytest.mark.parametrize("case", _params(BIT13))
def test_bit_13_of_a_large_page_entry_is_reserved(guest, kvm, case):
    """In a PDE that maps a 2-MByte page (PAE and 4-level paging) and a PDPTE that maps a 1-GByte
    page, bit 13 is reserved (bits 20:13 and 29:13 must be 0): any access through it raises #PF
    with P and RSVD (SDM Vol. 3A Tables 4-10, 4-17 and 4-18)."""
    _run(guest, kvm, case)
