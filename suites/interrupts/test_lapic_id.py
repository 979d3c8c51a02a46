"""The APIC ID register as KVM_GET_LAPIC / KVM_SET_LAPIC carry it when the APIC mode changes: its
format follows IA32_APIC_BASE.EXTD with KVM_X2APIC_API_USE_32BIT_IDS, and the x2APIC ID is
read-only (api.rst 4.57/4.58 KVM_GET_LAPIC/KVM_SET_LAPIC, 7 KVM_CAP_X2APIC_API; SDM Vol. 3A
11.4.6, 11.12.5.1; selftests xapic_state_test test_apic_id, test_x2apic_id)."""

import pytest

from kvmtest import lapic
from kvmtest.abi import constants as C
from kvmtest.guest.paging import KiB4
from kvmtest.x86 import (
    APIC_BASE_BSP,
    APIC_BASE_EN,
    APIC_BASE_EXTD,
    APIC_DEFAULT_PHYS_BASE,
    APIC_ID,
    APIC_SVR,
    MSR_IA32_APIC_BASE,
    MSR_IA32_X2APIC_APICID,
    PTE_P,
    PTE_PCD,
    PTE_RW,
)

pytestmark = [pytest.mark.requires_cap("KVM_CAP_IRQCHIP"), pytest.mark.requires_cpu("x2apic")]
XAPIC = APIC_DEFAULT_PHYS_BASE | APIC_BASE_EN
X2APIC = XAPIC | APIC_BASE_EXTD


@pytest.mark.requires_cap("KVM_CAP_X2APIC_API")
def test_apic_id_format_follows_each_apic_base_write_by_user_space(vm):
    """With KVM_X2APIC_API_USE_32BIT_IDS, the ID register in KVM_GET_LAPIC "depends on the APIC
    mode (reported by MSR_IA32_APICBASE)": for each of three vCPUs, set through KVM_SET_MSRS to
    xAPIC, x2APIC and back to xAPIC, it reads id << 24, then the plain 32-bit id, then id << 24
    again (api.rst 4.57)."""
    vm.enable_cap("KVM_CAP_X2APIC_API", 1)  # KVM_X2APIC_API_USE_32BIT_IDS
    vm.create_irqchip()
    for i in range(3):
        vcpu = vm.create_vcpu(i)
        vcpu.set_cpuid(vm.kvm.cached_supported_cpuid())
        bsp = APIC_BASE_BSP if i == 0 else 0
        seen = []
        for base in (XAPIC, X2APIC, XAPIC):
            vcpu.set_msr(MSR_IA32_APIC_BASE, base | bsp)
            seen.append(lapic.reg(vcpu.get_lapic(), APIC_ID))
        want = [i << 24, i, i << 24]
        assert seen == want, f"vCPU {i} ID register after xAPIC, x2APIC, xAPIC: {[hex(v) for v in seen]}, " \
                             f"expected {[hex(v) for v in want]}"


def test_x2apic_id_ignores_kvm_set_lapic(guest):
    """In x2APIC mode the APIC ID is read-only (SDM 11.12.5.1): KVM_SET_LAPIC with another ID in
    the ID register leaves the vCPU's ID as it was; KVM_GET_LAPIC shows it in xAPIC format
    (KVM_X2APIC_API not enabled, api.rst 4.57) and the guest's RDMSR of the x2APIC ID register
    (MSR 0x802) returns it (selftests xapic_state_test test_x2apic_id)."""
    g = guest("long64", f"start: mov ecx, {MSR_IA32_X2APIC_APICID:#x}\nrdmsr\nGUEST_SYNC rax\nGUEST_DONE", irqchip=True)
    vcpu = g.add_vcpu("start")  # vCPU 1: an ID that differs from every value written below but one
    vcpu.set_msr(MSR_IA32_APIC_BASE, X2APIC)
    for new_id in (0, 2, 0x55, 0xFF):
        state = vcpu.get_lapic()
        lapic.set_reg(state, APIC_ID, new_id << 24)
        lapic.set_reg(state, APIC_SVR, 0x1FF)
        vcpu.set_lapic(state)
        got = lapic.reg(vcpu.get_lapic(), APIC_ID)
        assert got == 1 << 24, f"ID register after KVM_SET_LAPIC with ID {new_id:#x}: {got:#x}, expected {1 << 24:#x}"
    vcpu.set_mp_state(C.KVM_MP_STATE_RUNNABLE)  # an AP waits for SIPI until made runnable
    assert g.run_to_done(vcpu=vcpu) == [1], "the guest's x2APIC ID (RDMSR 0x802) after KVM_SET_LAPIC"


APIC_PAGE = APIC_DEFAULT_PHYS_BASE
RESET_ID = f"""
start:
    mov rbx, {APIC_PAGE:#x}
    mov eax, dword ptr [rbx + 0x20]
    GUEST_SYNC rax
    GUEST_DONE
"""


def test_xapic_id_after_user_space_leaves_x2apic(guest):
    """The guest of a vCPU that user space put in x2APIC mode and back in xAPIC mode (through
    KVM_SET_MSRS, without KVM_X2APIC_API) reads its xAPIC ID register as its APIC ID in bits
    31:24 (SDM 11.4.6; api.rst 4.57: xAPIC format): the detour through x2APIC does not change it."""
    g = guest("long64", RESET_ID, irqchip=True)
    g.page_tables.map(APIC_PAGE, APIC_PAGE, KiB4, PTE_P | PTE_RW | PTE_PCD)
    vcpu = g.add_vcpu("start")
    for base in (X2APIC, XAPIC):
        vcpu.set_msr(MSR_IA32_APIC_BASE, base)
    vcpu.set_mp_state(C.KVM_MP_STATE_RUNNABLE)
    assert g.run_to_done(vcpu=vcpu) == [1 << 24], "vCPU 1's xAPIC ID register read by the guest"
