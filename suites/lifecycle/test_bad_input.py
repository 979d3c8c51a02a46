"""Values that do not fit the UAPI field they are meant for are refused by name before the ioctl.

ctypes stores 2**64 + 5 in a __u64 as 5 and -1 as 2**64 - 1, and an index past a fixed array
is an IndexError from deep inside a helper: each would be a silent change of meaning or a
traceback instead of the one BadArgumentError the harness promises.
"""

import pytest

from kvmtest.errors import BadArgumentError, KvmError

MSR_IA32_SYSENTER_CS = 0x174


@pytest.fixture
def vcpu(vm):
    return vm.create_vcpu()


@pytest.mark.parametrize("gva", [-1, 2**64, 2**64 + 0x1000])
def test_translate_outside_the_64_bit_address_space(vcpu, gva):
    """KVM_TRANSLATE's linear_address is a __u64 (api.rst 4.15)."""
    with pytest.raises(BadArgumentError, match=rf"KVM_TRANSLATE linear address = {gva:#x}: outside the 64-bit field"):
        vcpu.translate(gva)


def test_set_guest_debug_with_more_than_eight_debugregs(vcpu):
    """kvm_guest_debug_arch.debugreg has 8 slots (api.rst 4.87)."""
    with pytest.raises(BadArgumentError, match=r"9 debugreg values, but kvm_guest_debug_arch.debugreg holds 8"):
        vcpu.set_guest_debug(0, [0] * 9)
    with pytest.raises(BadArgumentError, match=r"debugreg\[7\] = 0x10000000000000000"):
        vcpu.set_guest_debug(0, [0] * 7 + [2**64])


@pytest.mark.parametrize("msrs, what", [
    ({MSR_IA32_SYSENTER_CS: 2**64}, "KVM_SET_MSRS value of MSR 0x174 = 0x10000000000000000"),
    ({MSR_IA32_SYSENTER_CS: -1}, "KVM_SET_MSRS value of MSR 0x174 = -0x1"),
    ({2**32 + MSR_IA32_SYSENTER_CS: 0}, "KVM_SET_MSRS index = 0x100000174"),
])
def test_set_msrs_values_outside_their_fields(vcpu, msrs, what):
    """kvm_msr_entry: index is a __u32, data a __u64 (api.rst 4.19)."""
    with pytest.raises(BadArgumentError, match=what):
        vcpu.set_msrs(msrs)


def test_get_msrs_index_outside_u32(vcpu):
    with pytest.raises(BadArgumentError, match=r"KVM_GET_MSRS index = -0x1"):
        vcpu.get_msrs([-1])


@pytest.mark.parametrize("nent", [0, 257, 10**6, -1])
def test_get_cpuid_buffer_sizes_outside_kvm_limits(vcpu, nent):
    """KVM_GET_CPUID2 with room for 0 or more than KVM_MAX_CPUID_ENTRIES (256) entries."""
    with pytest.raises(BadArgumentError, match=rf"get_cpuid nent = {'-0x1' if nent < 0 else nent}"):
        vcpu.get_cpuid(nent=nent)


def test_get_cpuid_buffer_smaller_than_the_table_is_e2big(kvm, vcpu):
    """A cap below the vCPU's entry count is KVM's E2BIG (api.rst KVM_GET_CPUID2), named."""
    vcpu.set_cpuid(kvm.cached_supported_cpuid())
    with pytest.raises(KvmError, match=r"KVM_GET_CPUID2 .*E2BIG.*more than 1 CPUID entries"):
        vcpu.get_cpuid(nent=1)


def test_set_cpuid_with_something_that_is_no_entry(vcpu):
    with pytest.raises(BadArgumentError, match=r"KVM_SET_CPUID2 entry 0: expected a kvm_cpuid_entry2"):
        vcpu.set_cpuid([(1, 0)])


@pytest.mark.parametrize("irq", [-1, 2**32])
def test_interrupt_vector_outside_u32(vcpu, irq):
    """kvm_interrupt.irq is a __u32 (api.rst 4.16); KVM itself judges values below 2**32."""
    with pytest.raises(BadArgumentError, match=r"KVM_INTERRUPT irq"):
        vcpu.interrupt(irq)
    with pytest.raises(BadArgumentError, match=r"KVM_INTERRUPT irq"):
        vcpu.try_interrupt(irq)


def test_enable_cap_with_more_args_than_the_struct_holds(vm, vcpu):
    """kvm_enable_cap.args has 4 slots (api.rst 4.37)."""
    with pytest.raises(BadArgumentError, match=r"KVM_ENABLE_CAP KVM_CAP_HYPERV_SYNIC: 5 args, but kvm_enable_cap.args holds 4"):
        vcpu.enable_cap("KVM_CAP_HYPERV_SYNIC", 1, 2, 3, 4, 5)
    with pytest.raises(BadArgumentError, match=r"args\[0\] = -0x1"):
        vm.enable_cap("KVM_CAP_HALT_POLL", -1)


def test_set_mp_state_outside_u32(vcpu):
    with pytest.raises(BadArgumentError, match=r"KVM_SET_MP_STATE mp_state = -0x1"):
        vcpu.set_mp_state(-1)


def test_guest_memory_with_a_negative_length(vm_with_memory):
    from kvmtest.errors import GuestMemoryError

    with pytest.raises(GuestMemoryError, match=r"negative length -4 at guest address 0x10"):
        vm_with_memory.read(0x10, -4)
