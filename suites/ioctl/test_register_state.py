"""Set/get round trips of vCPU state, and the special-register states KVM_SET_SREGS refuses."""

import errno

import pytest

from kvmtest.abi import constants as C
from kvmtest.abi import structs as S
from kvmtest.abi.constants import errno_name
from kvmtest.guest.mode_select import select
from kvmtest.guest.modes import get_mode, mode_sregs, with_sse_enabled
from kvmtest.x86 import (
    APIC_BASE_EN,
    APIC_BASE_EXTD,
    CR0_CD,
    CR0_NW,
    CR0_PE,
    CR0_PG,
    CR4_PAE,
    EFER_LMA,
    EFER_LME,
    MSR_IA32_EFER,
)

GPRS = [name for name, *_ in S.kvm_regs._fields_ if name not in ("rip", "rflags")]
SEGMENT_FIELDS = [name for name, *_ in S.kvm_segment._fields_ if name not in ("padding", "unusable")]


def _segments_equal(a, b):
    return [(f, getattr(a, f), getattr(b, f)) for f in SEGMENT_FIELDS if getattr(a, f) != getattr(b, f)]


def test_regs_round_trip(vm):
    """KVM_SET_REGS then KVM_GET_REGS returns every general register as written (api.rst 4.11, 4.12)."""
    vcpu = vm.create_vcpu()
    regs = S.kvm_regs(**{name: 0x1111111111111111 * (i + 1) & (2**64 - 1) for i, name in enumerate(GPRS)})
    regs.rip, regs.rflags = 0xFFF0, 0x202
    vcpu.set_regs(regs)
    got = vcpu.get_regs()
    wrong = [f"{n}: wrote {getattr(regs, n):#x}, read {getattr(got, n):#x}" for n, *_ in S.kvm_regs._fields_
             if getattr(regs, n) != getattr(got, n)]
    assert not wrong, "KVM_GET_REGS after KVM_SET_REGS: " + "; ".join(wrong)


def _vcpu_with_cpuid(vm):
    """A vCPU with KVM's supported CPUID set, as a VMM sets it before any other state: KVM checks CR4 and
    EFER against the vCPU's CPUID (EFER.LME needs LM, EFER.NXE needs NX; SDM Vol. 3A 2.2.1), newer
    kernels at KVM_SET_SREGS too (Debian's 6.12 refused the long-mode and NX states of a vCPU without
    one with EINVAL, where its 6.1 took them)."""
    vcpu = vm.create_vcpu()
    vcpu.set_cpuid(vm.kvm.cached_supported_cpuid())
    return vcpu


@pytest.mark.modes(*select(cpl=0) + select(cpl=3, code_bits=64) + select(cpl=3, paging=False))
def test_sregs_round_trip(vm, mode):
    """KVM_SET_SREGS then KVM_GET_SREGS returns the segments, descriptor tables, CR0, CR3, CR4
    and EFER as written, for each valid CPU-mode state (api.rst 4.13, 4.14; SDM Vol. 3A 2.5)."""
    vcpu = _vcpu_with_cpuid(vm)
    want = mode_sregs(get_mode(mode), vcpu.get_sregs(), cr3=0x20000, nx=True)
    vcpu.set_sregs(want)
    got = vcpu.get_sregs()
    wrong = []
    for seg in S.SEGMENT_NAMES:
        wrong += [f"{seg}.{f}: wrote {a:#x}, read {b:#x}" for f, a, b in _segments_equal(getattr(want, seg),
                                                                                          getattr(got, seg))]
    for name in ("cr0", "cr3", "cr4", "efer"):
        if getattr(want, name) != getattr(got, name):
            wrong.append(f"{name}: wrote {getattr(want, name):#x}, read {getattr(got, name):#x}")
    for table in ("gdt", "idt"):
        w, g = getattr(want, table), getattr(got, table)
        if (w.base, w.limit) != (g.base, g.limit):
            wrong.append(f"{table}: wrote {w.base:#x}/{w.limit:#x}, read {g.base:#x}/{g.limit:#x}")
    assert not wrong, f"KVM_GET_SREGS after KVM_SET_SREGS ({mode}): " + "; ".join(wrong)


def _long_mode_sregs(vcpu):
    return mode_sregs(get_mode("long64"), vcpu.get_sregs(), cr3=0x20000)


REFUSED = {
    "cr0-pg-without-pe": lambda s: setattr(s, "cr0", (s.cr0 | CR0_PG) & ~CR0_PE),
    "cr0-nw-without-cd": lambda s: setattr(s, "cr0", (s.cr0 | CR0_NW) & ~CR0_CD),
    "cr0-high-bits": lambda s: setattr(s, "cr0", s.cr0 | (1 << 32)),
    "cr4-reserved-bit": lambda s: setattr(s, "cr4", s.cr4 | (1 << 63)),
    "long-mode-without-pae": lambda s: setattr(s, "cr4", s.cr4 & ~CR4_PAE),
    "lma-without-paging": lambda s: setattr(s, "cr0", s.cr0 & ~CR0_PG),
    "lme-pg-without-lma": lambda s: setattr(s, "efer", (s.efer | EFER_LME) & ~EFER_LMA),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_set_sregs_refuses_invalid_state_and_changes_nothing(vm, case):
    """KVM_SET_SREGS refuses special-register combinations the SDM forbids (SDM Vol. 3A 2.5:
    PG without PE, NW without CD, CR0[63:32], reserved CR4/EFER bits; 10.8.5 and 2.2.1: IA-32e
    mode needs CR4.PAE, CR0.PG and EFER.LMA together) with EINVAL, and leaves the vCPU's
    special registers as they were (selftests set_sregs_test)."""
    vcpu = _vcpu_with_cpuid(vm)
    good = _long_mode_sregs(vcpu)
    vcpu.set_sregs(good)
    before = bytes(vcpu.get_sregs())
    bad = _long_mode_sregs(vcpu)
    REFUSED[case](bad)
    err = vcpu.try_set_sregs(bad)
    assert err == errno.EINVAL, f"KVM_SET_SREGS ({case}): expected EINVAL, got {errno_name(err)}"
    assert bytes(vcpu.get_sregs()) == before, f"KVM_SET_SREGS ({case}) failed but changed the special registers"


def test_apic_base_x2apic_without_xapic_is_refused(vm):
    """IA32_APIC_BASE with EXTD (bit 10) set and EN (bit 11) clear is an invalid APIC state
    (SDM Vol. 3A 11.12.5 Figure 11-27), so KVM_SET_SREGS refuses it; EN alone is valid
    (selftests set_sregs_test)."""
    vm.create_irqchip()
    vcpu = vm.create_vcpu()
    s = vcpu.get_sregs()
    base = s.apic_base & ~(APIC_BASE_EN | APIC_BASE_EXTD)
    s.apic_base = base | APIC_BASE_EXTD
    err = vcpu.try_set_sregs(s)
    assert err == errno.EINVAL, f"KVM_SET_SREGS apic_base EXTD without EN: expected EINVAL, got {errno_name(err)}"
    s.apic_base = base | APIC_BASE_EN
    vcpu.set_sregs(s)
    assert vcpu.get_sregs().apic_base & (APIC_BASE_EN | APIC_BASE_EXTD) == APIC_BASE_EN


def test_efer_reserved_bit_is_refused_by_set_msrs(vm):
    """KVM_SET_MSRS stops at an MSR it cannot set, "e.g., due to setting reserved bits", and
    returns how many it set (api.rst 4.19): IA32_EFER with bit 63 (reserved, SDM Vol. 3A 2.2.1)
    sets 0 MSRs and EFER keeps its value."""
    vcpu = vm.create_vcpu()
    vcpu.set_cpuid(vm.kvm.cached_supported_cpuid())
    before = vcpu.get_msr(MSR_IA32_EFER)
    assert vcpu.set_msrs({MSR_IA32_EFER: before | (1 << 63)}) == 0, "KVM_SET_MSRS accepted EFER bit 63"
    assert vcpu.get_msr(MSR_IA32_EFER) == before


def _fpu_with_pattern(vcpu):
    fpu = vcpu.get_fpu()
    fpu.fcw = 0x037A
    for i in range(16):
        for j in range(16):
            fpu.xmm[i][j] = (i * 16 + j) & 0xFF
    return fpu


def test_fpu_round_trip(vm):
    """KVM_SET_FPU then KVM_GET_FPU returns FCW and the XMM registers as written (api.rst
    4.22, 4.23)."""
    vcpu = vm.create_vcpu()
    vcpu.set_fpu(_fpu_with_pattern(vcpu))
    got = vcpu.get_fpu()
    assert got.fcw == 0x037A, f"fcw read back {got.fcw:#x}, wrote 0x37a"
    assert bytes(got.xmm[15]) == bytes((240 + j) for j in range(16)), "XMM15 not as written"


def test_fpu_reports_the_power_up_mxcsr(vm):
    """struct kvm_fpu carries MXCSR (api.rst 4.22): KVM_GET_FPU on a fresh vCPU reports the
    power-up value 0x1F80 (SDM Vol. 1 10.2.3.1; Vol. 3A table "IA-32 and Intel 64 Processor States
    Following Power-up, Reset, or INIT"), the value KVM_GET_XSAVE shows at byte 24."""
    vcpu = vm.create_vcpu()
    xsave_mxcsr = int.from_bytes(bytes(vcpu.get_xsave())[24:28], "little")
    fresh = vcpu.get_fpu().mxcsr
    assert fresh == 0x1F80 == xsave_mxcsr, \
        f"MXCSR of a fresh vCPU: KVM_GET_FPU {fresh:#x}, KVM_GET_XSAVE {xsave_mxcsr:#x}, expected 0x1f80 from both"


def test_fpu_mxcsr_round_trip(vm):
    """KVM_SET_FPU writes MXCSR and KVM_GET_FPU reads it back (api.rst 4.22, 4.23)."""
    vcpu = vm.create_vcpu()
    fpu = vcpu.get_fpu()
    fpu.mxcsr = 0x1F00
    vcpu.set_fpu(fpu)
    assert vcpu.get_fpu().mxcsr == 0x1F00, f"KVM_GET_FPU after KVM_SET_FPU mxcsr=0x1f00: {vcpu.get_fpu().mxcsr:#x}"


def test_fpu_state_set_by_the_host_is_what_the_guest_runs_with(guest):
    """KVM_SET_FPU "writes the floating point state to the vcpu" (api.rst 4.23): a guest run
    afterwards reads the FCW (FNSTCW) and XMM1 (MOVQ) the host wrote. Runs at CPL3, where these
    instructions need no emulation on any backend, with SSE enabled as the SDM requires."""
    g = guest("long64-cpl3", "mov rbx, DATA\nfnstcw word ptr [rbx]\nmovq rax, xmm1\nGUEST_SYNC rax\nGUEST_DONE")
    g.set_sregs(with_sse_enabled(g.vcpu.get_sregs()))
    g.vcpu.set_fpu(_fpu_with_pattern(g.vcpu))
    (xmm1_low,) = g.run_to_done()
    fcw = g.vm.read_u32(g.symbols["DATA"]) & 0xFFFF
    assert (fcw, xmm1_low) == (0x037A, 0x1716151413121110), \
        f"guest saw FCW {fcw:#x} and XMM1[63:0] {xmm1_low:#x}; host wrote 0x37a and 0x1716151413121110"


@pytest.mark.requires_cap("KVM_CAP_XSAVE")
def test_xsave_round_trip(vm):
    """KVM_SET_XSAVE then KVM_GET_XSAVE returns the region as written: XMM0 at byte 160 of
    the legacy area, with XSTATE_BV (byte 512) marking x87 and SSE in use, since a component
    whose XSTATE_BV bit is clear is in its initial state (api.rst 4.42, 4.43; SDM Vol. 1
    13.4.1, 13.4.2)."""
    vcpu = vm.create_vcpu()
    vcpu.set_cpuid(vm.kvm.cached_supported_cpuid())
    raw = bytearray(bytes(vcpu.get_xsave()))
    raw[160:176] = bytes(range(0xA0, 0xB0))
    raw[512] |= 0x3
    vcpu.set_xsave(S.kvm_xsave.from_buffer_copy(raw))
    back = bytes(vcpu.get_xsave())
    assert back[160:176] == bytes(range(0xA0, 0xB0)) and back[512] & 0x3 == 0x3, \
        f"XMM0 read back {back[160:176].hex()}, XSTATE_BV {back[512]:#x}"


@pytest.mark.requires_cap("KVM_CAP_XSAVE")
def test_xsave_state_set_by_the_host_is_what_the_guest_runs_with(guest):
    """State written with KVM_SET_XSAVE is the guest's (api.rst 4.43): a CPL3 guest reads
    XMM1 as the host wrote it (SSE enabled in CR0/CR4 as the SDM requires)."""
    g = guest("long64-cpl3", "movq rax, xmm1\nGUEST_SYNC rax\nGUEST_DONE")
    g.set_sregs(with_sse_enabled(g.vcpu.get_sregs()))
    raw = bytearray(bytes(g.vcpu.get_xsave()))
    raw[176:192] = bytes(range(1, 17))
    raw[512] |= 0x3
    g.vcpu.set_xsave(S.kvm_xsave.from_buffer_copy(raw))
    assert g.run_to_done() == [0x0807060504030201]


@pytest.mark.requires_cap("KVM_CAP_XCRS")
def test_xcr0_round_trip_and_fp_bit_required(vm):
    """KVM_SET_XCRS writes XCR0 (api.rst 4.45); XCR0 without bit 0 (x87) is invalid
    (SDM Vol. 1 13.3: XCR0[0] must be 1) and is refused, leaving XCR0 unchanged."""
    vcpu = vm.create_vcpu()
    vcpu.set_cpuid(vm.kvm.cached_supported_cpuid())
    xcrs = S.kvm_xcrs(nr_xcrs=1)
    xcrs.xcrs[0].xcr, xcrs.xcrs[0].value = 0, 0x3
    vcpu.set_xcrs(xcrs)
    assert vcpu.get_xcrs().xcrs[0].value == 0x3
    xcrs.xcrs[0].value = 0x2
    err = vcpu.try_set_xcrs(xcrs)
    assert err == errno.EINVAL, f"KVM_SET_XCRS XCR0=0x2: expected EINVAL, got {errno_name(err)}"
    assert vcpu.get_xcrs().xcrs[0].value == 0x3


@pytest.mark.requires_cap("KVM_CAP_DEBUGREGS")
def test_debugregs_round_trip(vm):
    """KVM_SET_DEBUGREGS then KVM_GET_DEBUGREGS returns DR0-3 and DR7 as written (api.rst 4.33, 4.34)."""
    vcpu = vm.create_vcpu()
    dbg = vcpu.get_debugregs()
    dbg.db[:] = [0x1000, 0x2000, 0x3000, 0x4000]
    dbg.dr7 = 0x400 | 0x3  # reserved bit 10 reads as 1; L0|G0
    vcpu.set_debugregs(dbg)
    got = vcpu.get_debugregs()
    assert list(got.db) == [0x1000, 0x2000, 0x3000, 0x4000] and got.dr7 == 0x403, \
        f"read back db={[hex(x) for x in got.db]} dr7={got.dr7:#x}"


@pytest.mark.requires_cap("KVM_CAP_VCPU_EVENTS")
def test_vcpu_events_round_trip_nmi_masked(vm):
    """KVM_SET_VCPU_EVENTS then KVM_GET_VCPU_EVENTS keeps nmi.masked (api.rst 4.31, 4.32)."""
    vcpu = vm.create_vcpu()
    ev = vcpu.get_events()
    ev.nmi.masked = 1
    ev.flags = 0
    vcpu.set_events(ev)
    assert vcpu.get_events().nmi.masked == 1


@pytest.mark.requires_cap("KVM_CAP_MP_STATE")
def test_mp_state_with_irqchip(vm):
    """With an in-kernel irqchip the BSP starts RUNNABLE and an AP UNINITIALIZED (waiting for
    INIT); KVM_SET_MP_STATE is read back (api.rst 4.38, 4.39)."""
    vm.create_irqchip()
    bsp, ap = vm.create_vcpu(0), vm.create_vcpu(1)
    assert bsp.get_mp_state() == C.KVM_MP_STATE_RUNNABLE, C.MP_STATE_NAMES.name(bsp.get_mp_state())
    assert ap.get_mp_state() == C.KVM_MP_STATE_UNINITIALIZED, C.MP_STATE_NAMES.name(ap.get_mp_state())
    bsp.set_mp_state(C.KVM_MP_STATE_HALTED)
    assert bsp.get_mp_state() == C.KVM_MP_STATE_HALTED, C.MP_STATE_NAMES.name(bsp.get_mp_state())


def test_translate_with_paging_off_is_identity(vm):
    """KVM_TRANSLATE translates by the vCPU's current mode (api.rst 4.15): in real mode an
    address maps to itself (kvm-ioctls test_translate_gva)."""
    vcpu = vm.create_vcpu()
    tr = vcpu.translate(0x10000)
    assert tr.valid == 1 and tr.physical_address == 0x10000, f"{tr}"
