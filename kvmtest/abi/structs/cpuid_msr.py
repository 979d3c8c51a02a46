"""CPUID and MSR structures: the variable-length kvm_cpuid2, kvm_msrs and kvm_msr_list, and the
MSR filter (api.rst 4.3, 4.18-4.19, 4.46, 4.126). Fill the variable-length ones with
kvmtest.abi.buffers, which checks every entry."""

from functools import lru_cache

from .base import KvmStruct, u32, u64


class kvm_cpuid_entry2(KvmStruct):
    """One CPUID leaf/subleaf: function (EAX in), index (ECX in), flags (KVM_CPUID_FLAG_*) and the
    four output registers (api.rst 4.46)."""

    _fields_ = [
        ("function", u32),
        ("index", u32),
        ("flags", u32),
        ("eax", u32),
        ("ebx", u32),
        ("ecx", u32),
        ("edx", u32),
        ("padding", u32 * 3),
    ]


class kvm_cpuid2(KvmStruct):
    """Header only: `nent` kvm_cpuid_entry2 follow (flexible array; see cpuid2_type). For
    KVM_GET_SUPPORTED_CPUID, KVM_GET_EMULATED_CPUID, KVM_SET_CPUID2, KVM_GET_CPUID2 (api.rst 4.46, 4.88)."""

    _fields_ = [("nent", u32), ("padding", u32)]


@lru_cache(maxsize=64)
def cpuid2_type(nent: int) -> type:
    """The kvm_cpuid2 type with room for `nent` entries (`entries[nent]`). Types are cached, so a
    long run does not grow a new class per call."""
    return type(f"kvm_cpuid2_{nent}", (KvmStruct,),
                {"_fields_": kvm_cpuid2._fields_ + [("entries", kvm_cpuid_entry2 * nent)]})


class kvm_msr_entry(KvmStruct):
    """One MSR: index in, data in or out (api.rst 4.18)."""

    _fields_ = [("index", u32), ("reserved", u32), ("data", u64)]


class kvm_msrs(KvmStruct):
    """Header only: `nmsrs` kvm_msr_entry follow (see msrs_type). For KVM_GET_MSRS / KVM_SET_MSRS
    (api.rst 4.18-4.19)."""

    _fields_ = [("nmsrs", u32), ("pad", u32)]


@lru_cache(maxsize=64)
def msrs_type(n: int) -> type:
    """The kvm_msrs type with room for `n` entries (`entries[n]`), cached."""
    return type(f"kvm_msrs_{n}", (KvmStruct,), {"_fields_": kvm_msrs._fields_ + [("entries", kvm_msr_entry * n)]})


class kvm_msr_list(KvmStruct):
    """Header only: `nmsrs` u32 MSR indices follow (see msr_list_type). For KVM_GET_MSR_INDEX_LIST and
    KVM_GET_MSR_FEATURE_INDEX_LIST (api.rst 4.3)."""

    _fields_ = [("nmsrs", u32)]


@lru_cache(maxsize=16)
def msr_list_type(n: int) -> type:
    """The kvm_msr_list type with room for `n` indices (`indices[n]`), cached."""
    return type(f"kvm_msr_list_{n}", (KvmStruct,), {"_fields_": kvm_msr_list._fields_ + [("indices", u32 * n)]})


class kvm_msr_filter_range(KvmStruct):
    """`nmsrs` MSRs from `base`: a set bit in the user-space `bitmap` allows the accesses in flags
    (KVM_MSR_FILTER_READ/WRITE; api.rst 4.126)."""

    _fields_ = [("flags", u32), ("nmsrs", u32), ("base", u32), ("bitmap", u64)]


KVM_MSR_FILTER_MAX_RANGES = 16


class kvm_msr_filter(KvmStruct):
    """The default action (KVM_MSR_FILTER_DEFAULT_*) and up to 16 ranges (KVM_X86_SET_MSR_FILTER,
    api.rst 4.126)."""

    _fields_ = [("flags", u32), ("ranges", kvm_msr_filter_range * KVM_MSR_FILTER_MAX_RANGES)]
