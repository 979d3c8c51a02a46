"""What Keystone 0.9.2 gets wrong, and how each trap is closed: refused with the spelling that
works (check_statement), or handed to Keystone spelled out correctly (for_keystone); `$` and
numeric local labels are rewritten to named labels (rewrite_labels).

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
  correctly (see for_keystone).
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
  every data value and fill pattern must fit its width (kvmtest.asm.expressions.fits), all before Keystone.
- A non-ASCII character makes its binding raise UnicodeEncodeError: refused outside string
  literals; inside them it is stored as its UTF-8 bytes, as GAS does.

Differences from GAS that remain: `[rip + symbol]` must name a label of the same section
(GAS would take a constant symbol as a raw displacement); sizes and `.org` targets must be
constants; `.equ`/`.set` may define a name only once; names starting with `.Lkt_`, `.Lhere_`,
`.Lnum_`, `.Lcall_` are kvmtest's.
"""

import re

from .expressions import expr_text
from .lexer import PREFIXES, TOKEN
from .parsed import Parsed
from .source import BLANK, Statement, fail

# Names kvmtest gives its own labels: guest source may not use them.
MARK = ".Lkt_st_"  # the label kvmtest puts before each statement to find its bytes
BEGIN = ".Lkt_begin"  # the start of the section
_RESERVED = re.compile(r"(?<![\w.$])(\.L(?:kt|here|num|call)_[\w.$]*)")

_LABEL_DEF = re.compile(r"^[ \t]*([A-Za-z_.][\w.$]*)[ \t]*:(?!:)")
_NUMERIC_DEF = re.compile(r"^[ \t]*(\d+)[ \t]*:")
_NUMERIC_REF = re.compile(r"(?<![\w.])(\d+)([bf])(?![\w.])")
_FAR_IMM = re.compile(r"^\s*(ljmp|lcall)\s+[^\[\]]*:", re.IGNORECASE)


def check_statement(st: Statement, parsed: Parsed, bits: int) -> None:
    """Refuse (AssemblyError naming the line) the forms Keystone 0.9.2 would encode wrongly
    without saying so, in `bits`-bit code; `parsed` is what the statement says."""
    if bits == 64 and any(o.mem and not o.mem.base and not o.mem.index for o in parsed.operands):
        raise fail(st, "64-bit absolute memory operand: Keystone 0.9.2 encodes it RIP-relative or as a "
                       "sign-extended disp32, wrong for some addresses; write [rip + label] or put the "
                       "address in a register")
    low = st.text.lower()
    if low.startswith(".align") and re.match(r"^\.align\b", low):
        raise fail(st, "Keystone ignores .align; use .balign N")
    if bits == 16:
        m = re.match(r"^push\s+(word\s+ptr\s+)?([-+]?(?:0x[0-9a-f]+|\d+)|[a-z_.][\w.]*)\s*$", low)
        if m and not re.fullmatch(r"[a-z]{2,3}", m.group(2)):
            small = re.fullmatch(r"[-+]?(0x[0-9a-f]+|\d+)", m.group(2)) and -128 <= int(m.group(2), 0) <= 127
            if not (m.group(1) and small):
                raise fail(st, "Keystone encodes this PUSH immediate as a 32-bit push in 16-bit code; write "
                                "push word ptr N for -128..127, or .byte 0x68 / .word N for a 16-bit push")
    if bits != 16 and _FAR_IMM.match(low):
        raise fail(st, f"Keystone encodes an immediate far jump/call with a 16-bit offset in {bits}-bit code; "
                        "use FARJMP/FARCALL selector, target")
    if bits == 64 and re.fullmatch(r"(?:[\w.$]+\s*:\s*)*iret", low):
        raise fail(st, "`iret` in 64-bit code is ambiguous (GAS assembles IRETD and warns); write iretq or iretd")
    reserved = _RESERVED.search(_strip_strings(st.text))
    if reserved:
        raise fail(st, f"{reserved.group(1)}: names starting with .Lkt_, .Lhere_, .Lnum_ or .Lcall_ are kvmtest's")


def _strip_strings(text: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)


def rewrite_labels(statements: list[Statement], section: str) -> list[str]:
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
            text = text[m.end():].strip(BLANK)
        body = text
        while (lm := _LABEL_DEF.match(body)) and not re.match(r"\s*[a-z]s\s*:\s*\[", body, re.IGNORECASE):
            body = body[lm.end():]
        if "$" in body and '"' not in body and "'" not in body:
            serial += 1
            here = f".Lhere_{section}_{serial}"
            labels.append(here)
            text = text[: len(text) - len(body)] + re.sub(r"(?<![\w.$])\$(?![\w.$])", here, body)
        texts.append("".join(f"{label}: " for label in labels) + text)
    out = []
    for index, (st, text) in enumerate(zip(statements, texts, strict=True)):
        def resolve(m, index=index, st=st):
            number, direction = m.group(1), m.group(2)
            if direction == "b":
                cands = [d for d in numeric_defs if d[1] == number and d[0] <= index]
                pick = cands[-1] if cands else None
            else:
                cands = [d for d in numeric_defs if d[1] == number and d[0] > index]
                pick = cands[0] if cands else None
            if pick is None:
                raise fail(st, f"local label {number}{direction} has no matching '{number}:'")
            return f".Lnum_{section}_{number}_{pick[2]}"

        if '"' not in text and "'" not in text:
            text = _NUMERIC_REF.sub(resolve, text)
        out.append(text)
    return out


_DESCRIPTOR_TABLE = ("lgdt", "lidt", "sgdt", "sidt")
# PUSH sreg opcodes (POP is one more); Keystone gets the operand size of all six wrong in
# 16-bit or 32-bit code
_SEGMENT_PUSH = {"es": 0x06, "cs": 0x0E, "ss": 0x16, "ds": 0x1E, "fs": 0x0FA0, "gs": 0x0FA8}


def _unary_for_keystone(body: str) -> str:
    """`-(e)` and `~(e)` spelled `(0-(e))` and `(-1-(e))`: Keystone refuses a unary minus or
    complement before a parenthesis in an instruction operand (it accepts them in data)."""
    toks, pos = [], 0
    while pos < len(body):
        m = TOKEN.match(body, pos)
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


def for_keystone(parsed: Parsed, bits: int, base: int, here: str) -> tuple[str, int]:
    """(text for Keystone, segment prefix byte to put in place of its stray 0x66, or 0) for one
    statement in `bits`-bit code of a section at `base`; `here` is a label name free for it."""
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
        offset = f"({expr_text(ops[0].expr)}) - {base:#x} - ({here} - {BEGIN}) - 3"
        return f"{here}: .byte 0xe8\n.word {offset}", 0
    if bits != 64 and name in ("push", "pop") and len(ops) == 1 and ops[0].kind == "reg" \
            and ops[0].reg in _SEGMENT_PUSH:
        opcode = _SEGMENT_PUSH[ops[0].reg] + (1 if name == "pop" else 0)
        return ".byte " + ", ".join(hex(b) for b in opcode.to_bytes(2 if opcode > 0xFF else 1, "big")), 0
    if bits == 32 and name == "push" and len(ops) == 1 and ops[0].kind == "imm" and not ops[0].size \
            and parsed.names:
        return f".byte 0x68\n.long {expr_text(ops[0].expr)}", 0
    mem = ops[0].mem if len(ops) == 1 else None
    if bits == 32 and name in _DESCRIPTOR_TABLE and mem and not ops[0].size and not mem.segment:
        stack = mem.base in ("ebp", "esp", "bp", "sp")
        return parsed.body, 0x36 if stack else 0x3E
    return parsed.body, 0

