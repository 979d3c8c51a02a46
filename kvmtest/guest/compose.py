"""Composing guest source: `.include` of shared snippets from guests/, and kvmtest's macros.

Keystone has no usable macros or includes, so this small step of ours does both, keeping
the file and line each statement came from for error messages and protocol sites.
"""

import os
import re
from pathlib import Path

from ..asm import Statement, split_statements
from ..errors import AssemblyError
from . import layout as L
from . import protocol as P

_INCLUDE = re.compile(r'^\s*\.include\s+"([^"]+)"\s*$')
_MACRO = re.compile(r"^\s*(GUEST_[A-Z_]+|FARJMP|FARCALL)\b\s*(.*)$")


def guests_dir() -> Path:
    """The shared guest snippets: KVMTEST_GUESTS_DIR, else guests/ beside the kvmtest package."""
    env = os.environ.get("KVMTEST_GUESTS_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "guests"


def _split_operands(text: str) -> list[str]:
    parts, depth, cur, quote = [], 0, [], None
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


# What the host's protocol.evaluate() reads: a register, number or symbol, or a +/- sum of those.
_VALUE = re.compile(r"[+-]?\s*[\w.$]+(\s*[+-]\s*[\w.$]+)*")


def _values(st: Statement, args: list[str]) -> list[str]:
    for arg in args:
        if not _VALUE.fullmatch(arg):
            raise AssemblyError(f"{st.origin}: `{st.text}`: operand {arg!r} is not a register, number or symbol, "
                                "nor a +/- sum of those")
    return args


def _string(arg: str, st: Statement) -> str:
    arg = arg.strip()
    if len(arg) < 2 or arg[0] != '"' or arg[-1] != '"':
        raise AssemblyError(f"{st.origin}: `{st.text}`: expected a quoted string")
    return arg[1:-1]


class Composer:
    """Expands one guest program for a `bits`-bit code segment; collects protocol sites."""

    def __init__(self, bits: int, prefix: str = "t", user: bool = False):
        self.bits = bits
        self.user = user
        self.prefix = prefix
        self.sites: dict[str, P.Site] = {}
        self._serial = 0

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

        for n, line in enumerate(text.splitlines(), start=1):
            m = _INCLUDE.match(line)
            if not m:
                chunk.append(line)
                continue
            flush(n + 1)
            if depth >= 8:
                raise AssemblyError(f"{name}:{n}: includes nested deeper than 8")
            path = guests_dir() / m.group(1)
            if not path.is_file():
                raise AssemblyError(f"{name}:{n}: .include \"{m.group(1)}\": no such file in {guests_dir()}")
            out.extend(self._lines(path.read_text(), m.group(1), depth + 1))
        flush(0)
        return out

    # --- macros ------------------------------------------------------------------------------

    def expand(self, text: str, name: str = "<guest>") -> list[Statement]:
        out: list[Statement] = []
        for st in self._lines(text, name):
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
                raise AssemblyError(f"{st.origin}: unknown macro {macro}")
            out.extend(Statement(text, st.origin) for text in handler(st, args))
        return out

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
            raise AssemblyError(f"{st.origin}: `{st.text}`: takes {n} operand(s), got {len(args)}")

    def _m_guest_at_cpl(self, st, args):
        """GUEST_AT_CPL 0|3: the code that follows runs at this privilege level (after an IRET,
        SYSRET, ... the guest made itself), so protocol sites use the channel that works there."""
        self._want(st, args, 1)
        if args[0] not in ("0", "3"):
            raise AssemblyError(f"{st.origin}: `{st.text}`: GUEST_AT_CPL takes 0 or 3")
        self.user = args[0] == "3"
        return []

    def _m_guest_done(self, st, args):
        self._want(st, args, 0)
        return self._site(st, "done", P.PORT_DONE) + ["hlt"]

    def _m_guest_sync(self, st, args):
        self._want(st, args, 1)
        return self._site(st, "sync", P.PORT_SYNC, _values(st, args))

    def _m_guest_assert_eq(self, st, args):
        self._want(st, args, 2)
        return self._site(st, "assert_eq", P.PORT_ASSERT, _values(st, args))

    def _m_guest_print(self, st, args):
        self._want(st, args, 1)
        return self._site(st, "print", P.PORT_PRINT, [_string(args[0], st)])

    def _m_guest_fail(self, st, args):
        self._want(st, args, 1)
        return self._site(st, "fail", P.PORT_FAIL, [_string(args[0], st)]) + ["hlt"]

    def _m_guest_assert_raises(self, st, args):
        if len(args) < 2:
            raise AssemblyError(f"{st.origin}: `{st.text}`: GUEST_ASSERT_RAISES VECTOR[(error code)], instruction")
        spec, insn = args[0], ", ".join(args[1:])
        m = re.fullmatch(r"#?(\w+)\s*(?:\((.+)\))?", spec)  # GP, #PF(2), 13, 0x80
        if not m:
            raise AssemblyError(f"{st.origin}: `{st.text}`: bad vector {spec!r}")
        try:
            vector = P.vector_number(m.group(1))
        except P.OperandError as e:
            raise AssemblyError(f"{st.origin}: {e}") from None
        resume = self._label("resume")
        inner = _MACRO.match(insn)
        if inner:  # e.g. GUEST_ASSERT_RAISES UD, GUEST_SYNC 1: the host injects at the sync
            handler = getattr(self, f"_m_{inner.group(1).lower()}", None)
            if handler is None:
                raise AssemblyError(f"{st.origin}: unknown macro {inner.group(1)}")
            body = handler(Statement(insn, st.origin), _split_operands(inner.group(2)))
        else:
            body = [insn]
        lines = self._expect(resume) + body + [f"{resume}:"]
        return lines + self._site(st, "check_exception", P.PORT_CHECK_EXCEPTION, (vector, m.group(2)))

    def _expect(self, resume: str) -> list[str]:
        """Arm the exception handlers to resume at `resume` (see guests/handlers*.S)."""
        if self.bits == 64:
            # MOV QWORD [disp32], imm32 (REX.W C7 /0, SIB with no base) spelled out: no register or
            # stack is touched, so the armed instruction may run with a broken stack.
            return [".byte 0x48, 0xc7, 0x04, 0x25", f".long {L.EXC_RESUME:#x}", f".long {resume}",
                    ".byte 0x48, 0xc7, 0x04, 0x25", f".long {L.EXC_VECTOR:#x}", ".long 0xff"]
        width = "dword" if self.bits == 32 else "word"
        return [f"mov {width} ptr [{L.EXC_RESUME:#x}], {resume}", f"mov {width} ptr [{L.EXC_VECTOR:#x}], 0xff"]

    def _far(self, st, args, opcode_direct: int, call: bool):
        self._want(st, args, 2)
        selector, target = args
        if self.bits == 16:
            return [f".byte {opcode_direct:#x}", f".word {target}", f".word {selector}"]
        if self.bits == 32:
            return [f".byte {opcode_direct:#x}", f".long {target}", f".word {selector}"]
        # 64-bit has no direct far jump/call: go through a m16:32 pointer placed after the
        # instruction (FF /5 jmp far [rip+disp], FF /3 call far [rip+disp]).
        if call:
            return [".byte 0xff, 0x1d, 0x02, 0, 0, 0", ".byte 0xeb, 0x06", f".long {target}", f".word {selector}"]
        return [".byte 0xff, 0x2d, 0, 0, 0, 0", f".long {target}", f".word {selector}"]

    def _m_farjmp(self, st, args):
        return self._far(st, args, 0xEA, call=False)

    def _m_farcall(self, st, args):
        return self._far(st, args, 0x9A, call=True)
