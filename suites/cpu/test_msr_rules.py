"""Guest RDMSR/WRMSR rules of architectural MSRs: power-up values, writable and read-only bits,
canonical addresses, MSRs that exist only with a CPUID feature, the 64-bit MSRs from 32-bit code,
the x2APIC range outside x2APIC mode, and MSR state that stays with its vCPU (SDM Vol. 4 Table
2-2 for each MSR; Vol. 2B RDMSR/WRMSR: #GP(0) for an MSR the processor does not implement, a
reserved bit or a non-canonical address; selftests msrs_test, kvm-unit-tests msr.c)."""

import pytest

from kvmtest import forced_emulation
from kvmtest.cpuid import FEATURES, set_feature, vendor
from kvmtest.guest.fault_probe import (
    expect_fault_at_probe,
    fault_probe_source,
    install_fault_probe,
    probe_outcome,
)
from kvmtest.guest.msr_source import load_msr, wrmsr
from kvmtest.msr_names import msr_name
from kvmtest.x86 import (
    GP_VECTOR,
    MSR_IA32_CSTAR,
    MSR_IA32_FLUSH_CMD,
    MSR_IA32_FMASK,
    MSR_IA32_FS_BASE,
    MSR_IA32_GS_BASE,
    MSR_IA32_INTERRUPT_SSP_TABLE_ADDR,
    MSR_IA32_KERNEL_GS_BASE,
    MSR_IA32_LSTAR,
    MSR_IA32_MISC_ENABLE,
    MSR_IA32_PAT,
    MSR_IA32_PL0_SSP,
    MSR_IA32_PL1_SSP,
    MSR_IA32_PL2_SSP,
    MSR_IA32_PL3_SSP,
    MSR_IA32_S_CET,
    MSR_IA32_STAR,
    MSR_IA32_SYSENTER_CS,
    MSR_IA32_SYSENTER_ESP,
    MSR_IA32_TSC_AUX,
    MSR_IA32_U_CET,
    PAT_POWER_UP,
)

MISC_BTS_UNAVAILABLE = 1 << 11        # IA32_MISC_ENABLE, SDM Vol. 4 Table 2-2
MISC_PEBS_UNAVAILABLE = 1 << 12
MISC_READ_ONLY = 1 << 7 | MISC_BTS_UNAVAILABLE | MISC_PEBS_UNAVAILABLE
# R/W: fast strings (0), automatic thermal control (3), EIST (16), MONITOR FSM (18), limit CPUID
# maxval (22), xTPR message disable (23), XD bit disable (34).
MISC_READ_WRITE = sum(1 << b for b in (0, 3, 16, 18, 22, 23, 34))
CANONICAL = 0x0000123456789000        # canonical with 48- and 57-bit linear addresses, page aligned
NONCANONICAL = 0xAAAA5555AAAA5555     # bits 63:47 (63:56) are not copies of bit 47 (56)
ADDRESS_MSRS = [MSR_IA32_FS_BASE, MSR_IA32_GS_BASE, MSR_IA32_KERNEL_GS_BASE, MSR_IA32_LSTAR, MSR_IA32_CSTAR]


def _rd(msr: int) -> str:
    """RDMSR `msr`, then GUEST_SYNC EAX and EDX (works in 32- and 64-bit code)."""
    return f"mov ecx, {msr:#x}\nrdmsr\nGUEST_SYNC eax\nGUEST_SYNC edx\n"


def _u64s(values: list[int]) -> list[int]:
    """The EAX, EDX pairs _rd synced, as 64-bit values."""
    return [hi << 32 | lo for lo, hi in zip(values[::2], values[1::2], strict=True)]


def _skip_unless_intel(kvm):
    """IA32_MISC_ENABLE's bit layout is Intel's (SDM Vol. 4 Table 2-2); the AMD APM defines no such
    MSR, so its bit rules apply only to a GenuineIntel vCPU."""
    found = vendor(kvm.supported_cpuid_copy())
    if found != "GenuineIntel":
        pytest.skip(f"IA32_MISC_ENABLE's bits are Intel's (SDM Vol. 4 Table 2-2; the APM has no such MSR); "
                    f"this vCPU is {found}")


def test_pat_power_up_value_as_the_guest_reads_it(guest):
    """A new vCPU's IA32_PAT reads the power-up value 0x0007040600070406, PA0-PA7 = WB, WT, UC-, UC,
    WB, WT, UC-, UC (PAT_POWER_UP: SDM Vol. 3A 12.12.4, Table 12-12; APM Vol. 2 "PAT Register" gives the
    same reset value)."""
    g = guest("long64", _rd(MSR_IA32_PAT) + "GUEST_DONE")
    (pat,) = _u64s(g.run_to_done())
    assert pat == PAT_POWER_UP, f"guest RDMSR IA32_PAT = {pat:#x} on a new vCPU, expected {PAT_POWER_UP:#x}"


def test_misc_enable_power_up_has_bts_and_pebs_unavailable(kvm, guest):
    """On a GenuineIntel vCPU, a new vCPU's IA32_MISC_ENABLE has BTS unavailable (bit 11) and PEBS
    unavailable (bit 12) set, as the processor its CPUID describes has no debug store
    (CPUID.1:EDX.DS[21] clear; SDM Vol. 4 Table 2-2 IA32_MISC_ENABLE, Vol. 3B 18.6.1: BTS and PEBS
    need DS)."""
    _skip_unless_intel(kvm)
    table = kvm.supported_cpuid_copy()
    set_feature(table, "ds", False)
    g = guest("long64", _rd(MSR_IA32_MISC_ENABLE) + "GUEST_DONE")
    g.vcpu.set_cpuid(table)
    (misc,) = _u64s(g.run_to_done())
    unavailable = MISC_BTS_UNAVAILABLE | MISC_PEBS_UNAVAILABLE
    assert misc & unavailable == unavailable, \
        f"guest RDMSR IA32_MISC_ENABLE = {misc:#x}: bits 11 (BTS unavailable) and 12 (PEBS unavailable) expected set " \
        f"without {FEATURES['ds']}"


def test_misc_enable_read_write_bits_take_a_write_and_read_only_bits_keep_theirs(kvm, guest):
    """On a GenuineIntel vCPU, IA32_MISC_ENABLE's architectural R/W bits (0, 3, 16, 18, 22, 23, 34)
    take a WRMSR that flips them all and read back as written, with the read-only bits (7, 11, 12)
    written as they were read (SDM Vol. 4 Table 2-2; kvm-unit-tests msr.c); writing the first
    value back restores it."""
    _skip_unless_intel(kvm)
    flip = f"xor eax, {MISC_READ_WRITE & 0xFFFFFFFF:#x}\nxor edx, {MISC_READ_WRITE >> 32:#x}\nwrmsr\n"
    # Read, flip the R/W bits of what was read and write it, read; flip them back, write, read.
    g = guest("long64", _rd(MSR_IA32_MISC_ENABLE) + flip + "GUEST_SYNC 0x77\n" + _rd(MSR_IA32_MISC_ENABLE) + flip
              + _rd(MSR_IA32_MISC_ENABLE) + "GUEST_DONE")
    values = g.run_to_done()
    assert values[2] == 0x77, f"the WRMSR of IA32_MISC_ENABLE with its R/W bits flipped did not complete: {values}"
    before, flipped, restored = _u64s(values[:2] + values[3:])
    assert flipped == before ^ MISC_READ_WRITE, \
        f"IA32_MISC_ENABLE read {before:#x}; after writing {before ^ MISC_READ_WRITE:#x} (R/W bits flipped, " \
        f"read-only bits {MISC_READ_ONLY:#x} as read) it reads {flipped:#x}"
    assert restored == before, f"IA32_MISC_ENABLE after writing {before:#x} back reads {restored:#x}"


@pytest.mark.modes(sample="per-code-size", cpl=0, code_bits=(32, 64))
@pytest.mark.parametrize("msr", ADDRESS_MSRS, ids=lambda m: msr_name(m).split()[0])
def test_noncanonical_write_of_an_address_msr_raises_gp(kvm, guest, mode, msr):
    """WRMSR of a non-canonical address to IA32_FS_BASE, IA32_GS_BASE, IA32_KERNEL_GS_BASE or
    IA32_LSTAR (SDM Vol. 2B WRMSR) or, on an AMD vCPU, IA32_CSTAR (APM Vol. 2 6.1.1: WRMSR of a
    non-canonical target RIP to LSTAR or CSTAR raises #GP) raises #GP(0) at the WRMSR, in 64-bit,
    compatibility and 32-bit protected mode alike (the SDM lists the check under "Protected Mode
    Exceptions", and compatibility and 64-bit mode have the same; kvm-unit-tests msr.c), and the
    MSR keeps the canonical value the host set through KVM_SET_MSRS."""
    if msr == MSR_IA32_CSTAR and vendor(kvm.supported_cpuid_copy()) == "GenuineIntel":
        # The SDM's WRMSR list (IA32_DS_AREA, FS/GS/KERNEL_GS_BASE, LSTAR, SYSENTER_EIP/ESP) has no
        # CSTAR, which Intel processors do not use; only the APM defines its canonical check.
        pytest.skip("the SDM defines no canonical check for IA32_CSTAR; the APM's applies to AMD vCPUs")
    g = guest(mode, fault_probe_source(mode, load_msr(msr, NONCANONICAL), "wrmsr"))
    install_fault_probe(g, GP_VECTOR)
    g.vcpu.set_msr(msr, CANONICAL)
    outcome = expect_fault_at_probe(g, GP_VECTOR, f"WRMSR {msr_name(msr)} = {NONCANONICAL:#x}")
    assert outcome.error_code == 0, f"WRMSR {msr_name(msr)} non-canonical: {outcome}, expected error code 0"
    got = g.vcpu.get_msr(msr)
    assert got == CANONICAL, f"{msr_name(msr)} = {got:#x} after the refused WRMSR; expected {CANONICAL:#x} kept"


@pytest.mark.parametrize("feature", [None, "rdtscp", "rdpid"], ids=["neither", "rdtscp", "rdpid"])
def test_tsc_aux_exists_only_with_rdtscp_or_rdpid(kvm, guest, feature):
    """IA32_TSC_AUX exists "if CPUID.80000001H:EDX[27] = 1 or CPUID.(EAX=7,ECX=0):ECX[22] = 1"
    (SDM Vol. 4 Table 2-2): with RDTSCP and RDPID both cleared in the vCPU's CPUID, RDMSR and WRMSR
    of it raise #GP(0); with either one alone, a WRMSR of 0x12345678 reads back in the guest and
    through KVM_GET_MSRS (selftests msrs_test)."""
    table = kvm.supported_cpuid_copy()
    if feature is not None and not kvm.has_feature(feature):
        pytest.skip(f"needs CPU feature {FEATURES[feature]}, which KVM_GET_SUPPORTED_CPUID does not report")
    for name in ("rdtscp", "rdpid"):
        set_feature(table, name, name == feature)
    if feature is None:
        source = (f"mov ecx, {MSR_IA32_TSC_AUX:#x}\nGUEST_ASSERT_RAISES GP(0), rdmsr\n" + load_msr(MSR_IA32_TSC_AUX, 0)
                  + "GUEST_ASSERT_RAISES GP(0), wrmsr\nGUEST_DONE")
    else:
        source = wrmsr(MSR_IA32_TSC_AUX, 0x12345678) + _rd(MSR_IA32_TSC_AUX) + "GUEST_DONE"
    g = guest("long64", source)
    g.vcpu.set_cpuid(table)
    values = g.run_to_done()
    if feature is not None:
        assert _u64s(values) == [0x12345678], f"guest RDMSR IA32_TSC_AUX with {feature} only: {values}"
        assert g.vcpu.get_msr(MSR_IA32_TSC_AUX) == 0x12345678, \
            "KVM_GET_MSRS IA32_TSC_AUX differs from the guest's write"


CET_MSRS = [MSR_IA32_U_CET, MSR_IA32_S_CET, MSR_IA32_PL0_SSP, MSR_IA32_PL1_SSP, MSR_IA32_PL2_SSP, MSR_IA32_PL3_SSP,
            MSR_IA32_INTERRUPT_SSP_TABLE_ADDR]
CET_SH_STK_EN, CET_ENDBR_EN = 1 << 0, 1 << 2    # IA32_U_CET / IA32_S_CET bits (SDM Vol. 4 Table 2-2)
CET_RESERVED = 0xF << 6                         # bits 9:6


def test_cet_msrs_raise_gp_without_shstk_and_ibt(kvm, guest):
    """With CET shadow stacks (CPUID.7.0:ECX[7]) and indirect-branch tracking (CPUID.7.0:EDX[20])
    cleared in the vCPU's CPUID, the CET MSRs do not exist: RDMSR and WRMSR of 0 of IA32_U_CET,
    IA32_S_CET (which need either feature), IA32_PL0-3_SSP and IA32_INTERRUPT_SSP_TABLE_ADDR (which
    need shadow stacks) raise #GP(0) (SDM Vol. 4 Table 2-2; selftests msrs_test)."""
    table = kvm.supported_cpuid_copy()
    set_feature(table, "shstk", False)
    set_feature(table, "ibt", False)
    g = guest("long64", "".join(f"mov ecx, {msr:#x}\nGUEST_ASSERT_RAISES GP(0), rdmsr\nxor eax, eax\nxor edx, edx\n"
                                "GUEST_ASSERT_RAISES GP(0), wrmsr\n" for msr in CET_MSRS) + "GUEST_DONE")
    g.vcpu.set_cpuid(table)
    g.run_to_done()


def _cet_source(cet_bit: int, ssp: bool) -> str:
    """Write `cet_bit` to U_CET and S_CET and read them back; a reserved bit must #GP; with `ssp`,
    a canonical address to each PLx_SSP reads back, bit 0 set or a non-canonical one must #GP."""
    src = ""
    for msr in (MSR_IA32_U_CET, MSR_IA32_S_CET):
        src += wrmsr(msr, cet_bit) + _rd(msr) + load_msr(msr, CET_RESERVED) + "GUEST_ASSERT_RAISES GP(0), wrmsr\n"
    if ssp:
        for msr in (MSR_IA32_PL0_SSP, MSR_IA32_PL1_SSP, MSR_IA32_PL2_SSP, MSR_IA32_PL3_SSP):
            src += wrmsr(msr, CANONICAL) + _rd(msr)
            src += load_msr(msr, CANONICAL | 1) + "GUEST_ASSERT_RAISES GP(0), wrmsr\n"
            src += load_msr(msr, NONCANONICAL & ~7) + "GUEST_ASSERT_RAISES GP(0), wrmsr\n"
    return src + "GUEST_DONE"


@pytest.mark.parametrize("feature", ["shstk", "ibt"])
def test_cet_msrs_with_their_feature(kvm, guest, feature):
    """With shadow stacks, IA32_U_CET and IA32_S_CET take SH_STK_EN (bit 0) and read it back, and
    IA32_PL0-3_SSP take a canonical, 4-byte aligned address; with indirect-branch tracking, U_CET
    and S_CET take ENDBR_EN (bit 2). A reserved bit (9:6) in U_CET/S_CET, an SSP with bit 0 set or
    a non-canonical SSP raises #GP(0) (SDM Vol. 4 Table 2-2; Vol. 1 17.2 CET; selftests msrs_test).
    KVM_GET_MSRS reads what the guest wrote last."""
    if not kvm.has_feature(feature):
        pytest.skip(f"needs CPU feature {FEATURES[feature]}, which KVM_GET_SUPPORTED_CPUID does not report")
    bit = CET_SH_STK_EN if feature == "shstk" else CET_ENDBR_EN
    g = guest("long64", _cet_source(bit, feature == "shstk"))
    values = _u64s(g.run_to_done())
    want = [bit, bit] + ([CANONICAL] * 4 if feature == "shstk" else [])
    assert values == want, f"CET MSRs read back {[hex(v) for v in values]}, expected {[hex(v) for v in want]}"
    assert g.vcpu.get_msr(MSR_IA32_S_CET) == bit, "KVM_GET_MSRS IA32_S_CET differs from the guest's write"


# MSRs each of two vCPUs writes with its own value: SYSENTER, the SYSCALL family, the base MSRs.
PER_VCPU = {MSR_IA32_SYSENTER_CS: 0x10, MSR_IA32_SYSENTER_ESP: 0x7000, MSR_IA32_STAR: 0x0023001000000000,
            MSR_IA32_LSTAR: 0xFFFF800000003000, MSR_IA32_CSTAR: 0xFFFF800000004000, MSR_IA32_FMASK: 0x47700,
            MSR_IA32_KERNEL_GS_BASE: 0xFFFF800000005000, MSR_IA32_PAT: PAT_POWER_UP}


def _own_values(n: int) -> dict[int, int]:
    """vCPU n's values: PER_VCPU's with n folded into bits that each MSR keeps (SDM Vol. 4 Table 2-2)."""
    bump = {MSR_IA32_SYSENTER_CS: 8 * n, MSR_IA32_SYSENTER_ESP: 0x100 * n, MSR_IA32_STAR: n << 48,
            MSR_IA32_LSTAR: 0x100 * n, MSR_IA32_CSTAR: 0x100 * n, MSR_IA32_FMASK: n << 8,
            MSR_IA32_KERNEL_GS_BASE: 0x100 * n, MSR_IA32_PAT: (1 << 56) * n}  # PA7: UC (0) -> WC (1)
    return {msr: value + bump[msr] for msr, value in PER_VCPU.items()}


def test_msr_values_stay_with_their_vcpu_when_one_thread_runs_two(guest):
    """Two vCPUs of one VM, run in turn from one thread, each write their own values to the same
    MSRs; after the other vCPU has run and written its own, each reads back exactly what it wrote,
    and KVM_GET_MSRS on each vCPU agrees (SDM Vol. 3A 9.1: each logical processor has its own MSRs;
    selftests msrs_test runs two vCPUs on one task for the same reason)."""
    def block(n):
        return f"cpu{n}:\n" + "".join(wrmsr(m, v) for m, v in _own_values(n).items()) + "GUEST_SYNC 1\n" + \
            "".join(_rd(m) for m in _own_values(n)) + "GUEST_DONE\n"
    g = guest("long64", block(0) + block(1))
    vcpu1 = g.add_vcpu("cpu1")
    vcpu0 = g.vcpu
    assert g.expect_sync(vcpu=vcpu0) == 1
    assert g.expect_sync(vcpu=vcpu1) == 1
    for n, vcpu in ((0, vcpu0), (1, vcpu1)):
        got = dict(zip(_own_values(n), _u64s(g.run_to_done(vcpu=vcpu)), strict=True))
        want = _own_values(n)
        wrong = [f"{msr_name(m)} {got[m]:#x} (wrote {want[m]:#x})" for m in want if got[m] != want[m]]
        assert not wrong, f"vCPU {n} read back after the other vCPU ran: {', '.join(wrong)}"
        host = vcpu.get_msrs(list(want))
        wrong = [f"{msr_name(m)} {host[m]:#x} (guest wrote {want[m]:#x})" for m in want if host[m] != want[m]]
        assert not wrong, f"KVM_GET_MSRS on vCPU {n}: {', '.join(wrong)}"


def test_x2apic_msrs_raise_gp_outside_x2apic_mode(guest):
    """With the local APIC in xAPIC mode (IA32_APIC_BASE.EXTD clear), every MSR of the x2APIC range
    0x800-0x8FF is inaccessible: RDMSR and WRMSR of 0 raise #GP(0) (SDM Vol. 3A 11.12.1.2 "x2APIC
    Register Address Space": the range is available only in x2APIC mode; kvm-unit-tests msr.c)."""
    g = guest("long64", """
        mov ecx, 0x800
    next:
        GUEST_ASSERT_RAISES GP(0), rdmsr
        xor eax, eax
        xor edx, edx
        GUEST_ASSERT_RAISES GP(0), wrmsr
        inc ecx
        cmp ecx, 0x900
        jb next
        GUEST_SYNC rcx
        GUEST_DONE""", irqchip=True)
    assert g.run_to_done() == [0x900], "the loop over the x2APIC MSRs did not reach 0x900"


SIXTY_FOUR_BIT_MSRS = {MSR_IA32_FS_BASE: 0x0000123456789ABC, MSR_IA32_GS_BASE: 0x00001234567AB000,
                       MSR_IA32_KERNEL_GS_BASE: 0x00001234567CD000, MSR_IA32_LSTAR: 0x00001234567EF000,
                       MSR_IA32_CSTAR: 0x0000123456701000, MSR_IA32_FMASK: 0xFFFFFFFF}


@pytest.mark.modes(protected=True, long=False, paging=False, cpl=0, code_bits=32)
def test_64bit_msrs_read_and_write_from_32bit_code(guest, mode):
    """The MSRs of 64-bit mode exist on a processor with CPUID.80000001H:EDX.LM[29] set whatever
    mode it runs in (SDM Vol. 4 Table 2-2): 32-bit protected-mode code writes 64-bit values to
    IA32_FS_BASE, IA32_GS_BASE, IA32_KERNEL_GS_BASE, IA32_LSTAR, IA32_CSTAR and IA32_FMASK through
    EDX:EAX and reads them back whole (kvm-unit-tests msr.c in its 32-bit build)."""
    g = guest(mode, "".join(wrmsr(m, v) + _rd(m) for m, v in SIXTY_FOUR_BIT_MSRS.items()) + "GUEST_DONE")
    got = dict(zip(SIXTY_FOUR_BIT_MSRS, _u64s(g.run_to_done()), strict=True))
    wrong = [f"{msr_name(m)} {got[m]:#x} (wrote {v:#x})" for m, v in SIXTY_FOUR_BIT_MSRS.items() if got[m] != v]
    assert not wrong, f"RDMSR after WRMSR from 32-bit code: {', '.join(wrong)}"


@pytest.mark.skipif(not forced_emulation.enabled(), reason=forced_emulation.SKIP_REASON)
def test_emulated_wrmsr_of_flush_cmd_reserved_bits_raises_gp(guest):
    """IA32_FLUSH_CMD defines only L1D_FLUSH (bit 0); bits 63:1 are reserved (SDM Vol. 4 Table
    2-2), so a WRMSR setting any one of them raises #GP(0) whether or not the MSR exists, also when
    KVM's instruction emulator runs the WRMSR (forced-emulation prefix; kvm-unit-tests msr.c
    test_mitigation_msrs)."""
    missed = []
    for bit in range(1, 64):
        g = guest("long64", fault_probe_source("long64", load_msr(MSR_IA32_FLUSH_CMD, 1 << bit),
                                               f"{forced_emulation.FEP}\nwrmsr"))
        install_fault_probe(g, GP_VECTOR)
        outcome = probe_outcome(g, GP_VECTOR)
        if not outcome.faulted or outcome.error_code != 0:
            missed.append(f"bit {bit}: {outcome}")
        g.close()
    assert not missed, f"emulated WRMSR IA32_FLUSH_CMD with a reserved bit, expected #GP(0): {'; '.join(missed)}"
