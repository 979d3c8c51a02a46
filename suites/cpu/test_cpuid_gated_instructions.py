"""Instructions whose CPUID feature bit the vCPU's CPUID lacks raise #UD; with the bit they give
the SDM's result. Checked at CPL0 and CPL3 in 64-bit, compatibility and 32-bit protected mode.

SDM Vol. 2 gives, for each instruction here, "#UD If CPUID.<leaf>:<reg>.<feature>[bit] = 0"
(MOVBE, RDTSCP, RDPID, INVPCID, POPCNT, CRC32 (SSE4.2), CMPXCHG16B, XGETBV (XSAVE, and CR4.OSXSAVE
= 0)); APM Vol. 3 RDPRU: #UD if CPUID Fn8000_0008_EBX[RDPRU] = 0. The vCPU's processor is the one
its CPUID (KVM_SET_CPUID2, api.rst) describes. #UD is a fault: the saved RIP is the instruction.

What KVM can enforce on hardware differs by instruction (the check stays the SDM's; a host that
cannot enforce it records that as a known issue): RDTSCP (SVM intercept / VMX "enable RDTSCP"),
INVPCID (SVM intercept / VMX "enable INVPCID") and RDPRU (SVM intercept, always #UD from KVM) are
intercepted and refused by KVM when CPUID lacks them; XGETBV faults in hardware on the guest's own
CR4.OSXSAVE = 0. MOVBE, POPCNT, CRC32 and CMPXCHG16B have no intercept on VMX or SVM, nor RDPID on
SVM: a CPU that implements them runs them for any guest, so only code KVM emulates can honour the
guest's CPUID (arch/x86/kvm/emulate.c em_movbe and em_rdpid check it; x86.c
emulator_guest_has_movbe/rdpid).
"""

from dataclasses import dataclass

import pytest

from kvmtest.cpuid import FEATURES, has_feature, set_feature
from kvmtest.guest import layout as L
from kvmtest.guest.fault_probe import expect_fault_at_probe, fault_probe_source, install_fault_probe, probe_outcome
from kvmtest.guest.mode_select import select
from kvmtest.guest.modes import get_mode
from kvmtest.x86 import CR4_OSXSAVE, MSR_IA32_TSC_AUX, UD_VECTOR, XCR0_SSE, XCR0_X87

TSC_AUX = 0x5A17
XCR0_X87_SSE = XCR0_X87 | XCR0_SSE
MODES = select(sample="per-code-size", protected=True, order="widest")


def crc32c(crc: int, data: bytes) -> int:
    """CRC32 as the instruction computes it: polynomial 11EDC6F41H, bit-reflected, no initial or
    final inversion (SDM Vol. 2A CRC32, Operation)."""
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc


@dataclass(frozen=True)
class Gated:
    mnemonic: str
    feature: str
    setup: str = ""
    insn: str = ""
    after: str = ""             # GUEST_SYNCs of the results
    expected: tuple = ()        # the SDM's results, in `after` order
    only64: bool = False
    cpl3_completes: bool = True  # False where CPL3 raises another fault even with the feature


# {a}/{b}: RAX/RBX or EAX/EBX at the mode's width; DATA is RAM the guest owns (user-accessible at CPL3).
INSNS = {g.mnemonic: g for g in [
    Gated("MOVBE", "movbe", f"mov {{b}}, {L.DATA:#x}\nmov dword ptr [{{b}}], 0x11223344",
          "movbe eax, dword ptr [{b}]", "GUEST_SYNC eax", (0x44332211,)),
    Gated("RDTSCP", "rdtscp", "", "rdtscp", "GUEST_SYNC ecx", (TSC_AUX,)),
    Gated("RDPID", "rdpid", "", ".byte 0xf3, 0x0f, 0xc7, 0xf8    # RDPID eax/rax (Keystone lacks it)",
          "GUEST_SYNC eax", (TSC_AUX,)),
    Gated("RDPRU", "rdpru", "xor ecx, ecx", ".byte 0x0f, 0x01, 0xfd          # RDPRU (ECX 0: MPERF)"),
    Gated("INVPCID", "invpcid", f"mov {{b}}, {L.DATA:#x}\nmov dword ptr [{{b}}], 0\nmov dword ptr [{{b}} + 4], 0\n"
          "mov dword ptr [{b} + 8], 0\nmov dword ptr [{b} + 12], 0\nmov {a}, 2", "invpcid {a}, [{b}]",
          cpl3_completes=False),
    Gated("XGETBV", "xsave", "xor ecx, ecx", "xgetbv", "GUEST_SYNC eax", (XCR0_X87_SSE,)),
    Gated("POPCNT", "popcnt", f"mov {{b}}, {L.DATA:#x}\nmov dword ptr [{{b}}], 0xf0f0f0f1",
          "popcnt eax, dword ptr [{b}]", "GUEST_SYNC eax", (17,)),
    Gated("CRC32", "sse4_2", f"mov {{b}}, {L.DATA:#x}\nmov dword ptr [{{b}}], 0x12345678\nmov eax, 0xffffffff",
          "crc32 eax, dword ptr [{b}]", "GUEST_SYNC eax",
          (crc32c(0xFFFFFFFF, (0x12345678).to_bytes(4, "little")),)),
    Gated("CMPXCHG16B", "cx16", f"mov rdi, {L.DATA:#x}\nmov qword ptr [rdi], 1\nmov qword ptr [rdi + 8], 2\n"
          "mov eax, 1\nmov edx, 2\nmov ebx, 0x55\nmov ecx, 0x66", "cmpxchg16b [rdi]",
          "setz al\nmovzx eax, al\nGUEST_SYNC rax\nmov rax, qword ptr [rdi]\nGUEST_SYNC rax\n"
          "mov rax, qword ptr [rdi + 8]\nGUEST_SYNC rax", (1, 0x55, 0x66), only64=True),
]}


def _cases():
    return [pytest.param(name, id=name) for name in INSNS]


def _guest(guest, mode, spec):
    if spec.only64 and get_mode(mode).code_bits != 64:
        pytest.skip(f"{spec.mnemonic} exists only in 64-bit mode")
    regs = {"a": "rax", "b": "rbx"} if get_mode(mode).code_bits == 64 else {"a": "eax", "b": "ebx"}
    g = guest(mode, fault_probe_source(mode, spec.setup.format(**regs), spec.insn.format(**regs),
                                       spec.after.format(**regs)))
    install_fault_probe(g, UD_VECTOR)
    return g


def _kvm_offers(kvm, feature) -> bool:
    # KVM_GET_EMULATED_CPUID lists what KVM emulates rather than the CPU provides (MOVBE, RDPID):
    # as valid for a vCPU's CPUID as the supported table (api.rst KVM_GET_EMULATED_CPUID).
    return kvm.has_feature(feature) or has_feature(kvm.emulated_cpuid(), feature)


@pytest.mark.modes(*MODES)
@pytest.mark.parametrize("insn", _cases())
def test_without_its_cpuid_bit_raises_ud(kvm, guest, mode, insn):
    """With its feature bit cleared from KVM's supported CPUID (and, for XGETBV, CR4.OSXSAVE
    left 0), the instruction raises #UD at itself (SDM Vol. 2 / APM Vol. 3 for each instruction)."""
    spec = INSNS[insn]
    g = _guest(guest, mode, spec)
    table = kvm.supported_cpuid_copy()
    set_feature(table, spec.feature, False)
    g.vcpu.set_cpuid(table)
    expect_fault_at_probe(g, UD_VECTOR, f"{spec.mnemonic} with {FEATURES[spec.feature]} clear in the vCPU's CPUID")


@pytest.mark.modes(*MODES)
@pytest.mark.parametrize("insn", _cases())
def test_with_its_cpuid_bit_gives_the_sdm_result(kvm, guest, mode, insn):
    """With its feature bit in the vCPU's CPUID (where KVM offers it), the instruction completes
    with the SDM's result: MOVBE byte-swaps, RDTSCP/RDPID read IA32_TSC_AUX as the host set it,
    XGETBV(0) reads XCR0 as KVM_SET_XCRS set it (with CR4.OSXSAVE set), POPCNT counts, CRC32
    computes CRC-32C, CMPXCHG16B swaps on equal (SDM Vol. 2 for each)."""
    spec = INSNS[insn]
    if get_mode(mode).user and not spec.cpl3_completes:
        pytest.skip(f"{spec.mnemonic} is privileged: #GP(0) at CPL3 whatever CPUID says")
    if not _kvm_offers(kvm, spec.feature):
        pytest.skip(f"needs {FEATURES[spec.feature]}, which neither KVM_GET_SUPPORTED_CPUID nor "
                    "KVM_GET_EMULATED_CPUID reports")
    g = _guest(guest, mode, spec)
    table = kvm.supported_cpuid_copy()
    set_feature(table, spec.feature, True)
    g.vcpu.set_cpuid(table)
    if spec.feature in ("rdtscp", "rdpid"):
        g.vcpu.set_msr(MSR_IA32_TSC_AUX, TSC_AUX)
    if spec.feature == "xsave":
        sregs = g.vcpu.get_sregs()
        sregs.cr4 |= CR4_OSXSAVE
        g.set_sregs(sregs)
        xcrs = g.vcpu.get_xcrs()
        xcrs.nr_xcrs, xcrs.xcrs[0].xcr, xcrs.xcrs[0].value = 1, 0, XCR0_X87_SSE
        g.vcpu.set_xcrs(xcrs)
    outcome = probe_outcome(g, UD_VECTOR)
    assert not outcome.faulted, f"{spec.mnemonic} with {FEATURES[spec.feature]} in the vCPU's CPUID: {outcome}"
    want = list(spec.expected)
    assert list(outcome.results) == want, \
        f"{spec.mnemonic}: results {[hex(v) for v in outcome.results]}, expected {[hex(v) for v in want]}"
