"""Vcpu.get_cpuid() returns exactly the entries the vCPU has: no more, no fewer, in order.

api.rst KVM_GET_CPUID2: the call fails with E2BIG while nent is below the vCPU's entry count;
KVM_SET_CPUID2 stores the entries given. Some kernels (6.1) leave nent as passed on success,
so a harness that trusts it returns unused, zeroed entries; kvmtest derives the count from
E2BIG instead (tests/test_get_cpuid_count.py simulates such a kernel).
"""

from kvmtest.abi import structs as S
from kvmtest.abi.buffers import cpuid2_buffer

# Leaves KVM keeps as set (none of the bits it updates from vCPU state: leaf 1 APIC/OSXSAVE,
# leaf 7 OSPKE, leaf 0xD sizes): the maximum leaves and a brand string of our own.
BRAND = b"kvmtest get_cpuid exactness check".ljust(48, b"\0")


def _table() -> list:
    words = [int.from_bytes(BRAND[i:i + 4], "little") for i in range(0, 48, 4)]
    table = [S.kvm_cpuid_entry2(function=0, eax=0), S.kvm_cpuid_entry2(function=0x80000000, eax=0x80000004)]
    for n in range(3):
        a, b, c, d = words[4 * n: 4 * n + 4]
        table.append(S.kvm_cpuid_entry2(function=0x80000002 + n, eax=a, ebx=b, ecx=c, edx=d))
    return table


def _describe(e) -> str:
    return f"{e.function:#x}.{e.index} flags={e.flags:#x} {e.eax:#010x} {e.ebx:#010x} {e.ecx:#010x} {e.edx:#010x}"


def _assert_same(table, got):
    assert [_describe(e) for e in got] == [_describe(e) for e in table], \
        f"KVM_GET_CPUID2 after KVM_SET_CPUID2 of {len(table)} entries returned {len(got)}"


def test_fresh_vcpu_has_no_cpuid_entries(vm):
    """Before any KVM_SET_CPUID2 the vCPU has no entries: get_cpuid() returns none."""
    assert vm.create_vcpu().get_cpuid() == []


def test_get_cpuid_returns_the_entries_set_entry_by_entry(vm):
    """Five entries set with KVM_SET_CPUID2 come back as exactly those five, in order and
    byte for byte (api.rst KVM_SET_CPUID2 / KVM_GET_CPUID2)."""
    vcpu = vm.create_vcpu()
    table = _table()
    vcpu.set_cpuid(table)
    _assert_same(table, vcpu.get_cpuid())


def test_get_cpuid_count_does_not_depend_on_the_last_set(vm):
    """A table set behind Vcpu.set_cpuid's back (the raw ioctl) is still read back exactly:
    the count comes from KVM's E2BIG, not from what kvmtest last set."""
    vcpu = vm.create_vcpu()
    vcpu.set_cpuid(_table())
    smaller = _table()[:3]
    # Raw on purpose: Vcpu.set_cpuid would give get_cpuid() the count; the test is about not having it.
    vcpu.ioctl("KVM_SET_CPUID2", cpuid2_buffer(smaller), args=f"nent={len(smaller)}")
    _assert_same(smaller, vcpu.get_cpuid())


def test_get_cpuid_of_the_supported_table_has_its_leaves_in_order(kvm, vm):
    """KVM_GET_SUPPORTED_CPUID's whole table set on a vCPU comes back with the same number of
    entries and the same (function, index) sequence (values may differ where KVM tracks
    vCPU state; suites/cpu/test_cpuid.py checks those)."""
    vcpu = vm.create_vcpu()
    table = kvm.cached_supported_cpuid()
    vcpu.set_cpuid(table)
    got = vcpu.get_cpuid()
    assert [(e.function, e.index) for e in got] == [(e.function, e.index) for e in table], \
        f"KVM_GET_CPUID2: {len(got)} entries, {len(table)} set"
