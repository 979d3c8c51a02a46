"""VM-wide state carried by a migration: pages dirty-logged before it, a split irqchip set up
before the vCPUs, and a second vCPU halted in its MP state (api.rst 4.8 KVM_GET_DIRTY_LOG, 4.35
KVM_MEM_LOG_DIRTY_PAGES, KVM_CAP_SPLIT_IRQCHIP, 4.38/4.39 KVM_GET/SET_MP_STATE; kvmtest.vm_state)."""

import time

import pytest

from kvmtest.abi import constants as C
from kvmtest.exits import IntrExit
from kvmtest.guest.apic_source import FIXED_IPI_TO_ID1
from kvmtest.guest.aps import ready_ap
from kvmtest.guest.paging import KiB4
from kvmtest.x86 import APIC_DEFAULT_PHYS_BASE, PTE_P, PTE_PCD, PTE_RW

APIC = APIC_DEFAULT_PHYS_BASE
LOGGED = 0x200000         # a dirty-logged slot inside the guest's identity map
PAGE = 0x1000


def test_pages_dirtied_before_migration_are_still_reported_after_it(guest):
    """Pages the guest wrote in a KVM_MEM_LOG_DIRTY_PAGES slot before the migration, not yet
    collected with KVM_GET_DIRTY_LOG, are reported by the first KVM_GET_DIRTY_LOG after it,
    together with the pages written in the new VM: a migration loses no dirty page (api.rst 4.8)."""
    g = guest("long64", f"""
        mov rdi, {LOGGED:#x}
        mov byte ptr [rdi], 1
        mov byte ptr [rdi + {3 * PAGE:#x}], 1
        GUEST_SYNC 1
        mov byte ptr [rdi + {5 * PAGE:#x}], 1
        GUEST_DONE""")
    slot = g.vm.add_memory(LOGGED, 0x10 * PAGE, flags=C.KVM_MEM_LOG_DIRTY_PAGES).slot
    assert g.expect_sync() == 1
    g.migrate()
    g.run_to_done()
    assert g.vm.memslots[slot].flags == C.KVM_MEM_LOG_DIRTY_PAGES
    assert g.vm.get_dirty_log(slot) == {0, 3, 5}, "dirty pages reported after migration (guest wrote 0, 3, then 5)"
    assert g.vm.get_dirty_log(slot) == set(), "a second KVM_GET_DIRTY_LOG must report nothing new"


@pytest.mark.requires_cap("KVM_CAP_SPLIT_IRQCHIP")
@pytest.mark.waits
def test_split_irqchip_guest_keeps_its_local_apic_timer(guest, vm):
    """A VM with KVM_CAP_SPLIT_IRQCHIP (local APICs in the kernel, enabled before the first vCPU)
    is rebuilt with it: its vCPU again has a local APIC, and a one-shot timer armed before the
    migration interrupts the guest after it (api.rst KVM_CAP_SPLIT_IRQCHIP; SDM Vol. 3A 11.5.4)."""
    vm.enable_split_irqchip(24)
    vm.add_memory(0, 0x200000)
    g = guest("long64", f"""
        mov rbx, {APIC:#x}
        mov dword ptr [rbx + 0xF0], 0x1FF
        mov dword ptr [rbx + 0x3E0], 0xB
        mov dword ptr [rbx + 0x320], 0x30
        mov dword ptr [rbx + 0x380], {1 << 27:#x}
        GUEST_SYNC 1
        sti
    wait:
        hlt
        jmp wait
    timer:
        GUEST_SYNC 0x30
        GUEST_DONE""", vm=vm)
    g.page_tables.map(APIC, APIC, KiB4, PTE_P | PTE_RW | PTE_PCD)
    g.set_idt_gate(0x30, "timer")
    assert g.expect_sync() == 1
    g.migrate()
    assert g.vm is not vm and g.vm.split_irqchip_routes == 24
    assert g.run_to_done() == [0x30]


@pytest.mark.requires_cap("KVM_CAP_IRQCHIP")
@pytest.mark.waits
def test_halted_second_vcpu_wakes_for_an_ipi_after_migration(guest):
    """Both vCPUs move: vCPU 1, halted in HLT (KVM_MP_STATE_HALTED) at the save, is halted in
    the new VM and wakes for a fixed IPI vCPU 0 sends there, taking its vector (api.rst 4.38/4.39;
    SDM Vol. 3A 11.6.1)."""
    g = guest("long64", FIXED_IPI_TO_ID1, irqchip=True)
    g.page_tables.map(APIC, APIC, KiB4, PTE_P | PTE_RW | PTE_PCD)
    g.set_idt_gate(0x40, "ap_ipi")
    ap = ready_ap(g, g.add_vcpu("ap"))
    halted = g.in_thread(ap, until_done=False)
    time.sleep(0.2)  # vCPU 1 runs STI; HLT. (Its ioctls would wait for KVM_RUN, so no polling.)
    ap.kick()
    event = halted.join(10)
    assert isinstance(event, IntrExit), f"vCPU 1 left KVM_RUN with {event}, expected KVM_EXIT_INTR after the kick"
    assert ap.get_mp_state() == C.KVM_MP_STATE_HALTED, \
        f"vCPU 1 MP state before the save: {C.MP_STATE_NAMES.name(ap.get_mp_state())}, expected HALTED"
    assert g.expect_sync() == 1
    g.migrate()
    new_ap = g.vm.vcpus[1]
    assert new_ap.get_mp_state() == C.KVM_MP_STATE_HALTED
    woken = g.in_thread(new_ap, timeout=20)
    g.run_to_done()
    assert woken.join(30) == [0x40], "vCPU 1 in the new VM did not take the IPI"
