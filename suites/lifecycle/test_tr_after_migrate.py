"""Guest.migrate under QEMU's TCG: the restored vCPUs that run on get TR with the available TSS type,
as every other sregs write for a guest does (kvmtest.guest.modes.tr_loaded_busy says why); elsewhere
the restored TR is left exactly as saved. KVMTEST_ACCELERATOR stands in for the fingerprint."""

import pytest

TSS_AVAILABLE, TSS_BUSY = 0x9, 0xB  # SDM Vol. 3A Table 3-2 (64-bit TSS types in IA-32e mode)


@pytest.mark.parametrize("accelerator,want", [("tcg", TSS_AVAILABLE), ("none", TSS_BUSY)])
def test_migrated_guest_tr_type_follows_the_accelerator(guest, monkeypatch, accelerator, want):
    """The last KVM_SET_SREGS(2) Guest.migrate makes on the restored vCPU loads TR type 9 under TCG and the
    saved 11 elsewhere, and the guest runs on to GUEST_DONE. What is written is what the test reads (a
    spy on Vcpu.set_sregs): KVM_GET_SREGS cannot tell, as SVM reports TR busy whatever was loaded."""
    monkeypatch.setenv("KVMTEST_ACCELERATOR", accelerator)
    g = guest("long64-cpl3", "GUEST_SYNC 1\nGUEST_DONE")
    assert g.expect_sync() == 1
    sregs = g.vcpu.get_sregs()
    sregs.tr.type = TSS_BUSY  # what SVM's KVM_GET_SREGS reports whatever was loaded
    g.vcpu.set_sregs(sregs)
    written = []
    vcpu_class = type(g.vcpu)
    originals = {name: getattr(vcpu_class, name) for name in ("set_sregs", "set_sregs2")}

    def spy(name):
        def record(vcpu, value, *args, **kwargs):
            written.append((vcpu, value.tr.type))
            return originals[name](vcpu, value, *args, **kwargs)
        return record

    for name in originals:   # restore_vm writes KVM_SET_SREGS2 where KVM has it
        monkeypatch.setattr(vcpu_class, name, spy(name))
    g.migrate()
    for name, original in originals.items():
        monkeypatch.setattr(vcpu_class, name, original)
    to_new = [tr_type for vcpu, tr_type in written if vcpu is g.vcpu]
    assert to_new, "Guest.migrate made no KVM_SET_SREGS(2) on the restored vCPU"
    assert to_new[-1] == want, \
        f"TR type Guest.migrate last wrote with KVM_SET_SREGS(2) under {accelerator}: {to_new[-1]:#x}, " \
        f"expected {want:#x}"
    assert g.run_to_done() == []
