"""Guest.migrate under QEMU's TCG: the restored vCPUs that run on get TR with the available TSS type,
as every other sregs write for a guest does (kvmtest.guest.modes.tr_loaded_busy says why); elsewhere
the restored TR is left exactly as saved. KVMTEST_ACCELERATOR stands in for the fingerprint."""

import pytest

TSS_AVAILABLE, TSS_BUSY = 0x9, 0xB  # SDM Vol. 3A Table 3-2 (64-bit TSS types in IA-32e mode)


@pytest.mark.parametrize("accelerator,want", [("tcg", TSS_AVAILABLE), ("none", TSS_BUSY)])
def test_migrated_guest_tr_type_follows_the_accelerator(guest, monkeypatch, accelerator, want):
    """After Guest.migrate, KVM_GET_SREGS reads TR type 9 under TCG and the saved 11 elsewhere, and the
    guest runs on to GUEST_DONE."""
    monkeypatch.setenv("KVMTEST_ACCELERATOR", accelerator)
    g = guest("long64-cpl3", "GUEST_SYNC 1\nGUEST_DONE")
    assert g.expect_sync() == 1
    sregs = g.vcpu.get_sregs()
    sregs.tr.type = TSS_BUSY  # what SVM's KVM_GET_SREGS reports whatever was loaded
    g.vcpu.set_sregs(sregs)
    g.migrate()
    got = g.vcpu.get_sregs().tr.type
    assert got == want, f"KVM_GET_SREGS TR type after migrate under {accelerator}: {got:#x}, expected {want:#x}"
    assert g.run_to_done() == []
