"""The MMU kvmtest reports is the MMU the host runs (fingerprint "mmu")."""

from kvmtest import mmu
from kvmtest.fingerprint import kvm_modules, mmu_mode


def test_module_parameters_and_behaviour_agree(kvm):
    """The MMU mode read from the module parameters (kvm_intel.ept, kvm_amd.npt, kvm.tdp_mmu,
    kvm_pvm) matches what the host does: a shadow MMU counts guest writes to live page tables
    in the VM statistic mmu_pte_write, two-dimensional paging does not."""
    declared = mmu_mode(kvm_modules())
    observed = mmu.probe(kvm)
    assert observed["behaviour"] != "unknown", observed["evidence"]
    assert mmu.agrees(declared["mode"], observed["behaviour"]), \
        f"module parameters say {declared['mode']} ({declared['how']}), behaviour says {observed['behaviour']} " \
        f"({observed['evidence']})"
