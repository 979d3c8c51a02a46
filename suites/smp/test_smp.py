"""Several vCPUs on threads: shared memory with locked instructions, and application-processor
bring-up with INIT and SIPI through the in-kernel local APIC (SDM Vol. 3A 8.1.2.2 locked
operations, 8.4.4 MP initialization, 11.6 ICR; api.rst 4.7, 4.24, 4.38 MP state)."""

import pytest

from kvmtest.abi import constants as C
from kvmtest.guest.paging import PCD, KiB4, P, RW

COUNTER = 0x600
ITERATIONS = 3000

MIXED = f"""
    mov rbx, {COUNTER:#x}
    mov ecx, {ITERATIONS}
1:  lock inc qword ptr [rbx]
    dec ecx
    jnz 1b
    GUEST_DONE
user64:
GUEST_AT_CPL 3
    mov rbx, {COUNTER:#x}
    mov ecx, {ITERATIONS}
1:  lock inc qword ptr [rbx]
    dec ecx
    jnz 1b
    GUEST_DONE
GUEST_AT_CPL 0
.code32
compat:
    mov ebx, {COUNTER:#x}
    mov ecx, {ITERATIONS}
1:  lock inc dword ptr [ebx]
    dec ecx
    jnz 1b
    GUEST_DONE
"""


def test_locked_increments_from_vcpus_in_different_modes_add_up(guest):
    """Three vCPUs — 64-bit CPL0, compatibility mode and 64-bit CPL3 — each LOCK INC a shared
    counter; the total is exactly the sum of their increments (SDM Vol. 3A 8.1.2.2)."""
    g = guest("long64", MIXED, user_pages=True)
    vcpus = [g.vcpu, g.add_vcpu("compat", mode="compat32"), g.add_vcpu("user64", mode="long64-cpl3")]
    for thread in [g.in_thread(v, timeout=60) for v in vcpus]:
        thread.join(120)
    total = g.vm.read_u64(COUNTER)
    assert total == 3 * ITERATIONS, f"counter {total}, expected {3 * ITERATIONS} (lost or duplicated increments)"


APIC = 0xFEE00000
BRINGUP = f"""
    mov rbx, {APIC:#x}
    mov dword ptr [rbx + 0xF0], 0x1FF           # SVR: APIC software-enabled, spurious vector 0xFF
    mov dword ptr [rbx + 0x310], 0x01000000     # ICR high: destination APIC ID 1
    mov dword ptr [rbx + 0x300], 0x00004500     # ICR low: INIT, assert
    mov dword ptr [rbx + 0x300], 0x00004609     # ICR low: start-up, vector 9 -> 0x9000
    GUEST_DONE
.code16
.org 0x9000
ap_entry:
    mov ax, cs
    GUEST_SYNC ax
    GUEST_DONE
"""


@pytest.mark.requires_cap("KVM_CAP_IRQCHIP")
def test_ap_starts_at_the_sipi_vector(guest):
    """With an in-kernel irqchip an AP waits in KVM_MP_STATE_UNINITIALIZED (api.rst 4.38); INIT
    then a start-up IPI with vector 9 from the BSP starts it in real mode at 0900:0000 (SDM
    Vol. 3A 8.4.4.1, 11.6.1)."""
    g = guest("long64", BRINGUP, irqchip=True)
    g.page_tables.map(APIC, APIC, KiB4, P | RW | PCD)
    ap = g.vm.create_vcpu(1)
    ap.set_cpuid(g.kvm.cached_supported_cpuid())
    assert ap.get_mp_state() == C.KVM_MP_STATE_UNINITIALIZED, C.MP_STATE_NAMES.name(ap.get_mp_state())
    ap_thread = g.in_thread(ap, timeout=20)
    g.run_to_done()
    syncs = ap_thread.join(30)
    assert syncs == [0x0900], f"AP code segment {syncs}, expected [0x900]"
