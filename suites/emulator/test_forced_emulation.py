"""The forced-emulation paths of the differential checks (cpl3-fep, cpl0-fep): behind KVM's prefix
the instruction is run by KVM's emulator, not by the CPU, so their agreement with the other paths
is a check of the emulator (kvmtest.differential.kvm_paths)."""

import pytest

from kvmtest import forced_emulation
from kvmtest.differential.forms import Form
from kvmtest.differential.inputs import MARGIN, Inputs
from kvmtest.differential.instruction import STATUS_FLAGS, flag_names, instruction
from kvmtest.differential.kvm_paths import KvmPath
from kvmtest.options import settings
from kvmtest.x86 import RFLAGS_AF, RFLAGS_CF, RFLAGS_PF, RFLAGS_ZF

pytestmark = pytest.mark.skipif(not forced_emulation.enabled(), reason=forced_emulation.SKIP_REASON)

ADD = Form("alu", "add", "mr", 32, 64)   # add dword ptr [rbx], ecx in 64-bit code
INPUTS = Inputs(rax=0, rcx=0x8000_0001, rdx=0, flags=0, mem=0x7FFF_FFFF, offset=0x800)
# SDM Vol. 2A ADD and Vol. 1 3.4.3.1: 0x7FFFFFFF + 0x80000001 = 0x1_00000000, so the dword becomes 0
# with CF (carry out of bit 31), ZF, PF (a zero low byte has even parity) and AF (carry out of bit 3)
# set, SF clear and OF clear (the operands' signs differ).
SUM, FLAGS = 0, RFLAGS_CF | RFLAGS_ZF | RFLAGS_PF | RFLAGS_AF
STAT = "insn_emulation"   # KVM's per-vCPU count of instructions decoded by its emulator (x86.c)


def _run_counting(path: KvmPath):
    """The outcome of ADD with INPUTS on `path`, and by how much the vCPU's insn_emulation statistic
    (KVM_GET_STATS_FD, api.rst 4.133) rose during that run."""
    insn = instruction(ADD)
    with path.vcpu.stats() as stats:
        if STAT not in stats.by_name:
            pytest.skip(f"the vCPU stats fd has no {STAT!r} statistic")
        before = stats.value(STAT)
        outcome = path.run(insn, insn.code, INPUTS)
        return outcome, stats.value(STAT) - before


def test_the_prefix_hands_the_next_instruction_to_kvms_emulator(kvm, emulator_cpuid, pytestconfig):
    """With the kvm module's force_emulation_prefix set, UD2 followed by "kvm" (0f 0b 6b 76 6d) before
    an instruction makes KVM skip those five bytes and run the instruction in its emulator (x86.c
    handle_ud, EMULTYPE_TRAP_UD_FORCED); on the CPU, UD2 always raises #UD (SDM Vol. 2B UD). So the
    cpl3-fep path's ADD [m], r32 must complete with the SDM's result (Vol. 2A ADD) and no exception,
    as the native cpl3-ram run of the same bytes does, and KVM's insn_emulation statistic must count
    exactly one instruction more for it than for the native run (both runs' protocol exits, MMIO at
    CPL3, are emulated alike)."""
    timeout = settings(pytestconfig)["kvm_guest_timeout"]
    native = KvmPath(kvm, "cpl3-ram", "long64-cpl3", False, timeout, emulator_cpuid)
    forced = KvmPath(kvm, "cpl3-fep", "long64-cpl3", False, timeout, emulator_cpuid, fep=True)
    try:
        runs = {path.name: _run_counting(path) for path in (native, forced)}
    finally:
        native.close()
        forced.close()
    at = MARGIN + INPUTS.offset
    for name, (outcome, _) in runs.items():
        assert outcome.error is None and outcome.exception is None, \
            f"{name}: {ADD.text} ended with {outcome.error or outcome.exception}, expected it to complete"
        dword = int.from_bytes(outcome.window[at:at + 4], "little")
        flags = outcome.rflags & STATUS_FLAGS
        assert (dword, flags) == (SUM, FLAGS), \
            f"{name}: {ADD.text} with [m]={INPUTS.mem:#x}, ecx={INPUTS.rcx:#x}: expected [m]={SUM:#x} and " \
            f"{flag_names(FLAGS)}, observed [m]={dword:#x} and {flag_names(flags)}"
    extra = runs["cpl3-fep"][1] - runs["cpl3-ram"][1]
    assert extra == 1, \
        f"{STAT} rose by {runs['cpl3-fep'][1]} on the forced run and {runs['cpl3-ram'][1]} on the native one: " \
        f"expected the forced run to emulate exactly one instruction more (the ADD), observed {extra}"
