"""The register forms of kvmtest.differential without KVM: each assembles to ModRM mod=3 with the
registers it names, the table covers every fastop selftests' x86/fastops_test runs on registers
(and the aliased `xor edx, edx` kind), the inputs and the undefined-destination rule follow the
register that replaces the memory operand, and a wrong register result is caught (two Unicorn
instances stand in for the paths; suites/emulator runs them on KVM)."""

import dataclasses

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from iced_x86 import Decoder, Mnemonic, OpKind, Register

from kvmtest.differential import profiles
from kvmtest.differential.check import Divergence, check_form
from kvmtest.differential.forms import FORMS, REGISTER_SHAPES, Form
from kvmtest.differential.inputs import Inputs, inputs
from kvmtest.differential.instruction import INSN_ADDR, instruction
from kvmtest.differential.outcome import GPRS_64, Outcome, disagreements, sdm_undefined
from kvmtest.differential.reference import UnicornPath

REGISTER_FORMS = [f for f in FORMS if f.shape in REGISTER_SHAPES]
SETTINGS = hypothesis_settings(hypothesis_settings.get_profile(profiles.FAST), max_examples=60)
# The register-operand fastops of selftests' x86/fastops_test (suites/peers.toml), by the smallest
# operand size it runs them at: 8 for those with an r/m8 form, 16 for the others.
FASTOPS = {**dict.fromkeys(("add", "adc", "sub", "sbb", "and", "or", "xor", "cmp", "test", "inc", "dec", "neg",
                            "not", "rol", "ror", "rcl", "rcr", "shl", "shr", "sar", "div"), 8),
           **dict.fromkeys(("bt", "bts", "btr", "btc", "bsf", "bsr", "imul"), 16)}
# The registers each shape puts in its explicit operands, in Intel order (16 bits: named at 64,
# narrowed below); IMM: the immediate.
IMM = "imm"
OPERANDS = {"gr": ("rdx", "rcx"), "rg": ("rcx", "rdx"), "gg": ("rdx", "rdx"), "gcl": ("rdx", "cl"),
            "gib": ("rdx", IMM), "rgi": ("rcx", "rdx", IMM), "rgi8": ("rcx", "rdx", IMM)}


REGISTER_NAMES = {value: name for name, value in vars(Register).items() if name.isupper()}


def _register(name: str, bits: int) -> int:
    """iced-x86's Register for `name` (rcx, rdx, cl) narrowed to `bits`."""
    if name == "cl":
        return Register.CL
    low = name[1]   # c, d
    return getattr(Register, {8: f"{low.upper()}L", 16: f"{low.upper()}X", 32: f"E{low.upper()}X",
                              64: f"R{low.upper()}X"}[bits])


@pytest.mark.parametrize("form", REGISTER_FORMS, ids=lambda f: f.id)
def test_register_form_assembles_to_mod_3_with_the_registers_it_names(form):
    """The bytes decode (iced-x86) to the form's mnemonic with ModRM.mod = 3 and exactly the
    operands the shape names: RDX (DL/DX/EDX) in ModRM.rm, RCX in ModRM.reg or as CL, RCX in
    ModRM.rm for MUL/IMUL/DIV/IDIV g (SDM Vol. 2A 2.1.5, Table 2-2); no memory operand."""
    insn = instruction(form)
    decoded = Decoder(form.code_bits, insn.code, ip=INSN_ADDR).decode()
    assert decoded.mnemonic == getattr(Mnemonic, form.mnemonic.upper()), form.text
    modrm = insn.code[insn.imm_offset - 1 if insn.imm_size else -1]   # mod=3: no SIB, no displacement
    assert modrm >> 6 == 3, f"{form.id}: {insn.code.hex()}: ModRM {modrm:#04x} has mod {modrm >> 6}, expected 3"
    want = OPERANDS.get(form.shape, (form.rm_reg,))
    assert decoded.op_count == len(want), f"{form.id}: {decoded.op_count} operands, expected {want}"
    for i, name in enumerate(want):
        if name == IMM:
            assert decoded.op_kind(i) in (OpKind.IMMEDIATE8, OpKind.IMMEDIATE16, OpKind.IMMEDIATE32,
                                          OpKind.IMMEDIATE8TO16, OpKind.IMMEDIATE8TO32, OpKind.IMMEDIATE8TO64,
                                          OpKind.IMMEDIATE32TO64), form.id
        else:
            assert decoded.op_kind(i) == OpKind.REGISTER, f"{form.id}: operand {i} is not a register"
            got = REGISTER_NAMES.get(decoded.op_register(i))
            assert decoded.op_register(i) == _register(name, form.size), \
                f"{form.id}: operand {i} is {got}, expected {name} at {form.size} bits"
    assert (form.memory, form.base, form.mem_size) == (False, None, 0)


def test_one_operand_inc_dec_outside_64_bit_code_use_the_modrm_encoding():
    """INC/DEC of a 16/32-bit register in 16/32-bit code are written as FF /0 and FF /1 (the
    assemblers' choice, 40+rd/48+rd, has no ModRM byte), with 66 where the operand size is not the
    code's (SDM Vol. 2A INC, DEC; Vol. 1 3.6)."""
    assert instruction(Form("unary", "inc", "g", 32, 32)).code == bytes.fromhex("ffc2")
    assert instruction(Form("unary", "dec", "g", 16, 32)).code == bytes.fromhex("66ffca")
    assert instruction(Form("unary", "inc", "g", 32, 16)).code == bytes.fromhex("66ffc2")
    assert instruction(Form("unary", "dec", "g", 16, 16)).code == bytes.fromhex("ffca")
    assert instruction(Form("unary", "inc", "g", 32, 64)).code == bytes.fromhex("ffc2")


def test_the_register_forms_cover_every_fastop_of_the_selftest_in_every_code_size():
    """Each fastop selftests' x86/fastops_test runs on registers has a register form at every
    operand size from its smallest (8, or 16 where no r/m8 form exists) to 64, in 16-, 32- and
    64-bit code (64-bit operands in 64-bit code only); shifts and rotates by CL and by imm8, BT* by a
    register and by imm8, IMUL with two and three operands; aliased `gg` forms exist."""
    have = {(f.mnemonic, f.shape, f.size, f.code_bits) for f in REGISTER_FORMS}
    for mnemonic, smallest in FASTOPS.items():
        shapes = {"rol": ("gcl", "gib"), "ror": ("gcl", "gib"), "rcl": ("gcl", "gib"), "rcr": ("gcl", "gib"),
                  "shl": ("gcl", "gib"), "shr": ("gcl", "gib"), "sar": ("gcl", "gib"),
                  "bt": ("gr", "gib"), "bts": ("gr", "gib"), "btr": ("gr", "gib"), "btc": ("gr", "gib"),
                  "bsf": ("rg",), "bsr": ("rg",), "imul": ("rg", "rgi", "rgi8", "g"),
                  "inc": ("g",), "dec": ("g",), "neg": ("g",), "not": ("g",), "div": ("g",)}.get(mnemonic, ("gr",))
        for code_bits in (16, 32, 64):
            for size in (8, 16, 32, 64):
                if size < smallest or (size == 64 and code_bits != 64):
                    continue
                for shape in shapes:
                    assert (mnemonic, shape, size, code_bits) in have, (mnemonic, shape, size, code_bits)
    aliased = {f.mnemonic for f in REGISTER_FORMS if f.shape == "gg"}
    assert {"xor", "sub", "imul", "bsf", "btc"} <= aliased
    assert len({f.id for f in REGISTER_FORMS}) == len(REGISTER_FORMS)


@pytest.mark.parametrize("form", [Form("muldiv", "div", "g", 32, 64), Form("shift", "rcl", "gcl", 16, 32),
                                  Form("bit", "bts", "gr", 64, 64), Form("alu", "xor", "gg", 8, 16)],
                         ids=lambda f: f.id)
def test_register_form_inputs_leave_the_memory_operand_out(form):
    """A register form's inputs put nothing at [RBX]: RBX keeps its canary, no operand offset is
    drawn, the memory window is the pattern alone; the register values are drawn."""
    seen = []

    @hypothesis_settings(SETTINGS, max_examples=20)
    @given(inputs(form))
    def draw(case: Inputs):
        seen.append(case)
        assert case.offset == 0 and case.mem == 0
        assert case.registers(form)["rbx"] == Inputs(0, 0, 0, 0, 0, 0).registers(form)["rbx"]
        assert case.window(form) == Inputs(0, 0, 0, 0, 0, 0).window(form)

    draw()
    assert len({(c.rcx, c.rdx) for c in seen}) > 1, "the register values are not drawn"


def test_divide_register_form_draws_quotients_that_overflow():
    """DIV ECX: the dividend's upper half is drawn against ECX (the divisor that replaces [m]), so
    both quotients in range and #DE ones (EDX >= ECX, or ECX = 0) come up (SDM Vol. 2A DIV)."""
    form = Form("muldiv", "div", "g", 32, 64)
    faults = []

    @hypothesis_settings(SETTINGS, max_examples=200)
    @given(inputs(form))
    def draw(case: Inputs):
        divisor, high = case.rcx & 0xFFFFFFFF, case.rdx & 0xFFFFFFFF
        faults.append(divisor == 0 or high >= divisor)

    draw()
    assert any(faults) and not all(faults), f"{sum(faults)} of {len(faults)} draws overflow"


def test_bsf_register_forms_leave_out_the_destination_only_for_a_zero_source():
    """BSF's destination is undefined for a zero source (SDM Vol. 2A BSF): for `bsf ecx, edx` the
    source is EDX and ECX is left out; for `bsf edx, edx` EDX is both, and is left out."""
    rg, gg = Form("bitscan", "bsf", "rg", 32, 64), Form("bitscan", "bsf", "gg", 32, 64)
    zero = Inputs(rax=0, rcx=5, rdx=0xFFFFFFFF_00000000, flags=0, mem=1, offset=0)
    assert sdm_undefined(rg, zero) == ("rcx",) and sdm_undefined(gg, zero) == ("rdx",)
    one = dataclasses.replace(zero, rdx=1)
    assert sdm_undefined(rg, one) == () and sdm_undefined(gg, one) == ()
    insn = instruction(gg)
    a = Outcome(gprs=dict.fromkeys(GPRS_64, 0), rflags=0x42, window=b"")
    b = dataclasses.replace(a, gprs={**a.gprs, "rdx": 7})
    assert not disagreements(insn, insn.code, {"x": a, "y": b}, sdm_undefined(gg, zero))
    assert [k for k, _ in disagreements(insn, insn.code, {"x": a, "y": b}, sdm_undefined(gg, one))] == ["rdx"]


def test_register_forms_agree_with_themselves_and_a_wrong_register_is_caught():
    """Two Unicorn runs of register forms agree on every example (no false divergence from the
    comparison); a path that writes RDX one off is a divergence naming rdx."""
    for form in (Form("alu", "adc", "gr", 8, 64), Form("shift", "rcr", "gcl", 16, 16), Form("bit", "btc", "gg", 32, 32),
                 Form("muldiv", "idiv", "g", 64, 64), Form("muldiv", "imul", "rgi8", 16, 64)):
        a, b = UnicornPath(form.code_bits), UnicornPath(form.code_bits)
        b.name = "cpl3-ram"
        check_form(form, [a, b], SETTINGS, seed=4)

    class OffByOne(UnicornPath):
        def run(self, insn, code, inputs):
            outcome = super().run(insn, code, inputs)
            return dataclasses.replace(outcome, gprs={**outcome.gprs, "rdx": outcome.gprs["rdx"] ^ 1})

    native, bad = UnicornPath(64), OffByOne(64)
    native.name, bad.name = "cpl3-ram", "cpl0-fep"
    with pytest.raises(Divergence, match="rdx"):
        check_form(Form("alu", "xor", "gg", 32, 64), [native, bad], SETTINGS, seed=5)
