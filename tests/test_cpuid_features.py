"""kvmtest.cpuid: editing a CPUID table by feature name, and reading its vendor (no KVM needed)."""

import pytest

from kvmtest.abi import structs as S
from kvmtest.cpuid import has_feature, hypercall_instruction, set_feature, set_vendor, vendor
from kvmtest.errors import KvmtestError


def _table():
    leaf0 = S.kvm_cpuid_entry2(function=0, eax=0xD, ebx=int.from_bytes(b"Auth", "little"),
                               edx=int.from_bytes(b"enti", "little"), ecx=int.from_bytes(b"cAMD", "little"))
    leaf7 = S.kvm_cpuid_entry2(function=7, index=0, edx=1 << 4)
    return [leaf0, leaf7]


def test_set_feature_sets_and_clears_only_its_bit():
    table = _table()
    set_feature(table, "arch_capabilities", True)      # CPUID.7.0:EDX[29]
    assert table[1].edx == 1 << 29 | 1 << 4 and has_feature(table, "arch_capabilities")
    set_feature(table, "arch_capabilities", False)
    assert table[1].edx == 1 << 4


def test_set_feature_refuses_unknown_names_and_missing_leaves():
    with pytest.raises(KvmtestError, match="unknown CPUID feature 'nope'"):
        set_feature(_table(), "nope", True)
    with pytest.raises(KvmtestError, match="no leaf 0x80000008"):
        set_feature(_table(), "rdpru", False)


def test_vendor_reads_ebx_edx_ecx():
    assert vendor(_table()) == "AuthenticAMD"


@pytest.mark.parametrize("name, insn", [("AuthenticAMD", "vmmcall"), ("HygonGenuine", "vmmcall"),
                                        ("GenuineIntel", "vmcall"), ("CentaurHauls", "vmcall")])
def test_the_hypercall_instruction_is_the_vendors(name, insn):
    table = _table()
    set_vendor(table, name)
    assert hypercall_instruction(table) == insn


def test_set_vendor_writes_ebx_edx_ecx_and_leaves_eax():
    table = _table()
    set_vendor(table, "GenuineIntel")
    assert vendor(table) == "GenuineIntel" and table[0].eax == 0xD
    assert table[0].ebx == int.from_bytes(b"Genu", "little") and table[0].ecx == int.from_bytes(b"ntel", "little")


def test_set_vendor_refuses_a_string_that_is_not_12_ascii_characters():
    for bad in ("Intel", "GenuineIntel!", "GenuineIntél"):
        with pytest.raises(KvmtestError, match="expected 12 ASCII characters"):
            set_vendor(_table(), bad)
    with pytest.raises(KvmtestError, match="no leaf 0"):
        set_vendor([_table()[1]], "GenuineIntel")
