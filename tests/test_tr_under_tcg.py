"""TR under QEMU's TCG: the mode's state keeps the busy TSS type LTR leaves; only a guest about to
run gets the available type there (kvmtest/guest/modes.py tr_loaded_busy explains why)."""

from kvmtest.abi.structs import kvm_sregs
from kvmtest.guest.modes import get_mode, keep_tr_loadable, mode_sregs

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
