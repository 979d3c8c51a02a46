"""The instruction forms the differential checks run, generated from a table: mnemonic x shape x
operand size x code size.

A form is one encoding of one instruction with its memory operand at [RBX] (EBX, BX in 16-bit
code), its register operand in RCX (CL, CX, ECX) and its implicit operands where the SDM puts
them (RAX, RDX). `Form.text` is the assembly the guest runs; `Form.code` the iced-x86 `Code` the
assembled bytes must decode to, so a Keystone that picked another encoding (81 for 83, C1 /4 ib
with 1 for D1 /4) is refused instead of silently testing another form.

Shapes (operand order as Intel writes it):
  mr   [m], r          rm   r, [m]         m    [m] (implicit RAX/RDX for MUL/DIV)
  mi   [m], imm        mi8  [m], imm8 sign-extended (16/32/64-bit operands)
  m1   [m], 1          mcl  [m], CL        mib  [m], imm8 (a count or bit offset)
  rmi  r, [m], imm     rmi8 r, [m], imm8   rm8/rm16/rm32  r, [m] with an 8/16/32-bit source
"""

from dataclasses import dataclass

CODE_SIZES = (64, 32, 16)
PTR = {8: "byte", 16: "word", 32: "dword", 64: "qword"}
REG_C = {8: "cl", 16: "cx", 32: "ecx", 64: "rcx"}
BASE = {16: "bx", 32: "ebx", 64: "rbx"}
# Placeholder immediates: wide enough that the assembler must use the encoding the shape names
# (0x11 fits an imm8; 0x1234 and 0x12345678 do not); the checks patch in generated values.
IMM_PLACEHOLDER = {8: 0x11, 16: 0x1234, 32: 0x12345678}

# The SDM's condition-code suffixes (Vol. 1 Appendix B, Table B-1), as iced-x86 names them.
CONDITIONS = ("o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g")


@dataclass(frozen=True)
class Form:
    """One instruction form: mnemonic, operand shape, operand size and code size (see above)."""

    family: str          # alu, unary, shift, bit, cmov, setcc, muldiv, xchg, movx
    mnemonic: str        # as the SDM and iced-x86 spell it (cmove, not cmovz)
    shape: str           # see the module docstring
    size: int            # operand size in bits (the destination's for movzx/movsx)
    code_bits: int       # 16-, 32- or 64-bit code
    src_size: int = 0    # movzx/movsx/movsxd: the memory operand's size
    lock: bool = False

    @property
    def mem_size(self) -> int:
        """Bits of the memory operand."""
        return self.src_size or self.size

    @property
    def imm_bits(self) -> int:
        """Bits of the immediate in the encoding (0: none)."""
        if self.shape in ("mi8", "mib", "rmi8"):
            return 8
        if self.shape in ("mi", "rmi"):
            return min(self.size, 32)
        return 0

    @property
    def id(self) -> str:
        """Readable test id: add-mr32-c64 (`mr` shape, 32-bit operand, 64-bit code)."""
        src = f"-m{self.src_size}" if self.src_size else ""
        lock = "lock-" if self.lock else ""
        return f"{lock}{self.mnemonic}-{self.shape}{self.size}{src}-c{self.code_bits}"

    @property
    def text(self) -> str:
        """The instruction as guest assembly."""
        m = f"{PTR[self.mem_size]} ptr [{BASE[self.code_bits]}]"
        r = REG_C[self.size]
        imm = f"{IMM_PLACEHOLDER.get(self.imm_bits, 0):#x}"
        body = {
            "mr": f"{m}, {r}", "rm": f"{r}, {m}", "m": m, "mi": f"{m}, {imm}", "mi8": f"{m}, {imm}",
            "m1": f"{m}, 1", "mcl": f"{m}, cl", "mib": f"{m}, {imm}", "rmi": f"{r}, {m}, {imm}",
            "rmi8": f"{r}, {m}, {imm}", "rm8": f"{r}, {m}", "rm16": f"{r}, {m}", "rm32": f"{r}, {m}",
        }[self.shape]
        return f"{'lock ' if self.lock else ''}{self.mnemonic} {body}"

    @property
    def code_name(self) -> str:
        """The iced-x86 `Code` name the assembled bytes must decode to (ADD_RM32_IMM8, ...)."""
        n, s, mn = self.size, self.src_size, self.mnemonic.upper()
        return {
            "mr": f"{mn}_RM{n}_R{n}", "rm": f"{mn}_R{n}_RM{n}", "m": f"{mn}_RM{n}",
            "mi": f"{mn}_RM{n}_IMM{self.imm_bits}", "mi8": f"{mn}_RM{n}_IMM8", "m1": f"{mn}_RM{n}_1",
            "mcl": f"{mn}_RM{n}_CL", "mib": f"{mn}_RM{n}_IMM8", "rmi": f"{mn}_R{n}_RM{n}_IMM{self.imm_bits}",
            "rmi8": f"{mn}_R{n}_RM{n}_IMM8", "rm8": f"{mn}_R{n}_RM{s}", "rm16": f"{mn}_R{n}_RM{s}",
            "rm32": f"{mn}_R{n}_RM{s}",
        }[self.shape]


def _sizes(code_bits: int, smallest: int = 8) -> list[int]:
    """Operand sizes that exist in `code_bits` code: 64-bit operands only in 64-bit mode (SDM Vol. 1
    3.6.1, Table 3-4)."""
    return [s for s in (8, 16, 32, 64) if s >= smallest and (s < 64 or code_bits == 64)]


# (family, mnemonics, shapes, smallest operand size): each row times the operand sizes and code
# sizes that exist. ADD ... CMP: SDM Vol. 2A/2B ADD, ADC, SUB, SBB, AND, OR, XOR, CMP, TEST.
TABLE = [
    ("alu", ("add", "adc", "sub", "sbb", "and", "or", "xor", "cmp"), ("mr", "rm", "mi"), 8),
    ("alu", ("add", "adc", "sub", "sbb", "and", "or", "xor", "cmp"), ("mi8",), 16),
    ("alu", ("test",), ("mr", "mi"), 8),
    ("unary", ("inc", "dec", "neg", "not"), ("m",), 8),
    ("shift", ("rol", "ror", "rcl", "rcr", "shl", "shr", "sar"), ("m1", "mcl", "mib"), 8),
    ("bit", ("bt", "bts", "btr", "btc"), ("mr", "mib"), 16),
    ("cmov", tuple(f"cmov{c}" for c in CONDITIONS), ("rm",), 16),
    ("setcc", tuple(f"set{c}" for c in CONDITIONS), ("m",), 8),
    ("muldiv", ("mul", "imul", "div", "idiv"), ("m",), 8),
    ("muldiv", ("imul",), ("rm", "rmi", "rmi8"), 16),
    ("xchg", ("xchg", "xadd", "cmpxchg"), ("mr",), 8),
]
# Locked read-modify-write forms (SDM Vol. 2A LOCK: only these, with a memory destination).
LOCKED = [
    ("xchg", ("xadd", "cmpxchg"), ("mr",), 8),
    ("alu", ("add", "sub", "and", "or", "xor"), ("mr",), 8),
    ("bit", ("bts", "btr", "btc"), ("mr",), 16),
]


def _generate() -> list[Form]:
    forms = []
    for table, lock in ((TABLE, False), (LOCKED, True)):
        for family, mnemonics, shapes, smallest in table:
            for code_bits in CODE_SIZES:
                for size in _sizes(code_bits, smallest):
                    for mnemonic in mnemonics:
                        for shape in shapes:
                            if family == "setcc" and size != 8:
                                continue  # SETcc writes a byte (SDM Vol. 2B SETcc)
                            forms.append(Form(family, mnemonic, shape, size, code_bits, lock=lock))
    # MOVZX/MOVSX r16/32/64, r/m8 and r32/64, r/m16; MOVSXD r64, r/m32 (SDM Vol. 2B MOVZX, MOVSX).
    for code_bits in CODE_SIZES:
        for size in _sizes(code_bits, 16):
            for src in (8, 16):
                if src < size:
                    for mnemonic in ("movzx", "movsx"):
                        forms.append(Form("movx", mnemonic, f"rm{src}", size, code_bits, src_size=src))
        if code_bits == 64:
            forms.append(Form("movx", "movsxd", "rm32", 64, 64, src_size=32))
    return forms


FORMS: list[Form] = _generate()


def forms(family: str) -> list[Form]:
    """The forms of one family, in table order."""
    return [f for f in FORMS if f.family == family]
