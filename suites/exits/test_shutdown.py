"""KVM_EXIT_SHUTDOWN from a triple fault (api.rst 5 KVM_EXIT_SHUTDOWN; SDM Vol. 3A 6.15
interrupt 8: a fault while delivering #DF shuts the processor down)."""

import pytest

from conftest import ALL
from kvmtest.exits import ShutdownExit

# Real mode is left out: there the IVT's limit check on delivery is not specified the way
# protected mode's IDT limit is (SDM Vol. 3A 6.10, 6.14), so no expected exit can be cited.
PROTECTED = [m for m in ALL if m != "real"]


@pytest.mark.modes(*PROTECTED)
def test_fault_with_an_empty_idt_is_a_triple_fault(guest, mode):
    """With the IDT limit at 0, #UD cannot be delivered (#GP), nor can the #GP, nor the #DF:
    the vCPU shuts down and KVM_RUN exits with KVM_EXIT_SHUTDOWN."""
    g = guest(mode, "ud2\nGUEST_DONE")
    sregs = g.vcpu.get_sregs()
    sregs.idt.limit = 0
    g.vcpu.set_sregs(sregs)
    g.expect_exit(ShutdownExit)
