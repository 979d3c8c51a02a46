"""Composing guest source: `.include` of shared snippets from guests/, and kvmtest's macros.

Keystone has no usable macros or includes, so this small step of ours does both, keeping
the file and line each statement came from for error messages and protocol sites.

Every macro is checked here, when the guest is assembled, not when the host meets it at run
time (where a bad operand became a guest failure that a known-issue xfail could hide): its
operands must be values the host can evaluate (kvmtest.guest.protocol), its constants are
handed to the assembler as `.equ __kt_val_*` lines (so an unknown symbol is refused naming
the macro's line, and the host reads the value the assembler computed), and those that need
symbol values are range-checked by check() once the guest is assembled.
"""

import functools
import os
import re
from pathlib import Path

from ..asm import Statement, source_lines, split_statements
from ..asm.expressions import SyntaxProblem, evaluate, expr_text
from ..asm.grammar import Parser, parse
from ..asm.lexer import DATA, STRINGS, tokens, unescape
from ..errors import AssemblyError
from ..x86 import ERROR_CODE_VECTORS, vector_name
from . import layout as L
from . import protocol as P

_INCLUDE = re.compile(r'^\s*\.include\s+"([^"]+)"\s*$')
_MACRO = re.compile(r"^\s*(GUEST_[A-Z_]+|FARJMP|FARCALL)\b\s*(.*)$")


_RESERVED = re.compile(r"(?<![\w.$])__kt_\w*")


def _error(st: Statement, why: str) -> AssemblyError:
    return AssemblyError(f"{st.origin}: `{st.text}`: {why}")


# Resolved once: resolve() costs a system call per path component, and every guest asks.
_BUILTIN_GUESTS = Path(__file__).resolve().parents[2] / "guests"


def guests_dir() -> Path:
    """The shared guest snippets: KVMTEST_GUESTS_DIR, else guests/ beside the kvmtest package."""
    env = os.environ.get("KVMTEST_GUESTS_DIR")
    return Path(env) if env else _BUILTIN_GUESTS


class _IncludeRefused(Exception):
    """Why an `.include` names no snippet that can be read (the message after its name)."""


@functools.lru_cache(maxsize=64)
def _include_text(folder: str, name: str) -> str:
    """The text of snippet `name` in the guests folder `folder`; _IncludeRefused for a name
    outside it, missing or unreadable. Read once per process: the snippets do not change during a
    session, and resolving and reading them for each guest cost several file-system calls per
    guest (over 9p, milliseconds inside a VM under `kvmtest run --kernel`). A refusal is not kept."""
    root = Path(folder).resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root):
        raise _IncludeRefused(f"outside {root}; only the shared snippets in guests/ can be included")
    if not path.is_file():
        raise _IncludeRefused(f"no such file in {root}")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise _IncludeRefused(f"cannot read it: {e}") from None


def _split_operands(text: str) -> list[str]:
    parts: list[str] = []
    cur: list[str] = []
    depth, quote = 0, None
    for c in text:
        if quote:
            cur.append(c)
            if c == quote:
                quote = None
            continue
        if c in "\"'":
            quote = c
        elif c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
            continue
        cur.append(c)
    if "".join(cur).strip() or parts:  # after a comma an empty operand counts: `GUEST_SYNC eax,`
        parts.append("".join(cur).strip())
    return parts


def _string(st: Statement, args: list[str]) -> str:
    """The text of the one string literal GUEST_PRINT / GUEST_FAIL take."""
    if len(args) == 1:
        try:
            toks = tokens(args[0].strip())
            if len(toks) == 1 and toks[0][0] == "str":
                return unescape(toks[0][1][1:-1]).decode("utf-8", "backslashreplace")
        except SyntaxProblem as e:
            raise _error(st, str(e)) from None
    raise _error(st, 'takes one string literal, such as "text"')


def _shown(text: str, value: int) -> str:
    return text if text.lower() in (f"{value:#x}", str(value)) else f"{text} = {value:#x}"


def _terms(node, sign=1):
    """The +/- terms of an expression tree: [(sign, node)]."""
    if node[0] == "bin" and node[1] in "+-":
        return _terms(node[2], sign) + _terms(node[3], sign if node[1] == "+" else -sign)
    if node[0] == "un" and node[1] == "-":
        return _terms(node[2], -sign)
    return [(sign, node)]


def _register(node) -> str | None:
    if node[0] == "reg" or node[0] == "sym" and node[1].lower() in P.REGISTER_WIDTHS:
        return node[1].lower()
    return None


def _has_register(node) -> bool:
    return _register(node) is not None or node[0] == "reg" or \
        any(isinstance(part, tuple) and _has_register(part) for part in node[1:])


class Composer:
    """Expands one guest program for a `bits`-bit code segment; collects protocol sites."""

    def __init__(self, bits: int, prefix: str = "t", user: bool = False):
        self.bits = bits
        self.user = user
        self.prefix = prefix
        self.sites: dict[str, P.Site] = {}
        self._serial = 0
        # (statement, value, its constant's symbol, lowest, highest + 1): constants to check once
        # symbols are known
        self._deferred: list[tuple[Statement, P.Value, str, int, int]] = []

    def _label(self, kind: str) -> str:
        self._serial += 1
        return f"__kt_{kind}_{self.prefix}{self._serial}"

    # --- includes ----------------------------------------------------------------------------

    def _lines(self, text: str, name: str, depth: int = 0) -> list[Statement]:
        out: list[Statement] = []
        chunk: list[str] = []
        chunk_start = 1

        def flush(upto):
            nonlocal chunk, chunk_start
            if chunk:
                out.extend(split_statements("\n".join(chunk), name, chunk_start))
            chunk, chunk_start = [], upto

        for n, line in enumerate(source_lines(text), start=1):
            m = _INCLUDE.match(line)
            if not m:
                chunk.append(line)
                continue
            flush(n + 1)
            if depth >= 8:
                raise AssemblyError(f"{name}:{n}: includes nested deeper than 8")
            try:
                text = _include_text(str(guests_dir()), m.group(1))
            except _IncludeRefused as e:
                raise AssemblyError(f"{name}:{n}: .include \"{m.group(1)}\": {e}") from None
            out.extend(self._lines(text, m.group(1), depth + 1))
        flush(0)
        return out

    # --- macros ------------------------------------------------------------------------------

    def expand(self, text: str, name: str = "<guest>") -> list[Statement]:
        """The statements of guest program `text` (`name` names it in messages) with every protocol
        macro (GUEST_SYNC, GUEST_ASSERT_EQ, GUEST_PRINT, GUEST_FAIL, GUEST_AT_CPL, ...) expanded into
        plain assembly; `.code16/32/64` lines change the code size the macros that follow are written
        for. AssemblyError naming the line for an unknown macro, a bad operand or a reserved __kt_ name."""
        out: list[Statement] = []
        for st in self._lines(text, name):
            reserved = _RESERVED.search(re.sub(r'"(?:[^"\\]|\\.)*"', '""', st.text))
            if reserved:
                raise _error(st, f"{reserved.group()}: names starting with __kt_ are kvmtest's")
            code = re.match(r"^\.code(16|32|64)\s*$", st.text)
            if code:  # the guest switched code size (a mode switch); macros follow it
                self.bits = int(code.group(1))
            m = _MACRO.match(st.text)
            if not m:
                out.append(st)
                continue
            macro, args = m.group(1), _split_operands(m.group(2))
            handler = getattr(self, f"_m_{macro.lower()}", None)
            if handler is None:
                raise _error(st, f"unknown macro {macro}")
            out.extend(Statement(text, st.origin, st.text) for text in handler(st, args))
        return out

    def check(self, symbols: dict[str, int]) -> None:
        """After assembly: each macro constant that names a symbol fits where it goes
        (`symbols`: the assembled guest's, including the __kt_val_* the macros defined)."""
        for st, value, symbol, low, high in self._deferred:
            got = symbols.get(symbol)
            if got is not None and not low <= got < high:
                raise _error(st, f"{_shown(value.text, got)} does not fit ({low:#x} to {high - 1:#x})")

    def _site(self, st: Statement, kind: str, port: int, operands=()) -> list[str]:
        label = self._label("site")
        if not self.user:
            self.sites[label] = P.Site(kind, st.origin, st.text, tuple(operands), port, 2)
            return ["nop", f"{label}: out {port:#x}, al"]
        # MOV [disp32], AL spelled out: 88 /r with an absolute disp32 (SIB form in 64-bit code).
        modrm = [0x88, 0x04, 0x25] if self.bits == 64 else [0x88, 0x05]
        target = L.PROTOCOL_MMIO + port - P.PORT_DONE
        self.sites[label] = P.Site(kind, st.origin, st.text, tuple(operands), port, len(modrm) + 4)
        return ["nop", f"{label}: .byte {', '.join(hex(b) for b in modrm)}", f".long {target:#x}"]

    def _want(self, st, args, n):
        if len(args) != n:
            raise _error(st, f"takes {n} operand(s), got {len(args)}")

    @staticmethod
    def _parse_value(st, text: str, registers: bool = True) -> tuple[tuple, tuple | None]:
        """A macro operand: registers added or subtracted ((sign, name), ...), and the tree of
        its constant part (None when it has none)."""
        text = text.strip()
        try:
            parser = Parser(tokens(text))
            if parser.done():
                raise SyntaxProblem("the operand is empty")
            tree = parser.expression("in the operand", registers=True)
            if not parser.done():
                raise SyntaxProblem(f"unexpected {parser.describe()} in the operand")
        except SyntaxProblem as e:
            raise _error(st, f"operand {text!r}: {e}") from None
        regs, consts = [], []
        for sign, node in _terms(tree):
            name = _register(node)
            if name is not None:
                if name not in P.REGISTER_WIDTHS:
                    raise _error(st, f"{name} is not a register the protocol reads (general-purpose registers and "
                                     "their parts, rip, rflags, cr0/2/3/4/8, efer, apic_base, segment selectors)")
                if not registers:
                    raise _error(st, f"operand {text!r}: a constant, not register {name}")
                regs.append((sign, name))
            elif _has_register(node):
                raise _error(st, f"operand {text!r}: registers can only be added or subtracted")
            else:
                consts.append(node if sign > 0 else ("un", "-", node))
        if len({P.REGISTER_WIDTHS[r] for _, r in regs}) > 1:
            raise _error(st, f"operand {text!r} mixes registers of different widths")
        constant = consts[0] if consts else None
        for node in consts[1:]:
            constant = ("bin", "+", constant, node)
        return tuple(regs), constant

    def _value(self, st, text, parsed, width: int, low: int, high: int, out: list[str]) -> P.Value:
        """The protocol Value of a parsed operand, compared at `width` bits; its constant must lie
        in [low, high): refused now if it is a number, by check() if it names symbols. The
        constant becomes an .equ line in `out`, so the assembler evaluates it (or names the line
        of an unknown symbol)."""
        regs, constant = parsed
        if constant is None:
            return P.Value(text.strip(), regs, None, width)
        symbol = self._label("val")
        out.append(f".equ {symbol}, {expr_text(constant)}")
        value = P.Value(text.strip(), regs, symbol, width)
        try:
            number = evaluate(constant, {})
        except SyntaxProblem:
            self._deferred.append((st, value, symbol, low, high))
            return value
        if not low <= number < high:
            raise _error(st, f"{_shown(value.text, number)} does not fit ({low:#x} to {high - 1:#x})")
        return value

    @staticmethod
    def _width(parsed) -> int | None:
        regs = parsed[0]
        return P.REGISTER_WIDTHS[regs[0][1]] if regs else None

    def _m_guest_at_cpl(self, st, args):
        """GUEST_AT_CPL 0|3: the code that follows runs at this privilege level (after an IRET,
        SYSRET, ... the guest made itself), so protocol sites use the channel that works there."""
        self._want(st, args, 1)
        if args[0] not in ("0", "3"):
            raise _error(st, "GUEST_AT_CPL takes 0 or 3")
        self.user = args[0] == "3"
        return []

    def _m_guest_done(self, st, args):
        self._want(st, args, 0)
        return self._site(st, "done", P.PORT_DONE) + ["hlt"]

    def _m_guest_sync(self, st, args):
        """GUEST_SYNC value: the host sees the value modulo 2**width (its registers' width, else 64)."""
        self._want(st, args, 1)
        parsed = self._parse_value(st, args[0])
        width = self._width(parsed) or 64
        out: list[str] = []
        value = self._value(st, args[0], parsed, width, -(1 << (width - 1)), 1 << width, out)
        return out + self._site(st, "sync", P.PORT_SYNC, (value,))

    def _m_guest_assert_eq(self, st, args):
        """Compared modulo 2**width, the width of the register operands (64 without): `eax, -1`
        holds for EAX = 0xffffffff; `al, 300` is refused. Registers of different widths too."""
        self._want(st, args, 2)
        parsed = [self._parse_value(st, arg) for arg in args]
        widths = {w for w in map(self._width, parsed) if w}
        if len(widths) > 1:
            raise _error(st, f"compares registers of different widths ({' and '.join(map(str, sorted(widths)))} bits)")
        width = widths.pop() if widths else 64
        out: list[str] = []
        values = tuple(self._value(st, arg, p, width, -(1 << (width - 1)), 1 << width, out)
                       for arg, p in zip(args, parsed, strict=True))
        return out + self._site(st, "assert_eq", P.PORT_ASSERT, values)

    def _m_guest_print(self, st, args):
        return self._site(st, "print", P.PORT_PRINT, [_string(st, args)])

    def _m_guest_fail(self, st, args):
        return self._site(st, "fail", P.PORT_FAIL, [_string(st, args)]) + ["hlt"]

    def _m_guest_assert_raises(self, st, args):
        """GUEST_ASSERT_RAISES VECTOR[(error code)], instruction: the instruction is one real
        instruction (or .byte spelling one), or GUEST_SYNC: the point where the host injects an
        exception. Other macros are refused: `GUEST_ASSERT_RAISES UD, GUEST_DONE` passed, the
        guest ending before the check."""
        usage = "GUEST_ASSERT_RAISES VECTOR[(error code)], instruction"
        if len(args) < 2 or not ", ".join(args[1:]).strip():
            raise _error(st, f"needs a vector and an instruction: {usage}")
        spec, insn = args[0], ", ".join(args[1:]).strip()
        m = re.fullmatch(r"\s*#?\s*(\w+)\s*(?:\((.*)\))?\s*", spec)  # GP, #PF(2), 13, 0x80
        if not m:
            raise _error(st, f"bad vector {spec!r}: {usage}")
        try:
            vector = P.vector_number(m.group(1))
        except P.OperandError as e:
            raise _error(st, str(e)) from None
        out: list[str] = []
        code = None
        if m.group(2) is not None:
            if vector not in ERROR_CODE_VECTORS:
                name = vector_name(vector) + (f" (vector {vector})" if vector_name(vector)[0] == "#" else "")
                raise _error(st, f"{name} pushes no error code (SDM Vol. 3A "
                                 "Table 6-1); leave out the (error code)")
            parsed = self._parse_value(st, m.group(2), registers=False)
            code = self._value(st, m.group(2), parsed, 32, 0, 1 << 32, out)
        resume = self._label("resume")
        inner = _MACRO.match(insn)
        if inner:
            if inner.group(1) != "GUEST_SYNC":
                raise _error(st, f"{inner.group(1)} is a macro, not an instruction; only GUEST_SYNC may stand here "
                                 "(where the host injects the exception)")
            body = self._m_guest_sync(Statement(insn, st.origin), _split_operands(inner.group(2)))
        else:
            body = [insn]
            self._one_instruction(st, insn)
        lines = out + self._expect(resume) + body + [f"{resume}:"]
        return lines + self._site(st, "check_exception", P.PORT_CHECK_EXCEPTION, (vector, code))

    @staticmethod
    def _one_instruction(st, insn: str) -> None:
        try:
            parsed = parse(insn)
        except SyntaxProblem:
            return  # the assembler refuses it with the reason (or rewrites `$`, `1b` and accepts it)
        if parsed.kind == "label":
            raise _error(st, "needs an instruction after the label")
        if parsed.kind == "directive" and not (parsed.name in DATA or parsed.name in STRINGS):
            raise _error(st, f"{parsed.name} is not an instruction (write one, or .byte spelling one)")

    def _expect(self, resume: str) -> list[str]:
        """Arm the exception handlers to resume at `resume` (see guests/handlers*.S): stores
        through GS, which reaches the running vCPU's own record (kvmtest.guest.exc_records)."""
        if self.bits == 64:
            # MOV QWORD GS:[disp32], imm32 (GS prefix, REX.W C7 /0, SIB with no base) spelled out:
            # no register or stack is touched, so the armed instruction may run with a broken stack.
            return [".byte 0x65, 0x48, 0xc7, 0x04, 0x25", f".long {L.EXC_RESUME:#x}", f".long {resume}",
                    ".byte 0x65, 0x48, 0xc7, 0x04, 0x25", f".long {L.EXC_VECTOR:#x}", ".long 0xff"]
        width = "dword" if self.bits == 32 else "word"
        return [f"mov {width} ptr gs:[{L.EXC_RESUME:#x}], {resume}", f"mov {width} ptr gs:[{L.EXC_VECTOR:#x}], 0xff"]

    def _far(self, st, args, opcode_direct: int, call: bool):
        self._want(st, args, 2)
        selector, target = args
        if self.bits == 16:
            return [f".byte {opcode_direct:#x}", f".word {target}", f".word {selector}"]
        if self.bits == 32:
            return [f".byte {opcode_direct:#x}", f".long {target}", f".word {selector}"]
        # 64-bit has no direct far jump/call: go through a m16:32 pointer (FF /5 jmp far [rip+disp],
        # FF /3 call far [rip+disp]). A far JMP's pointer follows it; a far CALL's is jumped over
        # and sits before it, so that the CALL is the macro's last instruction and the return
        # address it pushes (the next instruction's, SDM Vol. 2A CALL) is what follows FARCALL.
        if call:
            return [".byte 0xeb, 0x06", f".long {target}", f".word {selector}",
                    ".byte 0xff, 0x1d, 0xf4, 0xff, 0xff, 0xff"]       # call far [rip - 12]
        return [".byte 0xff, 0x2d, 0, 0, 0, 0", f".long {target}", f".word {selector}"]

    def _m_farjmp(self, st, args):
        return self._far(st, args, 0xEA, call=False)

    def _m_farcall(self, st, args):
        return self._far(st, args, 0x9A, call=True)
