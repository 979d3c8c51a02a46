"""The differential check of one form: hypothesis draws inputs, every path runs the instruction
with them, and the outcomes must agree on everything the SDM defines. A disagreement fails with
the instruction's bytes, the inputs and every path's result side by side, after hypothesis has
shrunk the inputs to the smallest it can find that still disagree.
"""

from typing import Protocol

from hypothesis import given
from hypothesis import seed as hypothesis_seed
from hypothesis import settings as Settings

from .forms import Form
from .inputs import Inputs, inputs
from .instruction import Instruction, instruction
from .outcome import Outcome, disagreements, groups, report, sdm_undefined

NATIVE, REFERENCE = "cpl3-ram", "unicorn"


class Path(Protocol):
    """A way to execute one instruction: a KVM path (kvm_paths.KvmPath) or the reference."""

    name: str

    def run(self, insn: Instruction, code: bytes, inputs: Inputs) -> Outcome:
        """Execute `code` (insn with its immediate) once with `inputs`; what it left."""
        ...


class Divergence(AssertionError):
    """The paths disagree; the message has everything needed to tell whose fault it is."""


def attribution(insn: Instruction, code: bytes, outcomes: dict[str, Outcome], undefined: tuple[str, ...] = ()) -> str:
    """Who agrees with whom, and so whom to suspect first: kvmtest or the reference when the CPU and
    the reference disagree; KVM's emulator when they agree and an emulated path differs."""
    found = groups(insn, code, outcomes, undefined)
    text = "agreeing paths: " + " | ".join(", ".join(g) for g in found)
    group_of = {name: i for i, g in enumerate(found) for name in g}
    if NATIVE in outcomes and REFERENCE in outcomes:
        if group_of[NATIVE] == group_of[REFERENCE]:
            odd = [n for n in outcomes if group_of[n] != group_of[NATIVE]]
            return f"{text}. The CPU ({NATIVE}) and the reference ({REFERENCE}) agree; {', '.join(odd)} differ: " \
                   "suspect KVM's emulator"
        return f"{text}. The CPU ({NATIVE}) and the reference ({REFERENCE}) disagree: suspect the reference " \
               "model or kvmtest before KVM"
    return f"{text}. No native path in {insn.form.code_bits}-bit code on this host: compare the KVM paths " \
           f"with {REFERENCE} and with the SDM"


def run_paths(insn: Instruction, paths, inputs: Inputs) -> tuple[bytes, dict[str, Outcome]]:
    """Every path's outcome for `inputs` (the instruction with its immediate patched in)."""
    code = insn.bytes_with(inputs.imm)
    return code, {p.name: p.run(insn, code, inputs) for p in paths}


def compare(insn: Instruction, code: bytes, inputs: Inputs, outcomes: dict[str, Outcome], note: str = "") -> None:
    """Divergence when the outcomes disagree on anything compared (kvmtest.differential.outcome)."""
    undefined = sdm_undefined(insn.form, inputs)
    rows = disagreements(insn, code, outcomes, undefined)
    if rows:
        message = report(insn, code, inputs, outcomes, rows, attribution(insn, code, outcomes, undefined))
        raise Divergence(message + (f"\n  {note}" if note else ""))


def check_form(form: Form, paths: list[Path], settings: Settings, seed: int | str, note: str = "") -> None:
    """Run the differential property of `form` over `paths` with hypothesis `settings` from `seed`
    (so a failure reproduces with the same seed); Divergence (shrunk) when the paths disagree.
    `note` ends every failure message (how to reproduce it)."""
    insn = instruction(form)

    @settings
    @hypothesis_seed(seed)
    @given(inputs(form))
    def differential(case: Inputs) -> None:
        code, outcomes = run_paths(insn, paths, case)
        compare(insn, code, case, outcomes, note)

    # The example-database key: with no database (profiles.py) hypothesis has no use for it, but
    # without one set it hashes the test's source on every run (inspect.getsource: file stats and a
    # parse per check, slow over 9p in a VM). hypothesis.find() presets this private attribute the same
    # way; were it renamed, only this saving would be lost (tests/test_differential.py notices).
    differential._hypothesis_internal_database_key = None   # type: ignore[attr-defined]
    differential()
