"""XSETBV component by component: every XCR0 bit the vCPU's CPUID enumerates can be set, every
other one cannot, and the components that go together must be set together (kernel selftests
xcr0_cpuid_test).

SDM Vol. 1 13.3 and Vol. 3A 2.6: XSETBV with ECX = 0 raises #GP(0) if it would set a bit that
CPUID.(EAX=0DH,ECX=0):EDX:EAX does not enumerate, clear XCR0[0] (x87), set XCR0[2] (AVX) with
XCR0[1] (SSE) clear, set XCR0[7:5] (AVX-512: opmask, ZMM_Hi256, Hi16_ZMM) to anything but 000b or
111b or to 111b without AVX and SSE, set only one of XCR0[4:3] (MPX: BNDREGS, BNDCSR) or only one
of XCR0[18:17] (AMX: XTILECFG, XTILEDATA). With CR4.OSXSAVE = 0, XSETBV and XGETBV raise #UD
(Vol. 2C XSETBV, XGETBV). The vCPU's CPUID is KVM_GET_SUPPORTED_CPUID's table (the guest builder
sets it with KVM_SET_CPUID2). XCR0 does not depend on the code size, so the guests run in long64;
test_xsave.py checks the basic values (x87, SSE, AVX) in real mode and compatibility mode too.
"""

import pytest

from kvmtest.cpuid import find_entry
from kvmtest.errors import GuestFailure
from kvmtest.x86 import (
    CR4_OSXSAVE,
    XCR0_AVX,
    XCR0_BNDCSR,
    XCR0_BNDREGS,
    XCR0_HI16_ZMM,
    XCR0_OPMASK,
    XCR0_PKRU,
    XCR0_SSE,
    XCR0_TILECFG,
    XCR0_TILEDATA,
    XCR0_X87,
    XCR0_ZMM_HI256,
)

pytestmark = pytest.mark.requires_cpu("xsave")

MODE = "long64"
AVX512 = XCR0_OPMASK | XCR0_ZMM_HI256 | XCR0_HI16_ZMM
MPX = XCR0_BNDREGS | XCR0_BNDCSR
AMX = XCR0_TILECFG | XCR0_TILEDATA
# State components by their SDM names (Vol. 1 13.1), for messages
NAMES = {XCR0_X87: "x87", XCR0_SSE: "SSE", XCR0_AVX: "AVX", XCR0_BNDREGS: "BNDREGS", XCR0_BNDCSR: "BNDCSR",
         XCR0_OPMASK: "opmask", XCR0_ZMM_HI256: "ZMM_Hi256", XCR0_HI16_ZMM: "Hi16_ZMM", XCR0_PKRU: "PKRU",
         XCR0_TILECFG: "XTILECFG", XCR0_TILEDATA: "XTILEDATA"}


def describe(xcr0: int) -> str:
    """An XCR0 value by its components' names: 'x87|SSE|AVX', 'x87|bit 63'."""
    return "|".join(NAMES.get(1 << b, f"bit {b}") for b in range(64) if xcr0 >> b & 1) or "0"


def with_partners(xcr0: int) -> int:
    """`xcr0` with every component the SDM requires beside its bits (Vol. 1 13.3): x87 always, SSE
    under AVX, all of AVX-512 with SSE and AVX under any AVX-512 bit, both MPX bits, both AMX bits."""
    xcr0 |= XCR0_X87
    if xcr0 & AVX512:
        xcr0 |= AVX512 | XCR0_AVX
    if xcr0 & XCR0_AVX:
        xcr0 |= XCR0_SSE
    for group in (MPX, AMX):
        if xcr0 & group:
            xcr0 |= group
    return xcr0


def enumerated_xcr0(kvm) -> int:
    """The XCR0 bits the vCPU may set: CPUID.(EAX=0DH,ECX=0):EDX:EAX of KVM_GET_SUPPORTED_CPUID."""
    e = find_entry(kvm.cached_supported_cpuid(), 0xD, 0)
    return 0 if e is None or (e.function, e.index) != (0xD, 0) else e.edx << 32 | e.eax


def _values(kvm):
    """(accepted, refused): each bit 0-63 with its partners, split by whether every bit of the value
    is enumerated; the accepted ones end with every enumerated bit at once."""
    supported = enumerated_xcr0(kvm)
    accepted, refused = [], []
    for bit in range(64):
        value = with_partners(1 << bit)
        if value & ~supported:
            refused.append((bit, value))
        elif supported >> bit & 1 and value not in accepted:
            accepted.append(value)
    if supported not in accepted:
        accepted.append(supported)
    return accepted, refused


def _load(value: int) -> str:
    """ECX = 0, EDX:EAX = `value`: XSETBV's operands for XCR0."""
    return f"xor ecx, ecx\nmov eax, {value & 0xFFFFFFFF:#x}\nmov edx, {value >> 32:#x}"


def _guest(guest, source, xcr0=None):
    """A long64 guest with CR4.OSXSAVE = 1 and, when given, XCR0 set by the host (KVM_SET_XCRS),
    so that KVM holds the value the guest starts from."""
    g = guest(MODE, source + "\nGUEST_DONE")
    sregs = g.vcpu.get_sregs()
    sregs.cr4 |= CR4_OSXSAVE
    g.set_sregs(sregs)
    if xcr0 is not None:
        xcrs = g.vcpu.get_xcrs()
        xcrs.nr_xcrs, xcrs.xcrs[0].xcr, xcrs.xcrs[0].value = 1, 0, xcr0
        g.vcpu.set_xcrs(xcrs)
    return g


def test_xsetbv_accepts_each_enumerated_xcr0_component(kvm, guest):
    """For each XCR0 bit CPUID.(EAX=0DH,ECX=0):EDX:EAX enumerates, XSETBV of that bit with the
    components it needs (x87; SSE for AVX; SSE, AVX and all three for AVX-512; both MPX or both AMX
    bits) completes and XGETBV right after reads the value back; so does XSETBV of every enumerated
    bit at once (SDM Vol. 2C XSETBV, XGETBV; Vol. 1 13.3). XGETBV follows XSETBV with no exit in
    between, so the value read is the one the guest's XSETBV left."""
    accepted, _ = _values(kvm)
    body = "\n".join(f"GUEST_SYNC {i}\n{_load(v)}\nxsetbv\nxor ecx, ecx\nxgetbv\nGUEST_SYNC eax\nGUEST_SYNC edx"
                     for i, v in enumerate(accepted))
    g = _guest(guest, body)
    try:
        got = g.run_to_done()
    except GuestFailure as e:
        v = accepted[len(g.syncs) // 3]
        raise GuestFailure(f"XSETBV of XCR0 = {v:#x} ({describe(v)}), every bit of which the vCPU's CPUID "
                           f"enumerates, expected to complete: {e}") from None
    for i, v in enumerate(accepted):
        marker, low, high = got[3 * i: 3 * i + 3]
        assert marker == i, f"GUEST_SYNC {marker} where the guest's marker {i} for XCR0 = {v:#x} was due"
        read = low | high << 32
        assert read == v, (f"XGETBV after XSETBV of XCR0 = {v:#x} ({describe(v)}) read {read:#x} "
                           f"({describe(read)}); expected the value written")


def test_xsetbv_of_a_component_the_cpuid_does_not_enumerate_raises_gp(kvm, guest):
    """For each XCR0 bit 0-63 that CPUID.(EAX=0DH,ECX=0):EDX:EAX does not enumerate (reserved bits,
    IA32_XSS-only supervisor components such as PT and CET, components KVM does not offer), XSETBV of
    that bit with the components it needs raises #GP(0), and XCR0 keeps the x87|SSE the host set
    (SDM Vol. 2C XSETBV: "#GP(0) ... If the value in EDX:EAX sets bits that are reserved in the XCR
    specified by ECX"; Vol. 1 13.3). Each XSETBV is labelled xcr0_bit_N in failure messages."""
    _, refused = _values(kvm)
    start = XCR0_X87 | XCR0_SSE
    body = "\n".join(f"{_load(v)}\nGUEST_ASSERT_RAISES GP(0), xcr0_bit_{bit}: xsetbv" for bit, v in refused)
    g = _guest(guest, f"{body}\nxor ecx, ecx\nxgetbv\nGUEST_SYNC eax\nGUEST_SYNC edx", xcr0=start)
    low, high = g.run_to_done()
    assert low | high << 32 == start, (f"XGETBV read XCR0 {low | high << 32:#x} after {len(refused)} refused "
                                       f"XSETBVs; expected {start:#x} ({describe(start)}), as the host set it")


# Each rule: the components that must be enumerated, its feature name for the skip, the values it forbids
GROUP_RULES = {
    "avx512-without-avx": (AVX512 | XCR0_AVX, "avx512f", [XCR0_X87 | XCR0_SSE | AVX512]),
    "avx512-partial": (AVX512 | XCR0_AVX, "avx512f",
                       [XCR0_X87 | XCR0_SSE | XCR0_AVX | part for part in range(0x20, 0xE0, 0x20)]),
    "mpx-half": (MPX, "mpx", [XCR0_X87 | XCR0_BNDREGS, XCR0_X87 | XCR0_BNDCSR]),
    "amx-half": (AMX, "amx_tile", [XCR0_X87 | XCR0_TILECFG, XCR0_X87 | XCR0_TILEDATA]),
}


@pytest.mark.parametrize("rule", list(GROUP_RULES))
def test_xsetbv_refuses_part_of_a_component_group(kvm, guest, rule):
    """XSETBV raises #GP(0), and XCR0 keeps the x87|SSE the host set, for AVX-512 without AVX, any
    but all three AVX-512 bits, one MPX bit without the other, one AMX bit without the other, each
    with all its components enumerated (SDM Vol. 1 13.3: "software can enable the XSAVE feature set
    for AVX-512 state only if it does so for all three state components, and only if it also does so
    for AVX state and SSE state"; for MPX "only if it does so for both state components"; Vol. 3A 2.6).
    Where the vCPU's CPUID does not enumerate the group, #GP would come for that reason: skipped.
    x87 clear and AVX without SSE: test_xsave.py."""
    needed, feature, values = GROUP_RULES[rule]
    missing = needed & ~enumerated_xcr0(kvm)
    if missing:
        pytest.skip(f"needs XCR0 components {describe(missing)} in CPUID.0xd.0:EDX:EAX ({feature}), "
                    "which KVM_GET_SUPPORTED_CPUID does not report")
    start = XCR0_X87 | XCR0_SSE
    body = "\n".join(f"{_load(v)}\nGUEST_ASSERT_RAISES GP(0), xcr0_{describe(v).replace('|', '_')}: xsetbv"
                     for v in values)
    g = _guest(guest, f"{body}\nxor ecx, ecx\nxgetbv\nGUEST_SYNC eax\nGUEST_SYNC edx", xcr0=start)
    low, high = g.run_to_done()
    assert low | high << 32 == start, (f"{rule}: XGETBV read XCR0 {low | high << 32:#x} after the refused "
                                       f"XSETBVs; expected {start:#x} ({describe(start)}), as the host set it")


def test_xsetbv_and_xgetbv_without_cr4_osxsave_raise_ud(kvm, guest):
    """With XSAVE in the vCPU's CPUID but CR4.OSXSAVE = 0, XSETBV of a valid value (x87|SSE) and
    XGETBV both raise #UD, and XCR0 stays at its reset value x87 (SDM Vol. 1 13.3: "If this bit is
    0, execution of any of XGETBV, ... and XSETBV causes an invalid-opcode exception (#UD)"; Vol. 2C
    XSETBV, XGETBV)."""
    g = guest(MODE, f"{_load(XCR0_X87 | XCR0_SSE)}\nGUEST_ASSERT_RAISES UD, xsetbv\nxor ecx, ecx\n"
                    "GUEST_ASSERT_RAISES UD, xgetbv\nGUEST_DONE")
    assert not g.vcpu.get_sregs().cr4 & CR4_OSXSAVE, "the long64 guest starts with CR4.OSXSAVE set"
    g.run_to_done()
    xcr0 = g.vcpu.get_xcrs().xcrs[0].value
    assert xcr0 == XCR0_X87, f"KVM_GET_XCRS reads XCR0 {xcr0:#x} ({describe(xcr0)}) after the #UDs; expected x87 (1)"
