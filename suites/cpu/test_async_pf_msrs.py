"""The asynchronous page fault control MSRs, MSR_KVM_ASYNC_PF_EN and MSR_KVM_ASYNC_PF_INT, as
Documentation/virt/kvm/x86/msr.rst defines them: which bits hold what, which are reserved, which
need which KVM feature bit, and that the guest reads back what it wrote. A WRMSR that sets a
reserved bit raises #GP(0) (SDM Vol. 2B WRMSR). The 'page not present' / 'page ready' events
themselves need host memory paged out under the guest and are not checked here.

KVM refuses to enable async PF without an in-kernel local APIC (it delivers 'page ready' as an
APIC interrupt), so every guest here has one.
"""

import pytest

from kvmtest.cpuid import find_entry
from kvmtest.guest import layout as L
from kvmtest.guest.msr_source import load_msr, rdmsr64
from kvmtest.x86 import (
    KVM_ASYNC_PF_DELIVERY_AS_INT,
    KVM_ASYNC_PF_DELIVERY_AS_PF_VMEXIT,
    KVM_ASYNC_PF_ENABLED,
    KVM_CPUID_FEATURES,
    KVM_FEATURE_ASYNC_PF,
    KVM_FEATURE_ASYNC_PF_INT,
    KVM_FEATURE_ASYNC_PF_VMEXIT,
    MSR_KVM_ASYNC_PF_EN,
    MSR_KVM_ASYNC_PF_INT,
)

pytestmark = [pytest.mark.requires_cap("KVM_CAP_ASYNC_PF"), pytest.mark.requires_cap("KVM_CAP_ASYNC_PF_INT"),
              pytest.mark.requires_cap("KVM_CAP_IRQCHIP")]

APF_DATA = L.DATA + 0xC00          # struct kvm_vcpu_pv_apf_data, 64 bytes, 64-byte aligned
VECTOR = 0xEC                      # the 'page ready' vector


def _features(kvm) -> int:
    leaf = find_entry(kvm.cached_supported_cpuid(), KVM_CPUID_FEATURES)
    if leaf is None or leaf.function != KVM_CPUID_FEATURES:
        pytest.skip(f"KVM_GET_SUPPORTED_CPUID has no KVM feature leaf {KVM_CPUID_FEATURES:#x}")
    for bit in (KVM_FEATURE_ASYNC_PF, KVM_FEATURE_ASYNC_PF_INT):
        if not leaf.eax >> bit & 1:
            pytest.skip(f"KVM_GET_SUPPORTED_CPUID's leaf {KVM_CPUID_FEATURES:#x} EAX {leaf.eax:#x} lacks bit {bit}")
    return leaf.eax


def test_guest_reads_back_the_async_pf_setup_it_wrote(kvm, guest):
    """The guest sets the 'page ready' vector in MSR_KVM_ASYNC_PF_INT (bits 7:0) first, then
    enables async PF with interrupt delivery in MSR_KVM_ASYNC_PF_EN (the 64-byte aligned address
    in bits 63:6, bit 3 interrupt delivery, bit 0 enable), as msr.rst orders it; RDMSR reads both
    values back and the host's KVM_GET_MSRS reads the same (api.rst 4.18)."""
    _features(kvm)
    enable = APF_DATA | KVM_ASYNC_PF_DELIVERY_AS_INT | KVM_ASYNC_PF_ENABLED
    g = guest("long64", load_msr(MSR_KVM_ASYNC_PF_INT, VECTOR) + "wrmsr\n" + load_msr(MSR_KVM_ASYNC_PF_EN, enable)
              + "wrmsr\n" + rdmsr64(MSR_KVM_ASYNC_PF_INT) + "GUEST_SYNC rax\n" + rdmsr64(MSR_KVM_ASYNC_PF_EN)
              + "GUEST_SYNC rax\nGUEST_DONE", irqchip=True)
    vector, en = g.run_to_done()
    assert (vector, en) == (VECTOR, enable), \
        f"RDMSR after the WRMSRs: ASYNC_PF_INT {vector:#x}, ASYNC_PF_EN {en:#x}; expected {VECTOR:#x}, {enable:#x}"
    host = g.vcpu.get_msrs([MSR_KVM_ASYNC_PF_INT, MSR_KVM_ASYNC_PF_EN])
    assert host == {MSR_KVM_ASYNC_PF_INT: VECTOR, MSR_KVM_ASYNC_PF_EN: enable}, \
        f"KVM_GET_MSRS after the guest's WRMSRs: {({hex(k): hex(v) for k, v in host.items()})}"


RESERVED = {
    "en-bit4": (MSR_KVM_ASYNC_PF_EN, APF_DATA | 1 << 4 | KVM_ASYNC_PF_DELIVERY_AS_INT | KVM_ASYNC_PF_ENABLED),
    "en-bit5": (MSR_KVM_ASYNC_PF_EN, APF_DATA | 1 << 5 | KVM_ASYNC_PF_DELIVERY_AS_INT | KVM_ASYNC_PF_ENABLED),
    "int-bit8": (MSR_KVM_ASYNC_PF_INT, 1 << 8 | VECTOR),
    "int-bit32": (MSR_KVM_ASYNC_PF_INT, 1 << 32 | VECTOR),
}


@pytest.mark.parametrize("case", list(RESERVED))
def test_reserved_async_pf_bits_raise_gp(kvm, guest, case):
    """"Bits 5-4 of the MSR are reserved" (MSR_KVM_ASYNC_PF_EN) and MSR_KVM_ASYNC_PF_INT's
    "Bits 8-63: Reserved" (msr.rst): a WRMSR setting one raises #GP(0), and the MSR keeps its
    value (0, as KVM_GET_MSRS reads it afterwards)."""
    _features(kvm)
    msr, value = RESERVED[case]
    # ASYNC_PF_EN is enabled only after the vector is set (msr.rst); ASYNC_PF_INT is written alone
    setup = load_msr(MSR_KVM_ASYNC_PF_INT, VECTOR) + "wrmsr\n" if msr == MSR_KVM_ASYNC_PF_EN else ""
    g = guest("long64", setup + load_msr(msr, value) + "GUEST_ASSERT_RAISES GP(0), wrmsr\nGUEST_DONE", irqchip=True)
    g.run_to_done()
    assert g.vcpu.get_msr(msr) == 0, f"{case}: the refused WRMSR {value:#x} left the MSR at {g.vcpu.get_msr(msr):#x}"


GATED = {
    "delivery-as-int": (KVM_ASYNC_PF_DELIVERY_AS_INT, KVM_FEATURE_ASYNC_PF_INT),
    "delivery-as-pf-vmexit": (KVM_ASYNC_PF_DELIVERY_AS_PF_VMEXIT | KVM_ASYNC_PF_DELIVERY_AS_INT,
                              KVM_FEATURE_ASYNC_PF_VMEXIT),
}


@pytest.mark.requires_cap("KVM_CAP_ENFORCE_PV_FEATURE_CPUID")
@pytest.mark.parametrize("present", [False, True], ids=["without-feature", "with-feature"])
@pytest.mark.parametrize("case", list(GATED))
def test_async_pf_delivery_bits_need_their_feature(kvm, guest, case, present):
    """"Bit 2 can be set only if KVM_FEATURE_ASYNC_PF_VMEXIT is present in CPUID. Bit 3 can only be
    set if KVM_FEATURE_ASYNC_PF_INT is present in CPUID" (msr.rst MSR_KVM_ASYNC_PF_EN): with
    KVM_CAP_ENFORCE_PV_FEATURE_CPUID and the vCPU's 0x40000001 EAX lacking that bit, enabling async
    PF with it raises #GP(0); with the bit (the control), the same WRMSR completes and reads back."""
    features = _features(kvm)
    bits, feature = GATED[case]
    if present and not features >> feature & 1:
        pytest.skip(f"KVM_GET_SUPPORTED_CPUID's leaf {KVM_CPUID_FEATURES:#x} EAX {features:#x} lacks bit {feature}")
    enable = APF_DATA | bits | KVM_ASYNC_PF_ENABLED
    needed = (1 << KVM_FEATURE_ASYNC_PF) | (1 << KVM_FEATURE_ASYNC_PF_INT if feature != KVM_FEATURE_ASYNC_PF_INT else 0)
    check = (f"wrmsr\n{rdmsr64(MSR_KVM_ASYNC_PF_EN)}GUEST_SYNC rax\n" if present
             else "GUEST_ASSERT_RAISES GP(0), wrmsr\n")
    setup = load_msr(MSR_KVM_ASYNC_PF_INT, VECTOR) + "wrmsr\n" if needed >> KVM_FEATURE_ASYNC_PF_INT & 1 else ""
    g = guest("long64", setup + load_msr(MSR_KVM_ASYNC_PF_EN, enable) + check + "GUEST_DONE", irqchip=True)
    g.vcpu.enforce_pv_features(needed | (1 << feature if present else 0))
    seen = g.run_to_done()
    if present:
        assert seen == [enable], f"RDMSR ASYNC_PF_EN after WRMSR {enable:#x} with feature bit {feature}: {seen}"
