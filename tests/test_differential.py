"""kvmtest.differential without KVM: the form table, the undefined-flag masks iced-x86 gives, and
the property itself catching a wrong result injected into one path and shrinking it to the
smallest input that shows it. Two Unicorn instances stand in for the paths (the suites' KVM paths
run in suites/emulator)."""

import dataclasses

import pytest
from hypothesis import settings

from kvmtest.differential import profiles
from kvmtest.differential.check import Divergence, check_form
from kvmtest.differential.forms import FORMS, Form, forms
from kvmtest.differential.inputs import OPERAND_OFFSETS, Inputs
from kvmtest.differential.instruction import flag_names, instruction, undefined_flags
from kvmtest.differential.outcome import Outcome
from kvmtest.differential.reference import KNOWN_DEVIATIONS, UnicornPath

ADD = Form("alu", "add", "mr", 32, 64)   # add dword ptr [rbx], ecx
SETTINGS = settings(settings.get_profile(profiles.FAST), max_examples=60)


def test_the_table_has_every_family_in_every_code_size_and_unique_ids():
    ids = [f.id for f in FORMS]
    assert len(ids) == len(set(ids)), "duplicate form ids"
    for family in ("alu", "unary", "shift", "bit", "cmov", "setcc", "muldiv", "xchg", "movx"):
        assert {f.code_bits for f in forms(family)} == {16, 32, 64}, family
    assert not [f.id for f in FORMS if f.size == 64 and f.code_bits != 64], "64-bit operands outside 64-bit code"
    assert len(FORMS) >= 300


@pytest.mark.parametrize("code_bits", [64, 32, 16])
def test_every_form_assembles_to_the_encoding_it_names(code_bits):
    """instruction() refuses bytes that decode to another iced-x86 Code than the form names (and
    a Keystone that picked another encoding would be caught here, without KVM)."""
    for form in FORMS:
        if form.code_bits == code_bits:
            instruction(form)


@pytest.mark.parametrize("form,imm,undefined", [
    (ADD, None, "-"),                                          # SDM ADD: all six defined
    (Form("muldiv", "mul", "m", 32, 64), None, "PF|AF|ZF|SF"),  # MUL: SF, ZF, AF, PF undefined
    (Form("muldiv", "div", "m", 32, 64), None, "CF|PF|AF|ZF|SF|OF"),  # DIV: all undefined
    (Form("bit", "bt", "mr", 32, 64), None, "PF|AF|SF|OF"),    # BT: OF, SF, AF, PF undefined
    (Form("alu", "and", "mr", 32, 64), None, "AF"),            # AND: AF undefined
    (Form("shift", "shl", "m1", 32, 64), None, "AF"),          # SHL by 1: OF defined, AF undefined
    (Form("shift", "shl", "mib", 32, 64), 2, "AF|OF"),         # SHL by 2: OF undefined too
    (Form("shift", "rcl", "mib", 16, 64), 32, "-"),            # RCL by 32: masked count 0, no flag affected
    (Form("shift", "rcl", "mib", 16, 64), 33, "-"),            # by 33: masked count 1, OF defined
    (Form("shift", "rcl", "mib", 16, 64), 2, "OF"),            # by 2: OF undefined
    (Form("shift", "rcl", "mib", 16, 64), 17, "OF"),           # by 17: masked count 17 > 1 (iced-x86 says none)
])
def test_undefined_flags_follow_the_sdm_flags_affected_sections(form, imm, undefined):
    """iced-x86's per-instruction RFLAGS info, mapped to RFLAGS bits, says what each instruction
    page's "Flags Affected" says (SDM Vol. 2A/2B ADD, MUL, DIV, BT, AND, SAL/SAR/SHL/SHR,
    RCL/RCR/ROL/ROR), immediate counts included."""
    insn = instruction(form)
    assert flag_names(undefined_flags(insn.bytes_with(imm), form.code_bits)) == undefined


class InjectedBug:
    """A path that is Unicorn except for one deliberate bug: CF of ADD flipped whenever the memory
    operand is at least 0x1234. It remembers the inputs of each wrong result it gave."""

    def __init__(self, name):
        self.name, self.path, self.wrong = name, UnicornPath(64), []

    def run(self, insn, code, inputs):
        outcome = self.path.run(insn, code, inputs)
        if inputs.mem >= 0x1234:
            self.wrong.append(inputs)
            return dataclasses.replace(outcome, rflags=outcome.rflags ^ 1)
        return outcome


def test_an_injected_wrong_flag_is_caught_and_shrunk_to_the_boundary():
    """The property finds the injected bug and hypothesis shrinks it to the smallest input that
    shows it: memory operand exactly 0x1234, every other input at its first (simplest) value; the
    failure message names the disagreeing flag, the paths and the inputs."""
    native, reference, emulated = UnicornPath(64), UnicornPath(64), InjectedBug("cpl3-mmio")
    native.name = "cpl3-ram"
    with pytest.raises(Divergence) as failure:
        check_form(ADD, [native, emulated, reference], SETTINGS, seed=1, note="reproduce: seed 1")
    shrunk = emulated.wrong[-1]   # hypothesis replays the shrunk example last
    assert shrunk == Inputs(rax=0, rcx=0, rdx=0, flags=0, mem=0x1234, offset=OPERAND_OFFSETS[0]), shrunk
    message = str(failure.value)
    assert "add dword ptr [rbx], ecx (010b)" in message
    assert "mem=0x1234" in message and "flags" in message
    assert "The CPU (cpl3-ram) and the reference (unicorn) agree; cpl3-mmio differ: suspect KVM's emulator" \
        in message, message
    assert message.rstrip().endswith("reproduce: seed 1")


def test_an_injected_wrong_memory_write_is_caught_and_shrunk():
    """A path whose write lands one byte off (the bytes at the operand's address + 1) is caught as
    a memory difference and shrunk to the first input that shows it: all zeros but the operand,
    which must be nonzero for the shifted write to differ."""
    class OffByOne(InjectedBug):
        def run(self, insn, code, inputs):
            outcome = self.path.run(insn, code, inputs)
            page = bytearray(outcome.page)
            at = inputs.offset
            page[at:at + 5] = b"\0" + page[at:at + 4]
            if bytes(page) != outcome.page:
                self.wrong.append(inputs)
            return dataclasses.replace(outcome, page=bytes(page))

    native, bad = UnicornPath(64), OffByOne("cpl0-mmio")
    native.name = "cpl3-ram"
    with pytest.raises(Divergence) as failure:
        check_form(Form("alu", "or", "mr", 32, 64), [native, bad], SETTINGS, seed=2)
    shrunk = bad.wrong[-1]
    assert (shrunk.rax, shrunk.rcx, shrunk.rdx, shrunk.flags, shrunk.offset) == (0, 0, 0, 0, OPERAND_OFFSETS[0])
    assert "memory:" in str(failure.value)


def test_agreeing_paths_pass():
    """The same model twice agrees with itself on every example: no false divergence from the
    comparison (masks, page, writes)."""
    for form in (ADD, Form("muldiv", "idiv", "m", 16, 32), Form("bit", "btc", "mr", 64, 64)):
        a, b = UnicornPath(form.code_bits), UnicornPath(form.code_bits)
        b.name = "cpl3-ram"
        check_form(form, [a, b], SETTINGS, seed=3)


@pytest.mark.parametrize("deviation", KNOWN_DEVIATIONS, ids=lambda d: d.id)
def test_known_reference_deviations_still_show_on_their_witness(deviation):
    """Each fact left out of the reference's comparison is still wrong in the Unicorn installed
    (against the SDM value its entry states), so an entry cannot outlive a fixed Unicorn and hide
    a real difference; and the entry applies to its own witness."""
    form, inputs, sdm_value = deviation.witness
    assert deviation.applies(form, inputs)
    outcome = UnicornPath(form.code_bits).run(instruction(form), instruction(form).code, inputs)
    assert outcome.gprs[deviation.fact] != sdm_value, \
        f"{deviation.id}: Unicorn now gives the SDM's {deviation.fact}={sdm_value:#x}; remove the entry"
    assert dict(outcome.unchecked).get(deviation.fact, "").startswith(deviation.id)


def test_a_path_that_cannot_finish_is_a_divergence():
    """An outcome with `error` (an unexpected exit, a timeout) disagrees with every finished one,
    and the report names it; it is not skipped for lack of register values."""
    class Broken(InjectedBug):
        def run(self, insn, code, inputs):
            return Outcome(gprs={}, rflags=0, page=b"", error="KVM_EXIT_INTERNAL_ERROR(emulation)")

    with pytest.raises(Divergence, match="KVM_EXIT_INTERNAL_ERROR"):
        check_form(ADD, [UnicornPath(64), Broken("cpl0-mmio")], SETTINGS, seed=4)
