"""TR under QEMU's TCG: the mode's state keeps the busy TSS type LTR leaves; only a guest about to
run gets the available type there (kvmtest/guest/modes.py tr_loaded_busy explains why), through
Guest.set_sregs, which suites call to write a guest's special registers."""

from types import SimpleNamespace

import pytest

from kvmtest.abi.structs import kvm_regs, kvm_sregs
from kvmtest.errors import BadArgumentError
from kvmtest.guest.modes import get_mode, keep_tr_loadable, mode_sregs
from kvmtest.guest.runloop import GuestRunLoop

TSS_AVAILABLE, TSS_BUSY = 0x9, 0xB  # SDM Vol. 3A Table 3-2, 32-bit TSS (64-bit TSS in IA-32e mode)


def test_mode_state_has_a_busy_tr_whatever_the_accelerator(monkeypatch):
    for accel in ("none", "kvm", "tcg"):
        monkeypatch.setenv("KVMTEST_ACCELERATOR", accel)
        assert mode_sregs(get_mode("pm32-cpl3"), kvm_sregs()).tr.type == TSS_BUSY, accel


def test_a_guest_gets_an_available_tr_only_under_tcg(monkeypatch):
    monkeypatch.setenv("KVMTEST_ACCELERATOR", "tcg")
    assert keep_tr_loadable(mode_sregs(get_mode("pae-cpl3"), kvm_sregs())).tr.type == TSS_AVAILABLE
    for accel in ("none", "kvm"):
        monkeypatch.setenv("KVMTEST_ACCELERATOR", accel)
        assert keep_tr_loadable(mode_sregs(get_mode("pae-cpl3"), kvm_sregs())).tr.type == TSS_BUSY, accel


def test_only_a_busy_tss_is_touched(monkeypatch):
    monkeypatch.setenv("KVMTEST_ACCELERATOR", "tcg")
    sregs = kvm_sregs()
    sregs.tr.type = 0x3  # a busy 16-bit TSS a test chose: left as it is
    assert keep_tr_loadable(sregs).tr.type == 0x3


# --- Guest.set_sregs: the one KVM_SET_SREGS a test uses for a guest's vCPU that will run -------------

class _RecordingVcpu:
    """Stands in for a Vcpu: keeps a copy of what each KVM_SET_SREGS would have handed KVM."""
    name = "vcpu0"

    def __init__(self):
        self.sent = []

    def set_sregs(self, sregs):
        self.sent.append(kvm_sregs.from_buffer_copy(sregs))


def _guest():
    g = GuestRunLoop()
    g.name, g.vcpu = "guest", _RecordingVcpu()
    g.vm = SimpleNamespace(vcpus=[g.vcpu])
    return g


def _state_as_read_back():
    """What KVM_GET_SREGS on SVM reports for a pm32-cpl3 guest: TR busy, plus a test's own change."""
    sregs = mode_sregs(get_mode("pm32-cpl3"), kvm_sregs())
    sregs.cr4 |= 1 << 11  # CR4.UMIP, as suites/modes/test_umip.py sets it
    return sregs


def test_guest_set_sregs_makes_tr_available_under_tcg_and_changes_nothing_else(monkeypatch):
    monkeypatch.setenv("KVMTEST_ACCELERATOR", "tcg")
    g, sregs = _guest(), _state_as_read_back()
    g.set_sregs(sregs)
    (sent,) = g.vcpu.sent
    assert sent.tr.type == TSS_AVAILABLE
    sent.tr.type = TSS_BUSY
    assert bytes(sent) == bytes(sregs), "only TR's busy bit may differ from what the test wrote"
    assert sregs.tr.type == TSS_BUSY, "the caller's kvm_sregs must stay as it wrote it"


def test_guest_set_sregs_sends_sregs_unchanged_elsewhere(monkeypatch):
    for accel in ("none", "kvm"):
        monkeypatch.setenv("KVMTEST_ACCELERATOR", accel)
        g, sregs = _guest(), _state_as_read_back()
        g.set_sregs(sregs)
        assert [bytes(s) for s in g.vcpu.sent] == [bytes(sregs)], accel


def test_guest_set_sregs_leaves_a_tr_that_is_not_busy_under_tcg(monkeypatch):
    monkeypatch.setenv("KVMTEST_ACCELERATOR", "tcg")
    g, sregs = _guest(), _state_as_read_back()
    sregs.tr.type = 0x3  # a busy 16-bit TSS a test chose on purpose
    g.set_sregs(sregs)
    assert [bytes(s) for s in g.vcpu.sent] == [bytes(sregs)]


def test_guest_set_sregs_refuses_another_vcpu_and_another_struct(monkeypatch):
    monkeypatch.setenv("KVMTEST_ACCELERATOR", "tcg")
    g = _guest()
    with pytest.raises(BadArgumentError, match="not one of this guest's vCPUs"):
        g.set_sregs(_state_as_read_back(), vcpu=_RecordingVcpu())
    with pytest.raises(BadArgumentError, match="guest set_sregs: expected a kvm_sregs"):
        g.set_sregs(kvm_regs())
    assert g.vcpu.sent == []
