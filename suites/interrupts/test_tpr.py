"""The task-priority register holding back a pending interrupt, and the ways it is lowered: by the
host through KVM_SET_LAPIC, and by the guest through CR8, in xAPIC and x2APIC mode (SDM Vol. 3A
11.8.3.1 "Task and Processor Priorities", 11.8.6.5 "Interaction of Task Priorities between CR8
and APIC"; api.rst KVM_GET_LAPIC / KVM_SET_LAPIC; selftests xapic_tpr_test). The interrupt is a
self-IPI: the ICR's self shorthand in xAPIC mode, the SELF IPI register in x2APIC mode
(11.6.1, 11.12.11)."""

import pytest

from kvmtest import lapic
from kvmtest.guest.apic_source import X2APIC_ON
from kvmtest.guest.msr_source import wrmsr
from kvmtest.guest.paging import KiB4
from kvmtest.x86 import (
    APIC_DEFAULT_PHYS_BASE,
    APIC_IRR,
    APIC_PPR,
    APIC_TPR,
    MSR_IA32_X2APIC_EOI,
    MSR_IA32_X2APIC_SELF_IPI,
    MSR_IA32_X2APIC_TPR,
    PTE_P,
    PTE_PCD,
    PTE_RW,
)

pytestmark = pytest.mark.requires_cap("KVM_CAP_IRQCHIP")

VECTOR = 0x50                      # priority class 5
APIC = APIC_DEFAULT_PHYS_BASE


SETUP = {
    "xapic": f"""
        mov rbx, {APIC:#x}
        mov dword ptr [rbx + 0xF0], 0x1FF           # SVR: software enable
        mov dword ptr [rbx + {APIC_TPR:#x}], {VECTOR:#x}   # TPR: class 5
        sti
        mov dword ptr [rbx + 0x300], {0x44000 | VECTOR:#x}  # ICR: fixed, assert, self
    """,
    "x2apic": f"""
        {X2APIC_ON}
        {wrmsr(MSR_IA32_X2APIC_TPR, VECTOR)}
        sti
        {wrmsr(MSR_IA32_X2APIC_SELF_IPI, VECTOR)}
    """,
}
EOI = {"xapic": "mov dword ptr [rbx + 0xB0], 0\n", "x2apic": wrmsr(MSR_IA32_X2APIC_EOI, 0)}
RELEASE = {"host-set-lapic": "", "guest-mov-cr8": "mov eax, 4\nmov cr8, rax\n"}

GUEST = """
    {setup}
    nop
    nop
    GUEST_SYNC 1                # the IPI is pending, held by the TPR
    nop
    GUEST_SYNC 2                # and still held after another entry
    {release}
wait:
    cli
    cmp r12d, 1
    jae taken
    sti
    hlt
    jmp wait
taken:
    GUEST_DONE
handler:
    GUEST_SYNC {vector:#x}
    inc r12d
    {eoi}
    iretq
"""


@pytest.mark.parametrize("release", list(RELEASE))
@pytest.mark.parametrize("apic_mode", list(SETUP))
def test_tpr_holds_an_interrupt_of_its_own_class_until_lowered(kvm, guest, apic_mode, release):
    """With TPR = 0x50 the self-IPI of vector 0x50 stays pending with IF=1: an interrupt is
    delivered only if its priority class is above the PPR's, and PPR[7:4] >= TPR[7:4] (11.8.3.1).
    Meanwhile KVM_GET_LAPIC shows the vector in IRR, TPR 0x50 and PPR class 5, and KVM_GET_SREGS
    cr8 = 5, TPR[7:4] (11.8.6.5). Lowering the TPR to class 4 releases it, whether the host writes
    the TPR with KVM_SET_LAPIC or the guest executes MOV CR8, 4 (which sets TPR[7:4] = 4, 11.8.6.5)."""
    if apic_mode == "x2apic" and not kvm.has_feature("x2apic"):
        pytest.skip("needs CPUID.1:ECX[21] (x2apic), which KVM_GET_SUPPORTED_CPUID does not report")
    g = guest("long64", GUEST.format(setup=SETUP[apic_mode], release=RELEASE[release], vector=VECTOR,
                                     eoi=EOI[apic_mode]), irqchip=True)
    g.page_tables.map(APIC, APIC, KiB4, PTE_P | PTE_RW | PTE_PCD)
    g.set_idt_gate(VECTOR, "handler")
    held = f"vector {VECTOR:#x} was delivered although TPR = {VECTOR:#x} holds its class"
    assert g.expect_sync() == 1, held
    state = g.vcpu.get_lapic()
    seen = (lapic.vector_bit(state, APIC_IRR, VECTOR), lapic.reg(state, APIC_TPR), lapic.reg(state, APIC_PPR) & 0xF0,
            g.vcpu.get_sregs().cr8)
    assert seen == (True, VECTOR, VECTOR, VECTOR >> 4), \
        f"while held: IRR bit {VECTOR:#x} {seen[0]}, TPR {seen[1]:#x}, PPR class {seen[2]:#x}, cr8 {seen[3]}; " \
        f"expected pending, {VECTOR:#x}, {VECTOR:#x}, {VECTOR >> 4}"
    assert g.expect_sync() == 2, held
    if release == "host-set-lapic":
        lapic.set_reg(state, APIC_TPR, 0x40)
        g.vcpu.set_lapic(state)
        assert g.vcpu.get_sregs().cr8 == 4, f"KVM_GET_SREGS cr8 after KVM_SET_LAPIC TPR 0x40: {g.vcpu.get_sregs().cr8}"
    assert g.run_to_done() == [VECTOR], f"vector {VECTOR:#x} after the TPR was lowered to class 4 ({release})"
