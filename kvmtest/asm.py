"""Keystone wrapper: 16/32/64-bit code, several sections sharing symbols, label addresses,
a cache in memory and on disk, and errors that name the guest source line.

Every guest statement either assembles to what it says or fails as "file:line: `text`: why".
Three checks, each catching what the one before cannot:
1. kvmtest.asm_syntax parses each statement against an Intel-syntax grammar before Keystone
   sees it. Keystone 0.9.2 drops a statement it cannot parse and carries on (`mov eax, 1,`
   vanishes, `mov eax, [ebx` becomes a load from 0, `dword [ebx]` emits nothing), and a few
   malformed lines make it loop forever; those never reach it. Unknown symbols are refused.
2. A label before every statement, read back through the label table, gives each statement's
   own bytes: a statement that produced none, or whose bytes landed elsewhere, is refused.
3. kvmtest.asm_verify decodes those bytes with iced-x86 and compares mnemonic, prefixes,
   operands, values and operand size with the source; data directives must hold their values.

Keystone 0.9.2 also has traps this wrapper closes rather than passing on silently:
- 64-bit absolute memory operands (`[0x1000]`, `[label]`) are turned RIP-relative or into
  a sign-extended disp32; both are wrong for some addresses. Rejected: write
  `[rip + label]` or put the address in a register.
- `.align` is ignored (`.balign` works). Rejected.
- `ljmp sel:off` in 32-bit code gets a 16-bit operand size. Rejected outside 16-bit code:
  use the FARJMP/FARCALL macros of kvmtest.guest.compose.
- A symbol from a resolver callback loses any `+ offset`. Not used: shared symbols are
  passed as `.equ` lines instead.
- `push imm` in 16-bit code pushes 32 bits (and `push word ptr N` too unless N fits an imm8).
  Rejected with the spelling that works.
- `ret`, `retf`, `call label` and `push fs` in 16-bit code get a 32-bit operand size,
  `push cs`, `push label` and LGDT/LIDT/SGDT/SIDT in 32-bit code a 16-bit one. Spelled out
  correctly (see _for_keystone).
- `jmp $` and numeric local labels (`1:`, `jmp 1b`) are refused. Rewritten to named labels.
- `-(expr)` and `~(expr)` in an instruction's operand are refused ("invalid operand"). Handed
  to it as `(0-(expr))` and `(-1-(expr))`.
- `iret`, `pushf` and `popf` in 32- and 64-bit code get a 16-bit operand size (66 CF, 66 9C).
  kvmtest follows GAS instead: `iret` is IRETD in 32-bit code, `pushf`/`popf` are PUSHFD/POPFD
  in 32-bit and PUSHFQ/POPFQ in 64-bit code. A bare `iret` in 64-bit code, which GAS assembles
  to IRETD with an "ambiguous operand size" warning, is refused: write iretq (or iretd).
- `.fill` with a size over 8 or a pattern over 32 bits prints a warning and truncates (a second
  warning once crashed the process); `.balign 2**32` divides by zero (SIGFPE), and huge
  `.balign`, `.skip`, `.fill` and `.quad 2**64` run for minutes. Every size, count, alignment
  and `.org` target must be a constant that fits the guest code area (layout.CODE_END - CODE),
  every data value and fill pattern must fit its width (asm_syntax.fits), all before Keystone.
- A non-ASCII character makes its binding raise UnicodeEncodeError: refused outside string
  literals; inside them it is stored as its UTF-8 bytes, as GAS does.

Differences from GAS that remain: `[rip + symbol]` must name a label of the same section
(GAS would take a constant symbol as a raw displacement); sizes and `.org` targets must be
constants; `.equ`/`.set` may define a name only once; names starting with `.Lkt_`, `.Lhere_`,
`.Lnum_`, `.Lcall_` are kvmtest's.
"""

import hashlib
import json
import os
import re
import tempfile
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from .asm_syntax import (_TOKEN, DATA, PREFIXES, Parsed, SyntaxProblem, UnknownSymbol, evaluate, expr_text, fits,
                         parse)
from .asm_verify import Mismatch, check as verify
from .errors import AssemblyError

ASM_VERSION = "6"  # bump when preprocessing changes, to invalidate cached results

_LABEL_DEF = re.compile(r"^[ \t]*([A-Za-z_.][\w.$]*)[ \t]*:(?!:)")
_NUMERIC_DEF = re.compile(r"^[ \t]*(\d+)[ \t]*:")
_NUMERIC_REF = re.compile(r"(?<![\w.])(\d+)([bf])(?![\w.])")
_FAR_IMM = re.compile(r"^\s*(ljmp|lcall)\s+[^\[\]]*:", re.I)


@dataclass(frozen=True)
class Statement:
    text: str
    origin: str  # "file:line" of the guest source
    macro: str = ""  # the macro line this statement was expanded from (for messages)


@dataclass(frozen=True)
class Section:
    """Code assembled at `base` for a `bits`-bit code segment."""

    name: str
    base: int
    bits: int
    statements: tuple[Statement, ...]

    @classmethod
    def from_text(cls, name: str, base: int, bits: int, text: str, origin: str | None = None):
        return cls(name, base, bits, tuple(split_statements(text, origin or name)))


@dataclass(frozen=True)
class Assembled:
    name: str
    base: int
    bits: int
    code: bytes
    labels: dict[str, int] = field(default_factory=dict)
    equs: dict[str, int] = field(default_factory=dict)  # the .equ/.set symbols the section defines

    @property
    def end(self) -> int:
        return self.base + len(self.code)


def _strip_comment(line: str) -> str:
    out, quote = [], None
    i = 0
    while i < len(line):
        c = line[i]
        if quote:
            out.append(c)
            if c == "\\" and i + 1 < len(line):
                out.append(line[i + 1])
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'":
            quote = c
            out.append(c)
        elif c == "#" or line.startswith("//", i):
            break
        else:
            out.append(c)
        i += 1
    return "".join(out)


def _split_outside_quotes(line: str, sep: str) -> list[str]:
    parts, cur, quote = [], [], None
    for c in line:
        if quote:
            cur.append(c)
            if c == quote:
                quote = None
        elif c in "\"'":
            quote = c
            cur.append(c)
        elif c == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    parts.append("".join(cur))
    return parts


_BLANK = " \t\f\v"


def source_lines(text: str) -> list[str]:
    """Lines as an editor numbers them: str.splitlines() also ends a line at \\x0b, \\x0c,
    \\x1c-\\x1e, \\x85 and U+2028, which shifted every later line number (and hid the
    character); those stay in the line, where the grammar refuses them."""
    return re.split(r"\r\n|\r|\n", text)


def split_statements(text: str, name: str, first_line: int = 1) -> list[Statement]:
    """Split source into statements (lines and `;`-separated parts), dropping comments."""
    result = []
    for n, line in enumerate(source_lines(text), start=first_line):
        for part in _split_outside_quotes(_strip_comment(line), ";"):
            part = part.strip(_BLANK)  # not str.strip(): \\x1c or a no-break space is no blank to drop
            if part:
                result.append(Statement(part, f"{name}:{n}"))
    return result


def _fail(st: Statement, why: str) -> AssemblyError:
    if st.macro and st.macro != st.text:
        return AssemblyError(f"{st.origin}: `{st.macro}` (expanded to `{st.text}`): {why}")
    return AssemblyError(f"{st.origin}: `{st.text}`: {why}")


_RESERVED = re.compile(r"(?<![\w.$])(\.L(?:kt|here|num|call)_[\w.$]*)")


def _code_area() -> int:
    """The most bytes one directive may span: the guest code area (imported here, late:
    kvmtest.guest imports this module)."""
    from .guest import layout

    return layout.CODE_END - layout.CODE


def _check(st: Statement, bits: int) -> None:
    """Reject the forms Keystone 0.9.2 would encode wrongly without saying so."""
    low = st.text.lower()
    if re.match(r"^\.(p2)?align\b", low) and not low.startswith(".balign"):
        if low.startswith(".align"):
            raise _fail(st, "Keystone ignores .align; use .balign N")
    if bits == 16:
        m = re.match(r"^push\s+(word\s+ptr\s+)?([-+]?(?:0x[0-9a-f]+|\d+)|[a-z_.][\w.]*)\s*$", low)
        if m and not re.fullmatch(r"[a-z]{2,3}", m.group(2)):
            small = re.fullmatch(r"[-+]?(0x[0-9a-f]+|\d+)", m.group(2)) and -128 <= int(m.group(2), 0) <= 127
            if not (m.group(1) and small):
                raise _fail(st, "Keystone encodes this PUSH immediate as a 32-bit push in 16-bit code; write "
                                "push word ptr N for -128..127, or .byte 0x68 / .word N for a 16-bit push")
    if bits != 16 and _FAR_IMM.match(low):
        raise _fail(st, f"Keystone encodes an immediate far jump/call with a 16-bit offset in {bits}-bit code; "
                        "use FARJMP/FARCALL selector, target")
    if bits == 64 and re.fullmatch(r"(?:[\w.$]+\s*:\s*)*iret", low):
        raise _fail(st, "`iret` in 64-bit code is ambiguous (GAS assembles IRETD and warns); write iretq or iretd")
    reserved = _RESERVED.search(_strip_strings(st.text))
    if reserved:
        raise _fail(st, f"{reserved.group(1)}: names starting with .Lkt_, .Lhere_, .Lnum_ or .Lcall_ are kvmtest's")


def _strip_strings(text: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)


def _rewrite(statements: list[Statement], section: str) -> list[str]:
    """The text handed to Keystone for each statement: `$` and numeric local labels (`1:`,
    `jmp 1b`) become named labels, which Keystone accepts."""
    texts: list[str] = []
    numeric_defs: list[tuple[int, str, int]] = []  # (statement index, number, serial)
    serial = 0
    for st in statements:
        text, labels = st.text, []
        m = _NUMERIC_DEF.match(text)
        if m:
            serial += 1
            numeric_defs.append((len(texts), m.group(1), serial))
            labels.append(f".Lnum_{section}_{m.group(1)}_{serial}")
            text = text[m.end():].strip(_BLANK)
        body = text
        while (lm := _LABEL_DEF.match(body)) and not re.match(r"\s*[a-z]s\s*:\s*\[", body, re.I):
            body = body[lm.end():]
        if "$" in body and '"' not in body and "'" not in body:
            serial += 1
            here = f".Lhere_{section}_{serial}"
            labels.append(here)
            text = text[: len(text) - len(body)] + re.sub(r"(?<![\w.$])\$(?![\w.$])", here, body)
        texts.append("".join(f"{label}: " for label in labels) + text)
    out = []
    for index, (st, text) in enumerate(zip(statements, texts)):
        def resolve(m, index=index, st=st):
            number, direction = m.group(1), m.group(2)
            if direction == "b":
                cands = [d for d in numeric_defs if d[1] == number and d[0] <= index]
                pick = cands[-1] if cands else None
            else:
                cands = [d for d in numeric_defs if d[1] == number and d[0] > index]
                pick = cands[0] if cands else None
            if pick is None:
                raise _fail(st, f"local label {number}{direction} has no matching '{number}:'")
            return f".Lnum_{section}_{number}_{pick[2]}"

        if '"' not in text and "'" not in text:
            text = _NUMERIC_REF.sub(resolve, text)
        out.append(text)
    return out


@dataclass(frozen=True)
class _Line:
    """One statement: as written (for messages), what it says, and what Keystone is given."""

    st: Statement
    bits: int
    parsed: Parsed
    body: str              # the text for Keystone, without the statement's labels
    segment_for_66: int    # prefix byte to put in place of Keystone's stray 0x66 (0: none)

    @property
    def text(self) -> str:
        return "".join(f"{label}:\n" for label in self.parsed.labels) + self.body


_DESCRIPTOR_TABLE = ("lgdt", "lidt", "sgdt", "sidt")
# PUSH sreg opcodes (POP is one more); Keystone gets the operand size of all six wrong in
# 16-bit or 32-bit code
_SEGMENT_PUSH = {"es": 0x06, "cs": 0x0E, "ss": 0x16, "ds": 0x1E, "fs": 0x0FA0, "gs": 0x0FA8}


def _unary_for_keystone(body: str) -> str:
    """`-(e)` and `~(e)` spelled `(0-(e))` and `(-1-(e))`: Keystone refuses a unary minus or
    complement before a parenthesis in an instruction operand (it accepts them in data)."""
    toks, pos = [], 0
    while pos < len(body):
        m = _TOKEN.match(body, pos)
        if not m:
            return body  # parse() accepted it, so this does not happen; leave it to Keystone
        if m.lastgroup != "ws":
            toks.append((m.lastgroup, m.group(), m.start(), m.end()))
        pos = m.end()
    mnemonic = next((i for i, t in enumerate(toks) if t[0] == "name" and t[1].lower() not in PREFIXES), -1)
    edits = []
    for i, (kind, value, start, end) in enumerate(toks):
        if value not in ("-", "~") or kind != "op" or i + 1 >= len(toks) or toks[i + 1][1] != "(":
            continue
        prev = toks[i - 1] if i else None
        unary = prev is None or prev[0] == "op" and prev[1] not in (")", "]") \
            or prev[0] == "name" and (i - 1 <= mnemonic or prev[1].lower() == "ptr")
        if not unary:
            continue
        depth, j = 0, i + 1
        for j in range(i + 1, len(toks)):
            depth += {"(": 1, ")": -1}.get(toks[j][1], 0) if toks[j][0] == "op" else 0
            if depth == 0:
                break
        edits += [(start, end, "(0-" if value == "-" else "(-1-"), (toks[j][3], toks[j][3], ")")]
    for start, end, text in sorted(edits, reverse=True):
        body = body[:start] + text + body[end:]
    return body


def _ascii_for_keystone(body: str) -> str:
    """Non-ASCII characters (only inside string literals by now) as octal escapes of their
    UTF-8 bytes, which Keystone stores as those bytes."""
    return "".join(c if ord(c) < 128 else "".join(f"\\{b:03o}" for b in c.encode("utf-8")) for c in body)


def _for_keystone(parsed: Parsed, bits: int, base: int, here: str) -> tuple[str, int]:
    body, segment = _for_keystone_sized(parsed, bits, base, here)
    if parsed.kind == "insn":
        body = _unary_for_keystone(body)
    return _ascii_for_keystone(body), segment


_GAS_SIZE = {32: {"iret": "iretd", "pushf": "pushfd", "popf": "popfd"}, 64: {"pushf": "pushfq", "popf": "popfq"}}


def _for_keystone_sized(parsed: Parsed, bits: int, base: int, here: str) -> tuple[str, int]:
    """The body handed to Keystone, closing operand-size traps the checks would refuse.

    In 16-bit code Keystone gives RET, RETF, CALL rel and PUSH/POP FS/GS a 32-bit operand
    size (66 C3, 66 CB, 66 E8 rel32, 66 0F A0); in 32-bit code PUSH/POP of CS/DS/ES/SS and
    PUSH label a 16-bit one (66 0E, 66 68 imm16): they are spelled out. In 32-bit code it gives
    LGDT/LIDT/SGDT/SIDT a 16-bit operand size too (66 0F 01), which loads or stores a 24-bit
    base (SDM Vol. 2A LGDT, SGDT "Operation"): the 0x66 is replaced by a redundant override of
    the operand's default segment afterwards, which keeps every address.
    """
    ops, name = parsed.operands, parsed.name
    if parsed.kind != "insn" or parsed.prefixes:
        return parsed.body, 0
    if not ops and name in _GAS_SIZE.get(bits, {}):
        return _GAS_SIZE[bits][name], 0
    if bits == 16 and name in ("ret", "retf") and len(ops) <= 1 and all(o.kind == "imm" and not o.size for o in ops):
        opcode = {"ret": 0xC3, "retf": 0xCB}[name] - (1 if ops else 0)
        return f".byte {opcode:#x}" + (f"\n.word {expr_text(ops[0].expr)}" if ops else ""), 0
    if bits == 16 and name == "call" and len(ops) == 1 and ops[0].kind == "imm" and not ops[0].size:
        # rel16 = target - (here + 3), written so that Keystone sees a label difference and
        # constants (a constant minus a label it silently gets wrong)
        offset = f"({expr_text(ops[0].expr)}) - {base:#x} - ({here} - {_BEGIN}) - 3"
        return f"{here}: .byte 0xe8\n.word {offset}", 0
    if bits != 64 and name in ("push", "pop") and len(ops) == 1 and ops[0].kind == "reg" \
            and ops[0].reg in _SEGMENT_PUSH:
        opcode = _SEGMENT_PUSH[ops[0].reg] + (1 if name == "pop" else 0)
        return ".byte " + ", ".join(hex(b) for b in opcode.to_bytes(2 if opcode > 0xFF else 1, "big")), 0
    if bits == 32 and name == "push" and len(ops) == 1 and ops[0].kind == "imm" and not ops[0].size \
            and parsed.names:
        return f".byte 0x68\n.long {expr_text(ops[0].expr)}", 0
    if bits == 32 and name in _DESCRIPTOR_TABLE and len(ops) == 1 and ops[0].kind == "mem" \
            and not ops[0].size and not ops[0].mem.segment:
        stack = ops[0].mem.base in ("ebp", "esp", "bp", "sp")
        return parsed.body, 0x36 if stack else 0x3E
    return parsed.body, 0


@lru_cache(maxsize=256)
def _prepare(sec: Section) -> tuple[_Line, ...]:
    """Check every statement against kvmtest.asm_syntax's grammar and the traps above."""
    bits = sec.bits
    section = re.sub(r"\W", "_", sec.name)
    texts = _rewrite(list(sec.statements), section)
    lines = []
    for st, text in zip(sec.statements, texts):
        try:
            parsed = parse(text)
        except SyntaxProblem as e:
            raise _fail(st, str(e)) from None
        if parsed.kind == "directive" and parsed.name.startswith(".code"):
            bits = int(parsed.name[5:])
        _check(st, bits)
        if bits == 64 and any(o.kind == "mem" and not o.mem.base and not o.mem.index for o in parsed.operands):
            raise _fail(st, "64-bit absolute memory operand: Keystone 0.9.2 encodes it RIP-relative or as a "
                            "sign-extended disp32, wrong for some addresses; write [rip + label] or put the "
                            "address in a register")
        body, segment = _for_keystone(parsed, bits, sec.base, f".Lcall_{section}_{len(lines)}")
        lines.append(_Line(st, bits, parsed, body, segment))
    _check_definitions(lines)
    return tuple(lines)


def _check_definitions(lines) -> None:
    """Each name defined once, and no .equ defined through itself (Keystone said only
    "Cannot find a symbol", for no line)."""
    defined: dict[str, str] = {}
    equs = {}
    for line in lines:
        for name in (*line.parsed.labels, line.parsed.defines):
            if not name:
                continue
            if name in defined:
                raise _fail(line.st, f"{name} is already defined at {defined[name]}")
            defined[name] = line.st.origin
        if line.parsed.defines:
            equs[line.parsed.defines] = line
    for name, line in equs.items():
        seen, todo = set(), [name]
        while todo:
            for used in equs[todo.pop()].parsed.names:
                if used == name:
                    raise _fail(line.st, f"{name} is defined in terms of itself")
                if used in equs and used not in seen:
                    seen.add(used)
                    todo.append(used)


def _user_labels(lines) -> list[str]:
    """The labels a section defines, without those kvmtest's rewriting made."""
    return [n for line in lines for n in line.parsed.labels if not n.startswith((".Lhere_", ".Lnum_"))]


class _Keystone:
    """Keystone handles per mode, serialised: the C library is not re-entrant."""

    def __init__(self):
        self.lock = threading.Lock()
        self.handles = {}

    def asm(self, text: str, bits: int, base: int) -> bytes:
        import keystone

        mode = {16: keystone.KS_MODE_16, 32: keystone.KS_MODE_32, 64: keystone.KS_MODE_64}[bits]
        with self.lock:
            if bits not in self.handles:
                self.handles[bits] = keystone.Ks(keystone.KS_ARCH_X86, mode)
            encoding, _ = self.handles[bits].asm(text, base)
        return bytes(encoding or b"")


_ks = _Keystone()


def _keystone_error(e) -> str:
    return str(e).replace("(KS_ERR_ASM_", "(").rstrip()


def _locate_error(lines, bits, base, prelude) -> AssemblyError | None:
    """The line Keystone rejects: each statement alone (labels stubbed), then, for errors that
    need what came before (`.org` backwards), the shortest failing prefix."""
    import keystone

    def head(rest):
        stubs = [f".equ {n}, {base:#x}" for line in rest for n in line.parsed.labels]
        equs = [line.text for line in rest if line.parsed.defines]
        return "\n".join([f"{_BEGIN}:"] + prelude + stubs + equs)

    def error(text, bits_):
        try:
            _ks.asm(text, bits_, base)
        except keystone.KsError as e:
            return _keystone_error(e)
        return None

    everything = head(lines)
    for line in lines:
        if line.parsed.kind == "label" or line.parsed.defines:
            continue
        why = error(everything + "\n" + line.body, line.bits)
        if why:
            return _fail(line.st, why)
    lo, hi = 0, len(lines)  # the prefix of lo statements assembles, that of hi (all) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        text = head(lines[mid:]) + "\n" + "\n".join(line.text for line in lines[:mid])
        if error(text, bits):
            hi = mid
        else:
            lo = mid
    text = head(lines[hi:]) + "\n" + "\n".join(line.text for line in lines[:hi])
    why = error(text, bits) if lines else None
    if why and lines[hi - 1].parsed.name == ".org":
        why += "; .org cannot move backwards"
    return _fail(lines[hi - 1].st, why) if why else None


_MARK = ".Lkt_st_"  # the label kvmtest puts before each statement to find its bytes
_BEGIN = ".Lkt_begin"  # the start of the section


@lru_cache(maxsize=256)
def _outside_names(sec: Section) -> frozenset:
    """The symbols a section uses but does not define: layout symbols, other sections' labels."""
    lines = _prepare(sec)
    local = {n for line in lines for n in (*line.parsed.labels, line.parsed.defines) if n}
    return frozenset(n for line in lines for n in line.parsed.names if n not in local)


def _assemble_once(sec: Section, symbols: dict[str, int]) -> Assembled:
    used = _outside_names(sec)
    if not used <= symbols.keys():
        for line in _prepare(sec):
            unknown = (line.parsed.names & used) - symbols.keys()
            if unknown:
                raise _fail(line.st, f"unknown symbol {', '.join(sorted(unknown))} (not a register, a label, "
                                     ".equ or a layout symbol)")
    return _assemble_checked(sec, tuple((n, symbols[n]) for n in sorted(used)))


def _relocatable(lines, marks):
    """relocatable(expr): how many times `expr` counts an address of this section (labels,
    directly or through this section's .equ), as GAS decides what `[rip + expr]` means."""
    labels = {n for line in lines for n in line.parsed.labels} | marks
    equs = {line.parsed.defines: line.parsed.args[0] for line in lines if line.parsed.defines}

    def count(node):
        kind = node[0]
        if kind == "num":
            return 0
        if kind == "sym":
            return 1 if node[1] in labels else count(equs[node[1]]) if node[1] in equs else 0
        if kind == "un":
            inner = count(node[2])
            return None if inner is None else -inner if node[1] == "-" else 0 if inner == 0 else None
        if kind != "bin":
            return None
        a, b = count(node[2]), count(node[3])
        if a is None or b is None:
            return None
        if node[1] in "+-":
            return a + b if node[1] == "+" else a - b
        return 0 if a == b == 0 else None

    return count


def _check_constants(lines, values, base) -> None:
    """Sizes, counts, alignments, .org targets and data values checked before Keystone sees
    them: it crashes (SIGFPE), runs for minutes, or wraps and truncates silently otherwise.
    `values`: the symbols known before assembly (layout and other sections'); this section's
    .equ constants are added as they come."""
    span = _code_area()

    def constant(line, n, what):
        try:
            return evaluate(line.parsed.args[n], values)
        except UnknownSymbol as e:
            raise _fail(line.st, f"{what} must be a constant (numbers, .equ and layout symbols): {e}") from None
        except SyntaxProblem as e:
            raise _fail(line.st, str(e)) from None

    def fill_byte(line, n):
        if len(line.parsed.args) > n and not fits(value := constant(line, n, "the fill byte"), 8):
            raise _fail(line.st, f"fill byte {value:#x} does not fit in a byte")

    for line in lines:
        p = line.parsed
        if p.kind != "directive":
            continue
        name = p.name
        if p.defines:
            try:
                values[p.defines] = evaluate(p.args[0], values)
            except UnknownSymbol:
                pass  # an address of this section: known after assembly, checked then
            except SyntaxProblem as e:
                raise _fail(line.st, str(e)) from None
        elif name in DATA:
            for n, expr in enumerate(p.args, 1):
                try:
                    value = evaluate(expr, values)
                except UnknownSymbol:
                    continue
                except SyntaxProblem as e:
                    raise _fail(line.st, str(e)) from None
                if not fits(value, 8 * DATA[name]):
                    raise _fail(line.st, f"value {value:#x} (argument {n}) does not fit in {DATA[name]} byte(s)")
        elif name == ".balign":
            align = constant(line, 0, "the alignment")
            if not 0 < align <= span or align & (align - 1):
                raise _fail(line.st, f".balign {align:#x}: the alignment must be a power of two up to {span:#x} "
                                     "(the guest code area)")
            fill_byte(line, 1)
        elif name in (".skip", ".space", ".zero"):
            count = constant(line, 0, "the size")
            if not 0 <= count <= span:
                raise _fail(line.st, f"{name} {count:#x}: the size must be 0 to {span:#x} (the guest code area)")
            fill_byte(line, 1)
        elif name == ".fill":
            count = constant(line, 0, "the count")
            size = constant(line, 1, "the size") if len(p.args) > 1 else 1
            value = constant(line, 2, "the value") if len(p.args) > 2 else 0
            if not 1 <= size <= 8:
                raise _fail(line.st, f".fill size {size}: must be 1 to 8")
            if not 0 <= count * size <= span:
                raise _fail(line.st, f".fill {count:#x} x {size}: must be 0 to {span:#x} bytes (the guest code area)")
            if not fits(value, 8 * min(size, 4)):
                raise _fail(line.st, f".fill value {value:#x} does not fit in {min(size, 4)} byte(s) (the pattern is "
                                     "at most 4 bytes, zero above)")
        elif name == ".org":
            target = constant(line, 0, "the .org target")
            if not base <= target <= base + span:
                raise _fail(line.st, f".org {target:#x}: outside this section ({base:#x} to {base + span:#x})")
            fill_byte(line, 1)


@lru_cache(maxsize=256)
def _assemble_checked(sec: Section, foreign: tuple[tuple[str, int], ...]) -> Assembled:
    """Assemble with a label before every statement, then check each statement's bytes.

    Keyed by the section and the values of the other sections' symbols it uses, so the
    exception-handler section every guest of a mode shares is assembled once per process.
    """
    import keystone

    lines = _prepare(sec)
    _check_constants(lines, dict(foreign), sec.base)
    prelude = [f".equ {k}, {v:#x}" for k, v in foreign]
    text, marks = [f"{_BEGIN}:"] + prelude, []
    for i, line in enumerate(lines):
        if line.parsed.kind != "label":
            marks.append((f"{_MARK}{i}", line))
            text.append(f"{_MARK}{i}:")
        text.append(line.text)
    text.append(f"{_MARK}end:")
    names = [n for line in lines for n in (*line.parsed.labels, line.parsed.defines) if n]
    names += [m for m, _ in marks] + [f"{_MARK}end"]
    text += [f".quad {n}" for n in names]
    try:
        blob = _ks.asm("\n".join(text), sec.bits, sec.base)
    except keystone.KsError as e:
        located = _locate_error(lines, sec.bits, sec.base, prelude)
        raise located or AssemblyError(f"{sec.name}: {_keystone_error(e)}") from None
    code_len = len(blob) - 8 * len(names)
    table = [int.from_bytes(blob[code_len + 8 * i: code_len + 8 * i + 8], "little", signed=True)
             for i in range(len(names))]
    values = {**dict(foreign), **dict(zip(names, table))}
    relocatable = _relocatable(lines, {m for m, _ in marks})
    ends = [values[m] for m, _ in marks[1:]] + [values[f"{_MARK}end"]]
    blob = bytearray(blob)
    for (mark, line), end in zip(marks, ends):
        start = values[mark]
        if not sec.base <= start <= end <= sec.base + code_len:
            raise _fail(line.st, f"its bytes landed out of order ({start:#x}-{end:#x}); Keystone merged it "
                                 "with another statement")
        if line.segment_for_66 and blob[start - sec.base] == 0x66:
            blob[start - sec.base] = line.segment_for_66
        try:
            verify(line.parsed, line.bits, start, blob[start - sec.base: end - sec.base], values, relocatable)
        except Mismatch as e:
            raise _fail(line.st, str(e)) from None
    labels = {n: values[n] for n in _user_labels(lines)}
    equs = {line.parsed.defines: values[line.parsed.defines] for line in lines if line.parsed.defines}
    return Assembled(sec.name, sec.base, sec.bits, bytes(blob[:code_len]), labels, equs)


# --- caching ---------------------------------------------------------------------------------

_memory_cache: dict[str, list[Assembled]] = {}


def cache_dir() -> Path | None:
    """KVMTEST_CACHE_DIR, else ~/.cache/kvmtest/asm; None (no disk cache) if set to ''."""
    env = os.environ.get("KVMTEST_CACHE_DIR")
    if env == "":
        return None
    return Path(env) if env else Path.home() / ".cache" / "kvmtest" / "asm"


def _key(sections, symbols) -> str:
    import keystone

    payload = json.dumps({
        "v": ASM_VERSION, "ks": getattr(keystone, "__version__", "?"),
        "symbols": sorted(symbols.items()),
        "sections": [[s.name, s.base, s.bits, [st.text for st in s.statements]] for s in sections],
    })
    return hashlib.sha256(payload.encode()).hexdigest()


def _disk_load(key):
    d = cache_dir()
    if d is None:
        return None
    try:
        data = json.loads((d / f"{key}.json").read_text())
        return [Assembled(a["name"], a["base"], a["bits"], bytes.fromhex(a["code"]), a["labels"], a["equs"])
                for a in data]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _disk_store(key, result):
    d = cache_dir()
    if d is None:
        return
    try:
        d.mkdir(parents=True, exist_ok=True)
        data = [{"name": a.name, "base": a.base, "bits": a.bits, "code": a.code.hex(), "labels": a.labels,
                 "equs": a.equs} for a in result]
        # Written whole then renamed, so concurrent xdist workers never read half a file.
        fd, tmp = tempfile.mkstemp(dir=d, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, d / f"{key}.json")
    except OSError:
        pass


def assemble_sections(sections: list[Section], symbols: dict[str, int] | None = None) -> list[Assembled]:
    """Assemble sections that may refer to each other's labels; returns them in order.

    Cross-section labels are resolved by iterating until every address is stable.
    """
    symbols = dict(symbols or {})
    key = _key(sections, symbols)
    if key in _memory_cache:
        return _memory_cache[key]
    result = _disk_load(key)
    if result is None:
        _check_names(sections, symbols)
        # First guess for each label: its section's base, so encodings are close to final.
        guess = {name: sec.base for sec in sections for name in _user_labels(_prepare(sec))}
        for _ in range(6):
            result = [_assemble_once(sec, {**symbols, **guess}) for sec in sections]
            found = {k: v for a in result for k, v in a.labels.items()}
            if found == guess:
                break
            guess = found
        else:
            raise AssemblyError("cross-section label addresses did not settle; "
                                "check for sections that refer to each other in size-dependent ways")
        _check_overlaps(result)
        _disk_store(key, result)
    _memory_cache[key] = result
    return result


def _check_names(sections: list[Section], symbols: dict[str, int]) -> None:
    """A label or .equ may not take the name of a symbol the harness passes in (KT_CR3, CODE,
    PORT_DONE: the section's own definition silently won) nor of another section's label
    (refused at the first section's line: the test's code comes before the harness's handlers)."""
    first: dict[str, tuple[Section, Statement]] = {}
    for sec in sections:
        for line in _prepare(sec):
            for name in (*line.parsed.labels, line.parsed.defines):
                if name in symbols:
                    raise _fail(line.st, f"{name} is a symbol the harness defines ({symbols[name]:#x}); "
                                         "pick another name")
                if name in first and first[name][0] is not sec:
                    raise _fail(first[name][1], f"{name} is also defined in section {sec.name} ({line.st.origin})")
                if name:
                    first.setdefault(name, (sec, line.st))


def _check_overlaps(result: list[Assembled]) -> None:
    spans = sorted((a.base, a.end, a.name) for a in result if a.code)
    for (b1, e1, n1), (b2, _, n2) in zip(spans, spans[1:]):
        if b2 < e1:
            raise AssemblyError(f"section {n1} ({b1:#x}-{e1:#x}) overlaps section {n2} at {b2:#x}")


def assemble(text: str, bits: int = 64, base: int = 0, symbols: dict[str, int] | None = None,
             name: str = "<guest>") -> Assembled:
    """Assemble one piece of source at `base`; `symbols` become `.equ` definitions."""
    if bits not in (16, 32, 64):
        raise AssemblyError(f"{name}: bits must be 16, 32 or 64, not {bits!r}")
    return assemble_sections([Section.from_text(name, base, bits, text)], symbols)[0]
