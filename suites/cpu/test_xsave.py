"""XSETBV and XGETBV: which XCR0 values the guest may set, and who may set them (kvm-unit-tests
xsave).

SDM Vol. 2C XSETBV: #UD if CPUID.01H:ECX.XSAVE[26] = 0 or CR4.OSXSAVE = 0; #GP(0) if CPL > 0, if
ECX names an XCR other than XCR0, if a reserved or unsupported bit of XCR0 is set (bit i where
CPUID.(EAX=0DH,ECX=0):EDX:EAX[i] = 0), if XCR0[0] (x87) would be 0, or if XCR0[2] (AVX) would be 1
while XCR0[1] (SSE) is 0 (SDM Vol. 1 13.3). XGETBV reads what XSETBV wrote. The vCPU's CPUID is KVM's
supported table (KVM_SET_CPUID2), so "supported" is what KVM_GET_SUPPORTED_CPUID reports in leaf 0DH.
CPUID.01H:ECX.OSXSAVE following CR4.OSXSAVE is checked in test_cpuid.py.
"""

import pytest

from kvmtest import forced_emulation
from kvmtest.cpuid import FEATURES, find_entry, set_feature
from kvmtest.guest import layout as L
from kvmtest.x86 import CR4_OSXSAVE, XCR0_AVX, XCR0_SSE, XCR0_X87

GUEST_MODES = ["real", "long64", "compat32"]


def _supported_xcr0(kvm) -> int:
    """XCR0 bits KVM offers: KVM_GET_SUPPORTED_CPUID leaf 0DH.0, EDX:EAX."""
    e = find_entry(kvm.supported_cpuid(), 0xD, 0)
    return 0 if e is None or (e.function, e.index) != (0xD, 0) else e.edx << 32 | e.eax


def _load(value: int, xcr: int = 0) -> str:
    """ECX = `xcr`, EDX:EAX = `value`: XSETBV's operands."""
    return f"mov ecx, {xcr:#x}\nmov eax, {value & 0xFFFFFFFF:#x}\nmov edx, {value >> 32:#x}"


def _require_xsave(kvm):
    if not kvm.has_feature("xsave"):
        pytest.skip(f"needs {FEATURES['xsave']}, which KVM_GET_SUPPORTED_CPUID does not report")


def _with_osxsave(g):
    sregs = g.vcpu.get_sregs()
    sregs.cr4 |= CR4_OSXSAVE
    g.set_sregs(sregs)
    return g


@pytest.mark.modes(*GUEST_MODES)
def test_xsetbv_without_xsave_raises_ud(kvm, guest, mode):
    """With XSAVE cleared from the vCPU's CPUID (so CR4.OSXSAVE cannot be set either), XSETBV of
    x87|SSE raises #UD and XCR0 stays at its reset value x87 (SDM Vol. 2C XSETBV; Vol. 1 13.3)."""
    g = guest(mode, f"{_load(XCR0_X87 | XCR0_SSE)}\nGUEST_ASSERT_RAISES UD, xsetbv\nGUEST_DONE")
    table = kvm.supported_cpuid_copy()
    set_feature(table, "xsave", False)
    g.vcpu.set_cpuid(table)
    g.run_to_done()
    xcr0 = g.vcpu.get_xcrs().xcrs[0].value
    assert xcr0 == XCR0_X87, f"KVM_GET_XCRS reads XCR0 {xcr0:#x} after the refused XSETBV, expected x87 (1)"


def _valid_values(kvm):
    supported = _supported_xcr0(kvm)
    values = [XCR0_X87, XCR0_X87 | XCR0_SSE]
    if supported & XCR0_AVX:
        values.append(XCR0_X87 | XCR0_SSE | XCR0_AVX)
    return values


@pytest.mark.modes(*GUEST_MODES)
def test_xsetbv_sets_supported_xcr0_values(kvm, guest, mode):
    """With CR4.OSXSAVE = 1, XSETBV of x87, x87|SSE (and x87|SSE|AVX where supported) completes;
    XGETBV in the guest and KVM_GET_XCRS on the host both read the value back (SDM Vol. 2C XSETBV,
    XGETBV; api.rst 4.43 KVM_GET_XCRS)."""
    _require_xsave(kvm)
    values = _valid_values(kvm)
    body = "\n".join(f"{_load(v)}\nxsetbv\nxor ecx, ecx\nxgetbv\nGUEST_SYNC eax\nGUEST_SYNC edx" for v in values)
    g = _with_osxsave(guest(mode, body + "\nGUEST_DONE"))
    got = g.run_to_done()
    read = [got[i] | got[i + 1] << 32 for i in range(0, len(got), 2)]
    assert read == values, f"XGETBV after XSETBV of {[hex(v) for v in values]} read {[hex(v) for v in read]}"
    host = g.vcpu.get_xcrs().xcrs[0].value
    assert host == values[-1], f"KVM_GET_XCRS reads XCR0 {host:#x}; the guest's last XSETBV wrote {values[-1]:#x}"


def _invalid_values(kvm):
    supported = _supported_xcr0(kvm)
    cases = {"zero": 0, "sse-without-x87": XCR0_SSE, "reserved-bit-63": XCR0_X87 | 1 << 63}
    unsupported = next((1 << b for b in range(2, 63) if not supported >> b & 1), None)
    if unsupported is not None:
        cases["unsupported-bit"] = XCR0_X87 | XCR0_SSE | unsupported
    if supported & XCR0_AVX:
        cases["avx-without-sse"] = XCR0_X87 | XCR0_AVX
    return cases


INVALID = ["zero", "sse-without-x87", "reserved-bit-63", "unsupported-bit", "avx-without-sse"]


@pytest.mark.modes(*GUEST_MODES)
@pytest.mark.parametrize("value_name", INVALID)
def test_xsetbv_of_an_invalid_xcr0_raises_gp(kvm, guest, mode, value_name):
    """XSETBV of XCR0 = 0 (x87 clear), SSE without x87, a reserved bit, a component the vCPU's
    CPUID leaf 0DH does not report, or AVX without SSE raises #GP(0), and XCR0 keeps its value
    (SDM Vol. 2C XSETBV, Vol. 1 13.3)."""
    _require_xsave(kvm)
    value = _invalid_values(kvm).get(value_name)
    if value is None:
        pytest.skip(f"{value_name}: KVM offers every XCR0 bit, or no AVX, so there is no such value")
    good = XCR0_X87 | XCR0_SSE
    g = _with_osxsave(guest(mode, f"{_load(good)}\nxsetbv\n{_load(value)}\n"
                                       "GUEST_ASSERT_RAISES GP(0), xsetbv\nxor ecx, ecx\nxgetbv\nGUEST_SYNC eax\n"
                                       "GUEST_DONE"))
    (xcr0,) = g.run_to_done()
    assert xcr0 == good, f"XCR0 {xcr0:#x} after the refused XSETBV of {value:#x}; it was {good:#x}"


@pytest.mark.modes(*GUEST_MODES)
@pytest.mark.parametrize("xcr", [1, 2, 0x80000000])
def test_xsetbv_and_xgetbv_of_another_xcr_raise_gp(kvm, guest, mode, xcr):
    """XSETBV with ECX naming an XCR other than XCR0 raises #GP(0), and so does XGETBV for an XCR
    the processor does not have (ECX = 2 or 0x80000000; ECX = 1 is XINUSE where XGETBV supports it)
    (SDM Vol. 2C XSETBV, XGETBV)."""
    _require_xsave(kvm)
    g = guest(mode, f"{_load(XCR0_X87 | XCR0_SSE, xcr)}\nGUEST_ASSERT_RAISES GP(0), xsetbv\n"
                    + ("" if xcr == 1 else f"mov ecx, {xcr:#x}\nGUEST_ASSERT_RAISES GP(0), xgetbv\n") + "GUEST_DONE")
    _with_osxsave(g).run_to_done()


@pytest.mark.modes("long64-cpl3", "compat32-cpl3")
def test_xsetbv_at_cpl3_raises_gp(kvm, guest, mode):
    """XSETBV at CPL3 raises #GP(0) even with a valid value and CR4.OSXSAVE = 1, while XGETBV
    works there (SDM Vol. 2C XSETBV: "#GP(0) If the current privilege level is not 0")."""
    _require_xsave(kvm)
    g = guest(mode, f"{_load(XCR0_X87 | XCR0_SSE)}\nGUEST_ASSERT_RAISES GP(0), xsetbv\n"
                    "xor ecx, ecx\nxgetbv\nGUEST_SYNC eax\nGUEST_DONE")
    g = _with_osxsave(g)
    xcrs = g.vcpu.get_xcrs()
    xcrs.nr_xcrs, xcrs.xcrs[0].xcr, xcrs.xcrs[0].value = 1, 0, XCR0_X87
    g.vcpu.set_xcrs(xcrs)
    (xcr0,) = g.run_to_done()
    assert xcr0 == XCR0_X87, f"XGETBV at CPL3 read {xcr0:#x} after the refused XSETBV; XCR0 was x87 (1)"


@pytest.mark.modes("long64")
def test_xsetbv_and_xgetbv_ignore_rcx_bits_63_to_32(kvm, guest, mode):
    """In 64-bit mode XSETBV and XGETBV take the XCR number from ECX: RCX[63:32] are ignored, so
    RCX = 0xA5A5A5A5_00000000 names XCR0 (SDM Vol. 2C XSETBV, XGETBV; kvm-unit-tests xsave's
    aliased-XCR0 check)."""
    _require_xsave(kvm)
    g = _with_osxsave(guest(mode, f"""
        mov rcx, 0xa5a5a5a500000000
        mov eax, {XCR0_X87 | XCR0_SSE:#x}
        xor edx, edx
        xsetbv
        xor eax, eax
        mov rcx, 0x5a5a5a5a00000000
        xgetbv
        GUEST_SYNC rax
        GUEST_DONE"""))
    assert g.run_to_done() == [XCR0_X87 | XCR0_SSE], "XGETBV with RCX[63:32] set did not read XCR0"
    assert g.vcpu.get_xcrs().xcrs[0].value == XCR0_X87 | XCR0_SSE, "KVM_GET_XCRS: XCR0 is not what XSETBV wrote"


@pytest.mark.modes("long64")
@pytest.mark.parametrize("path", ["direct", "fep"])
def test_avx_moves_with_ymm_state_enabled(kvm, guest, mode, path):
    """With XCR0 = x87|SSE|AVX (set by the guest's XSETBV) and CR4.OSXSAVE = 1, VMOVDQA loads 32
    bytes into YMM1, VMOVDQA copies it to YMM2 and VMOVNTDQ and VMOVDQA store all 32 bytes (SDM Vol.
    2B VMOVDQA, MOVNTDQ; Vol. 1 13.3); through KVM's emulator with the forced-emulation prefix where
    allowed (kvm-unit-tests xsave, its VMOVDQA checks)."""
    _require_xsave(kvm)
    if not kvm.has_feature("avx") or not _supported_xcr0(kvm) & XCR0_AVX:
        pytest.skip(f"needs {FEATURES['avx']} and XCR0.AVX, which KVM does not offer")
    if path == "fep" and not forced_emulation.enabled():
        pytest.skip(forced_emulation.SKIP_REASON)
    fep = forced_emulation.FEP + "\n" if path == "fep" else ""
    g = _with_osxsave(guest(mode, f"""
        {_load(XCR0_X87 | XCR0_SSE | XCR0_AVX)}
        xsetbv
        mov rbx, {L.DATA:#x}
        {fep}vmovdqa ymm1, ymmword ptr [rbx]
        {fep}vmovdqa ymm2, ymm1
        {fep}vmovntdq ymmword ptr [rbx + 0x20], ymm2
        vmovdqa ymmword ptr [rbx + 0x40], ymm2
        GUEST_DONE"""))
    pattern = bytes(range(0x80, 0xA0))
    g.vm.write(L.DATA, pattern + bytes(0x40))
    g.run_to_done()
    stored = g.vm.read(L.DATA + 0x20, 0x40)
    assert stored == pattern * 2, f"VMOVNTDQ and VMOVDQA stored {stored.hex()}, expected {pattern.hex()} twice"
