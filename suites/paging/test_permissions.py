"""The page-permission matrix (SDM Vol. 3A 4.6 access rights, 4.7 #PF error code, 4.8
accessed/dirty flags), in the model of kvm-unit-tests' access test: present, writable, user,
NX and reserved bits at the leaf or at the entry above it, times read/write/fetch, CPL0 and
CPL3, CR0.WP, CR4.SMEP and CR4.SMAP, for every page size of every paging mode. The cases and
the guest that runs one are kvmtest.paging_matrix's; the expected outcome comes from
kvmtest.paging_model, the SDM's rules as code. More of the matrix (EFER.NXE clear, A/D preset,
repeated accesses, a smaller MAXPHYADDR): test_permission_variants.py.
"""

import pytest

from kvmtest import forced_emulation
from kvmtest.guest.mode_select import select
from kvmtest.paging_matrix import cases, requirement, run_case

CASES = list(cases(select(sample="per-paging-form", order="widest")))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_access(guest, kvm, case):
    """One access through a page whose leaf or upper entry carries the case's flags faults
    exactly when SDM Vol. 3A 4.6 says, with the 4.7 error code and CR2; an access that succeeds
    sets A at every level walked and D on the leaf only for a write (4.8). KVM_TRANSLATE agrees
    with the tables first: valid with the right address unless an entry is not present or has
    a reserved bit set (api.rst 4.15)."""
    _run(guest, kvm, case)


# KVM's forced-emulation prefix makes KVM run the next instruction in its emulator.
FEP_CASES = [c for c in CASES if c.access != "fetch"]  # the emulated CALL's target is fetched natively
# Without the parameter the prefix is a real #UD: one skipped entry says so, instead of ~900.
FEP_PARAMS = [pytest.param(c, id=c.id) for c in FEP_CASES] if forced_emulation.enabled() else \
    [pytest.param(None, id="all", marks=pytest.mark.skip(reason=forced_emulation.SKIP_REASON))]


@pytest.mark.parametrize("case", FEP_PARAMS)
def test_access_through_the_emulator(guest, kvm, case):
    """The same reads and writes, each forced through KVM's instruction emulator with the
    forced-emulation prefix: the emulator's own page walk must give the outcome, error code,
    CR2 and A/D updates SDM Vol. 3A 4.6-4.8 give (kvm-unit-tests access_fep). Needs the kvm
    module parameter force_emulation_prefix."""
    _run(guest, kvm, case, fep=True)


def _run(guest, kvm, case, fep=False):
    reason = requirement(kvm, case)
    if reason:
        pytest.skip(reason)
    run_case(guest, kvm, case, fep)
