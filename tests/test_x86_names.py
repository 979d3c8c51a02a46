"""kvmtest.x86 against the documents: a sample of values typed here from the SDM, the APM and
KVM's msr.rst (bit numbers and MSR numbers as the documents print them, independent of how
kvmtest.x86 writes them), no unintended duplicate in a group, and msr_names derived from it."""

import re
from pathlib import Path

import pytest

from kvmtest import x86
from kvmtest.msr_names import MSR_NAMES, msr_name

# (name, bit number) as the SDM's figures and tables give them.
BITS = [
    ("CR0_PE", 0), ("CR0_ET", 4), ("CR0_NE", 5), ("CR0_WP", 16), ("CR0_AM", 18), ("CR0_PG", 31),  # Vol. 3A 2.5
    ("CR4_PAE", 5), ("CR4_OSFXSR", 9), ("CR4_UMIP", 11), ("CR4_LA57", 12), ("CR4_FSGSBASE", 16),
    ("CR4_PCIDE", 17), ("CR4_OSXSAVE", 18), ("CR4_SMEP", 20), ("CR4_SMAP", 21), ("CR4_PKE", 22),
    ("EFER_SCE", 0), ("EFER_LME", 8), ("EFER_LMA", 10), ("EFER_NXE", 11), ("EFER_SVME", 12),  # Vol. 3A 2.2.1, APM 3.1.7
    ("RFLAGS_TF", 8), ("RFLAGS_IF", 9), ("RFLAGS_NT", 14), ("RFLAGS_RF", 16), ("RFLAGS_VM", 17),  # Vol. 1 3.4.3
    ("RFLAGS_AC", 18), ("RFLAGS_ID", 21),
    ("XCR0_X87", 0), ("XCR0_SSE", 1), ("XCR0_AVX", 2), ("XCR0_PKRU", 9),  # Vol. 1 13.1
    ("DR6_B0", 0), ("DR6_BLD", 11), ("DR6_BD", 13), ("DR6_BS", 14), ("DR6_BT", 15),  # Vol. 3B 18.2.3
    ("DR7_L0", 0), ("DR7_G0", 1), ("DR7_GE", 9), ("DR7_GD", 13),  # Vol. 3B 18.2.4
    ("APIC_BASE_BSP", 8), ("APIC_BASE_EXTD", 10), ("APIC_BASE_EN", 11),  # Vol. 3A 11.4.4
    ("DEBUGCTL_BTF", 1), ("DEBUGCTL_BLD", 2),  # Vol. 3B 18.4.1
    ("PTE_P", 0), ("PTE_RW", 1), ("PTE_US", 2), ("PTE_PWT", 3), ("PTE_PCD", 4), ("PTE_A", 5),  # Vol. 3A 4.5
    ("PTE_D", 6), ("PTE_PS", 7), ("PTE_PAT", 7), ("PTE_G", 8), ("PTE_PAT_LARGE", 12), ("PTE_XD", 63),
    ("PFEC_P", 0), ("PFEC_W", 1), ("PFEC_U", 2), ("PFEC_RSVD", 3), ("PFEC_I", 4), ("PFEC_PK", 5),  # Vol. 3A 4.7
    ("PFEC_SGX", 15),
]

# (name, value) as printed in the SDM (Vol. 3A Table 6-1, Table 10-1, Tables 3-1 and 3-2,
# Vol. 4 Table 2-2), the APM (Vol. 2 Appendix A) and Documentation/virt/kvm/x86/msr.rst.
VALUES = [
    ("DE_VECTOR", 0), ("DB_VECTOR", 1), ("NMI_VECTOR", 2), ("BP_VECTOR", 3), ("UD_VECTOR", 6), ("DF_VECTOR", 8),
    ("GP_VECTOR", 13), ("PF_VECTOR", 14), ("MF_VECTOR", 16), ("AC_VECTOR", 17), ("XM_VECTOR", 19),
    ("CP_VECTOR", 21), ("VC_VECTOR", 29),
    ("DR6_INIT", 0xFFFF0FF0), ("DR7_INIT", 0x400),
    ("SEG_TYPE_DATA_RW_ACCESSED", 3), ("SEG_TYPE_CODE_RX_ACCESSED", 11), ("SYS_TYPE_LDT", 2),
    ("SYS_TYPE_TASK_GATE", 5), ("SYS_TYPE_TSS_AVAILABLE", 9), ("SYS_TYPE_TSS_BUSY", 11),
    ("SYS_TYPE_CALL_GATE", 12), ("SYS_TYPE_INT_GATE", 14), ("SYS_TYPE_TRAP_GATE", 15),
    ("MSR_IA32_TSC", 0x10), ("MSR_IA32_APIC_BASE", 0x1B), ("MSR_IA32_TSC_ADJUST", 0x3B),
    ("MSR_IA32_SYSENTER_CS", 0x174), ("MSR_IA32_SYSENTER_EIP", 0x176), ("MSR_IA32_DEBUGCTL", 0x1D9),
    ("MSR_IA32_PAT", 0x277), ("MSR_IA32_TSC_DEADLINE", 0x6E0), ("MSR_IA32_X2APIC_SELF_IPI", 0x83F),
    ("MSR_IA32_EFER", 0xC0000080), ("MSR_IA32_LSTAR", 0xC0000082), ("MSR_IA32_FMASK", 0xC0000084),
    ("MSR_IA32_KERNEL_GS_BASE", 0xC0000102), ("MSR_IA32_TSC_AUX", 0xC0000103),
    ("MSR_AMD64_HWCR", 0xC0010015), ("MSR_AMD64_VM_HSAVE_PA", 0xC0010117),
    ("MSR_KVM_SYSTEM_TIME", 0x12), ("MSR_KVM_SYSTEM_TIME_NEW", 0x4B564D01), ("MSR_KVM_PV_EOI_EN", 0x4B564D04),
    ("MSR_KVM_ASYNC_PF_INT", 0x4B564D06), ("HV_X64_MSR_TIME_REF_COUNT", 0x40000020),
    ("PAT_UC", 0), ("PAT_WC", 1), ("PAT_WT", 4), ("PAT_WP", 5), ("PAT_WB", 6), ("PAT_UC_MINUS", 7),  # Vol. 3A 12.12
    ("PAT_POWER_UP", 0x0007040600070406),
    ("TSS32_LINK", 0), ("TSS32_ESP0", 4), ("TSS32_SS0", 8), ("TSS32_CR3", 28), ("TSS32_EIP", 32),  # Figure 8-2
    ("TSS32_EFLAGS", 36), ("TSS32_ESP", 56), ("TSS32_ES", 72), ("TSS32_CS", 76), ("TSS32_SS", 80),
    ("TSS32_DS", 84), ("TSS32_FS", 88), ("TSS32_GS", 92), ("TSS32_LDT", 96), ("TSS32_IOMAP_BASE", 102),
    ("TSS64_RSP0", 4), ("TSS64_IST1", 36), ("TSS64_IOMAP_BASE", 102),  # Figure 8-11
]

# Names whose value another name in its group has on purpose: bit 7 of a paging entry is PS
# in a PDE or PDPTE and PAT in a 4-KByte PTE (SDM Vol. 3A Tables 4-18 to 4-20).
ALIASES = {frozenset({"PTE_PS", "PTE_PAT"})}
GROUPS = ["CR0_", "CR3_", "CR4_", "EFER_", "RFLAGS_", "XCR0_", "DR6_", "DR7_", "APIC_BASE_", "DEBUGCTL_", "PTE_",
          "PFEC_", "SEG_TYPE_", "SYS_TYPE_", "MSR_", "PAT_", "TSS32_"]


def _group(prefix):
    """The group's names and values; a field's shift is a bit number, not a value in the group.
    "MSR_" is every MSR number (Hyper-V's are HV_X64_MSR_*), "_VECTOR" every vector."""
    if prefix == "_VECTOR":
        return {n: v for n, v in vars(x86).items() if n.endswith(prefix)}
    if prefix == "MSR_":
        return {n: v for n, v in vars(x86).items() if n.startswith(("MSR_", "HV_X64_MSR_"))}
    return {n: v for n, v in vars(x86).items() if n.startswith(prefix) and not n.endswith("_SHIFT")}


@pytest.mark.parametrize("name,bit", BITS, ids=[n for n, _ in BITS])
def test_bit_is_the_sdms(name, bit):
    assert getattr(x86, name) == 1 << bit, f"{name} = {getattr(x86, name):#x}, the SDM has bit {bit}"


@pytest.mark.parametrize("name,value", VALUES, ids=[n for n, _ in VALUES])
def test_value_is_the_documents(name, value):
    assert getattr(x86, name) == value, f"{name} = {getattr(x86, name):#x}, the documentation has {value:#x}"


@pytest.mark.parametrize("prefix", GROUPS + ["_VECTOR"])
def test_no_two_names_in_a_group_share_a_value(prefix):
    group = _group(prefix)
    assert len(group) >= 2, f"group {prefix}: {group}"
    by_value: dict[int, list[str]] = {}
    for name, value in group.items():
        by_value.setdefault(value, []).append(name)
    shared = [names for names in by_value.values() if len(names) > 1 and frozenset(names) not in ALIASES]
    assert not shared, f"group {prefix}: these names share a value: {shared}"


def test_register_bits_are_single_bits():
    """Every CR/EFER/RFLAGS/XCR0/DR/PTE/PFEC name is one bit, except the fields and values named here."""
    multi = {"CR8_TPR", "RFLAGS_IOPL", "DR6_INIT"}
    for prefix in ("CR0_", "CR3_", "CR4_", "EFER_", "RFLAGS_", "XCR0_", "DR6_", "DR7_", "APIC_BASE_", "DEBUGCTL_",
                   "PTE_", "PFEC_"):
        for name, value in _group(prefix).items():
            if name not in multi:
                assert value > 0 and value & (value - 1) == 0, f"{name} = {value:#x} is not a single bit"


def test_vector_table_and_error_codes():
    assert x86.VECTORS["#GP"] == 13 and x86.VECTORS["NMI"] == 2 and "#NMI" not in x86.VECTORS
    assert x86.vector_name(14) == "#PF" and x86.vector_name(32) == "vector 32"
    # SDM Vol. 3A 6.13 and Table 6-1's "Error Code" column; APM Vol. 2 8.2 for #VC and #SX.
    assert x86.ERROR_CODE_VECTORS == {8, 10, 11, 12, 13, 14, 17, 21, 29, 30}


def test_msr_names_come_from_x86():
    assert set(MSR_NAMES) == set(_group("MSR_").values())
    assert msr_name(0xC0000103) == "IA32_TSC_AUX (0xc0000103)"
    assert msr_name(0x4B564D01) == "MSR_KVM_SYSTEM_TIME_NEW (0x4b564d01)"
    assert msr_name(0x12345) == "MSR 0x12345"


def _header_defines(path, pattern):
    if not path.exists():
        pytest.skip(f"{path} not installed (linux-libc-dev)")
    return {m[1]: int(m[2], 0) for m in re.finditer(pattern, path.read_text(), re.M)}


def test_kvm_msrs_and_vectors_match_the_uapi_headers():
    """The KVM MSRs and the vectors KVM's UAPI defines agree with the system's <asm/kvm_para.h>
    and <asm/kvm.h> (a second source, where they are installed)."""
    inc = Path("/usr/include/x86_64-linux-gnu/asm")
    msrs = _header_defines(inc / "kvm_para.h", r"^#define\s+(MSR_KVM_\w+)\s+(0x[0-9a-fA-F]+)\s*$")
    vectors = _header_defines(inc / "kvm.h", r"^#define\s+([A-Z]{2}_VECTOR)\s+(\d+)\s*$")
    assert msrs and vectors
    assert {n: getattr(x86, n, None) for n in msrs} == msrs
    assert {n: getattr(x86, n, None) for n in vectors} == vectors
