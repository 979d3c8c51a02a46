"""Values kvmtest and its users take from KVM itself, held against a source KVM does not control:
the host CPU's own CPUID instruction, the guest's RDMSR and RDTSC, the host's clock and
/proc/cpuinfo (api.rst 4.3 KVM_GET_MSR_INDEX_LIST, 4.5 KVM_GET_VCPU_MMAP_SIZE, 4.46
KVM_GET_SUPPORTED_CPUID, KVM_GET_TSC_KHZ, KVM_GET_MSR_FEATURE_INDEX_LIST)."""

import ctypes
import platform
import struct

import pytest

from kvmtest import host_cpu
from kvmtest.abi import constants as C
from kvmtest.abi import structs as S
from kvmtest.cpuid import find_entry
from kvmtest.guest import layout as L
from kvmtest.libc import PAGE_SIZE
from kvmtest.timing import bracketed_pair
from kvmtest.x86 import (
    MSR_AMD64_PERF_CTL0,
    MSR_AMD64_TSC_RATIO,
    MSR_AMD64_VIRT_SPEC_CTRL,
    MSR_IA32_ARCH_CAPABILITIES,
    MSR_IA32_BIOS_SIGN_ID,
    MSR_IA32_DS_AREA,
    MSR_IA32_FEATURE_CONTROL,
    MSR_IA32_FIXED_CTR0,
    MSR_IA32_FIXED_CTR1,
    MSR_IA32_FIXED_CTR2,
    MSR_IA32_FIXED_CTR_CTRL,
    MSR_IA32_FLUSH_CMD,
    MSR_IA32_MCG_CAP,
    MSR_IA32_MCG_CTL,
    MSR_IA32_MCG_STATUS,
    MSR_IA32_PEBS_DATA_CFG,
    MSR_IA32_PEBS_ENABLE,
    MSR_IA32_PERF_CAPABILITIES,
    MSR_IA32_PERF_GLOBAL_CTRL,
    MSR_IA32_PERF_GLOBAL_OVF_CTRL,
    MSR_IA32_PERF_GLOBAL_STATUS,
    MSR_IA32_PRED_CMD,
    MSR_IA32_SMBASE,
    MSR_IA32_SPEC_CTRL,
    MSR_IA32_TSC,
    MSR_IA32_TSC_ADJUST,
    MSR_IA32_TSC_DEADLINE,
)

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64", reason="the host CPUID checks need an x86-64 host")

# Feature registers of KVM_GET_SUPPORTED_CPUID, (leaf, subleaf, register).
FEATURE_REGISTERS = [(1, 0, "ecx"), (1, 0, "edx"), (6, 0, "eax"), (7, 0, "ebx"), (7, 0, "ecx"), (7, 0, "edx"),
                     (7, 1, "eax"), (7, 1, "edx"), (0xD, 1, "eax"), (0x80000001, 0, "ecx"),
                     (0x80000001, 0, "edx"), (0x80000008, 0, "ebx"), (0x80000021, 0, "eax")]
REGS = ("eax", "ebx", "ecx", "edx")
# Bits KVM may report although the host CPU lacks them, because KVM emulates or synthesizes them
# (api.rst 4.46: "Some features (for example, x2apic), may not be present in the host cpu, but are
# exposed by kvm if it can emulate them efficiently"; arch/x86/kvm/cpuid.c kvm_set_cpu_caps:
# EMULATED_F, SYNTHESIZED_F and the features it sets from Linux's own view of the CPU).
KVM_MADE = {
    (1, 0, "ecx"): {21: "x2APIC", 24: "TSC-deadline timer", 31: "hypervisor present"},
    (6, 0, "eax"): {2: "ARAT (APIC timer always running)"},
    (7, 0, "ebx"): {1: "IA32_TSC_ADJUST"},
    (7, 0, "edx"): {26: "IBRS/IBPB (from AMD's 8000_0008 bits)", 27: "STIBP (from AMD's)", 29: "IA32_ARCH_CAPABILITIES",
                    31: "SSBD (from AMD's)"},
    (0x80000001, 0, "edx"): {26: "1 GiB pages (shadow paging emulates them)"},
    (0x80000008, 0, "ebx"): {12: "AMD IBPB", 14: "AMD IBRS", 15: "AMD STIBP", 24: "AMD SSBD", 25: "VIRT_SSBD",
                             26: "SSB_NO", 30: "IBPB_RET"},
    (0x80000021, 0, "eax"): {2: "LFENCE serializing", 6: "null selector clears base", 9: "no SMM_CTL MSR",
                             27: "SBPB", 28: "IBPB_BRTYPE", 29: "SRSO_NO"},
}
# 8000_0001.EDX repeats these 1.EDX bits on AMD (APM Vol. 3 E.4.2); KVM fills them from 1.EDX.
EDX_ALIASES = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 14, 15, 16, 17, 23, 24}


def test_supported_cpuid_features_are_the_host_cpus_or_emulated(kvm):
    """Every feature bit KVM_GET_SUPPORTED_CPUID reports in the feature registers is one the host
    CPU's own CPUID instruction reports, or one KVM documents as emulated or synthesized (api.rst
    4.46: "the host cpuid as returned by the cpuid instruction, with unknown or unsupported
    features masked out"; the KVM_MADE table above names each exception)."""
    table = kvm.supported_cpuid()
    extra = []
    for leaf, sub, reg in FEATURE_REGISTERS:
        e = find_entry(table, leaf, sub)
        if e is None or e.function != leaf or e.index != sub:
            continue
        host = dict(zip(REGS, host_cpu.cpuid(leaf, sub), strict=True))[reg]
        allowed = set(KVM_MADE.get((leaf, sub, reg), {}))
        if (leaf, reg) == (0x80000001, "edx"):
            host_1_edx = host_cpu.cpuid(1)[3]
            allowed |= {b for b in EDX_ALIASES if host_1_edx >> b & 1}
        unexplained = getattr(e, reg) & ~host & ~sum(1 << b for b in allowed)
        extra += [f"CPUID.{leaf:#x}.{sub}:{reg.upper()}[{b}]" for b in range(32) if unexplained >> b & 1]
    assert not extra, "KVM_GET_SUPPORTED_CPUID reports features the host CPU does not have and KVM does not " \
                      f"document as emulated: {', '.join(extra)}"


def test_supported_cpuid_vendor_and_leaf_ranges_are_the_host_cpus(kvm):
    """Leaf 0 of KVM_GET_SUPPORTED_CPUID names the host CPU's vendor and no basic leaf beyond the
    host's; leaf 0x80000000 no extended leaf beyond the host's, except 0x80000021, which KVM may
    synthesize (api.rst 4.46; arch/x86/kvm/cpuid.c)."""
    table = kvm.supported_cpuid()
    leaf0, ext = find_entry(table, 0), find_entry(table, 0x80000000)
    host0, host_ext = host_cpu.cpuid(0), host_cpu.cpuid(0x80000000)
    vendor = struct.pack("<III", leaf0.ebx, leaf0.edx, leaf0.ecx)
    host_vendor = struct.pack("<III", host0[1], host0[3], host0[2])
    assert vendor == host_vendor, f"vendor {vendor!r} from KVM, {host_vendor!r} from the host CPU"
    assert leaf0.eax <= host0[0], f"KVM's max basic leaf {leaf0.eax:#x} above the host CPU's {host0[0]:#x}"
    if ext is not None:
        assert ext.eax <= max(host_ext[0], 0x80000021), \
            f"KVM's max extended leaf {ext.eax:#x} above the host CPU's {host_ext[0]:#x}"


# Leaves whose output depends on ECX (SDM Vol. 2A CPUID, Table 3-8: "sub-leaf index"; APM Vol. 3
# E.3/E.4 for 8000_001Dh and 8000_0020h).
INDEXED_LEAVES = {0x4, 0x7, 0xB, 0xD, 0xF, 0x10, 0x12, 0x14, 0x17, 0x18, 0x1B, 0x1D, 0x1E, 0x1F, 0x20,
                  0x23, 0x24, 0x8000001D, 0x80000020, 0x80000026}
KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1


def test_supported_cpuid_flags_mark_exactly_the_indexed_leaves(kvm):
    """KVM_CPUID_FLAG_SIGNIFCANT_INDEX "if the index field is valid" (api.rst 4.46) is set on the
    entries of the leaves whose output the SDM indexes by ECX, and on no other (an all-zero entry,
    a leaf KVM reports as absent, is not counted); each leaf 0xD entry's index is its sub-leaf:
    its component size and offset (EAX, EBX) are the host CPU's CPUID for that sub-leaf (SDM
    Vol. 2A CPUID, leaf 0DH)."""
    wrong = [f"{e.function:#x}.{e.index}: flags {e.flags:#x}" for e in kvm.supported_cpuid()
             if (e.eax or e.ebx or e.ecx or e.edx)
             and bool(e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX) != (e.function in INDEXED_LEAVES)]
    assert not wrong, "KVM_CPUID_FLAG_SIGNIFCANT_INDEX set on a leaf the SDM does not index, or missing on one it " \
                      "does: " + ", ".join(wrong)
    for e in kvm.supported_cpuid():
        if e.function == 0xD and e.index >= 2 and e.eax:
            host = host_cpu.cpuid(0xD, e.index)
            assert (e.eax, e.ebx) == host[:2], \
                f"CPUID.0xD.{e.index} (size, offset) from KVM {e.eax:#x}/{e.ebx:#x}, host CPU {host[0]:#x}/{host[1]:#x}"


def test_vcpu_mmap_size_covers_the_pio_and_coalesced_mmio_pages(kvm):
    """The kvm_run mapping (KVM_GET_VCPU_MMAP_SIZE, api.rst 4.5) is whole pages and reaches the
    pages that other parts of the ABI place in it: the PIO data page at KVM_PIO_PAGE_OFFSET, where
    KVM_EXIT_IO's data_offset points, and the coalesced MMIO ring at the page
    KVM_CHECK_EXTENSION(KVM_CAP_COALESCED_MMIO) returns (api.rst KVM_REGISTER_COALESCED_MMIO;
    <asm/kvm.h> KVM_COALESCED_MMIO_PAGE_OFFSET)."""
    size = kvm.vcpu_mmap_size()
    ring_page = kvm.check_extension("KVM_CAP_COALESCED_MMIO")
    assert size % PAGE_SIZE == 0 and size >= ctypes.sizeof(S.kvm_run), f"mmap size {size:#x}"
    assert size >= (C.KVM_PIO_PAGE_OFFSET + 1) * PAGE_SIZE, f"mmap size {size:#x} ends before the PIO data page"
    if ring_page:
        assert ring_page == C.KVM_COALESCED_MMIO_PAGE_OFFSET, \
            f"KVM_CAP_COALESCED_MMIO {ring_page}, " \
            f"<asm/kvm.h> KVM_COALESCED_MMIO_PAGE_OFFSET {C.KVM_COALESCED_MMIO_PAGE_OFFSET}"
        assert size >= (ring_page + 1) * PAGE_SIZE, f"mmap size {size:#x} ends before the ring page {ring_page}"


def test_io_exit_data_offset_points_at_the_guests_data_inside_the_mapping(guest):
    """KVM_EXIT_IO's data_offset (api.rst 5: "data_offset ... where the data is located (run +
    data_offset)") lies inside the KVM_GET_VCPU_MMAP_SIZE mapping, in the PIO data page, and
    the bytes there are what the guest's OUT sent."""
    g = guest("long64", "mov eax, 0x67452301\nout 0x10, eax\nGUEST_DONE")
    exit_ = g.run()
    io = g.vcpu.kvm_run.exit.io
    size = g.kvm.vcpu_mmap_size()
    assert C.KVM_PIO_PAGE_OFFSET * PAGE_SIZE <= io.data_offset and io.data_offset + io.size * io.count <= size, \
        f"{exit_}: data_offset {io.data_offset:#x} (+{io.size * io.count}) outside the PIO page / mapping of {size:#x}"
    # The raw bytes at run + data_offset in the vCPU's mapping, which is what this test is about: not
    # IoExit.data, which kvmtest's own exit parser took from the same offset.
    data = ctypes.string_at(g.vcpu.run_addr + io.data_offset, io.size * io.count)
    assert data == bytes.fromhex("01234567"), f"data at data_offset {data.hex()}; the guest sent 01234567"
    g.run_to_done()


# MSRs of the list whose existence an enumeration rule controls: the MSR exists when any one of its
# conditions holds (SDM Vol. 4 Table 2-2, "Comment" column; AMD APM Vol. 2 where named; api.rst 7
# KVM_CAP_MSR_PLATFORM_INFO for MSR_PLATFORM_INFO). A condition is a CPUID bit (leaf, subleaf,
# register, bit), ("mcg_cap", bit) of IA32_MCG_CAP, or ("field", leaf, subleaf, register, low bit,
# width, minimum, maximum) for a CPUID field within a range. KVM lists an MSR whenever it can save
# and restore it for some guest, so a guest whose CPUID does not enumerate it may get #GP.
ARCH_PERFMON_VERSION = (0xA, 0, "eax", 0, 8)      # CPUID.0AH:EAX[7:0]
FIXED_COUNTERS = (0xA, 0, "edx", 0, 5)            # CPUID.0AH:EDX[4:0]
DEBUG_STORE = (1, 0, "edx", 21)                   # CPUID.01H:EDX.DS[21]: DS, and PEBS within it
ENUMERATED_BY = {
    # VMX, SMX, SGX launch control, SGX, LMCE
    MSR_IA32_FEATURE_CONTROL: [(1, 0, "ecx", 5), (1, 0, "ecx", 6), (7, 0, "ecx", 30), (7, 0, "ebx", 2),
                               ("mcg_cap", 27)],
    MSR_IA32_TSC_ADJUST: [(7, 0, "ebx", 1)],
    MSR_IA32_TSC_DEADLINE: [(1, 0, "ecx", 24)],
    MSR_IA32_MCG_STATUS: [(1, 0, "edx", 14)],            # MCA
    MSR_IA32_MCG_CTL: [("mcg_cap", 8)],                  # MCG_CTL_P
    MSR_IA32_PERF_CAPABILITIES: [(1, 0, "ecx", 15)],     # PDCM
    MSR_IA32_FIXED_CTR0: [("field", *FIXED_COUNTERS, 1, None)],          # FIXED_CTRn: EDX[4:0] > n
    MSR_IA32_FIXED_CTR1: [("field", *FIXED_COUNTERS, 2, None)],
    MSR_IA32_FIXED_CTR2: [("field", *FIXED_COUNTERS, 3, None)],
    MSR_IA32_FIXED_CTR_CTRL: [("field", *ARCH_PERFMON_VERSION, 2, None)],        # version > 1
    MSR_IA32_PERF_GLOBAL_STATUS: [("field", *ARCH_PERFMON_VERSION, 1, None)],    # version > 0
    MSR_IA32_PERF_GLOBAL_CTRL: [("field", *ARCH_PERFMON_VERSION, 1, None)],      # version > 0
    MSR_IA32_PERF_GLOBAL_OVF_CTRL: [("field", *ARCH_PERFMON_VERSION, 1, 3)],     # 0 < version <= 3
    MSR_IA32_DS_AREA: [DEBUG_STORE],
    MSR_IA32_PEBS_ENABLE: [DEBUG_STORE],                 # PEBS records go to the DS save area
    MSR_IA32_PEBS_DATA_CFG: [DEBUG_STORE],               # PEBS_BASELINE, a PEBS feature
    MSR_AMD64_TSC_RATIO: [(0x8000000A, 0, "edx", 4)],    # CPUID Fn8000_000A_EDX[TscRateMsr] (APM 15.30.5)
    MSR_AMD64_VIRT_SPEC_CTRL: [(0x80000008, 0, "ebx", 25)],  # VIRT_SSBD
}
# AMD PERF_CTL0-5/PERF_CTR0-5: CPUID Fn8000_0001_ECX[PerfCtrExtCore] (APM Vol. 2 13.2.1)
ENUMERATED_BY.update({MSR_AMD64_PERF_CTL0 + i: [(0x80000001, 0, "ecx", 23)] for i in range(12)})
# IA32_SMBASE is "RO, SMM only" (SDM Vol. 4 Table 2-2): a guest outside SMM cannot read it.
SMM_ONLY = {MSR_IA32_SMBASE}
# Hyper-V's synthetic MSRs (40000000H up, in and just above the range the SDM reserves for
# software and no processor implements, SDM Vol. 4 2.1) exist only for a guest whose CPUID presents
# the Hyper-V interface, 0x40000001.EAX = "Hv#1" (Hyper-V TLFS; api.rst KVM_GET_SUPPORTED_HV_CPUID).
# KVM lists those it emulates (up to the crash and reenlightenment MSRs at 40000100H-40000108H);
# KVM's supported CPUID presents KVM's own interface instead.
HYPERV_MSRS = range(0x40000000, 0x40000200)
HV_INTERFACE = 0x31237648                 # "Hv#1"


def _msr_exists(index, table, mcg_cap) -> bool:
    """Whether the guest's CPUID (and IA32_MCG_CAP) enumerate MSR `index` (ENUMERATED_BY)."""
    if index in SMM_ONLY:
        return False
    if index in HYPERV_MSRS:
        e = find_entry(table, 0x40000001, 0)
        return e is not None and e.eax == HV_INTERFACE
    conditions = ENUMERATED_BY.get(index)
    if conditions is None:
        return True
    for cond in conditions:
        if cond[0] == "mcg_cap":
            holds = bool(mcg_cap >> cond[1] & 1)
        elif cond[0] == "field":
            _, leaf, sub, reg, low, width, least, most = cond
            e = find_entry(table, leaf, sub)
            value = getattr(e, reg) >> low & ((1 << width) - 1) if e is not None else 0
            holds = value >= least and (most is None or value <= most)
        else:
            e = find_entry(table, cond[0], cond[1])
            holds = e is not None and bool(getattr(e, cond[2]) >> cond[3] & 1)
        if holds:
            return True
    return False


# Checked, with its own known deviations, where the whole enumeration rule is the subject.
ELSEWHERE = {MSR_IA32_ARCH_CAPABILITIES:
             "suites/cpu/test_cpuid_gated_msrs.py::test_guest_reads_arch_capabilities_as_the_host_sees_it",
             MSR_IA32_SPEC_CTRL: "suites/cpu/test_cpuid_gated_msrs.py",
             MSR_IA32_PRED_CMD: "suites/cpu/test_cpuid_gated_msrs.py",
             MSR_IA32_FLUSH_CMD: "suites/cpu/test_cpuid_gated_msrs.py"}
TIME_VARYING = {MSR_IA32_TSC}            # compared with the host's reads before and after


def _rdmsr_each(n):
    """Guest code: RDMSR every index of the u32 table at DATA; store (EDX:EAX, vector) per index at
    DATA + 0x1000, the vector being 0xFF when RDMSR completed (exceptions resume at `faulted`)."""
    return f"""
    mov rsi, {L.DATA:#x}
    mov rdi, {L.DATA + 0x1000:#x}
    mov r12, {n}
    mov r8, {L.EXC_INFO:#x}
    mov r9, faulted
next:
    mov ecx, dword ptr [rsi]
    mov qword ptr [r8 + 8], 0xff
    mov qword ptr [r8], r9
    xor eax, eax
    xor edx, edx
    rdmsr
    mov qword ptr [r8], 0
faulted:
    mov dword ptr [rdi], eax
    mov dword ptr [rdi + 4], edx
    mov rax, qword ptr [r8 + 8]
    mov qword ptr [rdi + 8], rax
    add rsi, 4
    add rdi, 16
    dec r12
    jnz next
    GUEST_DONE
"""


@pytest.mark.requires_cap("KVM_CAP_IRQCHIP")
def test_msr_index_list_is_what_the_guest_reads(kvm, guest):
    """Each MSR of KVM_GET_MSR_INDEX_LIST ("the guest msrs that are supported", api.rst 4.3) is
    one the guest can read: its RDMSR completes and returns what KVM_GET_MSRS reports for the
    vCPU (IA32_TSC: a value between the host's reads before and after the run). The guest has
    KVM's whole supported CPUID, an in-kernel irqchip and KVM_CAP_MSR_PLATFORM_INFO enabled
    (api.rst 7), so nothing hides an MSR but its own enumeration: MSRs that CPUID or IA32_MCG_CAP
    does not enumerate for this guest (SDM Vol. 4 Table 2-2; Hyper-V's synthetic MSRs need the
    Hyper-V CPUID interface; IA32_SMBASE is SMM-only) are left to the enumeration checks of
    suites/cpu/test_cpuid_gated_msrs.py."""
    indices = [i for i in kvm.msr_index_list() if i not in ELSEWHERE]
    g = guest("long64", _rdmsr_each(len(indices)), irqchip=True)
    if kvm.check_extension("KVM_CAP_MSR_PLATFORM_INFO"):
        g.vm.enable_cap("KVM_CAP_MSR_PLATFORM_INFO", 1)
    g.vm.write(L.DATA, b"".join(struct.pack("<I", i) for i in indices))
    before = g.vcpu.get_msrs(indices)
    g.run_to_done()
    after = g.vcpu.get_msrs(indices)
    table = kvm.cached_supported_cpuid()
    mcg_cap = before.get(MSR_IA32_MCG_CAP, g.vcpu.get_msr(MSR_IA32_MCG_CAP))
    wrong = []
    for n, index in enumerate(indices):
        value, vector = struct.unpack("<QQ", g.vm.read(L.DATA + 0x1000 + 16 * n, 16))
        if not _msr_exists(index, table, mcg_cap):
            continue  # the enumeration rule itself is suites/cpu/test_cpuid_gated_msrs.py's subject
        if vector != 0xFF:
            wrong.append(f"{index:#x}: RDMSR raised vector {vector}")
        elif index in TIME_VARYING:
            if not before[index] <= value <= after[index]:
                wrong.append(f"{index:#x}: guest read {value:#x}, not between the host's {before[index]:#x} and "
                             f"{after[index]:#x}")
        elif not value == before[index] == after[index]:
            wrong.append(f"{index:#x}: guest read {value:#x}, KVM_GET_MSRS {before[index]:#x} / {after[index]:#x}")
    assert not wrong, "MSRs of KVM_GET_MSR_INDEX_LIST as the guest reads them: " + "; ".join(wrong)


def _cpuinfo_microcode():
    try:
        with open("/proc/cpuinfo") as f:
            return next((int(line.split(":")[1], 0) for line in f if line.startswith("microcode")), None)
    except OSError:
        return None


@pytest.mark.requires_cap("KVM_CAP_GET_MSR_FEATURES")
def test_feature_msr_microcode_revision_is_the_hosts(kvm):
    """The microcode revision KVM reports through the system KVM_GET_MSRS for IA32_BIOS_SIGN_ID /
    PATCH_LEVEL (0x8B, listed by KVM_GET_MSR_FEATURE_INDEX_LIST, api.rst 4.18) is the host's, as
    the kernel records it in /proc/cpuinfo: bits 63:32 on Intel (SDM Vol. 4 Table 2-2), bits 31:0
    on AMD (APM Vol. 2 "Microcode Patch Level")."""
    if MSR_IA32_BIOS_SIGN_ID not in kvm.msr_feature_index_list():
        pytest.skip("0x8B is not a feature MSR on this host")
    host = _cpuinfo_microcode()
    if host is None:
        pytest.skip("/proc/cpuinfo has no microcode line")
    value = kvm.read_feature_msrs([MSR_IA32_BIOS_SIGN_ID])[MSR_IA32_BIOS_SIGN_ID]
    vendor = struct.pack("<III", *(host_cpu.cpuid(0)[i] for i in (1, 3, 2)))
    revision = value & 0xFFFFFFFF if vendor == b"AuthenticAMD" else value >> 32
    assert revision == host, f"feature MSR 0x8b {value:#x}: revision {revision:#x}, /proc/cpuinfo says {host:#x}"


@pytest.mark.requires_cap("KVM_CAP_GET_TSC_KHZ")
@pytest.mark.modes(code_bits=64)
@pytest.mark.waits
def test_tsc_khz_is_the_rate_the_guest_measures(guest, mode):
    """KVM_GET_TSC_KHZ is "the tsc frequency of the guest" (api.rst KVM_GET_TSC_KHZ): two RDTSCs of
    the guest 0.5 s apart, timed with the host's CLOCK_MONOTONIC around the runs that execute
    them, give a rate that brackets the reported frequency (to the 1 kHz the ioctl resolves)."""
    g = guest(mode, "GUEST_SYNC 0\nrdtsc\nshl rdx, 32\nor rax, rdx\nGUEST_SYNC rax\nrdtsc\nshl rdx, 32\n"
                    "or rax, rdx\nGUEST_SYNC rax\nGUEST_DONE")
    khz = g.vcpu.get_tsc_khz()
    assert g.expect_sync() == 0  # the first entry, with its one-time set-up, stays out of the brackets
    b = bracketed_pair(g.expect_sync, 0.5)
    ticks = b.second - b.first
    low_khz, high_khz = ticks / b.outer_ns * 1e6, ticks / b.inner_ns * 1e6
    assert low_khz - 1 <= khz <= high_khz + 1, \
        f"KVM_GET_TSC_KHZ {khz} kHz; the guest's TSC advanced {ticks} ticks in {b.inner_ns / 1e6:.3f}-" \
        f"{b.outer_ns / 1e6:.3f} ms: {low_khz:.0f}-{high_khz:.0f} kHz"
    g.run_to_done()


@pytest.mark.requires_cap("KVM_CAP_XSAVE2")
def test_xsave2_size_fits_the_host_cpus_xsave_area(kvm):
    """KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) is the buffer KVM_GET_XSAVE2 needs (api.rst 7
    KVM_CAP_XSAVE2): at least struct kvm_xsave's 4096 bytes, and no more than that or the host
    CPU's largest XSAVE area, CPUID.(EAX=0DH,ECX=0):ECX (SDM Vol. 1 13.2), whichever is larger."""
    size = kvm.check_extension("KVM_CAP_XSAVE2")
    host_max = host_cpu.cpuid(0xD, 0)[2]
    assert ctypes.sizeof(S.kvm_xsave) <= size <= max(ctypes.sizeof(S.kvm_xsave), host_max), \
        f"KVM_CAP_XSAVE2 {size}; struct kvm_xsave is {ctypes.sizeof(S.kvm_xsave)}, the host CPU's XSAVE area {host_max}"
