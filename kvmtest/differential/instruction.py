"""One form assembled: its bytes, the iced-x86 facts about them (which RFLAGS bits the SDM leaves
undefined, where the immediate sits), and the bytes with a generated immediate patched in.

Undefined flags come from iced-x86's instruction database (Instruction.rflags_undefined), not from
a table of ours: it encodes the SDM's "Flags Affected" paragraph of each instruction page, and
reads the immediate count of a shift or rotate (RCL r/m16 by 17 changes no flag; by 2 leaves OF
undefined; by 1 defines it), so the mask is taken from each run's own bytes.
"""

from dataclasses import dataclass
from functools import cache, lru_cache

from iced_x86 import Code, Decoder, OpKind, RflagsBits

from .. import forced_emulation
from ..asm import assemble
from ..errors import AssemblyError, BadArgumentError
from ..guest import layout as L
from ..x86 import RFLAGS_AF, RFLAGS_CF, RFLAGS_DF, RFLAGS_OF, RFLAGS_PF, RFLAGS_SF, RFLAGS_ZF
from .forms import Form

# The instruction slot: the guests' first bytes and Unicorn's code page hold PREFIX_ROOM bytes for
# KVM's forced-emulation prefix, then the instruction at INSN_ADDR, then NOPs. The prefix goes
# before INSN_ADDR, so the instruction has the same address on every path (a fault reports it, a
# RIP-relative operand would be computed from it) and only the forced paths start at SLOT_ADDR.
MAX_LENGTH = 15                        # the longest x86 instruction (SDM Vol. 2A 2.3.11)
PREFIX_ROOM = len(forced_emulation.PREFIX)
SLOT_ADDR = L.CODE
INSN_ADDR = SLOT_ADDR + PREFIX_ROOM    # where every path runs the instruction
SLOT = PREFIX_ROOM + MAX_LENGTH        # bytes reserved from SLOT_ADDR
NOP = b"\x90"

# The status flags (SDM Vol. 1 3.4.3.1): the only RFLAGS bits these instructions define, and the
# only ones the checks set and compare. iced-x86 numbers them its own way.
STATUS_FLAGS = RFLAGS_CF | RFLAGS_PF | RFLAGS_AF | RFLAGS_ZF | RFLAGS_SF | RFLAGS_OF
_ICED_TO_RFLAGS = {RflagsBits.CF: RFLAGS_CF, RflagsBits.PF: RFLAGS_PF, RflagsBits.AF: RFLAGS_AF,
                   RflagsBits.ZF: RFLAGS_ZF, RflagsBits.SF: RFLAGS_SF, RflagsBits.OF: RFLAGS_OF,
                   RflagsBits.DF: RFLAGS_DF}
FLAG_NAMES = {RFLAGS_CF: "CF", RFLAGS_PF: "PF", RFLAGS_AF: "AF", RFLAGS_ZF: "ZF", RFLAGS_SF: "SF", RFLAGS_OF: "OF"}
_CODE_NAMES = {value: name for name, value in vars(Code).items() if name.isupper()}


def iced_flags_to_rflags(bits: int) -> int:
    """An iced-x86 RflagsBits mask as the RFLAGS register's bits."""
    return sum(rflag for iced, rflag in _ICED_TO_RFLAGS.items() if bits & iced)


def flag_names(rflags: int) -> str:
    """The status flags set in `rflags`, by name ("CF|ZF"; "-" for none)."""
    return "|".join(name for bit, name in FLAG_NAMES.items() if rflags & bit) or "-"


@dataclass(frozen=True)
class Instruction:
    """A form's assembled bytes and where its immediate sits in them."""

    form: Form
    code: bytes          # as assembled, with the placeholder immediate
    imm_offset: int      # where the immediate starts in `code` (0: none)
    imm_size: int        # its bytes

    def bytes_with(self, imm: int | None) -> bytes:
        """The instruction with immediate `imm` (None: the placeholder), checked by decoding it
        again: same form, same length, the immediate where it was."""
        if imm is None or not self.imm_size:
            return self.code
        raw = imm.to_bytes(self.imm_size, "little")
        code = self.code[:self.imm_offset] + raw + self.code[self.imm_offset + self.imm_size:]
        decoded = Decoder(self.form.code_bits, code, ip=INSN_ADDR).decode()
        if decoded.code != self.decoded_code or decoded.len != len(code):
            raise AssemblyError(f"{self.form.id}: patching immediate {imm:#x} into {self.code.hex()} gave "
                                f"{code.hex()}, which decodes as {_CODE_NAMES.get(decoded.code)}")
        return code

    @property
    def decoded_code(self) -> int:
        """The iced-x86 Code value the bytes decode to."""
        return getattr(Code, self.form.code_name)


def slot_bytes(code: bytes, forced: bool) -> bytes:
    """The SLOT bytes a path writes at SLOT_ADDR: KVM's forced-emulation prefix (`forced`) or NOPs
    in the PREFIX_ROOM bytes before INSN_ADDR, `code` at INSN_ADDR, NOPs after it. BadArgumentError
    for code that is empty or longer than an instruction can be."""
    if not 0 < len(code) <= MAX_LENGTH:
        raise BadArgumentError(f"instruction slot: {len(code)} bytes of code ({code.hex() or 'none'}); "
                               f"an x86 instruction is 1 to {MAX_LENGTH} bytes (SDM Vol. 2A 2.3.11)")
    head = forced_emulation.PREFIX if forced else NOP * PREFIX_ROOM
    return (head + code).ljust(SLOT, NOP)


def entry(forced: bool) -> int:
    """Where a path starts the vCPU: at the prefix on a forced path (KVM skips it and emulates the
    instruction at INSN_ADDR: x86.c handle_ud), at the instruction on the others."""
    return SLOT_ADDR if forced else INSN_ADDR


_ROTATES_THROUGH_CF = {"RCL", "RCR"}


@lru_cache(maxsize=4096)
def undefined_flags(code: bytes, code_bits: int) -> int:
    """RFLAGS bits the SDM leaves undefined after the instruction `code` (iced-x86).

    One correction, to the SDM's own words: iced-x86 reduces an RCL/RCR immediate count modulo 9
    (8-bit) or 17 (16-bit) before deciding, so RCL r/m8 by 9 "affects no flag"; the SDM decides on
    the masked count (COUNT & 1FH, 3FH with REX.W): "If the masked count is 0, the flags are not
    affected. If the masked count is 1, then the OF flag is affected, otherwise (masked count is
    greater than 1) the OF flag is undefined" (Vol. 2B RCL/RCR/ROL/ROR, Flags Affected; the CPU
    does change OF there). For such counts the mask is iced-x86's for the same instruction by 2."""
    insn = Decoder(code_bits, code, ip=INSN_ADDR).decode()
    undefined = iced_flags_to_rflags(insn.rflags_undefined)
    name = _CODE_NAMES.get(insn.code, "")
    if name.split("_")[0] in _ROTATES_THROUGH_CF and name.endswith("_IMM8"):
        mask = 0x3F if "RM64" in name else 0x1F
        if (insn.immediate8 & mask) > 1:
            insn.immediate8 = 2
            undefined |= iced_flags_to_rflags(insn.rflags_undefined)
    return undefined


def defined_flags(code: bytes, code_bits: int) -> int:
    """Status flags whose value after `code` the SDM defines (compared exactly)."""
    return STATUS_FLAGS & ~undefined_flags(code, code_bits)


@cache
def instruction(form: Form) -> Instruction:
    """Assemble `form` at INSN_ADDR with kvmtest's assembler (checked against its source) and
    require the encoding the form names; AssemblyError otherwise."""
    assembled = assemble(form.source, form.code_bits, base=INSN_ADDR, name=form.id)
    decoder = Decoder(form.code_bits, assembled.code, ip=INSN_ADDR)
    insn = decoder.decode()
    want = getattr(Code, form.code_name, None)
    rep = "repe" if insn.has_repe_prefix else "repne" if insn.has_repne_prefix else ""
    if form.shape == "str" and rep and form.mnemonic not in ("cmps", "scas"):
        rep = "rep"   # F3 is REP before MOVS/STOS/LODS (SDM Vol. 2B REP/REPE/REPZ/REPNE/REPNZ)
    if want is None or insn.code != want or insn.len != len(assembled.code) or \
            (form.shape == "str" and rep != form.rep):
        raise AssemblyError(f"{form.id}: `{form.text}` assembled to {assembled.code.hex()} "
                            f"({_CODE_NAMES.get(insn.code)}, {insn.len} bytes), expected {form.code_name}")
    if not form.memory and any(insn.op_kind(i) == OpKind.MEMORY for i in range(insn.op_count)):
        raise AssemblyError(f"{form.id}: `{form.text}` assembled to {assembled.code.hex()}, which has a memory "
                            "operand; a register form must have none (ModRM mod=3)")
    offsets = decoder.get_constant_offsets(insn)
    imm_offset, imm_size = (offsets.immediate_offset, offsets.immediate_size) if offsets.has_immediate else (0, 0)
    if form.imm_bits and imm_size * 8 != form.imm_bits:
        raise AssemblyError(f"{form.id}: {assembled.code.hex()} has a {imm_size}-byte immediate, "
                            f"the form a {form.imm_bits}-bit one")
    return Instruction(form, assembled.code, imm_offset, imm_size)
