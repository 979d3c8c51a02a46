"""The vocabulary of guest source and its tokens: registers, sizes, prefixes, directives, and
the lexer every statement goes through before kvmtest.asm.grammar parses it.

Only ASCII is allowed outside string literals (Keystone's binding cannot encode anything
else, and a no-break space would otherwise pass for a blank), and every number must fit in
64 bits (Keystone wraps silently).
"""

import re

from .expressions import HIGH64, SyntaxProblem


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

TOKEN = re.compile(r"""
    (?P<ws>[ \t]+)
  | (?P<num>0[xX][0-9a-fA-F]+|0[bB][01]+|\d+)(?![\w.$@])
  | (?P<badnum>\d[\w.$@]*)
  | (?P<name>[A-Za-z_.$][\w.$@]*)
  | (?P<char>'[^'\\]')
  | (?P<str>"(?:[^"\\\n]|\\.)*")
  | (?P<op><<|>>|[-+*/&|^~!()\[\],:])
""", re.VERBOSE)


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


def tokens(text: str) -> list[tuple[str, str]]:
    """The (kind, text) tokens of one statement, blanks dropped; kind is a TOKEN group name
    (num, name, char, str, op). SyntaxProblem for a character or number outside the grammar."""
    check_ascii(text)
    out, pos = [], 0
    while pos < len(text):
        m = TOKEN.match(text, pos)
        if not m:
            c = text[pos]
            what = "unterminated string" if c == '"' else "unterminated or multi-character character constant" \
                if c == "'" else f"unexpected character {c!r}"
            raise SyntaxProblem(what)
        kind = m.lastgroup or ""
        if kind == "badnum":
            raise SyntaxProblem(f"malformed number {m.group()!r} (write decimal, 0x hex or 0b binary)")
        if kind == "num" and len(m.group()) > 1 and m.group()[0] == "0" and m.group()[1].isdigit():
            raise SyntaxProblem(f"number {m.group()!r} has a leading zero, which GAS reads as octal; "
                                "write it in decimal or 0x hex")
        if kind == "num" and int(m.group(), 0) >= HIGH64:
            raise SyntaxProblem(f"number {m.group()} does not fit in 64 bits")
        if kind != "ws":
            out.append((kind, m.group()))
        pos = m.end()
    return out


def unescape(body: str) -> bytes:
    """The bytes of a string literal's body (without its quotes), as GAS stores them: escapes
    \\n \\t \\r \\0 \\b \\f \\\\ \\" \\' and octal, other characters as UTF-8.
    SyntaxProblem for any other escape."""
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
        octal = re.match(r"[0-7]{1,3}", body[i + 1:])
        if octal:
            digits = octal.group()
            out.append(int(digits, 8) & 0xFF)
            i += 1 + len(digits)
        elif nxt in simple:
            out.append(simple[nxt])
            i += 2
        else:
            raise SyntaxProblem(f"escape \\{nxt} in a string (kvmtest knows \\n \\t \\r \\0 \\\\ \\\" and octal)")
    return bytes(out)

