"""struct kvm_mp_state after real events: HLT, an INIT IPI, a start-up IPI (api.rst 4.38
KVM_GET_MP_STATE, whose states are defined by what the vCPU did: "has executed a HLT
instruction", "has received an INIT signal"; SDM Vol. 3A 8.4.4 INIT/SIPI, 11.6.1 ICR)."""

import threading

import pytest

from kvmtest.abi import constants as C
from kvmtest.exits import IntrExit
from kvmtest.guest.paging import KiB4
from kvmtest.x86 import PTE_P, PTE_PCD, PTE_RW

pytestmark = [pytest.mark.requires_cap("KVM_CAP_IRQCHIP"), pytest.mark.requires_cap("KVM_CAP_MP_STATE")]
APIC = 0xFEE00000


def _name(state):
    return C.MP_STATE_NAMES.name(state)


@pytest.mark.waits
def test_hlt_puts_the_vcpu_in_halted(guest):
    """With an in-kernel irqchip a guest that executes HLT with interrupts off waits in the
    kernel; kicked out of KVM_RUN, the vCPU reports KVM_MP_STATE_HALTED ("the vcpu has executed
    a HLT instruction and is waiting for an interrupt", api.rst 4.38), and RIP is past the HLT."""
    g = guest("long64", "cli\nhlt\nafter_hlt: nop\nGUEST_DONE", irqchip=True)
    assert g.vcpu.get_mp_state() == C.KVM_MP_STATE_RUNNABLE, _name(g.vcpu.get_mp_state())
    kicker = threading.Timer(0.3, g.vcpu.kick)
    kicker.start()
    try:
        exit_ = g.vcpu.run(timeout=10)
    finally:
        kicker.cancel()
    assert isinstance(exit_, IntrExit), \
        f"KVM_RUN of a halted vCPU returned {exit_}, expected KVM_EXIT_INTR after the kick"
    state = g.vcpu.get_mp_state()
    assert state == C.KVM_MP_STATE_HALTED, f"after the guest's HLT: {_name(state)}, expected KVM_MP_STATE_HALTED"
    assert g.vcpu.get_regs().rip == g.labels["after_hlt"], "RIP is not past the HLT"


SEND_INIT_THEN_SIPI = """
    mov rbx, 0xFEE00000
    mov dword ptr [rbx + 0xF0], 0x1FF           # SVR: APIC software-enabled
    mov dword ptr [rbx + 0x310], 0x01000000     # ICR high: destination APIC ID 1
    mov dword ptr [rbx + 0x300], 0x00004500     # ICR low: INIT, assert
    GUEST_SYNC 1
    mov dword ptr [rbx + 0x300], 0x0000460A     # ICR low: start-up, vector 0x0A -> 0xA000
    GUEST_SYNC 2
    GUEST_DONE
.code16
.org 0xA000
ap_entry:
    mov ax, cs
    GUEST_SYNC ax
    GUEST_DONE
"""


def test_init_then_sipi_moves_an_ap_through_its_states(guest):
    """An AP starts KVM_MP_STATE_UNINITIALIZED; after the BSP's INIT IPI it reports
    KVM_MP_STATE_INIT_RECEIVED ("has received an INIT signal, and is now ready for a SIPI");
    after the start-up IPI with vector 0x0A it is runnable and starts at CS 0x0A00 (api.rst 4.38;
    SDM Vol. 3A 8.4.4.1, 11.6.1)."""
    g = guest("long64", SEND_INIT_THEN_SIPI, irqchip=True)
    g.page_tables.map(APIC, APIC, KiB4, PTE_P | PTE_RW | PTE_PCD)
    ap = g.vm.create_vcpu(1)
    ap.set_cpuid(g.kvm.cached_supported_cpuid())
    states = [ap.get_mp_state()]
    assert g.expect_sync() == 1
    states.append(ap.get_mp_state())
    assert g.expect_sync() == 2
    states.append(ap.get_mp_state())
    want = [C.KVM_MP_STATE_UNINITIALIZED, C.KVM_MP_STATE_INIT_RECEIVED, C.KVM_MP_STATE_RUNNABLE]
    assert states == want, f"AP states at creation, after INIT, after SIPI: {[_name(s) for s in states]}; " \
                           f"expected {[_name(s) for s in want]}"
    assert g.run_to_done(vcpu=ap) == [0x0A00], "the AP did not start at the start-up vector"
    g.run_to_done()
