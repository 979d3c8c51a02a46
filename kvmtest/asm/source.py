"""Guest source as the assembler takes it: statements with the file:line they came from,
sections of them, and what assembling a section gives back.

A statement is a line, or a part of one between `;`, without its comment (`#` or `//`
outside quotes). Lines are numbered as an editor numbers them (source_lines).
"""

import hashlib
import json
import re
from dataclasses import dataclass, field

from ..errors import AssemblyError


@dataclass(frozen=True)
class Statement:
    """One statement of guest source, with the `file:line` it came from for error messages."""

    text: str
    origin: str  # "file:line" of the guest source
    macro: str = ""  # the macro line this statement was expanded from (for messages)


@dataclass(frozen=True)
class Section:
    """Statements assembled at guest address `base` for a `bits`-bit (16, 32, 64) code segment;
    `.code16/32/64` inside switch the size from there on."""

    name: str
    base: int
    bits: int
    statements: tuple[Statement, ...]

    @classmethod
    def from_text(cls, name: str, base: int, bits: int, text: str, origin: str | None = None) -> "Section":
        """A section of `text` split into statements, each named `origin` (default `name`):line."""
        return cls(name, base, bits, tuple(split_statements(text, origin or name)))

    @property
    def digest(self) -> str:
        """SHA-256 (hex) of what assembling the section depends on besides the symbols: its name,
        base, code size and every statement's text (not where it came from: that only names errors).

        Computed once per Section (kept beside its fields, outside the frozen ones): the handler
        section every guest of a mode shares has about a thousand statements, and encoding them
        all for each guest's cache key cost more than the rest of the key. A Section is frozen and
        its statements a tuple of frozen Statements, so the digest cannot go stale."""
        digest = self.__dict__.get("_digest")
        if digest is None:
            payload = json.dumps([self.name, self.base, self.bits, [st.text for st in self.statements]])
            digest = hashlib.sha256(payload.encode()).hexdigest()
            if isinstance(self.statements, tuple):  # a list could change under the digest: never kept
                self.__dict__["_digest"] = digest
        return digest


@dataclass(frozen=True)
class Assembled:
    """A section's bytes at `base`, and the addresses of its labels and values of its .equ symbols."""

    name: str
    base: int
    bits: int
    code: bytes
    labels: dict[str, int] = field(default_factory=dict)
    equs: dict[str, int] = field(default_factory=dict)  # the .equ/.set symbols the section defines

    @property
    def end(self) -> int:
        """The guest address just past the section's bytes."""
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


BLANK = " \t\f\v"


def source_lines(text: str) -> list[str]:
    """Lines as an editor numbers them: str.splitlines() also ends a line at \\x0b, \\x0c,
    \\x1c-\\x1e, \\x85 and U+2028, which shifted every later line number (and hid the
    character); those stay in the line, where the grammar refuses them."""
    return re.split(r"\r\n|\r|\n", text)


def split_statements(text: str, name: str, first_line: int = 1) -> list[Statement]:
    """Split source into statements (lines and `;`-separated parts), dropping comments."""
    result = []
    for n, line in enumerate(source_lines(text), start=first_line):
        if '"' in line or "'" in line:
            parts = _split_outside_quotes(_strip_comment(line), ";")
        else:  # the common case, without the character-by-character scan
            cut = min((i for i in (line.find("#"), line.find("//")) if i >= 0), default=len(line))
            parts = line[:cut].split(";")
        for part in parts:
            part = part.strip(BLANK)  # not str.strip(): \\x1c or a no-break space is no blank to drop
            if part:
                result.append(Statement(part, f"{name}:{n}"))
    return result


def fail(st: Statement, why: str) -> AssemblyError:
    """The AssemblyError for a statement, "file:line: `text`: why" (naming the macro it came from)."""
    if st.macro and st.macro != st.text:
        return AssemblyError(f"{st.origin}: `{st.macro}` (expanded to `{st.text}`): {why}")
    return AssemblyError(f"{st.origin}: `{st.text}`: {why}")

