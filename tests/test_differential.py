"""kvmtest.differential without KVM: the form table, the undefined-flag masks iced-x86 gives, and
the property itself catching a wrong result injected into one path and shrinking it to the
smallest input that shows it. Two Unicorn instances stand in for the paths (the suites' KVM paths
run in suites/emulator)."""

import dataclasses

import pytest
from hypothesis import settings

from kvmtest.differential import profiles
from kvmtest.differential.check import Divergence, check_form
from kvmtest.differential.forms import FORMS, Form, forms, refused_forms
from kvmtest.differential.inputs import MARGIN, OPERAND_OFFSETS, PAGE_SIZE, Inputs
from kvmtest.differential.instruction import flag_names, instruction, undefined_flags
from kvmtest.differential.outcome import GPRS_64, Outcome, disagreements, sdm_undefined
from kvmtest.differential.reference import KNOWN_DEVIATIONS, UnicornPath
from kvmtest.differential.refusal import NotRefused, check_refusal
from kvmtest.x86 import RFLAGS_DF

ADD = Form("alu", "add", "mr", 32, 64)   # add dword ptr [rbx], ecx
SETTINGS = settings(settings.get_profile(profiles.FAST), max_examples=60)


def test_the_table_has_every_family_in_every_code_size_and_unique_ids():
    ids = [f.id for f in FORMS]
    assert len(ids) == len(set(ids)), "duplicate form ids"
    for family in ("alu", "unary", "shift", "bit", "cmov", "setcc", "muldiv", "xchg", "movx", "cmpxchgnb", "bitscan",
                   "byteswap", "dshift", "string", "stack", "sse", "refused"):
        assert {f.code_bits for f in forms(family)} == {16, 32, 64}, family
    # 64-bit general-purpose operands exist only in 64-bit mode; CMPXCHG8B's m64 and MOVQ's m64 everywhere.
    assert not [f.id for f in FORMS if f.size == 64 and f.code_bits != 64 and f.family not in ("cmpxchgnb", "sse")], \
        "64-bit operands outside 64-bit code"
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
            window = bytearray(outcome.window)
            at = MARGIN + inputs.offset
            window[at:at + 5] = b"\0" + window[at:at + 4]
            if bytes(window) != outcome.window:
                self.wrong.append(inputs)
            return dataclasses.replace(outcome, window=bytes(window))

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
    for form in (ADD, Form("muldiv", "idiv", "m", 16, 32), Form("bit", "btc", "mr", 64, 64),
                 Form("string", "cmps", "str", 16, 16, rep="repe"), Form("string", "movs", "str", 64, 64, rep="rep"),
                 Form("sse", "movdqu", "mx", 128, 32), Form("stack", "pop", "m", 64, 64),
                 Form("cmpxchgnb", "cmpxchg8b", "m", 64, 64), Form("dshift", "shrd", "mrcl", 16, 32)):
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
    outcome = UnicornPath(form.code_bits, workarounds=False).run(instruction(form), instruction(form).code, inputs)
    assert deviation.observe(outcome) != sdm_value, \
        f"{deviation.id}: Unicorn now gives the SDM's value {sdm_value!r}; remove the entry"
    assert dict(outcome.unchecked).get(deviation.fact, "").startswith(deviation.id)
    if deviation.rewrite:   # the workaround gives the SDM's value
        fixed = UnicornPath(form.code_bits).run(instruction(form), instruction(form).code, inputs)
        assert deviation.observe(fixed) == sdm_value


def test_a_path_that_cannot_finish_is_a_divergence():
    """An outcome with `error` (an unexpected exit, a timeout) disagrees with every finished one,
    and the report names it; it is not skipped for lack of register values."""
    class Broken(InjectedBug):
        def run(self, insn, code, inputs):
            return Outcome(gprs={}, rflags=0, window=b"", error="KVM_EXIT_INTERNAL_ERROR(emulation)")

    with pytest.raises(Divergence, match="KVM_EXIT_INTERNAL_ERROR"):
        check_form(ADD, [UnicornPath(64), Broken("cpl0-mmio")], SETTINGS, seed=4)


def test_a_path_that_ignores_df_is_caught_and_shrunk():
    """A string path that runs every instruction with DF=0 is caught for REP MOVSB and shrunk to
    DF=1 with a single element: the smallest input where the direction matters."""
    class IgnoresDf(InjectedBug):
        def run(self, insn, code, inputs):
            if inputs.flags & RFLAGS_DF:
                self.wrong.append(inputs)
            return self.path.run(insn, code, dataclasses.replace(inputs, flags=inputs.flags & ~RFLAGS_DF))

    form = Form("string", "movs", "str", 8, 64, rep="rep")
    native, bad = UnicornPath(64), IgnoresDf("cpl3-mmio")
    native.name = "cpl3-ram"
    with pytest.raises(Divergence, match="rsi|rdi|memory"):
        check_form(form, [native, bad], SETTINGS, seed=5)
    shrunk = bad.wrong[-1]
    assert shrunk.flags == RFLAGS_DF and shrunk.rcx == 1, shrunk


def test_straddling_offsets_put_the_operand_across_the_page_edges():
    """Multi-byte operands are drawn half below the page and, outside 16-bit code, half past its
    end; the window holds the operand there (the RAM either side of the page is in the window)."""
    form = Form("alu", "add", "mr", 32, 64)
    low = Inputs(rax=0, rcx=0, rdx=0, flags=0, mem=0x11223344, offset=-2)
    high = dataclasses.replace(low, offset=PAGE_SIZE - 2)
    assert low.window(form)[MARGIN - 2:MARGIN + 2] == bytes.fromhex("44332211")
    assert high.window(form)[MARGIN + PAGE_SIZE - 2:MARGIN + PAGE_SIZE + 2] == bytes.fromhex("44332211")


def test_bsf_destination_is_compared_only_for_a_nonzero_source():
    """BSF's destination is undefined after a zero source (SDM Vol. 2A BSF) and left out then, and
    only then: the same register difference is a divergence for a nonzero source."""
    form = Form("bitscan", "bsf", "rm", 32, 64)
    insn = instruction(form)
    a = Outcome(gprs=dict.fromkeys(GPRS_64, 0), rflags=0x42, window=b"")
    b = dataclasses.replace(a, gprs={**a.gprs, "rcx": 5})
    zero = Inputs(rax=0, rcx=0, rdx=0, flags=0, mem=0, offset=0x800)
    assert not disagreements(insn, insn.code, {"x": a, "y": b}, sdm_undefined(form, zero))
    one = dataclasses.replace(zero, mem=1)
    assert [k for k, _ in disagreements(insn, insn.code, {"x": a, "y": b}, sdm_undefined(form, one))] == ["rcx"]


@pytest.mark.parametrize("form", refused_forms()[:1], ids=lambda f: f.id)
def test_refusal_check_fails_when_an_mmio_path_completes_the_instruction(form):
    """The refusal check fails, naming the path and what it expected, when an MMIO path completes a
    refused instruction (Unicorn standing in for a KVM that emulated it) or ends it otherwise."""
    class Completes(UnicornPath):
        mmio = forces_emulation = True
        mode = type("M", (), {"cpl": 3, "name": "long64-cpl3"})()

    class Refuses:
        name, mmio, forces_emulation, mode = "cpl0-mmio", True, True, type("M", (), {"cpl": 0, "name": "long64"})()

        def run(self, insn, code, inputs):
            return Outcome(gprs={}, rflags=0, window=b"", error="x",
                           exit="KVM_EXIT_INTERNAL_ERROR(KVM_INTERNAL_ERROR_EMULATION)")

    completes = Completes(form.code_bits)
    completes.name = "cpl3-mmio"
    check_refusal(form, [Refuses()])
    with pytest.raises(NotRefused, match="cpl3-mmio \\(long64-cpl3\\): expected #UD, observed completed"):
        check_refusal(form, [Refuses(), completes])
