"""kvm_run.kvm_valid_regs / kvm_dirty_regs (KVM_CAP_SYNC_REGS; api.rst 5, "kvm_run" s.regs)."""

import errno

import pytest

from kvmtest.abi import constants as C
from kvmtest.abi.constants import errno_name
from kvmtest.exits import IoExit

pytestmark = pytest.mark.requires_cap("KVM_CAP_SYNC_REGS")


def test_sync_regs_capability_names_the_x86_fields(kvm):
    """KVM_CAP_SYNC_REGS reports the valid bits: REGS, SREGS and EVENTS on x86 (api.rst 7)."""
    assert kvm.check_extension("KVM_CAP_SYNC_REGS") == C.KVM_SYNC_X86_VALID_FIELDS


@pytest.mark.parametrize("field", ["kvm_valid_regs", "kvm_dirty_regs"])
def test_unknown_sync_bit_fails_kvm_run_with_einval(guest, field):
    """KVM_RUN with a bit outside KVM_SYNC_X86_VALID_FIELDS in kvm_valid_regs or
    kvm_dirty_regs fails with EINVAL (api.rst 5; selftests sync_regs_test)."""
    g = guest("long64", "GUEST_DONE")
    setattr(g.vcpu.kvm_run, field, C.KVM_SYNC_X86_VALID_FIELDS + 1)
    err = g.vcpu.try_run()
    setattr(g.vcpu.kvm_run, field, 0)
    assert err == errno.EINVAL, f"KVM_RUN with {field}=0x8: expected EINVAL, got {errno_name(err)}"


def test_valid_regs_mirror_get_regs_and_sregs(guest):
    """With all valid bits set, kvm_run.s.regs after an exit equals KVM_GET_REGS,
    KVM_GET_SREGS and KVM_GET_VCPU_EVENTS (api.rst 5: "kvm_valid_regs ... bits indicating
    which register sets are filled in")."""
    g = guest("long64", "mov rbx, 0x1234\nout 0x10, al\nGUEST_DONE")
    g.vcpu.kvm_run.kvm_valid_regs = C.KVM_SYNC_X86_VALID_FIELDS
    g.expect_exit(IoExit, port=0x10)
    s = g.vcpu.kvm_run.s.regs
    assert bytes(s.regs) == bytes(g.vcpu.get_regs()), "s.regs.regs differs from KVM_GET_REGS"
    sregs = g.vcpu.get_sregs()
    assert (s.sregs.cr0, s.sregs.cr3, s.sregs.cr4, s.sregs.efer, s.sregs.cs.selector) == \
        (sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer, sregs.cs.selector), "s.regs.sregs differs from KVM_GET_SREGS"
    assert s.regs.rbx == 0x1234


def test_dirty_regs_are_loaded_before_the_guest_runs(guest):
    """Registers written into kvm_run.s.regs with their kvm_dirty_regs bit set are what the
    guest runs with (api.rst 5: "kvm_dirty_regs ... bits indicating which register sets have
    been modified by userspace")."""
    g = guest("long64", "out 0x10, al\nGUEST_SYNC rbx\nGUEST_DONE")
    g.vcpu.kvm_run.kvm_valid_regs = C.KVM_SYNC_X86_REGS
    g.expect_exit(IoExit, port=0x10)
    g.vcpu.kvm_run.s.regs.regs.rbx = 0xCAFE
    g.vcpu.kvm_run.kvm_dirty_regs = C.KVM_SYNC_X86_REGS
    assert g.run_to_done() == [0xCAFE]


def test_without_the_dirty_bit_the_sync_area_is_ignored(guest):
    """A register changed in s.regs without its kvm_dirty_regs bit is not imported."""
    g = guest("long64", "mov rbx, 7\nout 0x10, al\nGUEST_SYNC rbx\nGUEST_DONE")
    g.vcpu.kvm_run.kvm_valid_regs = C.KVM_SYNC_X86_REGS
    g.expect_exit(IoExit, port=0x10)
    g.vcpu.kvm_run.s.regs.regs.rbx = 0xCAFE
    g.vcpu.kvm_run.kvm_dirty_regs = 0
    assert g.run_to_done() == [7]


COUNTER_LOOP = "top:\nout 0x10, al\nadd rbx, 1\njmp top"  # one KVM_EXIT_IO per pass; RBX counts them


def test_with_both_bitmaps_clear_neither_side_is_copied(guest):
    """With kvm_valid_regs and kvm_dirty_regs both 0, KVM_RUN neither loads s.regs into the vCPU
    nor writes the vCPU's registers back into s.regs: RBX set through KVM_SET_REGS is what the
    guest increments, and the value left in s.regs.regs.rbx stays (api.rst 5: kvm_valid_regs says
    "which register sets are filled in", kvm_dirty_regs "which ... have been modified by userspace")."""
    g = guest("long64", COUNTER_LOOP)
    run = g.vcpu.kvm_run
    run.kvm_valid_regs = C.KVM_SYNC_X86_VALID_FIELDS
    g.expect_exit(IoExit, port=0x10)
    run.kvm_valid_regs = run.kvm_dirty_regs = 0
    run.s.regs.regs.rbx = 0xAAAA
    regs = g.vcpu.get_regs()
    regs.rbx = 0xBAC0
    g.vcpu.set_regs(regs)
    g.expect_exit(IoExit, port=0x10)
    assert run.s.regs.regs.rbx == 0xAAAA, \
        f"s.regs.regs.rbx = {run.s.regs.regs.rbx:#x} after KVM_RUN with no valid bit; expected 0xaaaa left alone"
    assert g.vcpu.get_regs().rbx == 0xBAC1, \
        f"KVM_GET_REGS rbx = {g.vcpu.get_regs().rbx:#x}; expected 0xbac1 (0xbac0 from KVM_SET_REGS, one ADD)"
