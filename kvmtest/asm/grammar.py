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
outside string literals and numbers within 64 bits (kvmtest.asm.lexer), every intermediate
value within 64 bits (kvmtest.asm.expressions), at most MAX_PARENS nested parentheses and
expression trees at most MAX_DEPTH deep (deeper ones ran out of Python's recursion limit).

parse() returns what the statement says, so that kvmtest.asm.verify can compare the bytes
Keystone produced with it.
"""

import re
from functools import lru_cache

from .expressions import SyntaxProblem, depth, evaluate, has_register
from .lexer import DATA, DIRECTIVES, PREFIXES, REGISTERS, SEGMENTS, SIZES, STRINGS, check_ascii, tokens, unescape
from .parsed import Memory, Operand, Parsed

MAX_PARENS = 32   # nested parentheses in one expression
MAX_DEPTH = 64    # operators nested in one expression tree (`1+1+...` nests to the left)



_ARITHMETIC = ("+", "-", "*", "/", "&", "|", "^", "<<", ">>", ":")
_LABEL = re.compile(r"[ \t]*([A-Za-z_.$][\w.$@]*)[ \t]*:(?![:\[])")


# Bounded: a soak of distinct guests would otherwise keep every statement it ever saw (about a
# kilobyte each). Sections are cached whole by kvmtest.asm.prepare; this saves re-parsing the
# statements many guests share.
@lru_cache(maxsize=1024)
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
    parser = Parser(tokens(body))
    if body.startswith("."):
        parsed = parser.directive()
    else:
        parsed = parser.instruction()
    return Parsed(tuple(labels), body, **parsed)


class Parser:
    """A recursive-descent parser over one statement's tokens (kvmtest.asm.lexer.tokens); each
    method consumes what it parses and raises SyntaxProblem naming what it found instead.
    kvmtest.guest.compose uses operand() for macro operands."""

    def __init__(self, tokens):
        self.toks = tokens
        self.i = 0
        self.names: set[str] = set()
        self.parens = 0

    # token helpers
    def peek(self, k=0):
        """The token `k` places ahead, ("end", "") past the last."""
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else ("end", "")

    def take(self):
        """The next token, consumed."""
        tok = self.peek()
        self.i += 1
        return tok

    def at(self, value) -> bool:
        """Whether the next token is the operator `value`."""
        return self.peek()[1] == value and self.peek()[0] == "op"

    def expect(self, value, where):
        """Consume the operator `value`; SyntaxProblem naming `where` if something else comes."""
        if not self.at(value):
            raise SyntaxProblem(f"expected {value!r} {where}, found {self.describe()}")
        self.take()

    def describe(self, tok=None) -> str:
        """A token (default: the next one) as a message shows it."""
        kind, value = tok or self.peek()
        return "the end of the statement" if kind == "end" else repr(value)

    def done(self) -> bool:
        """Whether every token has been consumed."""
        return self.peek()[0] == "end"

    # statements
    def instruction(self) -> dict:
        """`[prefix...] mnemonic [operand, ...]`: Parsed's fields for an instruction."""
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
        return {"kind": "insn", "name": mnemonic, "prefixes": tuple(prefixes), "operands": tuple(operands),
                "names": frozenset(self.names)}

    def directive(self) -> dict:
        """`.name [argument, ...]`, argument counts checked: Parsed's fields for a directive."""
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
        return {"kind": "directive", "name": name, "args": tuple(args), "names": frozenset(self.names),
                "defines": defines}

    def string(self) -> bytes:
        """A quoted string literal's bytes."""
        kind, value = self.take()
        if kind != "str":
            raise SyntaxProblem(f"expected a quoted string, found {self.describe((kind, value))}")
        return unescape(value[1:-1])

    # operands
    def operand(self, n: int) -> Operand:
        """Operand number `n` (for messages): `[size ptr]` register, immediate, memory or far pointer."""
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
        """`[ ... ]` after an optional segment override: base, index*scale and displacement."""
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
        """An expression tree with C's precedence; registers only inside [ ] (`registers`)."""
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
        """A unary - ~ ! (+ is dropped) and its operand."""
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
        """A number, character constant, symbol, register or parenthesised expression."""
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
    if ("rip" in regs or "eip" in regs) and (index is not None or base not in ("rip", "eip") or scale != 1):
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
        if left[0] == "reg" and not has_register(right):
            return left[1], _constant(right)
        if right[0] == "reg" and not has_register(left):
            return right[1], _constant(left)
    if has_register(node):
        raise SyntaxProblem("a register in a memory operand may only be added, or multiplied by a scale once")
    return None, None


def _constant(node) -> int:
    try:
        return evaluate(node, {})
    except SyntaxProblem:
        raise SyntaxProblem("the scale of an index register must be a number") from None

