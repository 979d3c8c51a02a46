"""struct kvm_sregs2 (KVM_GET_SREGS2): the same special registers as kvm_sregs plus flags and the
PAE page-directory-pointer table entries (api.rst KVM_GET_SREGS2: "KVM_SREGS2_FLAGS_PDPTRS_VALID:
Indicates that the struct contains valid PDPTR values"; SDM Vol. 3A 4.4.1: in PAE paging the
four PDPTEs are loaded from the 32 bytes CR3 points to). The segment, descriptor-table and
control-register fields are checked against the guest in test_segment_fields.py and
test_control_fields.py, which read them through both KVM_GET_SREGS and KVM_GET_SREGS2."""

import struct

import pytest

from kvmtest.abi import constants as C

pytestmark = pytest.mark.requires_cap("KVM_CAP_SREGS2")


@pytest.mark.modes(paging="pae")
def test_pdptrs_are_the_entries_cr3_points_at_in_pae_paging(guest, mode):
    """In PAE paging KVM_GET_SREGS2 sets KVM_SREGS2_FLAGS_PDPTRS_VALID and pdptrs[0..3] are the four
    PDPTEs in guest memory at CR3 (SDM Vol. 3A 4.4.1, Table 4-8), loaded when the mode was entered."""
    g = guest(mode, "GUEST_SYNC 1\nGUEST_DONE")
    assert g.expect_sync() == 1
    s2 = g.vcpu.get_sregs2()
    in_memory = list(struct.unpack("<4Q", g.vm.read(s2.cr3 & ~0x1F, 32)))
    assert s2.flags & C.KVM_SREGS2_FLAGS_PDPTRS_VALID, f"KVM_GET_SREGS2 flags {s2.flags:#x} in PAE paging"
    assert list(s2.pdptrs) == in_memory, \
        f"pdptrs {[hex(p) for p in s2.pdptrs]}; the PDPTEs at CR3 {s2.cr3:#x} are {[hex(p) for p in in_memory]}"
    g.run_to_done()


@pytest.mark.modes(sample="per-code-size", cpl=0)
def test_pdptrs_are_not_valid_outside_pae_paging(guest, mode):
    """Outside PAE paging the processor holds no PDPTRs (SDM Vol. 3A 4.4.1: they are used only in
    PAE paging), so KVM_GET_SREGS2 leaves KVM_SREGS2_FLAGS_PDPTRS_VALID clear; the fields it shares
    with kvm_sregs read the same as KVM_GET_SREGS (api.rst KVM_GET_SREGS2)."""
    g = guest(mode, "GUEST_SYNC 1\nGUEST_DONE")
    assert g.expect_sync() == 1
    s, s2 = g.vcpu.get_sregs(), g.vcpu.get_sregs2()
    assert not s2.flags & C.KVM_SREGS2_FLAGS_PDPTRS_VALID, f"KVM_GET_SREGS2 flags {s2.flags:#x} in {mode}"
    shared = [n for n, *_ in type(s2)._fields_ if n not in ("flags", "pdptrs")]
    differ = [n for n in shared if _raw(getattr(s, n)) != _raw(getattr(s2, n))]
    assert not differ, f"KVM_GET_SREGS2 and KVM_GET_SREGS differ in {differ}"
    g.run_to_done()


def _raw(value):
    return bytes(value) if hasattr(value, "_fields_") else value
