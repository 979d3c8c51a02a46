"""The instruction forms the differential checks run, generated from a table: mnemonic x shape x
operand size x code size.

A form is one encoding of one instruction with its memory operand at [RBX] (EBX, BX in 16-bit
code; [RDI] for CMPXCHG8B/16B, which take RBX as an operand), its register operand in RCX (CL, CX,
ECX; RDX for SHLD/SHRD, whose count is CL; XMM1 for SSE moves) and its implicit operands where
the SDM puts them (RAX, RDX, RSI, RDI, the stack). `Form.text` is the assembly the guest runs;
`Form.code` the iced-x86 `Code` the assembled bytes must decode to, so a Keystone that picked
another encoding (81 for 83, C1 /4 ib with 1 for D1 /4) is refused instead of silently testing
another form.

Shapes (operand order as Intel writes it):
  mr   [m], r          rm   r, [m]         m    [m] (implicit RAX/RDX for MUL/DIV, the stack)
  mi   [m], imm        mi8  [m], imm8 sign-extended (16/32/64-bit operands)
  m1   [m], 1          mcl  [m], CL        mib  [m], imm8 (a count or bit offset)
  rmi  r, [m], imm     rmi8 r, [m], imm8   rm8/rm16/rm32  r, [m] with an 8/16/32-bit source
  mrcl [m], r, CL      mrib [m], r, imm8   r    r (no memory operand: BSWAP)
  str  a string instruction, its operands implicit ([RSI], [RDI], the accumulator), `rep` its prefix
  xm   xmm1, [m]       mx   [m], xmm1

Register shapes (REGISTER_SHAPES): `g` is a general-purpose register in ModRM.rm (mod=3) where the
shapes above have [m]: RDX (DL, DX, EDX), RCX for the one-operand multiply and divide, whose RDX:RAX
is implicit. No memory operand, so no MMIO path applies (Form.memory); the CPU, KVM's emulator where
it runs the code (CPL0 on kvm_pvm, behind the forced-emulation prefix) and the reference compare.
  gr   g, r            rg   r, g           gg   g, g (the same register both sides: xor edx, edx)
  g    g               gcl  g, CL          gib  g, imm8
  rgi  r, g, imm       rgi8 r, g, imm8
"""

from dataclasses import dataclass

CODE_SIZES = (64, 32, 16)
PTR = {8: "byte", 16: "word", 32: "dword", 64: "qword", 128: "xmmword"}
REG_C = {8: "cl", 16: "cx", 32: "ecx", 64: "rcx"}
REG_D = {8: "dl", 16: "dx", 32: "edx", 64: "rdx"}
REGISTER_SHAPES = ("gr", "rg", "gg", "g", "gcl", "gib", "rgi", "rgi8")
# ModRM.reg numbers (SDM Vol. 2A Table 2-2) and the FF/FE group's /digit for INC and DEC, for the
# forms written as bytes (Form.source).
REG_NUMBER = {"rcx": 1, "rdx": 2}
INC_DEC_DIGIT = {"inc": 0, "dec": 1}
ACC = {8: "AL", 16: "AX", 32: "EAX", 64: "RAX"}
STRING_SUFFIX = {8: "b", 16: "w", 32: "d", 64: "q"}
# Placeholder immediates: wide enough that the assembler must use the encoding the shape names
# (0x11 fits an imm8; 0x1234 and 0x12345678 do not); the checks patch in generated values.
IMM_PLACEHOLDER = {8: 0x11, 16: 0x1234, 32: 0x12345678}

# The SDM's condition-code suffixes (Vol. 1 Appendix B, Table B-1), as iced-x86 names them.
CONDITIONS = ("o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g")

# The CPUID feature each gated instruction needs (kvmtest.cpuid names; SDM Vol. 2 each page's
# "CPUID Feature Flag"): a form whose feature the vCPU lacks is skipped, naming it.
FEATURE = {"popcnt": "popcnt", "lzcnt": "abm", "tzcnt": "bmi1", "movbe": "movbe", "cmpxchg8b": "cx8",
           "cmpxchg16b": "cx16", "crc32": "sse4_2", "fild": "fpu", "movaps": "sse", "movups": "sse",
           "movntps": "sse", "addps": "sse", **{m: "sse2" for m in ("movapd", "movupd", "movdqa", "movdqu",
                                                                  "movntpd", "movntdq", "movd", "movq")}}

# Instructions KVM's emulator does not implement (arch/x86/kvm/emulate.c): with a memory operand in
# MMIO it must refuse them, which x86.c handle_emulation_failure reports as KVM_EXIT_INTERNAL_ERROR
# (KVM_INTERNAL_ERROR_EMULATION) at CPL0 and as a #UD injected into the guest at CPL > 0.
REFUSED = {
    "popcnt": "twobyte_table[0xb8] is N",
    "cmpxchg16b": "em_cmpxchg8b returns X86EMUL_UNHANDLEABLE for a 16-byte operand",
    "movd": "twobyte_table[0x6e] and [0x7e] are N",
    "movq": "twobyte_table[0x7e] and [0xd6] are N",
    "addps": "twobyte_table[0x58] is N (no SSE arithmetic)",
    "fild": "escape_db's op[0] is N (x87 loads other than FNSTCW/FNSTSW/FNINIT)",
    "crc32": "opcode_map_0f_38[0xf1]'s F2 prefix entry is N",
}


@dataclass(frozen=True)
class Form:
    """One instruction form: mnemonic, operand shape, operand size and code size (see above)."""

    family: str          # alu, unary, shift, bit, cmov, setcc, muldiv, xchg, movx, and the FAMILIES below
    mnemonic: str        # as the SDM and iced-x86 spell it (cmove, not cmovz; movs, not movsb)
    shape: str           # see the module docstring
    size: int            # operand size in bits (the destination's for movzx/movsx; the element's for str)
    code_bits: int       # 16-, 32- or 64-bit code
    src_size: int = 0    # movzx/movsx/movsxd: the memory operand's size
    lock: bool = False
    rep: str = ""        # str: "", "rep", "repe" or "repne"

    @property
    def mem_size(self) -> int:
        """Bits of the memory operand (0: none)."""
        return self.src_size or self.size if self.memory else 0

    @property
    def memory(self) -> bool:
        """Whether the form has a memory operand: only such a form can reach KVM's emulator through
        an MMIO access (the MMIO paths run only these)."""
        return self.shape != "r" and self.shape not in REGISTER_SHAPES

    @property
    def rm_reg(self) -> str | None:
        """The register in ModRM.rm of a register shape (rdx; rcx for MUL/IMUL/DIV/IDIV g, whose
        RDX is implicit), None for the others."""
        if self.shape not in REGISTER_SHAPES:
            return None
        return "rcx" if self.family == "muldiv" and self.shape == "g" else "rdx"

    @property
    def imm_bits(self) -> int:
        """Bits of the immediate in the encoding (0: none)."""
        if self.shape in ("mi8", "mib", "rmi8", "mrib", "gib", "rgi8"):
            return 8
        if self.shape in ("mi", "rmi", "rgi"):
            return min(self.size, 32)
        return 0

    @property
    def base(self) -> str | None:
        """The register holding the memory operand's address (rbx, rdi), None without one."""
        if not self.memory or self.shape == "str":
            return None
        return "rdi" if self.mnemonic in ("cmpxchg8b", "cmpxchg16b") else "rbx"

    @property
    def feature(self) -> str | None:
        """The CPUID feature the instruction needs beyond the base architecture (None: none)."""
        return FEATURE.get(self.mnemonic)

    @property
    def emulated(self) -> bool:
        """Whether KVM's instruction emulator implements the form (REFUSED: it must refuse it)."""
        return self.mnemonic not in REFUSED

    @property
    def uses_xmm(self) -> bool:
        """Whether XMM1 is an operand."""
        return self.shape in ("xm", "mx")

    @property
    def id(self) -> str:
        """Readable test id: add-mr32-c64 (`mr` shape, 32-bit operand, 64-bit code)."""
        src = f"-m{self.src_size}" if self.src_size else ""
        lock = "lock-" if self.lock else ""
        rep = f"{self.rep}-" if self.rep else ""
        return f"{lock}{rep}{self.mnemonic}-{self.shape}{self.size}{src}-c{self.code_bits}"

    @property
    def text(self) -> str:
        """The instruction as guest assembly."""
        if self.shape == "str":
            return f"{self.rep} {self.mnemonic}{STRING_SUFFIX[self.size]}".strip()
        m = f"{PTR[self.mem_size]} ptr [{self.base_name}]" if self.base else ""
        r = (REG_D if self.family == "dshift" else REG_C)[self.size] if self.size <= 64 else ""
        g = {"rcx": REG_C, "rdx": REG_D}[self.rm_reg][self.size] if self.rm_reg else ""
        imm = f"{IMM_PLACEHOLDER.get(self.imm_bits, 0):#x}"
        body = {
            "mr": f"{m}, {r}", "rm": f"{r}, {m}", "m": m, "mi": f"{m}, {imm}", "mi8": f"{m}, {imm}",
            "m1": f"{m}, 1", "mcl": f"{m}, cl", "mib": f"{m}, {imm}", "rmi": f"{r}, {m}, {imm}",
            "rmi8": f"{r}, {m}, {imm}", "rm8": f"{r}, {m}", "rm16": f"{r}, {m}", "rm32": f"{r}, {m}",
            "mrcl": f"{m}, {r}, cl", "mrib": f"{m}, {r}, {imm}", "r": r, "xm": f"xmm1, {m}", "mx": f"{m}, xmm1",
            "gr": f"{g}, {r}", "rg": f"{r}, {g}", "gg": f"{g}, {g}", "g": g, "gcl": f"{g}, cl", "gib": f"{g}, {imm}",
            "rgi": f"{r}, {g}, {imm}", "rgi8": f"{r}, {g}, {imm}",
        }[self.shape]
        return f"{'lock ' if self.lock else ''}{self.mnemonic} {body}"

    @property
    def base_name(self) -> str:
        """The base register as the code size names it (rbx, ebx, bx)."""
        reg = self.base or "rbx"
        return {64: reg, 32: "e" + reg[1:], 16: reg[1:]}[self.code_bits]

    @property
    def source(self) -> str:
        """What the assembler gets: `text`, except where Keystone knows only another instruction by
        the name (MOVSD is SSE2's scalar move to it), which is written as bytes: the prefixes and
        A5 (SDM Vol. 2B MOVS/MOVSB/MOVSW/MOVSD/MOVSQ), and INC/DEC of a 16/32-bit register outside
        64-bit mode, for which assemblers pick the one-byte 40+rd/48+rd encoding: written as FF /0 and
        FF /1 with ModRM mod=3 (SDM Vol. 2A INC, DEC), the form the fastops run."""
        if self.shape == "str" and self.mnemonic == "movs" and self.size == 32:
            prefix = ["0xf3"] if self.rep else []
            prefix += ["0x66"] if self.code_bits == 16 else []
            return ".byte " + ", ".join(prefix + ["0xa5"])
        if self.shape == "g" and self.mnemonic in INC_DEC_DIGIT and self.size > 8 and self.code_bits != 64:
            prefix = ["0x66"] if (self.size == 16) != (self.code_bits == 16) else []
            modrm = 0xC0 | INC_DEC_DIGIT[self.mnemonic] << 3 | REG_NUMBER["rdx"]   # rm_reg of `g`
            return ".byte " + ", ".join(prefix + ["0xff", f"{modrm:#x}"])
        return self.text

    @property
    def code_name(self) -> str:
        """The iced-x86 `Code` name the assembled bytes must decode to (ADD_RM32_IMM8, ...)."""
        n, s, mn = self.size, self.src_size, self.mnemonic.upper()
        special = {
            "cmpxchg8b": "CMPXCHG8B_M64", "cmpxchg16b": "CMPXCHG16B_M128", "fild": "FILD_M32INT",
            "movbe": f"MOVBE_R{n}_M{n}" if self.shape == "rm" else f"MOVBE_M{n}_R{n}",
            "movd": "MOVD_XMM_RM32" if self.shape == "xm" else "MOVD_RM32_XMM",
            "movq": "MOVQ_XMM_XMMM64" if self.shape == "xm" else "MOVQ_XMMM64_XMM",
        }
        if self.mnemonic in special:
            return special[self.mnemonic]
        if self.shape == "str":
            sfx = STRING_SUFFIX[n].upper()
            return {"movs": f"MOVS{sfx}_M{n}_M{n}", "cmps": f"CMPS{sfx}_M{n}_M{n}", "stos": f"STOS{sfx}_M{n}_{ACC[n]}",
                    "lods": f"LODS{sfx}_{ACC[n]}_M{n}", "scas": f"SCAS{sfx}_{ACC[n]}_M{n}"}[self.mnemonic]
        if self.shape in ("xm", "mx"):
            return f"{mn}_M128_XMM" if mn.startswith("MOVNT") else \
                f"{mn}_XMM_XMMM128" if self.shape == "xm" else f"{mn}_XMMM128_XMM"
        return {
            "mr": f"{mn}_RM{n}_R{n}", "rm": f"{mn}_R{n}_RM{n}", "m": f"{mn}_RM{n}",
            "mi": f"{mn}_RM{n}_IMM{self.imm_bits}", "mi8": f"{mn}_RM{n}_IMM8", "m1": f"{mn}_RM{n}_1",
            "mcl": f"{mn}_RM{n}_CL", "mib": f"{mn}_RM{n}_IMM8", "rmi": f"{mn}_R{n}_RM{n}_IMM{self.imm_bits}",
            "rmi8": f"{mn}_R{n}_RM{n}_IMM8", "rm8": f"{mn}_R{n}_RM{s}", "rm16": f"{mn}_R{n}_RM{s}",
            "rm32": f"{mn}_R{n}_RM{s}", "mrcl": f"{mn}_RM{n}_R{n}_CL", "mrib": f"{mn}_RM{n}_R{n}_IMM8",
            "r": f"{mn}_R{n}",
            "gr": f"{mn}_RM{n}_R{n}", "rg": f"{mn}_R{n}_RM{n}", "g": f"{mn}_RM{n}", "gcl": f"{mn}_RM{n}_CL",
            "gib": f"{mn}_RM{n}_IMM8", "rgi": f"{mn}_R{n}_RM{n}_IMM{self.imm_bits}", "rgi8": f"{mn}_R{n}_RM{n}_IMM8",
            # the same register both sides: the r/m,reg encoding, or reg,r/m where that is the only one
            "gg": f"{mn}_R{n}_RM{n}" if self.mnemonic in R_RM_ONLY else f"{mn}_RM{n}_R{n}",
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
# The families of issue 17's second slice, same rules. BSF/BSR/LZCNT/TZCNT/POPCNT (SDM Vol. 2A BSF,
# BSR, LZCNT; Vol. 2B POPCNT, TZCNT), MOVBE (Vol. 2B), SHLD/SHRD (Vol. 2B).
TABLE_2 = [
    ("bitscan", ("bsf", "bsr", "lzcnt", "tzcnt", "popcnt"), ("rm",), 16),
    ("byteswap", ("movbe",), ("rm", "mr"), 16),
    ("dshift", ("shld", "shrd"), ("mrib", "mrcl"), 16),
]
# String instructions and the repeat prefixes each takes (SDM Vol. 2B REP/REPE/REPZ/REPNE/REPNZ).
STRINGS = {"movs": ("", "rep"), "stos": ("", "rep"), "lods": ("", "rep"), "cmps": ("", "repe", "repne"),
           "scas": ("", "repe", "repne")}
# SSE moves with a memory operand (SDM Vol. 2A/2B MOVAPS, MOVAPD, MOVUPS, MOVUPD, MOVDQA/MOVDQU,
# MOVNTPS, MOVNTPD, MOVNTDQ, MOVD/MOVQ): mnemonics, shapes, memory operand size.
SSE = [
    (("movaps", "movapd", "movups", "movupd", "movdqa", "movdqu"), ("xm", "mx"), 128),
    (("movntps", "movntpd", "movntdq"), ("mx",), 128),
    (("movd",), ("xm", "mx"), 32),
    (("movq",), ("xm", "mx"), 64),
]
# Register forms (REGISTER_SHAPES): the fastops of KVM's emulator (emulate.c FASTOP*) that
# selftests' x86/fastops_test runs on registers behind the forced-emulation prefix, same rules:
# ALU and TEST r/m,reg; INC/DEC/NEG/NOT; shifts and rotates by CL and imm8; BT/BTS/BTR/BTC by a
# register and an immediate offset (taken modulo the operand size with a register base: SDM Vol. 2A
# BT); BSF/BSR; MUL/IMUL/DIV/IDIV r/m and IMUL r, r/m (, imm). The `gg` rows alias source and
# destination (xor edx, edx; imul edx, edx; bsf edx, edx; btc edx, edx).
REGISTER = [
    ("alu", ("add", "adc", "sub", "sbb", "and", "or", "xor", "cmp", "test"), ("gr",), 8),
    ("alu", ("xor", "sub"), ("gg",), 8),
    ("unary", ("inc", "dec", "neg", "not"), ("g",), 8),
    ("shift", ("rol", "ror", "rcl", "rcr", "shl", "shr", "sar"), ("gcl", "gib"), 8),
    ("bit", ("bt", "bts", "btr", "btc"), ("gr", "gib"), 16),
    ("bit", ("btc",), ("gg",), 16),
    ("bitscan", ("bsf", "bsr"), ("rg",), 16),
    ("bitscan", ("bsf",), ("gg",), 16),
    ("muldiv", ("mul", "imul", "div", "idiv"), ("g",), 8),
    ("muldiv", ("imul",), ("rg", "gg", "rgi", "rgi8"), 16),
]
# Instructions whose only two-operand encoding is reg, r/m (the `gg` shape's code name).
R_RM_ONLY = ("imul", "bsf", "bsr")
# Instructions only the refusal check runs (REFUSED): SSE arithmetic, an x87 load, CRC32.
REFUSAL_ONLY = [Form("refused", "addps", "xm", 128, 0), Form("refused", "fild", "m", 32, 0),
                Form("refused", "crc32", "rm", 32, 0)]


def _generate() -> list[Form]:
    forms = []
    for table, lock in ((TABLE, False), (LOCKED, True), (REGISTER, False)):
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
    return forms + _generate_2()


def _generate_2() -> list[Form]:
    forms = []
    for code_bits in CODE_SIZES:
        # CMPXCHG8B m64 everywhere, CMPXCHG16B m128 (REX.W) in 64-bit mode only (SDM Vol. 2A).
        for mnemonic, size in (("cmpxchg8b", 64), ("cmpxchg16b", 128)):
            if size == 64 or code_bits == 64:
                forms += [Form("cmpxchgnb", mnemonic, "m", size, code_bits, lock=lock) for lock in (False, True)]
        for family, mnemonics, shapes, smallest in TABLE_2:
            forms += [Form(family, mn, sh, size, code_bits) for size in _sizes(code_bits, smallest)
                      for mn in mnemonics for sh in shapes]
        # BSWAP r32/r64; BSWAP of a 16-bit register is undefined (SDM Vol. 2A BSWAP).
        forms += [Form("byteswap", "bswap", "r", size, code_bits) for size in _sizes(code_bits, 32)]
        forms += [Form("string", mn, "str", size, code_bits, rep=rep) for size in _sizes(code_bits)
                  for mn, reps in STRINGS.items() for rep in reps]
        # PUSH/POP r/m: 16- and 32-bit operands outside 64-bit mode, 16 and 64 in it (SDM Vol. 2B).
        stack_sizes = (16, 64) if code_bits == 64 else (16, 32)
        forms += [Form("stack", mn, "m", size, code_bits) for size in stack_sizes for mn in ("push", "pop")]
        forms += [Form("sse", mn, sh, size, code_bits) for mnemonics, shapes, size in SSE
                  for mn in mnemonics for sh in shapes]
        forms += [Form(f.family, f.mnemonic, f.shape, f.size, code_bits) for f in REFUSAL_ONLY]
    return forms


FORMS: list[Form] = _generate()


def forms(family: str) -> list[Form]:
    """The forms of one family, in table order."""
    return [f for f in FORMS if f.family == family]


def refused_forms() -> list[Form]:
    """The forms KVM's emulator must refuse (REFUSED), in table order."""
    return [f for f in FORMS if not f.emulated]
