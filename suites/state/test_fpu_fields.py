"""Every field of struct kvm_fpu, the XSAVE region of KVM_GET_XSAVE and struct kvm_xcrs, against
the x87/SSE/AVX state the guest left behind or reads (api.rst 4.22 KVM_GET_FPU, 4.42
KVM_GET_XSAVE, 4.44/4.45 KVM_GET/SET_XCRS; SDM Vol. 1 8.1 x87 state, 10.5.1 FXSAVE area,
13.4 XSAVE area, 13.3 XCR0).

The guest runs at CPL3 in 64-bit mode: x87, SSE and AVX instructions there are the processor's
own on every backend, not an instruction emulator's.
"""

import struct

import pytest

from kvmtest import host_cpu
from kvmtest.abi import structs as S
from kvmtest.guest import layout as L
from kvmtest.guest.modes import with_sse_enabled
from kvmtest.x86 import CR4_OSXSAVE

FCW = 0x037B                 # all x87 exceptions masked except zero-divide (bit 2)
MXCSR = 0x3F80               # exceptions masked, rounding toward -inf (RC = 01)
SCRATCH = L.DATA + 0x100     # 16 XMM patterns of 16 bytes, then 16 bytes for the YMM upper half
X87_GUEST = f"""
    mov rbx, {L.DATA:#x}
    fninit
    mov word ptr [rbx], {FCW:#x}
    fldcw word ptr [rbx]
    mov dword ptr [rbx + 0x10], 0
    fldz
    fldpi
    fld1
fdiv_site:
    fdiv dword ptr [rbx + 0x10]
    mov dword ptr [rbx + 4], {MXCSR:#x}
    ldmxcsr dword ptr [rbx + 4]
    mov rbx, {SCRATCH:#x}
""" + "\n".join(f"    movdqu xmm{i}, xmmword ptr [rbx + {16 * i:#x}]" for i in range(16)) + """
    GUEST_SYNC 1
    GUEST_DONE
"""
# 1.0 / 0.0 with ZE unmasked: the exception stays pending, ST(0) keeps 1.0, FSW gets ZE | ES | B
# and TOP = 5 after three loads (SDM Vol. 1 8.1.3, 8.5.3, 8.6), and the x87 instruction and data
# pointers and opcode of the FDIV are saved even by processors that save them only while an
# x87 exception is pending (SDM Vol. 1 8.1.8-8.1.9; APM Vol. 5 FXSAVE).
FSW = 0x8000 | (5 << 11) | 0x80 | 0x4
FTW_ABRIDGED = 0xE0          # physical registers 7, 6, 5 in use (FXSAVE format, SDM Vol. 1 10.5.1.1)
FOP_FDIV_M32_RBX_DISP8 = 0x073   # D8 /6 with ModRM 0x73: the low 3 bits of D8, then ModRM
ST = [bytes.fromhex("0000000000000080ff3f"),      # 1.0
      bytes.fromhex("35c26821a2da0fc90040"),      # pi (the rounded 64-bit significand FLDPI loads)
      bytes(10)]                                  # +0.0


def _xmm_pattern(i):
    return bytes((16 * i + j) ^ 0xA5 for j in range(16))


def _x87_guest(guest):
    g = guest("long64-cpl3", X87_GUEST)
    g.set_sregs(with_sse_enabled(g.vcpu.get_sregs()))   # LDMXCSR, MOVDQU: #UD without CR4.OSFXSR
    g.vm.write(SCRATCH, b"".join(_xmm_pattern(i) for i in range(16)))
    assert g.expect_sync() == 1
    return g


def test_x87_state_the_guest_leaves_is_what_get_fpu_reports(guest):
    """KVM_GET_FPU reports the x87 state the guest left: fcw as FLDCW loaded it, fsw with TOP
    and the pending zero-divide (ZE, ES, B), ftwx in FXSAVE's abridged format, fpr[] = ST(0..2)
    in 80-bit format, and last_opcode, last_ip, last_dp of the FDIV that raised it (api.rst
    4.22; SDM Vol. 1 8.1)."""
    g = _x87_guest(guest)
    f = g.vcpu.get_fpu()
    got = {"fcw": f.fcw, "fsw": f.fsw, "ftwx": f.ftwx, "last_opcode": f.last_opcode, "last_ip": f.last_ip,
           "last_dp": f.last_dp}
    want = {"fcw": FCW, "fsw": FSW, "ftwx": FTW_ABRIDGED, "last_opcode": FOP_FDIV_M32_RBX_DISP8,
            "last_ip": g.labels["fdiv_site"], "last_dp": L.DATA + 0x10}
    assert got == want, f"KVM_GET_FPU x87 fields: {_hex(got)}; the guest left {_hex(want)}"
    regs = [bytes(f.fpr[i])[:10] for i in range(3)]
    assert regs == ST, f"KVM_GET_FPU fpr[0..2] {[r.hex() for r in regs]}; expected ST(0..2) = 1.0, pi, +0.0 " \
                       f"{[r.hex() for r in ST]}"
    g.run_to_done()


def test_xmm_registers_the_guest_loads_are_what_get_fpu_reports(guest):
    """KVM_GET_FPU's xmm[0..15] are the XMM registers as the guest's MOVDQU loaded them (api.rst
    4.22)."""
    g = _x87_guest(guest)
    f = g.vcpu.get_fpu()
    wrong = [i for i in range(16) if bytes(f.xmm[i]) != _xmm_pattern(i)]
    assert not wrong, "KVM_GET_FPU xmm differs from what the guest loaded for XMM" + \
        ", ".join(f"{i}: {bytes(f.xmm[i]).hex()} vs {_xmm_pattern(i).hex()}" for i in wrong)
    g.run_to_done()


def test_mxcsr_the_guest_loads_is_what_get_fpu_reports(guest):
    """KVM_GET_FPU's mxcsr is the MXCSR the guest loaded with LDMXCSR (api.rst 4.22 struct kvm_fpu;
    SDM Vol. 2A LDMXCSR)."""
    g = _x87_guest(guest)
    mxcsr = g.vcpu.get_fpu().mxcsr
    assert mxcsr == MXCSR, f"KVM_GET_FPU mxcsr {mxcsr:#x}; the guest loaded {MXCSR:#x}"
    g.run_to_done()


@pytest.mark.requires_cap("KVM_CAP_XSAVE")
def test_xsave_region_holds_the_guests_legacy_state(guest):
    """KVM_GET_XSAVE's region, and KVM_GET_XSAVE2's where KVM_CAP_XSAVE2 is offered, is the XSAVE
    layout (api.rst 4.42, KVM_GET_XSAVE2) of the state the guest left:
    FCW, FSW, abridged FTW, FOP, the 64-bit FIP and FDP, MXCSR and ST(0..2) at their FXSAVE
    offsets, XMM0-15 from byte 160, and XSTATE_BV (byte 512) marking x87 and SSE as in use
    (SDM Vol. 1 10.5.1 Table 10-2, 13.4.1, 13.4.2)."""
    g = _x87_guest(guest)
    views = [("KVM_GET_XSAVE", bytes(g.vcpu.get_xsave()))]
    if g.kvm.check_extension("KVM_CAP_XSAVE2"):
        views.append(("KVM_GET_XSAVE2", bytes(g.vcpu.get_xsave2(g.kvm.check_extension("KVM_CAP_XSAVE2")))))
    for name, x in views:
        _check_legacy_area(g, name, x)
    g.run_to_done()


def _check_legacy_area(g, name, x):
    fcw, fsw, ftw, fop, fip, fdp, mxcsr = struct.unpack_from("<HHBxHQQI", x, 0)
    got = {"FCW": fcw, "FSW": fsw, "FTW": ftw, "FOP": fop, "FIP": fip, "FDP": fdp, "MXCSR": mxcsr}
    want = {"FCW": FCW, "FSW": FSW, "FTW": FTW_ABRIDGED, "FOP": FOP_FDIV_M32_RBX_DISP8, "FIP": g.labels["fdiv_site"],
            "FDP": L.DATA + 0x10, "MXCSR": MXCSR}
    assert got == want, f"{name} legacy area: {_hex(got)}; the guest left {_hex(want)}"
    regs = [x[32 + 16 * i: 42 + 16 * i] for i in range(3)]
    assert regs == ST, f"{name} ST(0..2) {[r.hex() for r in regs]}; expected {[r.hex() for r in ST]}"
    wrong = [i for i in range(16) if x[160 + 16 * i: 176 + 16 * i] != _xmm_pattern(i)]
    assert not wrong, f"{name} XMM{wrong} differ from what the guest loaded"
    xstate_bv = struct.unpack_from("<Q", x, 512)[0]
    assert xstate_bv & 0x3 == 0x3, f"{name} XSTATE_BV {xstate_bv:#x}: x87 (bit 0) and SSE (bit 1) should be in use"


def _enable_avx(g, xcr0=0x7):
    sregs = g.vcpu.get_sregs()
    sregs.cr4 |= CR4_OSXSAVE
    g.set_sregs(sregs)
    xcrs = S.kvm_xcrs(nr_xcrs=1)
    xcrs.xcrs[0].xcr, xcrs.xcrs[0].value = 0, xcr0
    g.vcpu.set_xcrs(xcrs)


@pytest.mark.requires_cap("KVM_CAP_XCRS")
@pytest.mark.requires_cpu("avx")
def test_ymm_upper_halves_land_where_cpuid_places_the_avx_component(guest):
    """With XCR0 = x87|SSE|AVX (set with KVM_SET_XCRS) and CR4.OSXSAVE, the upper half of YMM3
    the guest loads is in KVM_GET_XSAVE's region at the AVX component's offset, which the host
    CPU's own CPUID.(EAX=0DH,ECX=2):EBX gives, + 3 * 16, with XSTATE_BV bit 2 set (SDM Vol. 1
    13.4.3 standard format, 13.2 CPUID leaf 0DH; api.rst 4.42)."""
    upper = bytes(range(0xC0, 0xD0))
    g = guest("long64-cpl3", f"mov rbx, {SCRATCH:#x}\nvmovdqu ymm3, ymmword ptr [rbx]\nGUEST_SYNC 1\nGUEST_DONE")
    g.vm.write(SCRATCH, _xmm_pattern(3) + upper)
    _enable_avx(g)
    assert g.expect_sync() == 1
    offset = host_cpu.cpuid(0xD, 2)[1]
    x = bytes(g.vcpu.get_xsave())
    assert x[160 + 48: 176 + 48] == _xmm_pattern(3), "XMM3 (the lower half of YMM3) not at byte 208"
    assert x[offset + 48: offset + 64] == upper, \
        f"YMM3[255:128] not at AVX offset {offset} + 48 of KVM_GET_XSAVE: {x[offset + 48: offset + 64].hex()}"
    assert struct.unpack_from("<Q", x, 512)[0] & 0x4, "XSTATE_BV bit 2 (AVX) clear although YMM3's upper half is set"
    g.run_to_done()


@pytest.mark.requires_cap("KVM_CAP_XCRS")
@pytest.mark.requires_cpu("xsave")
def test_xcr0_set_by_the_host_is_what_xgetbv_reads(guest):
    """XCR0 written with KVM_SET_XCRS (api.rst 4.45) is what the guest's XGETBV with ECX = 0 reads
    (SDM Vol. 2C XGETBV; allowed at any CPL once CR4.OSXSAVE is set)."""
    g = guest("long64-cpl3", "xor ecx, ecx\nxgetbv\nGUEST_SYNC rax\nGUEST_DONE")
    _enable_avx(g, xcr0=0x3)
    assert g.run_to_done() == [0x3], "the guest's XGETBV does not read the XCR0 KVM_SET_XCRS wrote"


@pytest.mark.requires_cap("KVM_CAP_XCRS")
@pytest.mark.requires_cpu("xsave")
def test_xcr0_the_guest_sets_is_what_get_xcrs_reports(guest):
    """XSETBV of XCR0 by the guest (CPL0, CR4.OSXSAVE set) is what KVM_GET_XCRS reports: one entry
    (nr_xcrs = 1) for XCR 0 with the value written, flags 0 (no flag is defined), and the
    guest's XGETBV reads it back (api.rst 4.44; SDM Vol. 2C XSETBV, Vol. 1 13.3)."""
    g = guest("long64", "xor ecx, ecx\nmov eax, 0x3\nxor edx, edx\nxsetbv\nGUEST_SYNC 1\nxgetbv\nGUEST_SYNC rax\n"
                        "GUEST_DONE")
    _enable_avx(g, xcr0=0x1)
    assert g.expect_sync() == 1
    xcrs = g.vcpu.get_xcrs()
    got = (xcrs.nr_xcrs, xcrs.flags, xcrs.xcrs[0].xcr, xcrs.xcrs[0].value)
    assert got == (1, 0, 0, 0x3), f"KVM_GET_XCRS (nr_xcrs, flags, xcr, value) = {got} after the guest's XSETBV of 3"
    assert g.run_to_done() == [0x3]


def _hex(d):
    return "{" + ", ".join(f"{k}: {v:#x}" for k, v in d.items()) + "}"
