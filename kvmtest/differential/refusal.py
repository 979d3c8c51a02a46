"""The refusal check: an instruction KVM's emulator does not implement (forms.REFUSED), run where
only the emulator can complete it (its memory operand in MMIO, or behind the forced-emulation
prefix), must end the way KVM documents an emulation failure, never with a wrong result:

  CPL0 (real mode included)   KVM_EXIT_INTERNAL_ERROR, suberror KVM_INTERNAL_ERROR_EMULATION
                              (api.rst 5, KVM_EXIT_INTERNAL_ERROR; x86.c handle_emulation_failure
                              exits to user space when the vCPU is at CPL0)
  CPL3                        #UD injected into the guest (handle_emulation_failure queues #UD
                              and, above CPL0, resumes the guest; without
                              KVM_CAP_EXIT_ON_EMULATION_FAILURE, api.rst section of that name)

Behind the forced-emulation prefix (x86.c handle_ud: EMULTYPE_TRAP_UD_FORCED) an instruction the
decoder does not know never reaches handle_emulation_failure: x86_emulate_instruction answers a
failed decode of a forced instruction with #UD at every CPL, as it does for a real #UD it was asked
to emulate. Only an instruction that decodes and is refused when executed (REFUSED_WHEN_EXECUTED)
ends as above.

The instruction runs once per such path with fixed inputs: the refusal does not depend on operand
values.
"""

from ..x86 import UD_VECTOR, vector_name
from .forms import REFUSED, Form
from .inputs import OPERAND_OFFSETS, Inputs
from .instruction import instruction
from .outcome import Outcome

EMULATION_FAILURE = "KVM_EXIT_INTERNAL_ERROR(KVM_INTERNAL_ERROR_EMULATION)"
# Refused forms that emulate.c decodes and then refuses to execute: group9's CMPXCHG8B entry takes
# CMPXCHG16B too, and em_cmpxchg8b returns X86EMUL_UNHANDLEABLE for the 16-byte operand. The others'
# opcode-table entries are N, a failed decode.
REFUSED_WHEN_EXECUTED = frozenset({"cmpxchg16b"})


class NotRefused(AssertionError):
    """A path that forces emulation did not end a refused instruction the documented way."""


def expected(path, form: Form) -> str:
    """The documented end of refused `form` on a KVM path (see the module docstring)."""
    if getattr(path, "fep", False) and form.mnemonic not in REFUSED_WHEN_EXECUTED:
        return vector_name(UD_VECTOR)
    return EMULATION_FAILURE if path.mode.cpl == 0 else vector_name(UD_VECTOR)


def observed(outcome: Outcome) -> str:
    """How a run ended, in the terms of expected(): the KVM exit, the exception, or a result."""
    if outcome.exit:
        return outcome.exit
    if outcome.error:
        return outcome.error
    if outcome.exception:
        return vector_name(outcome.exception[0])
    return "completed (a result, no exit or exception)"


def check_refusal(form: Form, paths) -> None:
    """Run `form` on each path in `paths` that forces emulation (MMIO, forced-emulation prefix);
    NotRefused naming every one that ended otherwise."""
    insn = instruction(form)
    inputs = Inputs(rax=0, rcx=0, rdx=0, flags=0, mem=0, offset=OPERAND_OFFSETS[0],
                    xmm=0 if form.uses_xmm else None)
    wrong = []
    for path in paths:
        if getattr(path, "forces_emulation", False):
            got, want = observed(path.run(insn, insn.code, inputs)), expected(path, form)
            if got != want:
                wrong.append(f"  {path.name} ({path.mode.name}): expected {want}, observed {got}")
    if wrong:
        raise NotRefused(f"{form.text} ({insn.code.hex()}) in {form.code_bits}-bit code where only KVM's emulator "
                         f"can run it ({REFUSED[form.mnemonic]}):\n" + "\n".join(wrong))
