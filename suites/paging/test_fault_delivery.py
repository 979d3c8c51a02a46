"""Page faults that happen while the processor delivers another event (SDM Vol. 3A 6.15
Interrupt 8 and 14: a #PF during delivery is reported as #PF; a second fault while delivering
that one is a #DF; a fault while delivering #DF shuts the processor down)."""


import pytest

from kvmtest.cpuid import find_entry, max_phys_addr
from kvmtest.exits import ShutdownExit
from kvmtest.guest import get_mode
from kvmtest.guest import layout as L
from kvmtest.guest.paging import KiB4, MiB2
from kvmtest.x86 import PF_VECTOR, PFEC_P, PFEC_RSVD, PFEC_U, PTE_P, PTE_RW, PTE_US, TSS64_IST1

IST_STACK_TOP = 0x1F000  # a page of DATA serves as the #PF handler's IST stack


def _unmap_kernel_stack(g):
    page = L.KERNEL_STACK_TOP - 0x1000
    entry = g.page_tables.read_entry(page, 3)
    g.page_tables.write_entry(page, 3, entry & ~PTE_P)
    return page


def test_pf_while_delivering_ud_is_reported_as_pf_with_the_stack_address(guest):
    """#UD delivery pushes onto a stack page that is not present: the processor reports #PF
    (error code W, not P, supervisor) with CR2 in that page, not #UD. The #PF handler runs on
    an IST stack so it can be delivered (SDM Vol. 3A 6.14.5 IST, 6.15 Interrupt 14)."""
    g = guest("long64", "GUEST_ASSERT_RAISES PF(2), ud2\nGUEST_DONE")
    g.vm.write_u64(L.TSS + TSS64_IST1, IST_STACK_TOP)
    g.set_idt_gate(PF_VECTOR, "kt_stub_14", ist=1)
    page = _unmap_kernel_stack(g)
    g.run_to_done()
    cr2 = g.exception_record()["cr2"]
    assert page <= cr2 < page + 0x1000, f"CR2 {cr2:#x}: expected an address in the missing stack page {page:#x}"


def test_faults_with_no_stack_at_all_end_in_shutdown(guest):
    """When neither the #UD, nor the #PF it turns into, nor the resulting #DF can be pushed,
    the vCPU shuts down and KVM_RUN exits with KVM_EXIT_SHUTDOWN (SDM Vol. 3A 6.15 Interrupt 8;
    api.rst 5 KVM_EXIT_SHUTDOWN)."""
    g = guest("long64", "ud2\nGUEST_DONE")
    _unmap_kernel_stack(g)
    g.expect_exit(ShutdownExit)


def test_address_bits_above_a_smaller_guest_maxphyaddr_are_reserved(kvm, guest):
    """With the guest's CPUID.80000008H:EAX[7:0] (MAXPHYADDR) set to 36, a PTE with physical
    address bit 40 set has a reserved bit: the access raises #PF with P and RSVD, CR2 = the
    address (SDM Vol. 3A 4.1.4, 4.7; KVM_CAP_SMALLER_MAXPHYADDR; selftests
    smaller_maxphyaddr_emulation_test)."""
    if not kvm.check_extension("KVM_CAP_SMALLER_MAXPHYADDR"):
        pytest.skip("needs KVM_CAP_SMALLER_MAXPHYADDR")
    if max_phys_addr(kvm.cached_supported_cpuid()) <= 40:
        pytest.skip("the host's MAXPHYADDR is not above 40")
    va = 0x80010000
    g = guest("long64", f"mov rbx, {va:#x}\nGUEST_ASSERT_RAISES PF(9), mov eax, dword ptr [rbx]\nGUEST_DONE",
              page_size=MiB2)
    table = kvm.supported_cpuid_copy()
    leaf = find_entry(table, 0x80000008)
    leaf.eax = (leaf.eax & ~0xFF) | 36
    g.vcpu.set_cpuid(table)
    g.page_tables.map(va, 0x10000 | (1 << 40), KiB4, PTE_P | PTE_RW)
    g.run_to_done()
    assert g.exception_record()["cr2"] == va


@pytest.mark.modes("long64", "long64-cpl3")
def test_an_x87_load_above_a_smaller_guest_maxphyaddr_is_a_reserved_bit_fault(kvm, guest, mode):
    """FLDS (D9 /0) through a PTE with bit 36 set, while the guest's CPUID.80000008H:EAX[7:0] is 36,
    raises #PF with P and RSVD (and U at CPL3) and CR2 = the address, as any access would (SDM Vol.
    3A 4.1.4, 4.5.4, 4.7; selftests smaller_maxphyaddr_emulation_test). FLDS is an instruction KVM's
    emulator does not implement; KVM_CAP_EXIT_ON_EMULATION_FAILURE is enabled so that a host which
    emulates the access (two-dimensional paging, where the hardware does not see the guest's reserved
    bit) shows that as KVM_EXIT_INTERNAL_ERROR with the instruction bytes (api.rst 7.28), not #UD."""
    if not kvm.check_extension("KVM_CAP_SMALLER_MAXPHYADDR"):
        pytest.skip("needs KVM_CAP_SMALLER_MAXPHYADDR")
    if max_phys_addr(kvm.cached_supported_cpuid()) <= 36:
        pytest.skip("the host's MAXPHYADDR is not above 36")
    va = 0x80010000
    user = get_mode(mode).user
    code = PFEC_P | PFEC_RSVD | (PFEC_U if user else 0)
    g = guest(mode, f"mov rax, {va:#x}\nGUEST_ASSERT_RAISES PF({code:#x}), fld dword ptr [rax]\nGUEST_DONE",
              page_size=MiB2)
    if kvm.check_extension("KVM_CAP_EXIT_ON_EMULATION_FAILURE"):
        g.vm.enable_cap("KVM_CAP_EXIT_ON_EMULATION_FAILURE", 1)
    table = kvm.supported_cpuid_copy()
    leaf = find_entry(table, 0x80000008)
    leaf.eax = (leaf.eax & ~0xFF) | 36
    g.vcpu.set_cpuid(table)
    g.page_tables.map(va, 0x10000 | (1 << 36), KiB4, PTE_P | PTE_RW | (PTE_US if user else 0))
    g.run_to_done()
    assert g.exception_record()["cr2"] == va, f"CR2 {g.exception_record()['cr2']:#x}, expected {va:#x}"
