"""The refusal check: an instruction KVM's emulator does not implement (forms.REFUSED), run with
its memory operand in MMIO so that only the emulator can complete it, must end the way KVM
documents an emulation failure, never with a wrong result:

  CPL0 (real mode included)   KVM_EXIT_INTERNAL_ERROR, suberror KVM_INTERNAL_ERROR_EMULATION
                              (api.rst 5, KVM_EXIT_INTERNAL_ERROR; x86.c handle_emulation_failure
                              exits to user space when the vCPU is at CPL0)
  CPL3                        #UD injected into the guest (handle_emulation_failure queues #UD
                              and, above CPL0, resumes the guest; without
                              KVM_CAP_EXIT_ON_EMULATION_FAILURE, api.rst section of that name)

The instruction runs once per MMIO path with fixed inputs: the refusal is the decoder's and does
not depend on operand values.
"""

from ..x86 import UD_VECTOR, vector_name
from .forms import REFUSED, Form
from .inputs import OPERAND_OFFSETS, Inputs
from .instruction import instruction
from .outcome import Outcome

EMULATION_FAILURE = "KVM_EXIT_INTERNAL_ERROR(KVM_INTERNAL_ERROR_EMULATION)"


class NotRefused(AssertionError):
    """An MMIO path did not end a refused instruction the documented way."""


def expected(path) -> str:
    """The documented end of a refused instruction on a KVM path (see the module docstring)."""
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
    """Run `form` on each MMIO path in `paths`; NotRefused naming every path that ended otherwise."""
    insn = instruction(form)
    inputs = Inputs(rax=0, rcx=0, rdx=0, flags=0, mem=0, offset=OPERAND_OFFSETS[0],
                    xmm=0 if form.uses_xmm else None)
    wrong = []
    for path in paths:
        if getattr(path, "mmio", False):
            got, want = observed(path.run(insn, insn.code, inputs)), expected(path)
            if got != want:
                wrong.append(f"  {path.name} ({path.mode.name}): expected {want}, observed {got}")
    if wrong:
        raise NotRefused(f"{form.text} ({insn.code.hex()}) in {form.code_bits}-bit code with its operand in MMIO "
                         f"(KVM's emulator: {REFUSED[form.mnemonic]}):\n" + "\n".join(wrong))
