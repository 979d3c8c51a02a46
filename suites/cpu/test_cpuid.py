"""KVM_SET_CPUID2 and what the guest's CPUID instruction returns (api.rst KVM_SET_CPUID2, 4.46 KVM_GET_SUPPORTED_CPUID;
SDM Vol. 2A CPUID)."""

import errno

import pytest

from kvmtest.abi import structs as S
from kvmtest.abi.constants import errno_name
from kvmtest.cpuid import find_entry
from kvmtest.x86 import CR4_OSXSAVE

BRAND = b"kvmtest brand string: cpuid is what KVM_SET_CPUID2 says!"[:48].ljust(48, b"\0")


def _table_with_brand(kvm):
    entries = kvm.supported_cpuid_copy()
    for i, leaf in enumerate((0x80000002, 0x80000003, 0x80000004)):
        e = find_entry(entries, leaf)
        if e is None or e.function != leaf:
            pytest.skip(f"KVM_GET_SUPPORTED_CPUID has no brand-string leaf {leaf:#x}")
        e.eax, e.ebx, e.ecx, e.edx = (int.from_bytes(BRAND[16 * i + 4 * j: 16 * i + 4 * j + 4], "little")
                                      for j in range(4))
    return entries


def _cpuid_source(leaf, reg_prefix):
    return f"""
        mov eax, {leaf:#x}
        xor ecx, ecx
        cpuid
        GUEST_SYNC eax
        GUEST_SYNC ebx
        GUEST_SYNC ecx
        GUEST_SYNC edx"""


@pytest.mark.modes(feature=None)
def test_guest_cpuid_returns_the_table_set_by_the_host(kvm, guest, mode):
    """CPUID executed by the guest returns the entries of KVM_SET_CPUID2 (api.rst KVM_SET_CPUID2:
    "defines the vcpu responses to the cpuid instruction"): the brand-string leaves, rewritten
    with kvmtest's own text, and the vendor leaf 0, in every mode and at CPL3."""
    g = guest(mode, "\n".join(_cpuid_source(leaf, "e") for leaf in (0x80000002, 0x80000003, 0x80000004, 0))
              + "\nGUEST_DONE")
    table = _table_with_brand(kvm)
    g.vcpu.set_cpuid(table)
    values = g.run_to_done()
    brand = b"".join(v.to_bytes(4, "little") for v in values[:12])
    assert brand == BRAND, f"guest read brand {brand!r}, host set {BRAND!r}"
    leaf0 = find_entry(table, 0)
    assert values[12:] == [leaf0.eax, leaf0.ebx, leaf0.ecx, leaf0.edx], \
        f"CPUID.0: guest {[hex(v) for v in values[12:]]}, " \
        f"table {[hex(v) for v in (leaf0.eax, leaf0.ebx, leaf0.ecx, leaf0.edx)]}"


# CPUID bits KVM itself keeps in step with vCPU state (arch/x86/kvm/cpuid.c,
# kvm_update_cpuid_runtime): leaf 1 EDX.APIC and ECX.OSXSAVE, leaf 7 ECX.OSPKE, and the XSAVE
# area sizes in leaf 0xD EBX. (leaf, subleaf, register) -> mask of dynamic bits.
DYNAMIC = {(1, 0, "edx"): 1 << 9, (1, 0, "ecx"): 1 << 27, (7, 0, "ecx"): 1 << 4,
           (0xD, 0, "ebx"): 0xFFFFFFFF, (0xD, 1, "ebx"): 0xFFFFFFFF}


def test_get_cpuid2_returns_the_table_set(kvm, vm):
    """KVM_GET_CPUID2 returns the entries KVM_SET_CPUID2 set (api.rst KVM_GET_CPUID2), apart from the
    bits KVM updates from vCPU state (APIC, OSXSAVE, OSPKE, XSAVE sizes)."""
    vcpu = vm.create_vcpu()
    table = kvm.cached_supported_cpuid()
    vcpu.set_cpuid(table)
    got = {(e.function, e.index): e for e in vcpu.get_cpuid()}
    diffs = []
    for e in table:
        g = got.get((e.function, e.index))
        if g is None:
            diffs.append(f"leaf {e.function:#x}.{e.index} missing")
            continue
        for reg in ("eax", "ebx", "ecx", "edx"):
            mask = ~DYNAMIC.get((e.function, e.index, reg), 0) & 0xFFFFFFFF
            if getattr(e, reg) & mask != getattr(g, reg) & mask:
                diffs.append(f"leaf {e.function:#x}.{e.index} {reg}: set {getattr(e, reg):#010x}, "
                             f"got {getattr(g, reg):#010x}")
    assert not diffs, "KVM_GET_CPUID2 differs from what KVM_SET_CPUID2 set: " + "; ".join(diffs)


def test_set_cpuid_after_run_accepts_only_the_same_table(kvm, guest):
    """After KVM_RUN, KVM_SET_CPUID2 with the vCPU's own table (as KVM_GET_CPUID2 reports it)
    succeeds and with a changed one fails with EINVAL, leaving the table as it was (selftests
    cpuid_test set_cpuid_after_run; api.rst KVM_SET_CPUID2)."""
    g = guest("long64", "GUEST_DONE")
    g.run_to_done()
    table = g.vcpu.get_cpuid()
    assert g.vcpu.try_set_cpuid(table) == 0, "KVM_SET_CPUID2 with the same table after KVM_RUN failed"
    changed = [S.kvm_cpuid_entry2.from_buffer_copy(bytes(e)) for e in table]
    find_entry(changed, 0x80000002).eax ^= 1
    err = g.vcpu.try_set_cpuid(changed)
    assert err == errno.EINVAL, \
        f"KVM_SET_CPUID2 with a changed table after KVM_RUN: expected EINVAL, got {errno_name(err)}"
    now = g.vcpu.get_cpuid()
    assert find_entry(now, 0x80000002).eax == find_entry(table, 0x80000002).eax


@pytest.mark.requires_cpu("xsave")
def test_osxsave_follows_cr4(kvm, guest):
    """CPUID.1:ECX.OSXSAVE reflects CR4.OSXSAVE (SDM Vol. 2A CPUID; selftests
    cr4_cpuid_sync_test): set by the host through KVM_SET_SREGS, the guest sees it."""
    g = guest("long64", _cpuid_source(1, "e") + "\nGUEST_DONE")
    sregs = g.vcpu.get_sregs()
    sregs.cr4 |= CR4_OSXSAVE
    g.set_sregs(sregs)
    ecx = g.run_to_done()[2]
    assert ecx >> 27 & 1, f"CPUID.1:ECX {ecx:#x} without OSXSAVE while CR4.OSXSAVE is set"


@pytest.mark.requires_cpu("xsave")
def test_osxsave_cleared_by_the_host_mid_run_and_set_again_by_the_guest(kvm, guest):
    """CPUID.1:ECX.OSXSAVE (bit 27) "reflects the setting of CR4.OSXSAVE" (SDM Vol. 2A CPUID,
    Figure 3-7) whoever changes CR4: the guest sets CR4.OSXSAVE and sees the bit; the host clears
    CR4.OSXSAVE through KVM_SET_SREGS while the guest is stopped at a GUEST_SYNC and the next CPUID
    shows it clear; the guest's own MOV to CR4 sets it again and CPUID shows it set (selftests
    cr4_cpuid_sync_test)."""
    cpuid = "mov eax, 1\nxor ecx, ecx\ncpuid\nshr ecx, 27\nand ecx, 1\nGUEST_SYNC rcx"
    g = guest("long64", f"""
        mov rdi, cr4
        or rdi, {CR4_OSXSAVE:#x}
        mov cr4, rdi
        {cpuid}
        GUEST_SYNC 0x5e7                        # the host clears CR4.OSXSAVE here
        {cpuid}
        mov cr4, rdi
        {cpuid}
        GUEST_DONE""")
    assert g.expect_sync() == 1, "CPUID.1:ECX.OSXSAVE clear after the guest set CR4.OSXSAVE"
    assert g.expect_sync() == 0x5E7
    sregs = g.vcpu.get_sregs()
    assert sregs.cr4 & CR4_OSXSAVE, f"KVM_GET_SREGS CR4 {sregs.cr4:#x} without the OSXSAVE the guest set"
    sregs.cr4 &= ~CR4_OSXSAVE
    g.set_sregs(sregs)
    assert g.run_to_done() == [0, 1], \
        "CPUID.1:ECX.OSXSAVE after KVM_SET_SREGS cleared CR4.OSXSAVE, then after the guest's MOV to CR4 set it: " \
        "expected [0, 1]"
