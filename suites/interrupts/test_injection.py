"""Interrupt and event injection with the user-space irqchip: KVM_INTERRUPT and the interrupt
window, KVM_NMI, exceptions through KVM_SET_VCPU_EVENTS (api.rst 4.16, 4.64, 4.32, 5
request_interrupt_window / ready_for_interrupt_injection)."""

import errno

import pytest

from kvmtest.abi.constants import KVM_VCPUEVENT_VALID_NMI_PENDING, errno_name
from kvmtest.exits import IrqWindowOpenExit
from kvmtest.guest import layout as L
from kvmtest.guest.mode_select import select
from kvmtest.guest.modes import MODES
from kvmtest.x86 import NMI_VECTOR, RFLAGS_IF

MODES_TESTED = select(sample="per-code-size", cpl=0) + select(sample="per-code-size", cpl=3, order="widest")

SPIN_WITH_HANDLER = """
spin:
    nop
    jmp spin
handler:
GUEST_AT_CPL 0
    GUEST_SYNC 0x40
    GUEST_DONE
"""


def _with_if(g):
    regs = g.vcpu.get_regs()
    regs.rflags |= RFLAGS_IF
    g.vcpu.set_regs(regs)


@pytest.mark.modes(*MODES_TESTED)
def test_interrupt_window_then_kvm_interrupt_reaches_the_handler(guest, mode):
    """With request_interrupt_window set, KVM exits with KVM_EXIT_IRQ_WINDOW_OPEN once the guest
    can take an interrupt (ready_for_interrupt_injection=1, if_flag=1); a vector queued then
    with KVM_INTERRUPT is delivered through the IDT (api.rst 4.16, 5)."""
    g = guest(mode, SPIN_WITH_HANDLER)
    g.set_idt_gate(0x40, "handler")
    _with_if(g)
    g.vcpu.kvm_run.request_interrupt_window = 1
    g.expect_exit(IrqWindowOpenExit)
    run = g.vcpu.kvm_run
    assert (run.ready_for_interrupt_injection, run.if_flag) == (1, 1), \
        f"ready_for_interrupt_injection={run.ready_for_interrupt_injection} if_flag={run.if_flag}"
    run.request_interrupt_window = 0
    g.vcpu.interrupt(0x40)
    assert g.expect_sync() == 0x40
    g.run_to_done()


def test_second_kvm_interrupt_before_delivery_is_eexist(guest):
    """KVM_INTERRUPT returns -EEXIST "if an interrupt is already enqueued" (api.rst 4.16)."""
    g = guest("long64", SPIN_WITH_HANDLER)
    g.vcpu.interrupt(0x40)
    err = g.vcpu.try_interrupt(0x41)
    assert err == errno.EEXIST, f"second KVM_INTERRUPT: expected EEXIST, got {errno_name(err)}"


def test_kvm_interrupt_with_an_in_kernel_irqchip_is_enxio(guest):
    """KVM_INTERRUPT returns -ENXIO "if the PIC is in the kernel" (api.rst 4.16)."""
    g = guest("long64", "GUEST_DONE", irqchip=True)
    err = g.vcpu.try_interrupt(0x40)
    assert err == errno.ENXIO, f"KVM_INTERRUPT with KVM_CREATE_IRQCHIP: expected ENXIO, got {errno_name(err)}"


def test_invalid_vector_is_einval(vm):
    """KVM_INTERRUPT returns -EINVAL when "the irq number is invalid" (api.rst 4.16): 256."""
    vcpu = vm.create_vcpu()
    err = vcpu.try_interrupt(256)
    assert err == errno.EINVAL, f"KVM_INTERRUPT irq=256: expected EINVAL, got {errno_name(err)}"


NMI_GUEST = """
    GUEST_SYNC 1
spin:
    nop
    jmp spin
nmi_handler:
GUEST_AT_CPL 0
    GUEST_SYNC 2
    GUEST_DONE
"""


@pytest.mark.requires_cap("KVM_CAP_USER_NMI")
@pytest.mark.modes(*select(sample="per-code-size", cpl=0) + select(code_bits=64, cpl=3))
def test_kvm_nmi_runs_the_nmi_handler(guest, mode):
    """KVM_NMI queues an NMI (api.rst 4.64) that the guest takes through IDT vector 2, whatever
    EFLAGS.IF says (SDM Vol. 3A 6.7.1)."""
    g = guest(mode, NMI_GUEST)
    g.set_idt_gate(NMI_VECTOR, "nmi_handler")
    assert g.expect_sync() == 1
    g.vcpu.nmi()
    assert g.expect_sync() == 2
    g.run_to_done()


@pytest.mark.requires_cap("KVM_CAP_VCPU_EVENTS")
@pytest.mark.modes(*select(sample="per-code-size", cpl=0) + select(code_bits=64, cpl=3))
def test_nmi_made_pending_with_set_vcpu_events_is_delivered(guest, mode):
    """KVM_SET_VCPU_EVENTS with KVM_VCPUEVENT_VALID_NMI_PENDING and nmi.pending = 1 makes an
    NMI pending; the next KVM_RUN delivers it through IDT vector 2 (api.rst 4.32)."""
    g = guest(mode, NMI_GUEST)
    g.set_idt_gate(NMI_VECTOR, "nmi_handler")
    assert g.expect_sync() == 1, "the guest did not reach its first GUEST_SYNC"
    ev = g.vcpu.get_events()
    ev.flags = KVM_VCPUEVENT_VALID_NMI_PENDING
    ev.nmi.pending = 1
    g.vcpu.set_events(ev)
    assert g.expect_sync() == 2, "the pending NMI did not run the NMI handler"
    g.run_to_done()


SELF_IRET = {
    # an IRET to the next instruction at the same privilege level: its only effect is to
    # unblock NMIs (SDM Vol. 3A 6.7.1)
    "real": "pushf\n    push cs\n    .byte 0x68\n    .word after_iret\n    iret",
    "64": "mov ax, ss\n    push rax\n    lea rax, [rsp + 8]\n    push rax\n    pushfq\n    mov ax, cs\n    push rax\n"
          "    mov rax, after_iret\n    push rax\n    iretq",
}
MASKED_NMI_GUEST = """
    GUEST_SYNC 1
    nop
    nop
    GUEST_SYNC 3
    {iret}
after_iret:
    nop
    GUEST_SYNC 4
    GUEST_DONE
nmi_handler:
GUEST_AT_CPL 0
    GUEST_SYNC 2
    GUEST_DONE
"""


@pytest.mark.requires_cap("KVM_CAP_USER_NMI")
@pytest.mark.requires_cap("KVM_CAP_VCPU_EVENTS")
@pytest.mark.modes(*select(protected=False) + select(code_bits=64))
def test_nmi_blocked_by_set_vcpu_events_waits_for_iret(guest, mode):
    """With NMIs blocked through KVM_SET_VCPU_EVENTS (nmi.masked = 1, api.rst 4.32), an NMI
    queued with KVM_NMI is held while the guest runs on, and delivered right after the guest's
    next IRET, which unblocks NMIs (SDM Vol. 3A 6.7.1)."""
    g = guest(mode, MASKED_NMI_GUEST.format(iret=SELF_IRET["real" if mode == "real" else "64"]))
    g.set_idt_gate(NMI_VECTOR, "nmi_handler")
    assert g.expect_sync() == 1, "the guest did not reach its first GUEST_SYNC"
    ev = g.vcpu.get_events()
    ev.flags = 0
    ev.nmi.masked = 1
    g.vcpu.set_events(ev)
    assert g.vcpu.get_events().nmi.masked == 1, "KVM_GET_VCPU_EVENTS does not show the NMI blocking just set"
    g.vcpu.nmi()
    first = g.expect_sync()
    assert first == 3, f"GUEST_SYNC {first} while NMIs were blocked: expected 3 (the NMI held until IRET)"
    second = g.expect_sync()
    assert second == 2, f"GUEST_SYNC {second} after the IRET: expected 2, the held NMI's handler"
    g.run_to_done()


@pytest.mark.requires_cap("KVM_CAP_VCPU_EVENTS")
@pytest.mark.modes(*select(sample="per-code-size", cpl=0) + select(sample="per-code-size", long=True, cpl=3))
@pytest.mark.parametrize("vector,error_code", [(6, None), (13, 0x1234)], ids=["UD", "GP"])
def test_exception_injected_with_set_vcpu_events(guest, mode, vector, error_code):
    """An exception made pending with KVM_SET_VCPU_EVENTS (exception.injected, nr,
    has_error_code, error_code) is delivered to the guest on the next KVM_RUN with that vector
    and error code (api.rst 4.32)."""
    if error_code is not None and not MODES[mode].protected:
        pytest.skip("real mode exceptions carry no error code")
    spec = f"{vector}({error_code:#x})" if error_code is not None else str(vector)
    g = guest(mode, f"GUEST_ASSERT_RAISES {spec}, GUEST_SYNC 1\nGUEST_DONE")
    assert g.expect_sync() == 1
    ev = g.vcpu.get_events()
    ev.exception.injected, ev.exception.nr = 1, vector
    ev.exception.has_error_code = int(error_code is not None)
    ev.exception.error_code = error_code or 0
    ev.flags = 0
    g.vcpu.set_events(ev)
    g.run_to_done()


SHADOW_MARK = L.LOW_DATA  # below 64 KiB, for real mode; not the exception record
STI_SHADOW = """
    mov {bx}, {mark}
    cli
    GUEST_SYNC 1
    sti
    mov byte ptr [{bx}], 1      # the instruction in STI's shadow
    mov byte ptr [{bx}], 2
spin_after_sti:
    nop
    jmp spin_after_sti
handler:
    movzx eax, byte ptr [{bx}]
    GUEST_SYNC eax
    GUEST_DONE
"""


@pytest.mark.modes(sample="per-code-size", cpl=0)
def test_interrupt_window_opens_only_after_the_instruction_following_sti(guest, mode):
    """STI sets IF but external interrupts are recognised only after the next instruction
    completes (SDM Vol. 2B STI, the "interrupt shadow"), so the interrupt window requested
    while IF=0 opens no earlier than after that instruction: at KVM_EXIT_IRQ_WINDOW_OPEN, and
    in the handler of the vector then queued, the shadowed store has happened (api.rst 5
    request_interrupt_window, 4.16 KVM_INTERRUPT)."""
    from kvmtest.guest.modes import regs_for

    g = guest(mode, STI_SHADOW.format(mark=hex(SHADOW_MARK), **regs_for(mode)))
    g.set_idt_gate(0x40, "handler")
    assert g.expect_sync() == 1
    run = g.vcpu.kvm_run
    run.request_interrupt_window = 1
    g.expect_exit(IrqWindowOpenExit)
    run.request_interrupt_window = 0
    at_window = g.vm.read(SHADOW_MARK, 1)[0]
    assert at_window >= 1, \
        f"KVM_EXIT_IRQ_WINDOW_OPEN at rip={g.vcpu.get_regs().rip:#x} before the instruction after STI ran " \
        f"(byte at {SHADOW_MARK:#x} = {at_window}, expected 1 or 2)"
    g.vcpu.interrupt(0x40)
    (in_handler,) = g.run_to_done()
    assert in_handler >= 1, \
        f"vector 0x40 delivered inside STI's shadow: byte at {SHADOW_MARK:#x} = {in_handler} in the handler"
