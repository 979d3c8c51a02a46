"""The MSR half of save/restore: every MSR of KVM_GET_MSR_INDEX_LIST is read on save and set on
restore, and a refusal is named instead of dropped (api.rst 4.3 KVM_GET_MSR_INDEX_LIST, 4.18
KVM_GET_MSRS, 4.19 KVM_SET_MSRS: "it stops processing the MSR list and returns the number of
MSRs that have been set successfully"; kvmtest.state)."""

import pytest

from kvmtest import state as st
from kvmtest.x86 import (
    MSR_IA32_PAT,
    MSR_IA32_SYSENTER_ESP,
    MSR_IA32_TSC_ADJUST,
    MSR_KVM_ASYNC_PF_INT,
    MSR_KVM_POLL_CONTROL,
)

# Values the guest writes itself: SYSENTER_ESP sits before MSR_KVM_ASYNC_PF_INT in KVM's list,
# the other three after it, where a restore that stops at the first refusal never gets.
WRITES = {MSR_IA32_SYSENTER_ESP: 0x5E5E5000, MSR_IA32_TSC_ADJUST: 0x12345000, MSR_IA32_PAT: 0x0007040600050406,
          MSR_KVM_POLL_CONTROL: 0}


def _wrmsrs():
    return "\n".join(f"mov ecx, {i:#x}\nmov eax, {v & 0xFFFFFFFF:#x}\nmov edx, {v >> 32:#x}\nwrmsr"
                     for i, v in WRITES.items())


def _rdmsrs():
    return "\n".join(f"mov ecx, {i:#x}\nrdmsr\nshl rdx, 32\nor rax, rdx\nGUEST_SYNC rax" for i in WRITES)


@pytest.mark.parametrize("irqchip", [False, True], ids=["user-irqchip", "in-kernel-irqchip"])
def test_every_listed_msr_is_saved_and_restored(guest, kvm, irqchip):
    """Save reads every MSR of KVM_GET_MSR_INDEX_LIST (the "guest msrs that are supported",
    api.rst 4.3), so none is skipped; the only one left out is MSR_KVM_ASYNC_PF_INT on a vCPU
    without an in-kernel LAPIC, which KVM will not take back there (kvmtest.state
    NEEDS_IN_KERNEL_LAPIC). KVM_SET_MSRS then sets all saved MSRs (its count equals the saved
    count, api.rst 4.19), and the guest reads back, after migration, the MSRs it wrote, including
    those listed after MSR_KVM_ASYNC_PF_INT."""
    if MSR_KVM_POLL_CONTROL not in kvm.msr_index_list():
        pytest.skip("KVM_GET_MSR_INDEX_LIST has no MSR_KVM_POLL_CONTROL")
    g = guest("long64", _wrmsrs() + "\nGUEST_SYNC 1\n" + _rdmsrs() + "\nGUEST_DONE", irqchip=irqchip)
    assert g.expect_sync() == 1
    saved = st.save(g.vcpu)
    listed = kvm.msr_index_list()
    assert saved.skipped_msrs == [], f"KVM_GET_MSRS refused listed MSRs {[hex(i) for i in saved.skipped_msrs]}"
    want_excluded = set() if irqchip else {MSR_KVM_ASYNC_PF_INT} & set(listed)
    assert set(saved.excluded_msrs) == want_excluded, \
        f"MSRs left out of the restore: {[hex(i) for i in saved.excluded_msrs]}, " \
        f"expected {[hex(i) for i in want_excluded]}"
    assert set(saved.msrs) == set(listed) - want_excluded
    for index, value in WRITES.items():
        assert saved.msrs[index] == value, \
            f"KVM_GET_MSRS {index:#x} = {saved.msrs[index]:#x}, the guest wrote {value:#x}"

    with kvm.create_vm() as vm:
        if irqchip:
            vm.create_irqchip()
        accepted = st.restore(vm.create_vcpu(0), saved)
    assert accepted == len(saved.msrs), f"KVM_SET_MSRS set {accepted} of {len(saved.msrs)} saved MSRs"

    g.migrate()
    assert g.run_to_done() == list(WRITES.values()), "MSR values the guest read back after migration"


def test_restore_names_the_msr_kvm_refuses(guest, kvm):
    """A saved MSR the target vCPU cannot take stops KVM_SET_MSRS there (api.rst 4.19); restore
    raises MsrRefused naming it and how many were set, instead of carrying on without the rest:
    MSR_KVM_ASYNC_PF_INT (saved on a vCPU with an in-kernel LAPIC) onto a vCPU without one."""
    g = guest("long64", "GUEST_SYNC 1\nGUEST_DONE", irqchip=True)
    assert g.expect_sync() == 1
    saved = st.save(g.vcpu)
    assert MSR_KVM_ASYNC_PF_INT in saved.msrs, "an in-kernel-LAPIC vCPU's save lacks MSR_KVM_ASYNC_PF_INT"
    saved.lapic = None  # the target has no LAPIC to take it
    position = list(saved.msrs).index(MSR_KVM_ASYNC_PF_INT)
    with kvm.create_vm() as vm, pytest.raises(st.MsrRefused) as refused:
        st.restore(vm.create_vcpu(0), saved)
    assert (refused.value.index, refused.value.accepted) == (MSR_KVM_ASYNC_PF_INT, position), str(refused.value)
    assert "MSR_KVM_ASYNC_PF_INT" in str(refused.value)

