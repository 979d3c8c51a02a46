"""Cache-line flushes and memory fences against the vCPU's CPUID: with the feature bit they complete
(a flush leaves the line's data in memory), without it they raise #UD. Checked at CPL0 and CPL3 in
64-bit, compatibility and 32-bit protected mode (kvm-unit-tests memory).

SDM Vol. 2A/2B, each instruction's exceptions: CLFLUSH "#UD If CPUID.01H:EDX.CLFSH[bit 19] = 0";
CLFLUSHOPT "#UD If CPUID.(EAX=07H, ECX=0H):EBX.CLFLUSHOPT[bit 23] = 0"; CLWB "#UD If
CPUID.(EAX=07H, ECX=0H):EBX.CLWB[bit 24] = 0"; SFENCE "#UD If CPUID.01H:EDX.SSE[bit 25] = 0";
LFENCE and MFENCE "#UD If CPUID.01H:EDX.SSE2[bit 26] = 0". CLFLUSH, CLFLUSHOPT and CLWB write a
modified line back before invalidating it (CLWB may keep it), so memory keeps the data stored
before them; they run at any CPL. #UD is a fault: the saved RIP is the instruction. The vCPU's
processor is the one its CPUID (api.rst KVM_SET_CPUID2) describes.

66 0F AE with a register operand (ModRM F0) is not CLWB, whose operand is m8 (SDM CLWB: "66 0F AE
/6 CLWB m8"); on Intel processors that register form is TPAUSE, which raises "#UD If
CPUID.7.0:ECX.WAITPKG[bit 5] = 0" (SDM TPAUSE). The APM defines no TPAUSE, and AMD processors run
the encoding as MFENCE (0F AE F0) with the 66 prefix ignored, so that check is for Intel vCPUs.

None of these has a VMX or SVM intercept, so hardware runs them for any guest whatever its CPUID:
only code KVM emulates can honour a cleared bit (the `#UD` checks record where a host cannot).
PCOMMIT, which the peer program also probes, was withdrawn by Intel in 2016 and is no longer
defined by the SDM: there is no documented outcome to check.
"""

from dataclasses import dataclass

import pytest

from kvmtest.cpuid import FEATURES, set_feature, vendor
from kvmtest.guest import layout as L
from kvmtest.guest.fault_probe import expect_fault_at_probe, fault_probe_source, install_fault_probe, probe_outcome
from kvmtest.guest.mode_select import select
from kvmtest.guest.modes import get_mode
from kvmtest.x86 import UD_VECTOR

STORED = 0x5A17C0DE
MODES = select(sample="per-code-size", protected=True, order="widest")


@dataclass(frozen=True)
class CacheInsn:
    mnemonic: str
    feature: str
    insn: str            # {b}: RBX/EBX, which holds the address of a line at DATA
    flush: bool = False  # a flush: the data stored before it must still read back
    has_positive: bool = True
    intel_only: bool = False


# Keystone knows CLFLUSH and the fences; CLFLUSHOPT, CLWB and the register form are spelled out
# (each .byte line decodes to the instruction its comment names, checked by the assembler's decoder).
INSNS = {i.mnemonic: i for i in [
    CacheInsn("CLFLUSH", "clflush", "clflush byte ptr [{b}]", flush=True),
    CacheInsn("CLFLUSHOPT", "clflushopt", ".byte 0x66, 0x0f, 0xae, 0x3b    # CLFLUSHOPT [rbx]/[ebx]", flush=True),
    CacheInsn("CLWB", "clwb", ".byte 0x66, 0x0f, 0xae, 0x33    # CLWB [rbx]/[ebx]", flush=True),
    CacheInsn("SFENCE", "sse", "sfence"),
    CacheInsn("LFENCE", "sse2", "lfence"),
    CacheInsn("MFENCE", "sse2", "mfence"),
    CacheInsn("CLWB-register-form", "waitpkg", ".byte 0x66, 0x0f, 0xae, 0xf0    # TPAUSE eax, not CLWB",
              has_positive=False, intel_only=True),
]}


def _guest(guest, mode, spec):
    b = "rbx" if get_mode(mode).code_bits == 64 else "ebx"
    setup = f"mov {b}, {L.DATA:#x}\nmov dword ptr [{b}], {STORED:#x}"
    after = f"mov eax, dword ptr [{b}]\nGUEST_SYNC eax" if spec.flush else ""
    g = guest(mode, fault_probe_source(mode, setup, spec.insn.format(b=b), after))
    install_fault_probe(g, UD_VECTOR)
    return g


@pytest.mark.modes(*MODES)
@pytest.mark.parametrize("insn", list(INSNS))
def test_without_its_cpuid_bit_raises_ud(kvm, guest, mode, insn):
    """With its feature bit cleared from KVM's supported CPUID, CLFLUSH, CLFLUSHOPT, CLWB, SFENCE,
    LFENCE and MFENCE raise #UD at themselves, as does 66 0F AE F0 (TPAUSE) without WAITPKG (SDM
    Vol. 2 for each instruction; kvm-unit-tests memory)."""
    spec = INSNS[insn]
    table = kvm.supported_cpuid_copy()
    if spec.intel_only and vendor(table) != "GenuineIntel":
        pytest.skip(f"{spec.mnemonic}: TPAUSE is Intel's (SDM); this {vendor(table)} vCPU runs 66 0F AE F0 as MFENCE")
    g = _guest(guest, mode, spec)
    set_feature(table, spec.feature, False)
    g.vcpu.set_cpuid(table)
    expect_fault_at_probe(g, UD_VECTOR, f"{spec.mnemonic} with {FEATURES[spec.feature]} clear in the vCPU's CPUID")


@pytest.mark.modes(*MODES)
@pytest.mark.parametrize("insn", [name for name, spec in INSNS.items() if spec.has_positive])
def test_with_its_cpuid_bit_completes(kvm, guest, mode, insn):
    """With its feature bit in the vCPU's CPUID (where KVM offers it), the instruction completes
    at any CPL, and after CLFLUSH, CLFLUSHOPT or CLWB the flushed line still reads back what was
    stored before it (SDM Vol. 2 CLFLUSH, CLFLUSHOPT, CLWB, SFENCE, LFENCE, MFENCE)."""
    spec = INSNS[insn]
    if not kvm.has_feature(spec.feature):
        pytest.skip(f"needs {FEATURES[spec.feature]}, which KVM_GET_SUPPORTED_CPUID does not report")
    g = _guest(guest, mode, spec)
    table = kvm.supported_cpuid_copy()
    set_feature(table, spec.feature, True)
    g.vcpu.set_cpuid(table)
    outcome = probe_outcome(g, UD_VECTOR)
    assert not outcome.faulted, f"{spec.mnemonic} with {FEATURES[spec.feature]} in the vCPU's CPUID: {outcome}"
    want = [STORED] if spec.flush else []
    assert list(outcome.results) == want, \
        f"{spec.mnemonic}: the line read back {[hex(v) for v in outcome.results]} after it, expected " \
        f"{[hex(v) for v in want]} (the data stored before the flush)"
