"""The Intel-syntax grammar of one guest statement, checked before Keystone sees it.

Keystone 0.9.2 recovers from most parse errors by dropping the statement and carrying on, so
a malformed line in the middle of a guest vanished without a word (`mov eax, 1,`), or
changed meaning (`mov eax, [ebx` became a load from address 0); a few malformed lines made
it loop forever (`, nop`, `.byte 1,,2`). Only statements in which every token has its place
in this grammar reach Keystone:

    statement := {label ':'} [prefix...] mnemonic [operand {',' operand}]
               | {label ':'} directive [argument {',' argument}]
    operand   := [size 'ptr'] [segment ':'] '[' memory ']'
               | [size 'ptr'] expression | register | expression ':' expression (far pointer)
    memory    := at most a base register, an index register (times 1, 2, 4 or 8) and a
                 displacement expression, joined by + (the displacement also by -)
    expression:= integers, symbols, unary - ~ !, binary * / + - << >> & ^ |, parentheses,
                 with C's precedence, as Keystone evaluates them

Bounds that keep every input an AssemblyError rather than a crash or a hang: only ASCII
outside string literals (Keystone's binding cannot encode anything else), numbers and every
intermediate value within 64 bits (-2**63 .. 2**64-1; Keystone wraps silently), at most
MAX_PARENS nested parentheses and expression trees at most MAX_DEPTH deep (deeper ones ran
out of Python's recursion limit).

parse() returns what the statement says, so that kvmtest.asm_verify can compare the bytes
Keystone produced with it.
"""

import re
from dataclasses import dataclass
from functools import lru_cache


class SyntaxProblem(ValueError):
    """A statement outside the grammar; str() says what is wrong, for the file:line message."""


class UnknownSymbol(SyntaxProblem):
    """An expression names a symbol whose value is not known (yet)."""


MAX_PARENS = 32   # nested parentheses in one expression
MAX_DEPTH = 64    # operators nested in one expression tree (`1+1+...` nests to the left)
_LOW, _HIGH = -(1 << 63), 1 << 64  # a 64-bit value, signed or unsigned


def fits(value: int, bits: int) -> bool:
    """The rule for every value kvmtest puts in a `bits`-bit field (data directives, .fill
    patterns, immediates, displacements): signed or unsigned, -2**(bits-1) .. 2**bits-1."""
    return -(1 << (bits - 1)) <= value < (1 << bits)


# --- vocabulary --------------------------------------------------------------------------------

def _registers() -> dict[str, int]:
    """Register name -> width in bits (0 for registers that carry no integer operand size)."""
    regs = {}
    for r in ("ax", "bx", "cx", "dx"):
        regs.update({r: 16, "e" + r: 32, "r" + r: 64, r[0] + "l": 8, r[0] + "h": 8})
    for r in ("si", "di", "sp", "bp"):
        regs.update({r: 16, "e" + r: 32, "r" + r: 64, r + "l": 8})
    for n in range(8, 16):
        regs.update({f"r{n}": 64, f"r{n}d": 32, f"r{n}w": 16, f"r{n}b": 8})
    regs.update({"rip": 64, "eip": 32})
    for name in ("cs", "ds", "es", "fs", "gs", "ss", "st"):
        regs[name] = 0
    for n in range(16):
        regs.update({f"cr{n}": 0, f"dr{n}": 0})
    for n in range(32):
        regs.update({f"xmm{n}": 0, f"ymm{n}": 0, f"zmm{n}": 0})
    for n in range(8):
        regs.update({f"mm{n}": 0, f"k{n}": 0, f"st{n}": 0})
    return regs


REGISTERS = _registers()
SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss")
SIZES = {"byte": 1, "word": 2, "dword": 4, "fword": 6, "qword": 8, "mmword": 8, "tbyte": 10,
         "xmmword": 16, "ymmword": 32, "zmmword": 64}
PREFIXES = {"lock": "lock", "rep": "rep", "repe": "rep", "repz": "rep", "repne": "repne", "repnz": "repne",
            "rex64": "rex64"}
DATA = {".byte": 1, ".short": 2, ".word": 2, ".value": 2, ".2byte": 2, ".int": 4, ".long": 4, ".4byte": 4,
        ".quad": 8, ".8byte": 8}
STRINGS = (".ascii", ".asciz", ".string")
# directive -> (fewest, most) arguments; the data and string directives take one or more
DIRECTIVES = {".code16": (0, 0), ".code32": (0, 0), ".code64": (0, 0), ".equ": (2, 2), ".set": (2, 2),
              ".balign": (1, 2), ".org": (1, 2), ".skip": (1, 2), ".space": (1, 2), ".zero": (1, 1),
              ".fill": (1, 3)}

_TOKEN = re.compile(r"""
    (?P<ws>[ \t]+)
  | (?P<num>0[xX][0-9a-fA-F]+|0[bB][01]+|\d+)(?![\w.$@])
  | (?P<badnum>\d[\w.$@]*)
  | (?P<name>[A-Za-z_.$][\w.$@]*)
  | (?P<char>'[^'\\]')
  | (?P<str>"(?:[^"\\\n]|\\.)*")
  | (?P<op><<|>>|[-+*/&|^~!()\[\],:])
""", re.X)


def check_ascii(text: str) -> None:
    """Refuse a character outside ASCII anywhere but inside a "string literal" (a no-break
    space, a typographic quote): Keystone's binding cannot encode it, and \\s or \\w would
    otherwise take it for a space or part of a name."""
    quote = None
    i = 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == '"':
                quote = None
        elif c == '"':
            quote = c
        elif c == "'" and text[i + 2: i + 3] == "'":  # a character constant: '"' opens no string
            c = text[i + 1]
            i += 2
        if not quote and ord(c) > 127:
            raise SyntaxProblem(f"non-ASCII character {c!r} (U+{ord(c):04X}) outside a string literal")
        i += 1


def _tokens(text: str) -> list[tuple[str, str]]:
    check_ascii(text)
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            c = text[pos]
            what = "unterminated string" if c == '"' else "unterminated or multi-character character constant" \
                if c == "'" else f"unexpected character {c!r}"
            raise SyntaxProblem(what)
        kind = m.lastgroup
        if kind == "badnum":
            raise SyntaxProblem(f"malformed number {m.group()!r} (write decimal, 0x hex or 0b binary)")
        if kind == "num" and len(m.group()) > 1 and m.group()[0] == "0" and m.group()[1].isdigit():
            raise SyntaxProblem(f"number {m.group()!r} has a leading zero, which GAS reads as octal; "
                                "write it in decimal or 0x hex")
        if kind == "num" and int(m.group(), 0) >= _HIGH:
            raise SyntaxProblem(f"number {m.group()} does not fit in 64 bits")
        if kind != "ws":
            out.append((kind, m.group()))
        pos = m.end()
    return out


# --- what a statement says ---------------------------------------------------------------------

@dataclass(frozen=True)
class Memory:
    base: str | None
    index: str | None
    scale: int
    disp: tuple | None       # expression; None when there is no displacement
    segment: str | None      # explicit override


@dataclass(frozen=True)
class Operand:
    kind: str                # "reg", "imm", "mem" or "far"
    size: str | None = None  # the size keyword of `size ptr`
    reg: str | None = None
    expr: tuple | None = None      # immediate value, branch target or far offset
    selector: tuple | None = None  # far pointer selector
    mem: Memory | None = None


@dataclass(frozen=True)
class Parsed:
    labels: tuple[str, ...]  # labels defined at the start of the statement
    body: str                # the statement without its labels ('' for a label alone)
    kind: str                # "label", "insn" or "directive"
    name: str = ""           # mnemonic (lower case) or directive
    prefixes: tuple[str, ...] = ()
    operands: tuple[Operand, ...] = ()
    args: tuple = ()         # directive arguments: expressions, or bytes for string directives
    names: frozenset = frozenset()  # symbols the statement refers to
    defines: str | None = None      # the symbol of .equ/.set


_ARITHMETIC = ("+", "-", "*", "/", "&", "|", "^", "<<", ">>", ":")
_LABEL = re.compile(r"[ \t]*([A-Za-z_.$][\w.$@]*)[ \t]*:(?![:\[])")


@lru_cache(maxsize=16384)
def parse(text: str) -> Parsed:
    """What one statement says; SyntaxProblem if any part of it is outside the grammar."""
    check_ascii(text)
    labels, pos = [], 0
    while True:
        m = _LABEL.match(text, pos)
        if not m or m.group(1).lower() in SEGMENTS:
            break
        labels.append(m.group(1))
        pos = m.end()
    body = text[pos:].strip(" \t")
    if not body:
        return Parsed(tuple(labels), "", "label")
    parser = _Parser(_tokens(body))
    if body.startswith("."):
        parsed = parser.directive()
    else:
        parsed = parser.instruction()
    return Parsed(tuple(labels), body, **parsed)


class _Parser:
    def __init__(self, tokens):
        self.toks = tokens
        self.i = 0
        self.names: set[str] = set()
        self.parens = 0

    # token helpers
    def peek(self, k=0):
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else ("end", "")

    def take(self):
        tok = self.peek()
        self.i += 1
        return tok

    def at(self, value) -> bool:
        return self.peek()[1] == value and self.peek()[0] == "op"

    def expect(self, value, where):
        if not self.at(value):
            raise SyntaxProblem(f"expected {value!r} {where}, found {self.describe()}")
        self.take()

    def describe(self, tok=None) -> str:
        kind, value = tok or self.peek()
        return "the end of the statement" if kind == "end" else repr(value)

    def done(self) -> bool:
        return self.peek()[0] == "end"

    # statements
    def instruction(self) -> dict:
        prefixes = []
        kind, word = self.take()
        while kind == "name" and word.lower() in PREFIXES:
            prefixes.append(PREFIXES[word.lower()])
            if self.done():
                raise SyntaxProblem(f"prefix {word!r} without an instruction: write it on the instruction's line")
            kind, word = self.take()
        if kind != "name" or not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", word):
            raise SyntaxProblem(f"expected a mnemonic, found {self.describe((kind, word))}")
        mnemonic = word.lower()
        if mnemonic in REGISTERS or mnemonic in SIZES or mnemonic == "ptr":
            raise SyntaxProblem(f"expected a mnemonic, found {word!r}")
        operands = []
        if not self.done():
            operands.append(self.operand(1))
            while self.at(","):
                self.take()
                operands.append(self.operand(len(operands) + 1))
            if not self.done():
                raise SyntaxProblem(f"unexpected {self.describe()} after operand {len(operands)}")
        return dict(kind="insn", name=mnemonic, prefixes=tuple(prefixes), operands=tuple(operands),
                    names=frozenset(self.names))

    def directive(self) -> dict:
        kind, name = self.take()
        name = name.lower()
        if name in (".align", ".p2align"):
            raise SyntaxProblem("Keystone ignores .align and .p2align; use .balign N")
        if name not in DATA and name not in STRINGS and name not in DIRECTIVES:
            known = ", ".join(sorted([*DATA, *STRINGS, *DIRECTIVES]))
            raise SyntaxProblem(f"unsupported directive {name} (kvmtest checks only {known})")
        args: list = []
        defines = None
        if name in (".equ", ".set"):
            kind, symbol = self.take()
            if kind != "name" or symbol.lower() in REGISTERS:
                raise SyntaxProblem(f"{name} needs a symbol name first, found {self.describe((kind, symbol))}")
            defines = symbol
            self.expect(",", f"after {name} {symbol}")
            args = [self.expression("in the value")]
        elif not self.done():
            args.append(self.string() if name in STRINGS else self.expression("in argument 1"))
            while self.at(","):
                self.take()
                args.append(self.string() if name in STRINGS else self.expression(f"in argument {len(args) + 1}"))
        if not self.done():
            raise SyntaxProblem(f"unexpected {self.describe()} after argument {len(args)}")
        fewest, most = DIRECTIVES.get(name, (1, 10**6))
        if defines:
            fewest = most = len(args)
        if not fewest <= len(args) <= most:
            want = f"{fewest}" if fewest == most else f"{fewest} to {most}" if most < 10**6 else f"at least {fewest}"
            raise SyntaxProblem(f"{name} takes {want} argument(s), got {len(args)}")
        return dict(kind="directive", name=name, args=tuple(args), names=frozenset(self.names), defines=defines)

    def string(self) -> bytes:
        kind, value = self.take()
        if kind != "str":
            raise SyntaxProblem(f"expected a quoted string, found {self.describe((kind, value))}")
        return _unescape(value[1:-1])

    # operands
    def operand(self, n: int) -> Operand:
        where = f"in operand {n}"
        if self.at(",") or self.done():
            raise SyntaxProblem(f"operand {n} is empty")
        size = None
        kind, word = self.peek()
        if kind == "name" and word.lower() in SIZES:
            self.take()
            size = word.lower()
            if not (self.peek()[0] == "name" and self.peek()[1].lower() == "ptr"):
                raise SyntaxProblem(f"write `{size} ptr`: Keystone drops `{size}` without `ptr`")
            self.take()
            if self.at(",") or self.done():
                raise SyntaxProblem(f"`{size} ptr` without an operand")
        kind, word = self.peek()
        low = word.lower() if kind == "name" else ""
        if low in SEGMENTS and self.peek(1) == ("op", ":"):
            self.take(), self.take()
            if not self.at("["):
                raise SyntaxProblem(f"segment override {low}: must be followed by [address]")
            return Operand("mem", size, mem=self.memory(low))
        if self.at("["):
            return Operand("mem", size, mem=self.memory(None))
        if low in REGISTERS and not (self.peek(1)[0] == "op" and self.peek(1)[1] in _ARITHMETIC):
            self.take()
            if size:
                raise SyntaxProblem(f"`{size} ptr` before register {low}")
            if low == "st" and self.at("("):
                self.take()
                kind, num = self.take()
                if kind != "num" or not 0 <= int(num, 0) <= 7:
                    raise SyntaxProblem(f"st(i) needs i from 0 to 7, found {self.describe((kind, num))}")
                self.expect(")", "after st(i")
                return Operand("reg", reg=f"st{int(num, 0)}")
            return Operand("reg", reg=low)
        value = self.expression(where)
        if self.at(":"):
            self.take()
            offset = self.expression(f"{where} (the far pointer's offset)")
            return Operand("far", size, expr=offset, selector=value)
        if self.at("["):
            raise SyntaxProblem("write a displacement inside the brackets: [base + displacement]")
        return Operand("imm", size, expr=value)

    def memory(self, segment) -> Memory:
        self.expect("[", "to open the memory operand")
        if self.at("]"):
            raise SyntaxProblem("empty memory operand []")
        tree = self.expression("inside [ ]", registers=True)
        if not self.at("]"):
            raise SyntaxProblem(f"expected ']' to close the memory operand, found {self.describe()}")
        self.take()
        if self.at("["):
            raise SyntaxProblem("a second [ ] after a memory operand")
        return _address(tree, segment)

    # expressions, C precedence: | ^ & << >> + - * / unary
    _LEVELS = (("|",), ("^",), ("&",), ("<<", ">>"), ("+", "-"), ("*", "/"))

    def expression(self, where, registers=False, level=0):
        if level == len(self._LEVELS):
            return self.unary(where, registers)
        left = self.expression(where, registers, level + 1)
        while self.peek()[0] == "op" and self.peek()[1] in self._LEVELS[level]:
            op = self.take()[1]
            if self.done() or self.at(",") or self.at("]") or self.at(")"):
                raise SyntaxProblem(f"operator {op!r} {where} has no right-hand side")
            left = ("bin", op, left, self.expression(where, registers, level + 1))
        if level == 0 and self.parens == 0 and depth(left) > MAX_DEPTH:
            raise SyntaxProblem(f"expression {where} nests more than {MAX_DEPTH} operators deep; split it "
                                "with .equ")
        return left

    def unary(self, where, registers):
        kind, value = self.peek()
        if kind == "op" and value in ("-", "~", "!", "+"):
            self.take()
            following = self.peek()
            if following[0] == "op" and following[1] in ("-", "~", "!", "+"):
                raise SyntaxProblem(f"two unary operators in a row {where} (Keystone refuses "
                                    f"`{value}{following[1]}`)")
            operand = self.unary(where, registers)
            return operand if value == "+" else ("un", value, operand)
        return self.atom(where, registers)

    def atom(self, where, registers):
        kind, value = self.take()
        if kind == "num":
            return ("num", int(value, 0))
        if kind == "char":
            return ("num", ord(value[1]))
        if kind == "op" and value == "(":
            if self.parens >= MAX_PARENS:
                raise SyntaxProblem(f"more than {MAX_PARENS} nested parentheses {where}")
            self.parens += 1
            inner = self.expression(where, registers)
            self.expect(")", f"to close '(' {where}")
            self.parens -= 1
            return inner
        if kind == "name":
            low = value.lower()
            if low in REGISTERS:
                if not registers:
                    raise SyntaxProblem(f"register {low} inside an expression {where}")
                return ("reg", low)
            if low in SIZES or low == "ptr":
                raise SyntaxProblem(f"misplaced {value!r} {where}: write `size ptr` before the operand")
            if value == "$" or "$" in value and not value.startswith((".Lhere_", ".Lnum_")):
                raise SyntaxProblem(f"{value!r} is not a symbol kvmtest knows (write `$` alone for 'here')")
            self.names.add(value)
            return ("sym", value)
        if kind == "end":
            raise SyntaxProblem(f"expression {where} ends early")
        if kind == "op" and value in ")]":
            raise SyntaxProblem(f"unbalanced {value!r} {where}")
        raise SyntaxProblem(f"unexpected {value!r} {where}")


def _address(tree, segment) -> Memory:
    """Split the expression inside [ ] into base, index*scale and displacement."""
    terms = []

    def flatten(node, sign):
        if node[0] == "bin" and node[1] in "+-":
            flatten(node[2], sign)
            flatten(node[3], sign if node[1] == "+" else -sign)
        else:
            terms.append((sign, node))

    flatten(tree, 1)
    base = index = None
    scale = 1
    disp = []
    for sign, node in terms:
        reg, factor = _scaled_register(node)
        if reg is None:
            disp.append(node if sign > 0 else ("un", "-", node))
            continue
        if sign < 0:
            raise SyntaxProblem(f"register {reg} cannot be subtracted in a memory operand")
        if REGISTERS[reg] not in (16, 32, 64):
            raise SyntaxProblem(f"register {reg} cannot address memory")
        if factor is not None:
            if index is not None:
                raise SyntaxProblem("two index registers in a memory operand")
            if factor not in (1, 2, 4, 8):
                raise SyntaxProblem(f"scale {factor} (only 1, 2, 4 or 8)")
            index, scale = reg, factor
        elif base is None:
            base = reg
        elif index is None:
            index = reg
        else:
            raise SyntaxProblem("more than two registers in a memory operand")
    regs = [r for r in (base, index) if r]
    if len({REGISTERS[r] for r in regs}) > 1:
        raise SyntaxProblem(f"registers of different sizes in one memory operand: {', '.join(regs)}")
    if "rip" in regs or "eip" in regs:
        if index is not None or base not in ("rip", "eip") or scale != 1:
            raise SyntaxProblem("rip-relative operands take no index register")
    total = None
    for node in disp:
        total = node if total is None else ("bin", "+", total, node)
    return Memory(base, index, scale, total, segment)


def _scaled_register(node):
    """(register, scale) for `reg`, `reg*N`, `N*reg`; (None, None) for a register-free term."""
    if node[0] == "reg":
        return node[1], None
    if node[0] == "bin" and node[1] == "*":
        left, right = node[2], node[3]
        if left[0] == "reg" and not _has_register(right):
            return left[1], _constant(right)
        if right[0] == "reg" and not _has_register(left):
            return right[1], _constant(left)
    if _has_register(node):
        raise SyntaxProblem("a register in a memory operand may only be added, or multiplied by a scale once")
    return None, None


def _has_register(node) -> bool:
    if node[0] == "reg":
        return True
    return any(isinstance(part, tuple) and _has_register(part) for part in node[1:])


def _constant(node) -> int:
    try:
        return evaluate(node, {})
    except SyntaxProblem:
        raise SyntaxProblem("the scale of an index register must be a number") from None


def _unescape(body: str) -> bytes:
    out = bytearray()
    i = 0
    simple = {"n": 10, "t": 9, "r": 13, "0": 0, "\\": 92, '"': 34, "'": 39, "b": 8, "f": 12}
    while i < len(body):
        c = body[i]
        if c != "\\":
            out += c.encode("utf-8")  # what GAS stores for a UTF-8 source file
            i += 1
            continue
        nxt = body[i + 1]
        if nxt in "01234567" and re.match(r"[0-7]{1,3}", body[i + 1:]):
            digits = re.match(r"[0-7]{1,3}", body[i + 1:]).group()
            out.append(int(digits, 8) & 0xFF)
            i += 1 + len(digits)
        elif nxt in simple:
            out.append(simple[nxt])
            i += 2
        else:
            raise SyntaxProblem(f"escape \\{nxt} in a string (kvmtest knows \\n \\t \\r \\0 \\\\ \\\" and octal)")
    return bytes(out)


# --- evaluation --------------------------------------------------------------------------------

def depth(node) -> int:
    """How deeply operators nest in an expression tree (without recursion: the tree may be deep)."""
    deepest, stack = 0, [(node, 1)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        stack.extend((part, d + 1) for part in node[1:] if isinstance(part, tuple))
    return deepest


def _checked(value: int, what) -> int:
    if not _LOW <= value < _HIGH:
        raise SyntaxProblem(f"{what} = {value:#x} does not fit in 64 bits (Keystone would wrap it)")
    return value


def _wrap(value: int) -> int:
    return (value + (1 << 63)) % (1 << 64) - (1 << 63)


def evaluate(node, values) -> int:
    """The value of an expression tree, symbols looked up in `values`.

    Exact integer arithmetic, refusing any value outside 64 bits (signed or unsigned), where
    Keystone would silently wrap: `-0x8000000000000001`, `0xffffffffffffffff + 1`. The
    bitwise operators work modulo 2**64 as Keystone's do (`~0xffffffffffffffff` is 0).
    """
    kind = node[0]
    if kind == "num":
        return _checked(node[1], "number")
    if kind == "sym":
        if node[1] not in values:
            raise UnknownSymbol(f"unknown symbol {node[1]!r}")
        return _checked(values[node[1]], node[1])
    if kind == "reg":
        raise SyntaxProblem(f"register {node[1]} in an expression")
    if kind == "un":
        v = evaluate(node[2], values)
        if node[1] == "-":
            return _checked(-v, f"-({v:#x})")
        if node[1] == "~":
            return ~v if v < (1 << 63) else (1 << 64) - 1 - v
        return int(v == 0)
    op, a, b = node[1], evaluate(node[2], values), evaluate(node[3], values)
    if op == "/" and b == 0:
        raise SyntaxProblem("division by zero")
    if op in ("<<", ">>") and not 0 <= b < 64:
        raise SyntaxProblem(f"shift by {b}")
    if op in ("&", "|", "^"):
        result = {"&": a & b, "|": a | b, "^": a ^ b}[op]
        return result if _LOW <= result < _HIGH else _wrap(result)
    result = {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b,
              "/": lambda: abs(a) // abs(b) * (1 if (a < 0) == (b < 0) else -1),
              "<<": lambda: a << b, ">>": lambda: a >> b}[op]()
    return _checked(result, f"{a:#x} {op} {b:#x}")


def expr_text(node) -> str:
    """An expression tree written back as text Keystone reads the same way (parenthesised)."""
    kind = node[0]
    if kind == "num":
        return str(node[1])
    if kind in ("sym", "reg"):
        return node[1]
    if kind == "un":
        return f"{node[1]}({expr_text(node[2])})"
    return f"({expr_text(node[2])} {node[1]} {expr_text(node[3])})"
