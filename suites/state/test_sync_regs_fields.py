"""kvm_run.s.regs (struct kvm_sync_regs: regs, sregs, events) against the guest, not against
KVM_GET_REGS/SREGS/VCPU_EVENTS (api.rst 5 "kvm_valid_regs", "kvm_dirty_regs";
KVM_CAP_SYNC_REGS)."""

import pytest

from kvmtest.abi import constants as C
from kvmtest.exits import IntrExit, IoExit
from kvmtest.x86 import NMI_VECTOR

pytestmark = pytest.mark.requires_cap("KVM_CAP_SYNC_REGS")
CR2_VALUE = 0x0000_7F00_DEAD_B000


def test_sync_area_holds_what_the_guest_left(guest):
    """With every kvm_valid_regs bit set, kvm_run.s.regs after an exit holds the general registers
    the guest loaded (regs), the CR2 it wrote (sregs) and the NMI blocking of the NMI handler it
    is in (events: nmi.masked = 1, SDM Vol. 3A 6.7.1) (api.rst 5: "kvm_valid_regs ... which
    register sets are filled in"). The RIP after the OUT is checked once KVM_RUN with
    immediate_exit has completed it: at the KVM_EXIT_IO itself the OUT and the guest state are
    complete only after KVM_RUN is re-entered (api.rst 5, the note on KVM_EXIT_IO), and the
    KVM_EXIT_INTR of that KVM_RUN fills s.regs again."""
    g = guest("long64", f"""
        GUEST_SYNC 1
    spin:
        jmp spin
    nmi_handler:
        mov rax, {CR2_VALUE:#x}
        mov cr2, rax
        mov rbx, 0x1111222233334444
        mov r15, 0x5555666677778888
        out 0x10, al
    after_out:
        GUEST_DONE""")
    g.set_idt_gate(NMI_VECTOR, "nmi_handler")
    assert g.expect_sync() == 1
    g.vcpu.nmi()
    g.vcpu.kvm_run.kvm_valid_regs = C.KVM_SYNC_X86_VALID_FIELDS
    g.expect_exit(IoExit, port=0x10)
    s = g.vcpu.kvm_run.s.regs
    got = (s.regs.rbx, s.regs.r15, s.sregs.cr2, s.events.nmi.masked)
    want = (0x1111222233334444, 0x5555666677778888, CR2_VALUE, 1)
    assert got == want, f"kvm_run.s.regs (rbx, r15, sregs.cr2, events.nmi.masked) at the KVM_EXIT_IO = " \
                        f"{[hex(v) for v in got]}; the guest left {[hex(v) for v in want]}"
    g.vcpu.kvm_run.immediate_exit = 1
    completed = g.vcpu.run()
    assert isinstance(completed, IntrExit), f"KVM_RUN with immediate_exit: expected KVM_EXIT_INTR, got {completed}"
    s = g.vcpu.kvm_run.s.regs
    got = (s.regs.rbx, s.regs.r15, s.regs.rip, s.sregs.cr2, s.events.nmi.masked)
    want = (0x1111222233334444, 0x5555666677778888, g.labels["after_out"], CR2_VALUE, 1)
    assert got == want, f"kvm_run.s.regs (rbx, r15, rip, sregs.cr2, events.nmi.masked) once the OUT completed = " \
                        f"{[hex(v) for v in got]}; the guest left {[hex(v) for v in want]}"
    g.vcpu.kvm_run.kvm_valid_regs = 0
    g.run_to_done()


def test_dirty_sregs_and_events_are_loaded_before_the_guest_runs(guest):
    """CR2 written into kvm_run.s.regs.sregs and an NMI made pending in s.regs.events (flags
    KVM_VCPUEVENT_VALID_NMI_PENDING), with their kvm_dirty_regs bits set, are what the guest
    runs with: its NMI handler runs and reads that CR2 (api.rst 5: "kvm_dirty_regs ... which
    register sets have been modified by userspace")."""
    g = guest("long64", """
        out 0x10, al
    spin:
        jmp spin
    nmi_handler:
        mov rax, cr2
        GUEST_SYNC rax
        GUEST_DONE""")
    g.set_idt_gate(NMI_VECTOR, "nmi_handler")
    g.vcpu.kvm_run.kvm_valid_regs = C.KVM_SYNC_X86_SREGS | C.KVM_SYNC_X86_EVENTS
    g.expect_exit(IoExit, port=0x10)
    s = g.vcpu.kvm_run.s.regs
    s.sregs.cr2 = CR2_VALUE
    s.events.flags = C.KVM_VCPUEVENT_VALID_NMI_PENDING
    s.events.nmi.pending = 1
    g.vcpu.kvm_run.kvm_dirty_regs = C.KVM_SYNC_X86_SREGS | C.KVM_SYNC_X86_EVENTS
    g.vcpu.kvm_run.kvm_valid_regs = 0
    assert g.run_to_done() == [CR2_VALUE], "the NMI from s.regs.events did not run, or CR2 was not s.regs.sregs.cr2"
