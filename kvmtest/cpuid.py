"""CPUID feature bits by name (SDM Vol. 2A CPUID; APM Vol. 3 Appendix E)."""

from dataclasses import dataclass

from .errors import BadArgumentError, KvmtestError


@dataclass(frozen=True)
class Feature:
    """One CPUID feature flag: bit `bit` of register `register` ("eax".."edx") in leaf `leaf`,
    subleaf `subleaf` (SDM Vol. 2A CPUID; APM Vol. 3 Appendix E), under the short name markers and
    skip messages use (mostly /proc/cpuinfo's)."""
    name: str
    leaf: int
    subleaf: int
    register: str
    bit: int

    def __str__(self):
        return f"CPUID.{self.leaf:#x}.{self.subleaf}:{self.register.upper()}[{self.bit}] ({self.name})"


FEATURES = {f.name: f for f in [
    Feature("fpu", 1, 0, "edx", 0), Feature("vme", 1, 0, "edx", 1), Feature("de", 1, 0, "edx", 2),
    Feature("pse", 1, 0, "edx", 3), Feature("tsc", 1, 0, "edx", 4), Feature("msr", 1, 0, "edx", 5),
    Feature("pae", 1, 0, "edx", 6), Feature("apic", 1, 0, "edx", 9), Feature("sep", 1, 0, "edx", 11),
    Feature("ds", 1, 0, "edx", 21),
    Feature("pge", 1, 0, "edx", 13), Feature("pat", 1, 0, "edx", 16), Feature("pse36", 1, 0, "edx", 17),
    Feature("fxsr", 1, 0, "edx", 24), Feature("sse", 1, 0, "edx", 25), Feature("sse2", 1, 0, "edx", 26),
    Feature("sse3", 1, 0, "ecx", 0), Feature("pcid", 1, 0, "ecx", 17), Feature("x2apic", 1, 0, "ecx", 21),
    Feature("movbe", 1, 0, "ecx", 22), Feature("tsc_deadline", 1, 0, "ecx", 24),
    Feature("xsave", 1, 0, "ecx", 26), Feature("osxsave", 1, 0, "ecx", 27), Feature("avx", 1, 0, "ecx", 28),
    Feature("hypervisor", 1, 0, "ecx", 31),
    Feature("fsgsbase", 7, 0, "ebx", 0), Feature("tsc_adjust", 7, 0, "ebx", 1), Feature("smep", 7, 0, "ebx", 7),
    Feature("invpcid", 7, 0, "ebx", 10), Feature("smap", 7, 0, "ebx", 20), Feature("umip", 7, 0, "ecx", 2),
    Feature("pku", 7, 0, "ecx", 3), Feature("ospke", 7, 0, "ecx", 4), Feature("la57", 7, 0, "ecx", 16),
    Feature("rdpid", 7, 0, "ecx", 22), Feature("bus_lock_detect", 7, 0, "ecx", 24),
    Feature("syscall", 0x80000001, 0, "edx", 11), Feature("nx", 0x80000001, 0, "edx", 20),
    Feature("pdpe1gb", 0x80000001, 0, "edx", 26), Feature("rdtscp", 0x80000001, 0, "edx", 27),
    Feature("lm", 0x80000001, 0, "edx", 29), Feature("svm", 0x80000001, 0, "ecx", 2),
    Feature("vmx", 1, 0, "ecx", 5), Feature("smx", 1, 0, "ecx", 6),
    Feature("shstk", 7, 0, "ecx", 7), Feature("keylocker", 7, 0, "ecx", 23), Feature("pks", 7, 0, "ecx", 31),
    Feature("ibt", 7, 0, "edx", 20),
    Feature("cx8", 1, 0, "edx", 8), Feature("cx16", 1, 0, "ecx", 13), Feature("sse4_2", 1, 0, "ecx", 20),
    Feature("popcnt", 1, 0, "ecx", 23),
    Feature("spec_ctrl", 7, 0, "edx", 26), Feature("intel_stibp", 7, 0, "edx", 27),
    Feature("flush_l1d", 7, 0, "edx", 28), Feature("arch_capabilities", 7, 0, "edx", 29),
    Feature("ssbd", 7, 0, "edx", 31),
    Feature("abm", 0x80000001, 0, "ecx", 5), Feature("bmi1", 7, 0, "ebx", 3),
    Feature("rdpru", 0x80000008, 0, "ebx", 4), Feature("amd_ibpb", 0x80000008, 0, "ebx", 12),
    Feature("amd_ibrs", 0x80000008, 0, "ebx", 14), Feature("amd_stibp", 0x80000008, 0, "ebx", 15),
    Feature("amd_ssbd", 0x80000008, 0, "ebx", 24),
    Feature("clflush", 1, 0, "edx", 19), Feature("monitor", 1, 0, "ecx", 3),
    Feature("clflushopt", 7, 0, "ebx", 23), Feature("clwb", 7, 0, "ebx", 24), Feature("waitpkg", 7, 0, "ecx", 5),
    Feature("aperfmperf", 6, 0, "ecx", 0), Feature("xsaves", 0xD, 1, "eax", 3),
]}


def has_feature(entries, name: str) -> bool:
    """Whether a CPUID table (kvm_cpuid_entry2 list) reports feature `name`."""
    f = FEATURES[name]
    for e in entries:
        if e.function == f.leaf and (e.index == f.subleaf or f.leaf not in (4, 7, 0xB, 0xD, 0xF, 0x10, 0x14)):
            return bool(getattr(e, f.register) >> f.bit & 1)
    return False


def set_feature(entries, name: str, present: bool) -> None:
    """Set or clear feature `name` in a CPUID table (kvm_cpuid_entry2 list) in place, for
    KVM_SET_CPUID2; the table must already have the feature's leaf."""
    if name not in FEATURES:
        raise KvmtestError(f"unknown CPUID feature {name!r}; kvmtest knows: {', '.join(FEATURES)}")
    f = FEATURES[name]
    e = find_entry(entries, f.leaf, f.subleaf)
    if e is None or e.function != f.leaf:
        raise KvmtestError(f"CPUID table has no leaf {f.leaf:#x} to set {f} in")
    value = getattr(e, f.register)
    setattr(e, f.register, value | 1 << f.bit if present else value & ~(1 << f.bit))


def vendor(entries) -> str:
    """The vendor string of leaf 0 (EBX, EDX, ECX): 'GenuineIntel', 'AuthenticAMD', ..."""
    e = find_entry(entries, 0)
    if e is None:
        raise KvmtestError("CPUID table has no leaf 0 to read the vendor from")
    return b"".join(r.to_bytes(4, "little") for r in (e.ebx, e.edx, e.ecx)).decode("ascii", "replace")


AMD_VENDORS = ("AuthenticAMD", "HygonGenuine")


def hypercall_instruction(entries) -> str:
    """The hypercall instruction of the vendor a CPUID table names: VMMCALL for AMD (and Hygon), VMCALL
    otherwise (Documentation/virt/kvm/x86/hypercalls.rst; Xen's hypercall ABI: the same choice)."""
    return "vmmcall" if vendor(entries) in AMD_VENDORS else "vmcall"


def set_vendor(entries, name: str) -> None:
    """Write the 12-character vendor string `name` ('GenuineIntel', 'AuthenticAMD', ...) into
    leaf 0 (EBX, EDX, ECX) of a CPUID table in place, for KVM_SET_CPUID2: where Intel and AMD
    processors differ, KVM follows the vendor the vCPU's CPUID names."""
    raw = name.encode("ascii") if isinstance(name, str) and name.isascii() else b""
    if len(raw) != 12:
        raise BadArgumentError(f"CPUID vendor {name!r}: expected 12 ASCII characters, like 'GenuineIntel'")
    e = find_entry(entries, 0)
    if e is None or e.function != 0:
        raise KvmtestError("CPUID table has no leaf 0 to write the vendor into")
    e.ebx, e.edx, e.ecx = (int.from_bytes(raw[i:i + 4], "little") for i in (0, 4, 8))


def find_entry(entries, leaf: int, subleaf: int = 0):
    """The kvm_cpuid_entry2 of `leaf`.`subleaf` in `entries`; without an exact match, the first
    entry of `leaf` (a leaf without subleaves ignores ECX); None when the table lacks the leaf."""
    for e in entries:
        if e.function == leaf and e.index == subleaf:
            return e
    for e in entries:
        if e.function == leaf:
            return e
    return None


def max_phys_addr(entries) -> int:
    """CPUID.80000008H:EAX[7:0], or 36 when the leaf is absent (SDM Vol. 3A 4.1.4)."""
    e = find_entry(entries, 0x80000008)
    return (e.eax & 0xFF) if e else 36
