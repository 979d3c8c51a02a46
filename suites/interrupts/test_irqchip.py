"""The in-kernel irqchip: PIC delivery through KVM_IRQ_LINE_STATUS, KVM_GET/SET_IRQCHIP
(api.rst 4.24-4.27; 8259A programming per the Intel 8259A datasheet as the PC uses it)."""

import pytest

from kvmtest.abi import constants as C
from kvmtest.guest.mode_select import select
from kvmtest.guest.pic import init_master_pic

pytestmark = pytest.mark.requires_cap("KVM_CAP_IRQCHIP")

PIC_GUEST = init_master_pic(0x20, unmasked=(1,)) + """
    GUEST_SYNC 1
    sti
wait:
    hlt
    jmp wait
irq1:
    GUEST_SYNC 0x21
    mov al, 0x20
    out 0x20, al            # EOI
    GUEST_DONE
"""


@pytest.mark.modes(*select(protected=False) + select(long=True, cpl=0))
def test_pic_irq_reaches_the_guest(guest, mode):
    """With KVM_CREATE_IRQCHIP, GSI 1 goes to the PIC (api.rst 4.24); an edge raised with
    KVM_IRQ_LINE_STATUS (level 1 then 0, api.rst 4.25) on an unmasked IRQ1 is delivered as
    vector ICW2+1 to a guest waiting in HLT."""
    g = guest(mode, PIC_GUEST, irqchip=True)
    g.set_idt_gate(0x21, "irq1")
    assert g.expect_sync() == 1
    g.vm.irq_line(1, 1)
    g.vm.irq_line(1, 0)
    assert g.expect_sync() == 0x21
    g.run_to_done()


def test_get_and_set_irqchip_round_trip(vm):
    """KVM_SET_IRQCHIP then KVM_GET_IRQCHIP of the master PIC returns the state written
    (api.rst 4.26, 4.27): the interrupt mask register."""
    vm.create_irqchip()
    chip = vm.get_irqchip(C.KVM_IRQCHIP_PIC_MASTER)
    # struct kvm_pic_state: last_irr, irr, imr, ... (arch/x86/include/uapi/asm/kvm.h)
    chip.chip[2] = 0xA5
    vm.set_irqchip(chip)
    back = vm.get_irqchip(C.KVM_IRQCHIP_PIC_MASTER)
    assert back.chip[2] == 0xA5, f"PIC master IMR read back {back.chip[2]:#x}"


def test_second_irqchip_is_refused(vm):
    """An irqchip can be created once per VM: a second KVM_CREATE_IRQCHIP fails (EEXIST)."""
    import errno

    vm.create_irqchip()
    err = vm.try_create_irqchip()
    assert err == errno.EEXIST, f"second KVM_CREATE_IRQCHIP: {C.errno_name(err)}"
