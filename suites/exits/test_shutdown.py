"""KVM_EXIT_SHUTDOWN from a triple fault (api.rst 5 KVM_EXIT_SHUTDOWN; SDM Vol. 3A 6.15
interrupt 8: a fault while delivering #DF shuts the processor down)."""

import pytest

from kvmtest.exits import ShutdownExit


# Real mode has no descriptors to make not present; its triple fault (an exception whose vector
# table entry, and those of #GP and #DF, lie beyond the IDTR limit: SDM Vol. 2A INT n Operation,
# which covers exceptions too) is checked in suites/modes/test_real_mode_idt_limit.py, and INT n
# beyond the limit in suites/modes/test_real_mode.py::test_int_beyond_the_vector_table_limit_is_gp.
@pytest.mark.modes(protected=True)
def test_fault_with_an_empty_idt_is_a_triple_fault(guest, mode):
    """With the IDT limit at 0, #UD cannot be delivered (#GP), nor can the #GP, nor the #DF:
    the vCPU shuts down and KVM_RUN exits with KVM_EXIT_SHUTDOWN."""
    g = guest(mode, "ud2\nGUEST_DONE")
    sregs = g.vcpu.get_sregs()
    sregs.idt.limit = 0
    g.set_sregs(sregs)
    g.expect_exit(ShutdownExit)


@pytest.mark.requires_cap("KVM_CAP_X86_TRIPLE_FAULT_EVENT")
def test_triple_fault_injected_through_vcpu_events(guest):
    """With KVM_CAP_X86_TRIPLE_FAULT_EVENT enabled, user space can make a triple fault pending
    with KVM_SET_VCPU_EVENTS (KVM_VCPUEVENT_VALID_TRIPLE_FAULT, triple_fault.pending); the next
    KVM_RUN exits with KVM_EXIT_SHUTDOWN (api.rst 4.32, 7 KVM_CAP_X86_TRIPLE_FAULT_EVENT;
    selftests triple_fault_event_test)."""
    from kvmtest.abi.constants import KVM_VCPUEVENT_VALID_TRIPLE_FAULT

    g = guest("long64", "spin: jmp spin")
    g.vm.enable_cap("KVM_CAP_X86_TRIPLE_FAULT_EVENT", 1)
    ev = g.vcpu.get_events()
    ev.flags = KVM_VCPUEVENT_VALID_TRIPLE_FAULT
    ev.triple_fault.pending = 1
    g.vcpu.set_events(ev)
    g.expect_exit(ShutdownExit)
