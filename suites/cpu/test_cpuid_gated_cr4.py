"""CR4 bits whose feature the vCPU's CPUID does not enumerate are reserved: KVM_SET_SREGS refuses
them and a guest MOV to CR4 raises #GP(0).

SDM Vol. 3A 2.5: each of these CR4 bits controls a feature that CPUID enumerates, and "attempting
to set any reserved bits in control registers results in a general-protection exception";
Vol. 2B MOV to CR4: #GP(0) "if an attempt is made to write a 1 to any reserved bit in CR4" (real
mode likewise). api.rst 4.14 KVM_SET_SREGS and kernel selftests set_sregs_test: KVM refuses
special registers the vCPU could not hold, with EINVAL, changing nothing.
"""

import errno

import pytest

from kvmtest.abi.constants import errno_name
from kvmtest.cpuid import FEATURES, has_feature, set_feature
from kvmtest.guest.mode_select import select
from kvmtest.guest.modes import get_mode, mode_sregs
from kvmtest.x86 import (
    CR4_CET,
    CR4_FSGSBASE,
    CR4_KL,
    CR4_LA57,
    CR4_OSXSAVE,
    CR4_PCIDE,
    CR4_PKE,
    CR4_PKS,
    CR4_SMAP,
    CR4_SMEP,
    CR4_SMXE,
    CR4_UMIP,
    CR4_VMXE,
)

# CR4 bit -> the CPUID feature(s) that make it settable (SDM Vol. 3A 2.5; Vol. 2A CPUID:
# SMEP 7.0:EBX[7], SMAP 7.0:EBX[20], PKE 7.0:ECX[3] PKU, FSGSBASE 7.0:EBX[0], OSXSAVE 1:ECX[26]
# XSAVE, UMIP 7.0:ECX[2], LA57 7.0:ECX[16], PCIDE 1:ECX[17] PCID, VMXE 1:ECX[5] VMX, SMXE
# 1:ECX[6] SMX, KL 7.0:ECX[23] Key Locker, PKS 7.0:ECX[31]; CET with either 7.0:ECX[7] CET_SS or
# 7.0:EDX[20] CET_IBT, so it is absent only with both cleared).
GATED_CR4 = {
    "smep": (CR4_SMEP, "smep"), "smap": (CR4_SMAP, "smap"), "pke": (CR4_PKE, "pku"),
    "fsgsbase": (CR4_FSGSBASE, "fsgsbase"), "osxsave": (CR4_OSXSAVE, "xsave"), "umip": (CR4_UMIP, "umip"),
    "la57": (CR4_LA57, "la57"), "pcide": (CR4_PCIDE, "pcid"), "vmxe": (CR4_VMXE, "vmx"), "smxe": (CR4_SMXE, "smx"),
    "kl": (CR4_KL, "keylocker"), "pks": (CR4_PKS, "pks"), "cet": (CR4_CET, ("shstk", "ibt")),
}
GUEST_MODES = select(protected=False) + select(long=True, cpl=0)


def _table(kvm, feature, present):
    """KVM's supported CPUID with `feature` (a name, or a tuple of names any of which enables the
    bit) present, or absent (every name cleared)."""
    table = kvm.supported_cpuid_copy()
    names = (feature,) if isinstance(feature, str) else feature
    if present:
        name = next((n for n in names if has_feature(table, n)), None)
        if name is None:
            pytest.skip(f"needs {' or '.join(str(FEATURES[n]) for n in names)}, which KVM_GET_SUPPORTED_CPUID does "
                        "not report")
        set_feature(table, name, True)
    else:
        for name in names:
            set_feature(table, name, False)
    return table


def _feature_text(feature) -> str:
    names = (feature,) if isinstance(feature, str) else feature
    return " or ".join(str(FEATURES[n]) for n in names)


def _mov_cr4_applies(bit_name, mode):
    # Where MOV to CR4 faults for another reason whatever CPUID says, it tells nothing about the
    # CPUID rule: CR4.PCIDE can be set only in IA-32e mode, and CR4.LA57 cannot change while
    # IA-32e mode is active (SDM Vol. 2B MOV CR, Protected Mode Exceptions).
    # CR4.CET cannot be set while CR0.WP = 0 (Vol. 2B MOV CR), as it is in real mode.
    long_mode = get_mode(mode).long
    return not (bit_name == "pcide" and not long_mode or bit_name == "la57" and long_mode
                or bit_name == "cet" and not get_mode(mode).protected)


@pytest.mark.parametrize("bit_name", list(GATED_CR4))
def test_set_sregs_refuses_a_cr4_bit_without_its_cpuid_bit(kvm, vm, bit_name):
    """KVM_SET_SREGS with a CR4 bit whose feature is cleared from the vCPU's CPUID fails with
    EINVAL and leaves the special registers as they were (SDM Vol. 3A 2.5; api.rst 4.14; selftests
    set_sregs_test)."""
    bit, feature = GATED_CR4[bit_name]
    vcpu = vm.create_vcpu()
    vcpu.set_cpuid(_table(kvm, feature, False))
    good = mode_sregs(get_mode("long64"), vcpu.get_sregs(), cr3=0x20000)
    vcpu.set_sregs(good)
    before = bytes(vcpu.get_sregs())
    good.cr4 |= bit
    err = vcpu.try_set_sregs(good)
    assert err == errno.EINVAL, (f"KVM_SET_SREGS cr4={good.cr4:#x} (CR4.{bit_name.upper()} without "
                                 f"{_feature_text(feature)}): expected EINVAL, got "
                                 f"{errno_name(err) if err else 'success'}; "
                                 f"KVM_GET_SREGS now reads cr4={vcpu.get_sregs().cr4:#x}")
    assert bytes(vcpu.get_sregs()) == before, \
        f"KVM_SET_SREGS (CR4.{bit_name.upper()}) failed but changed the special registers"


@pytest.mark.parametrize("bit_name", list(GATED_CR4))
def test_set_sregs_accepts_a_cr4_bit_with_its_cpuid_bit(kvm, vm, bit_name):
    """With the feature in the vCPU's CPUID, the same KVM_SET_SREGS succeeds and KVM_GET_SREGS
    reads the bit back (api.rst 4.13/4.14): the positive control of the refusal above."""
    bit, feature = GATED_CR4[bit_name]
    vcpu = vm.create_vcpu()
    vcpu.set_cpuid(_table(kvm, feature, True))
    sregs = mode_sregs(get_mode("long64"), vcpu.get_sregs(), cr3=0x20000)
    sregs.cr4 |= bit
    err = vcpu.try_set_sregs(sregs)
    assert err == 0, \
        f"KVM_SET_SREGS cr4={sregs.cr4:#x} (CR4.{bit_name.upper()} with {_feature_text(feature)}): {errno_name(err)}"
    got = vcpu.get_sregs().cr4
    assert got & bit, f"KVM_SET_SREGS cr4={sregs.cr4:#x} succeeded, KVM_GET_SREGS reads cr4={got:#x}"


@pytest.mark.modes(*GUEST_MODES)
@pytest.mark.parametrize("bit_name", list(GATED_CR4))
def test_guest_mov_to_cr4_without_its_cpuid_bit_raises_gp(kvm, guest, mode, bit_name):
    """MOV to CR4 setting a bit whose feature the vCPU's CPUID lacks raises #GP(0) (SDM Vol. 2B
    MOV CR, Vol. 3A 2.5), in real mode, 64-bit and compatibility mode at CPL0."""
    if not _mov_cr4_applies(bit_name, mode):
        pytest.skip(f"MOV to CR4.{bit_name.upper()} faults in {mode} whatever CPUID says")
    bit, feature = GATED_CR4[bit_name]
    a = "rax" if get_mode(mode).code_bits == 64 else "eax"
    g = guest(mode, f"mov {a}, cr4\nor {a}, {bit:#x}\nGUEST_ASSERT_RAISES GP(0), mov cr4, {a}\n"
                    f"mov {a}, cr4\nGUEST_SYNC {a}\nGUEST_DONE")
    g.vcpu.set_cpuid(_table(kvm, feature, False))
    (cr4,) = g.run_to_done()
    assert not cr4 & bit, f"CR4 reads {cr4:#x} after the faulting MOV: CR4.{bit_name.upper()} was set anyway"


@pytest.mark.modes(*GUEST_MODES)
@pytest.mark.parametrize("bit_name", list(GATED_CR4))
def test_guest_mov_to_cr4_with_its_cpuid_bit_sets_it(kvm, guest, mode, bit_name):
    """With the feature in the vCPU's CPUID the same MOV to CR4 completes and MOV from CR4 reads
    the bit back (SDM Vol. 2B MOV CR): the positive control of the #GP above."""
    if not _mov_cr4_applies(bit_name, mode):
        pytest.skip(f"MOV to CR4.{bit_name.upper()} faults in {mode} whatever CPUID says")
    bit, feature = GATED_CR4[bit_name]
    a = "rax" if get_mode(mode).code_bits == 64 else "eax"
    g = guest(mode, f"mov {a}, cr4\nor {a}, {bit:#x}\nmov cr4, {a}\nmov {a}, cr4\nGUEST_SYNC {a}\nGUEST_DONE")
    g.vcpu.set_cpuid(_table(kvm, feature, True))
    (cr4,) = g.run_to_done()
    assert cr4 & bit, f"CR4 reads {cr4:#x} after MOV to CR4.{bit_name.upper()} with {_feature_text(feature)}"
