"""Protection keys for user-mode pages (SDM Vol. 3A 4.6.2, 4.7; kvm-unit-tests access test, its
PKU cases): with CR4.PKE = 1 the leaf entry's bits 62:59 name a key, and PKRU's access-disable
bit for that key forbids every data access to a user-mode page, its write-disable bit every
user-mode write and, with CR0.WP = 1, every supervisor write; instruction fetches and
supervisor-mode pages are not affected. The #PF error code then has PK (bit 5) set. Cases and
oracle: kvmtest.paging_matrix, kvmtest.paging_model.
"""

import pytest

from kvmtest.guest.mode_select import select
from kvmtest.paging_matrix import cases, requirement, run_case

MODES = [m for m in select(sample="per-paging-form", order="widest") if m.startswith("long64")]
CASES = [c for pkru in ("ad", "wd")
         for c in cases(MODES, flag_sets=[(), ("ro",), ("sup",)], levels=("leaf",), features=("-",), pkru=pkru)]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_protection_key_restricts_data_accesses(guest, kvm, case):
    """The guest sets PKRU with WRPKRU (AD or WD of the leaf's key), then accesses the page: the
    access faults exactly when SDM Vol. 3A 4.6.2 says, with PK in the error code (4.7), and
    otherwise completes and sets the A/D flags as without keys (4.8). Needs CPUID.7.0:ECX[3] (PKU)."""
    reason = requirement(kvm, case)
    if reason:
        pytest.skip(reason)
    run_case(guest, kvm, case)
