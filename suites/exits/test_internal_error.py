"""KVM_EXIT_INTERNAL_ERROR for an instruction KVM cannot emulate, with the instruction bytes
(KVM_CAP_EXIT_ON_EMULATION_FAILURE; api.rst 5 KVM_EXIT_INTERNAL_ERROR / emulation_failure)."""

import pytest

from kvmtest.abi import constants as C
from kvmtest.exits import InternalErrorExit
from kvmtest.guest.layout import MMIO_BASE


@pytest.mark.requires_cap("KVM_CAP_EXIT_ON_EMULATION_FAILURE")
@pytest.mark.modes(code_bits=64)
def test_x87_load_from_mmio_exits_with_the_instruction_bytes(guest, mode):
    """FLD m32 from MMIO cannot be emulated: with KVM_CAP_EXIT_ON_EMULATION_FAILURE enabled KVM
    exits with KVM_EXIT_INTERNAL_ERROR, suberror KVM_INTERNAL_ERROR_EMULATION, flag
    KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES, ndata >= 3 and the bytes d9 03
    (selftests exit_on_emulation_failure_test); after user space skips the 2 bytes the guest
    reaches GUEST_DONE."""
    g = guest(mode, f"mov rbx, {MMIO_BASE:#x}\nfld: fld dword ptr [rbx]\nGUEST_DONE")
    g.vm.enable_cap("KVM_CAP_EXIT_ON_EMULATION_FAILURE", 1)
    exit_ = g.run()
    assert isinstance(exit_, InternalErrorExit), f"expected KVM_EXIT_INTERNAL_ERROR, got {exit_}"
    assert exit_.suberror == C.KVM_INTERNAL_ERROR_EMULATION and exit_.ndata >= 3, f"{exit_}"
    assert exit_.insn_bytes is not None and exit_.insn_bytes[:2] == b"\xd9\x03", f"{exit_}"
    regs = g.vcpu.get_regs()
    assert regs.rip == g.labels["fld"], f"RIP {regs.rip:#x} at the exit, expected the FLD at {g.labels['fld']:#x}"
    regs.rip += 2
    g.vcpu.set_regs(regs)
    g.run_to_done()
