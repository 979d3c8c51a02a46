"""System ioctls on /dev/kvm: API version, capabilities, mmap size, CPUID and MSR lists."""

import ctypes
import errno

import pytest

from kvmtest.abi import structs as S
from kvmtest.abi.buffers import msr_list_buffer
from kvmtest.abi.capabilities import CAPABILITIES, CAPABILITY_NAMES
from kvmtest.abi.constants import errno_name
from kvmtest.libc import PAGE_SIZE
from kvmtest.x86 import MSR_IA32_STAR, MSR_IA32_SYSENTER_CS, MSR_IA32_TSC


def test_api_version_is_12(kvm):
    """KVM_GET_API_VERSION returns 12 (api.rst 4.1), and KVM_CAP_USER_MEMORY, which every
    VM needs for memory, is present (api.rst 4.35)."""
    assert kvm.api_version() == 12, f"KVM_GET_API_VERSION: expected 12, got {kvm.api_version()}"
    assert kvm.check_extension("KVM_CAP_USER_MEMORY") >= 1, "KVM_CAP_USER_MEMORY: expected present, got 0"


def test_vcpu_limits_are_consistent(kvm):
    """api.rst 4.7: at most max_vcpus vCPUs with ids in [0, max_vcpu_id); KVM_CAP_NR_VCPUS is
    the recommended count, KVM_CAP_MAX_VCPUS the maximum, KVM_CAP_MAX_VCPU_ID the id bound, so
    NR_VCPUS <= MAX_VCPUS <= MAX_VCPU_ID."""
    nr, mx, mx_id = (kvm.check_extension(c) for c in ("KVM_CAP_NR_VCPUS", "KVM_CAP_MAX_VCPUS", "KVM_CAP_MAX_VCPU_ID"))
    assert 1 <= nr <= mx <= mx_id, f"expected 1 <= NR_VCPUS <= MAX_VCPUS <= MAX_VCPU_ID, got {nr}, {mx}, {mx_id}"


def test_memslot_count_is_reported(kvm):
    """KVM_CAP_NR_MEMSLOTS gives the number of user memory slots per VM (api.rst 4.35)."""
    assert kvm.check_extension("KVM_CAP_NR_MEMSLOTS") >= 1


def test_unknown_capability_is_zero(kvm):
    """KVM_CHECK_EXTENSION returns 0 for an unsupported extension (api.rst 4.4)."""
    assert kvm.check_extension(0x7FFFFFF) == 0


# Capabilities whose value describes the host, not the VM: the VM query must agree.
HOST_WIDE = ["KVM_CAP_USER_MEMORY", "KVM_CAP_NR_VCPUS", "KVM_CAP_MAX_VCPUS", "KVM_CAP_MAX_VCPU_ID",
             "KVM_CAP_NR_MEMSLOTS", "KVM_CAP_IRQCHIP", "KVM_CAP_READONLY_MEM", "KVM_CAP_IMMEDIATE_EXIT",
             "KVM_CAP_SYNC_REGS", "KVM_CAP_SET_GUEST_DEBUG", "KVM_CAP_MP_STATE", "KVM_CAP_VCPU_EVENTS",
             "KVM_CAP_DEBUGREGS", "KVM_CAP_XSAVE", "KVM_CAP_XCRS", "KVM_CAP_BINARY_STATS_FD",
             "KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2", "KVM_CAP_COALESCED_MMIO"]


@pytest.mark.requires_cap("KVM_CAP_CHECK_EXTENSION_VM")
@pytest.mark.parametrize("cap", HOST_WIDE)
def test_vm_check_extension_agrees_with_system(kvm, vm, cap):
    """KVM_CHECK_EXTENSION on a default VM (type 0) reports what the system ioctl reports
    for a capability that does not depend on VM initialisation (api.rst 4.4)."""
    system, per_vm = kvm.check_extension(cap), vm.check_extension(cap)
    assert per_vm == system, f"{cap}: system ioctl says {system}, VM ioctl says {per_vm}"


def test_vcpu_mmap_size_holds_kvm_run(kvm):
    """KVM_GET_VCPU_MMAP_SIZE is the size of the mapping that holds struct kvm_run
    (api.rst 4.5, 4.10): at least sizeof(kvm_run) and whole pages."""
    size = kvm.vcpu_mmap_size()
    assert size >= ctypes.sizeof(S.kvm_run) and size % PAGE_SIZE == 0, f"mmap size {size:#x}"


def test_supported_cpuid_with_too_few_entries_is_e2big(kvm):
    """KVM_GET_SUPPORTED_CPUID with nent too low to describe the CPU fails with E2BIG
    (api.rst 4.46)."""
    _, err = kvm.try_get_supported_cpuid(1)
    assert err == errno.E2BIG, f"KVM_GET_SUPPORTED_CPUID nent=1: expected E2BIG, got {errno_name(err)}"


def test_supported_cpuid_adjusts_nent_to_the_valid_entries(kvm):
    """With room to spare, nent is adjusted to the number of valid entries (api.rst 4.46),
    and the answer is stable."""
    first = kvm.supported_cpuid()
    buf = kvm.get_supported_cpuid(len(first) + 10)
    assert buf.nent == len(first), f"nent: expected {len(first)}, got {buf.nent}"
    assert [bytes(e) for e in buf.entries[: buf.nent]] == [bytes(e) for e in first]


def test_supported_cpuid_reports_basic_leaves(kvm):
    """The table holds leaf 0 (max basic leaf and vendor) and leaf 1 (api.rst 4.46: the host
    cpuid with unsupported features masked)."""
    leaves = {e.function for e in kvm.supported_cpuid()}
    assert {0, 1} <= leaves, f"leaves 0 and 1 missing from {sorted(hex(x) for x in leaves)}"


@pytest.mark.parametrize("request_name", ["KVM_GET_MSR_INDEX_LIST", "KVM_GET_MSR_FEATURE_INDEX_LIST"])
def test_msr_list_too_small_is_e2big_with_the_count(kvm, request_name):
    """With nmsrs=0, KVM_GET_MSR_(FEATURE_)INDEX_LIST fails with E2BIG, sets nmsrs to the
    number needed (api.rst 4.3: "kvm adjusts nmsrs") and leaves the array untouched."""
    if request_name.endswith("FEATURE_INDEX_LIST") and not kvm.check_extension("KVM_CAP_GET_MSR_FEATURES"):
        pytest.skip("needs KVM_CAP_GET_MSR_FEATURES")
    buf = msr_list_buffer(0, room=4)
    buf.indices[:] = [0xDEAD0000 + i for i in range(4)]
    err = kvm.try_ioctl(request_name, buf, args="nmsrs=0")  # raw on purpose: a header claiming a short buffer
    assert err == errno.E2BIG, f"{request_name} nmsrs=0: expected E2BIG, got {errno_name(err)}"
    assert buf.nmsrs > 0, f"{request_name}: nmsrs not set to the needed count"
    assert list(buf.indices) == [0xDEAD0000 + i for i in range(4)], "the index array was written on E2BIG"
    full = {"KVM_GET_MSR_INDEX_LIST": kvm.msr_index_list,
            "KVM_GET_MSR_FEATURE_INDEX_LIST": kvm.msr_feature_index_list}[request_name]()
    assert len(full) == buf.nmsrs and len(set(full)) == len(full), \
        f"{request_name}: {len(full)} indices ({len(set(full))} distinct), E2BIG said {buf.nmsrs}"


def test_msr_index_list_holds_architectural_msrs(kvm):
    """KVM_GET_MSR_INDEX_LIST lists the MSRs saved with KVM_GET/SET_MSRS (api.rst 4.3); a
    64-bit x86 host must save IA32_SYSENTER_CS (0x174), EFER-era STAR (0xC0000081) and
    IA32_TSC (0x10)."""
    msrs = set(kvm.msr_index_list())
    missing = {MSR_IA32_TSC, MSR_IA32_SYSENTER_CS, MSR_IA32_STAR} - msrs
    assert not missing, f"missing from KVM_GET_MSR_INDEX_LIST: {sorted(hex(m) for m in missing)}"


@pytest.mark.requires_cap("KVM_CAP_GET_MSR_FEATURES")
def test_feature_msrs_read_through_the_system_fd(kvm):
    """KVM_GET_MSRS on /dev/kvm reads every MSR KVM_GET_MSR_FEATURE_INDEX_LIST names, in one
    call; its return value is the number of MSRs read (api.rst 4.18 KVM_GET_MSRS, 4.3
    KVM_GET_MSR_FEATURE_INDEX_LIST). What it does with an index outside that list is not
    documented, so it is not checked."""
    features = kvm.msr_feature_index_list()
    if not features:
        pytest.skip("KVM_GET_MSR_FEATURE_INDEX_LIST is empty")
    values = kvm.read_feature_msrs(features)
    assert list(values) == features, \
        f"system KVM_GET_MSRS read {len(values)} of the {len(features)} feature MSRs; stopped at " \
        f"{features[len(values)]:#x}" if len(values) < len(features) else f"read back {list(values)}"


def test_capability_names_cover_what_the_host_reports(kvm):
    """Every capability kvmtest names is queried without error (api.rst 4.4)."""
    values = kvm.capabilities()
    assert set(values) == set(CAPABILITIES)
    assert CAPABILITY_NAMES[3] == "KVM_CAP_USER_MEMORY"
