"""KVM_CAP_SPLIT_IRQCHIP: local APICs in the kernel, PIC and IOAPIC in user space, IOAPIC pins
as reserved MSI routes whose level-triggered EOIs exit with KVM_EXIT_IOAPIC_EOI (api.rst KVM_CAP_SPLIT_IRQCHIP,
5 KVM_EXIT_IOAPIC_EOI, 4.52 KVM_SET_GSI_ROUTING)."""

import pytest

from kvmtest.abi import constants as C
from kvmtest.exits import IoapicEoiExit
from kvmtest.guest.paging import KiB4
from kvmtest.x86 import PTE_P, PTE_PCD, PTE_RW

pytestmark = pytest.mark.requires_cap("KVM_CAP_SPLIT_IRQCHIP")
APIC = 0xFEE00000
VECTOR = 0x60


def test_split_irqchip_is_refused_once_a_vcpu_exists(vm):
    """Enabling KVM_CAP_SPLIT_IRQCHIP fails if a vCPU has already been created (api.rst KVM_CAP_SPLIT_IRQCHIP)."""
    vm.create_vcpu()
    err = vm.try_enable_cap("KVM_CAP_SPLIT_IRQCHIP", 24)
    assert err != 0, \
        "KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP) after KVM_CREATE_VCPU succeeded; " \
        "api.rst KVM_CAP_SPLIT_IRQCHIP says it fails"


def test_split_irqchip_is_refused_after_create_irqchip(vm):
    """Enabling KVM_CAP_SPLIT_IRQCHIP fails if the irqchip is already in the kernel, i.e. after
    KVM_CREATE_IRQCHIP (api.rst KVM_CAP_SPLIT_IRQCHIP)."""
    vm.create_irqchip()
    err = vm.try_enable_cap("KVM_CAP_SPLIT_IRQCHIP", 24)
    assert err != 0, \
        "KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP) after KVM_CREATE_IRQCHIP succeeded; " \
        "api.rst KVM_CAP_SPLIT_IRQCHIP says it fails"


def test_split_irqchip_gives_vcpus_a_local_apic_and_no_pic(vm):
    """With a split irqchip each vCPU gets an in-kernel local APIC (KVM_GET_LAPIC works and the
    ID register holds the vCPU id in bits 31:24, SDM Vol. 3A 11.4.6), while the PIC and IOAPIC
    are user space's, so KVM_GET_IRQCHIP has no chip to read (api.rst KVM_CAP_SPLIT_IRQCHIP, 4.26)."""
    vm.enable_split_irqchip(24)
    vcpu = vm.create_vcpu(2)
    apic_id = int.from_bytes(bytes(vcpu.get_lapic().regs[0x20:0x24]), "little") >> 24
    assert apic_id == 2, f"KVM_GET_LAPIC ID register: APIC ID {apic_id}, expected the vCPU id 2"
    err = vm.try_get_irqchip(C.KVM_IRQCHIP_PIC_MASTER)
    assert err != 0, "KVM_GET_IRQCHIP(PIC master) succeeded with a split irqchip, which has no in-kernel PIC"


WAIT_FOR_VECTOR = f"""
    mov rbx, {APIC:#x}
    mov dword ptr [rbx + 0xF0], 0x1FF           # LAPIC software enable
    GUEST_SYNC 0
    sti
1:  hlt
    jmp 1b
handler:
    GUEST_SYNC {VECTOR:#x}
    GUEST_SYNC 0xE0E                            # still before the EOI
    mov dword ptr [rbx + 0xB0], 0               # EOI
    GUEST_DONE
"""


@pytest.mark.parametrize("level", [True, False], ids=["level", "edge"])
def test_reserved_ioapic_route_eoi_exits_to_user_space(guest, vm, level):
    """GSI 5, one of the routes reserved for the user-space IOAPIC, is an MSI to APIC ID 0 with
    the vector in data[7:0] and level trigger in data[15] (SDM Vol. 3A 11.11.2). KVM_IRQ_LINE
    on it delivers the vector; the guest's EOI of a level-triggered one, and nothing before
    that EOI, exits with KVM_EXIT_IOAPIC_EOI naming the vector; an edge-triggered one does not
    exit (api.rst KVM_CAP_SPLIT_IRQCHIP: "whenever the LAPIC receives an EOI for these routes"; 5)."""
    vm.enable_split_irqchip(24)
    g = guest("long64", WAIT_FOR_VECTOR, vm=vm)
    g.page_tables.map(APIC, APIC, KiB4, PTE_P | PTE_RW | PTE_PCD)
    g.set_idt_gate(VECTOR, "handler")
    data = VECTOR | (1 << 15 | 1 << 14 if level else 0)  # level + assert, or edge
    vm.set_gsi_routing([vm.msi_route(5, APIC, data)])
    assert g.expect_sync() == 0
    vm.irq_line(5, 1)
    assert g.expect_sync() == VECTOR, f"vector {VECTOR:#x} not delivered through the MSI route of GSI 5"
    before_eoi = g.run()
    assert getattr(before_eoi, "value", None) == 0xE0E, \
        f"expected the handler's GUEST_SYNC 0xe0e before its EOI write, got {before_eoi}"
    if level:
        exit_ = g.run()
        assert isinstance(exit_, IoapicEoiExit) and exit_.vector == VECTOR, \
            f"EOI of level vector {VECTOR:#x} from a reserved route: " \
            f"expected KVM_EXIT_IOAPIC_EOI(vector={VECTOR:#x}), got {exit_}"
        vm.irq_line(5, 0)
    g.run_to_done()
