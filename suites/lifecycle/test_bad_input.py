"""Values that do not fit the UAPI field they are meant for are refused by name before the ioctl.

ctypes stores 2**64 + 5 in a __u64 as 5 and -1 as 2**64 - 1, and an index past a fixed array
is an IndexError from deep inside a helper: each would be a silent change of meaning or a
traceback instead of the one BadArgumentError the harness promises.
"""

import ctypes

import pytest

from kvmtest.abi.buffers import nested_state_buffer
from kvmtest.errors import BadArgumentError, KvmError
from kvmtest.x86 import MSR_IA32_SYSENTER_CS


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
    """KVM_GET_MSRS: kvm_msr_entry.index is a __u32 (api.rst 4.18); index -1 is one BadArgumentError
    naming it, not an MSR 0xffffffff read silently."""
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
    """KVM_SET_CPUID2 takes an array of struct kvm_cpuid_entry2 (api.rst KVM_SET_CPUID2): a
    (function, index) tuple in its place is refused naming the entry, not a ctypes TypeError."""
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
    with pytest.raises(BadArgumentError,
                       match=r"KVM_ENABLE_CAP KVM_CAP_HYPERV_SYNIC: 5 args, but kvm_enable_cap.args holds 4"):
        vcpu.enable_cap("KVM_CAP_HYPERV_SYNIC", 1, 2, 3, 4, 5)
    with pytest.raises(BadArgumentError, match=r"args\[0\] = -0x1"):
        vm.enable_cap("KVM_CAP_HALT_POLL", -1)


def test_set_mp_state_outside_u32(vcpu):
    """kvm_mp_state.mp_state is a __u32 (api.rst 4.39 KVM_SET_MP_STATE): -1 is refused by name,
    not handed to KVM as 0xffffffff."""
    with pytest.raises(BadArgumentError, match=r"KVM_SET_MP_STATE mp_state = -0x1"):
        vcpu.set_mp_state(-1)


def test_guest_memory_with_a_negative_length(vm_with_memory):
    """A guest memory read of negative length is one GuestMemoryError naming the length and the
    guest physical address, not a read of some other length or a ctypes error."""
    from kvmtest.errors import GuestMemoryError

    with pytest.raises(GuestMemoryError, match=r"negative length -4 at guest address 0x10"):
        vm_with_memory.read(0x10, -4)


@pytest.mark.parametrize("setter, ioctl, kind", [
    ("set_regs", "KVM_SET_REGS", "kvm_regs"), ("set_sregs", "KVM_SET_SREGS", "kvm_sregs"),
    ("try_set_sregs", "KVM_SET_SREGS", "kvm_sregs"), ("set_fpu", "KVM_SET_FPU", "kvm_fpu"),
    ("set_xcrs", "KVM_SET_XCRS", "kvm_xcrs"), ("set_debugregs", "KVM_SET_DEBUGREGS", "kvm_debugregs"),
    ("set_events", "KVM_SET_VCPU_EVENTS", "kvm_vcpu_events"), ("set_lapic", "KVM_SET_LAPIC", "kvm_lapic_state"),
    ("set_sregs2", "KVM_SET_SREGS2", "kvm_sregs2"),
])
@pytest.mark.parametrize("wrong", [None, "regs"])
def test_state_setter_given_something_else(vcpu, setter, ioctl, kind, wrong):
    """KVM reads sizeof(struct) bytes through the pointer: None was an AttributeError, and a
    struct of another type (a kvm_regs for KVM_SET_FPU) handed KVM memory of another layout."""
    value = vcpu.get_regs() if wrong == "regs" and setter != "set_regs" else None
    with pytest.raises(BadArgumentError, match=rf"{ioctl}: expected a {kind}, got "):
        getattr(vcpu, setter)(value)


@pytest.mark.parametrize("call, problem", [
    (lambda v: v.set_msrs([1, 2]), r"KVM_SET_MSRS values \(MSR index -> value\): expected a dict, got \[1, 2\]"),
    (lambda v: v.get_msrs(None), r"KVM_GET_MSRS index: expected a list of integers, got None"),
    (lambda v: v.get_msrs(MSR_IA32_SYSENTER_CS), r"KVM_GET_MSRS index: expected a list of integers, got 372"),
    (lambda v: v.set_cpuid(None), r"KVM_SET_CPUID2: expected a list of kvm_cpuid_entry2, got None"),
    (lambda v: v.set_guest_debug(0, None), r"KVM_SET_GUEST_DEBUG debugreg: expected a list of integers"),
], ids=["set-msrs-list", "get-msrs-none", "get-msrs-int", "cpuid-none", "debugreg-none"])
def test_collection_of_the_wrong_kind(vcpu, call, problem):
    """KVM_SET_MSRS takes MSR index -> value, KVM_GET_MSRS a list of indices (api.rst 4.18, 4.19),
    KVM_SET_CPUID2 kvm_cpuid_entry2s, KVM_SET_GUEST_DEBUG a debugreg list: another kind of
    collection is one BadArgumentError naming what was expected, not a ctypes traceback."""
    with pytest.raises(BadArgumentError, match=problem):
        call(vcpu)


@pytest.mark.parametrize("khz, problem", [(-1, "= -0x1: outside the 32-bit field"),
                                          (1 << 32, "= 0x100000000: outside the 32-bit field"),
                                          (0, "= 0: no frequency")])
def test_set_tsc_khz_outside_u32_or_zero(vcpu, khz, problem):
    """KVM_SET_TSC_KHZ reads its argument as a __u32 and takes 0 as "the host's rate" (api.rst
    KVM_SET_TSC_KHZ); -1 was passed on and became 0xffffffff kHz. try_set_tsc_khz passes 0."""
    with pytest.raises(BadArgumentError, match=rf"KVM_SET_TSC_KHZ kHz {problem}"):
        vcpu.set_tsc_khz(khz)
    if khz:
        with pytest.raises(BadArgumentError, match=rf"KVM_SET_TSC_KHZ kHz {problem}"):
            vcpu.try_set_tsc_khz(khz)


@pytest.mark.parametrize("size", [-1, 0, 4095, "smaller"])
def test_get_xsave2_buffer_smaller_than_kvm_writes(vm, vcpu, size):
    """KVM_GET_XSAVE2 writes KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) bytes (at least struct kvm_xsave's
    4096) whatever the buffer (api.rst KVM_GET_XSAVE2): a smaller one would be overrun; -1 and 0
    used to give a default kvm_xsave silently."""
    needed = max(vm.check_extension("KVM_CAP_XSAVE2"), 4096)
    size = needed - 1 if size == "smaller" else size
    with pytest.raises(BadArgumentError, match=r"KVM_GET_XSAVE2 size = "):
        vcpu.get_xsave2(size)
    assert ctypes.sizeof(vcpu.get_xsave2(needed)) >= needed


def test_set_xsave_buffer_smaller_than_kvm_reads(vm, vcpu):
    """KVM_SET_XSAVE copies KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) bytes, at least struct kvm_xsave's
    4096 (api.rst 4.43): a struct of another type, or a plain kvm_xsave when KVM reads more, is
    refused before KVM reads past its end."""
    needed = max(vm.check_extension("KVM_CAP_XSAVE2"), 4096)
    with pytest.raises(BadArgumentError, match=r"KVM_SET_XSAVE: expected a kvm_xsave"):
        vcpu.set_xsave(vcpu.get_regs())
    if needed > 4096:  # a plain kvm_xsave is then too small
        with pytest.raises(BadArgumentError, match=rf"KVM_SET_XSAVE: a 4096-byte buffer, but KVM reads {needed}"):
            vcpu.set_xsave(vcpu.get_xsave())


@pytest.mark.parametrize("size", [-1, 2**32])
def test_get_nested_state_size_outside_u32(vcpu, size):
    """kvm_nested_state.size is a __u32 KVM trusts as the buffer's length: -1 wrapped to 4 GiB
    over a 128-byte buffer."""
    with pytest.raises(BadArgumentError, match=r"KVM_GET_NESTED_STATE size = "):
        vcpu.get_nested_state(size)


def test_set_nested_state_size_past_its_buffer(vcpu):
    """KVM_SET_NESTED_STATE trusts kvm_nested_state.size as the buffer's length (api.rst 4.114,
    4.115): a size past the buffer, or no kvm_nested_state at all, is refused before the ioctl."""
    state = nested_state_buffer(128)
    state.size = 4096  # claims more than the buffer holds
    with pytest.raises(BadArgumentError, match=r"KVM_SET_NESTED_STATE: size = 4096, but the buffer holds 128 bytes"):
        vcpu.set_nested_state(state)
    with pytest.raises(BadArgumentError, match=r"KVM_SET_NESTED_STATE: expected a kvm_nested_state"):
        vcpu.set_nested_state(None)


@pytest.mark.parametrize("call, problem", [
    (lambda v: v.set_device_attr_u64(0, 0, -1), r"KVM_SET_DEVICE_ATTR value = -0x1"),
    (lambda v: v.set_device_attr_u64(0, 0, 1 << 64), r"KVM_SET_DEVICE_ATTR value = 0x10000000000000000"),
    (lambda v: v.get_device_attr_u64(1 << 32, 0), r"KVM_GET_DEVICE_ATTR group = 0x100000000"),
    (lambda v: v.has_device_attr(0, -1), r"KVM_HAS_DEVICE_ATTR attr = -0x1"),
    (lambda v: v.enforce_pv_features(1 << 32), r"KVM feature leaf 0x40000001 EAX = 0x100000000"),
], ids=["attr-value-neg", "attr-value-2^64", "attr-group", "attr-neg", "pv-features"])
def test_vcpu_value_outside_its_field(vcpu, call, problem):
    """kvm_device_attr: group __u32, attr and the value __u64 (devices/vcpu.rst); the KVM feature
    leaf's EAX is 32 bits (x86/cpuid.rst). set_device_attr_u64(-1) used to write all ones."""
    with pytest.raises(BadArgumentError, match=problem):
        call(vcpu)
