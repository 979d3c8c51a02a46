"""A section's statements made ready for Keystone: each parsed against the grammar
(kvmtest.asm.grammar), checked for Keystone's traps and spelled for it (kvmtest.asm.traps),
and every name defined once.

The results are cached per Section (a frozen value), a bounded number of them: the exception
handlers every guest of a mode shares are prepared once per process.
"""

import re
from dataclasses import dataclass
from functools import lru_cache

from .expressions import SyntaxProblem
from .grammar import parse
from .parsed import Parsed
from .source import Section, Statement, fail
from .traps import check_statement, for_keystone, rewrite_labels

SECTIONS_KEPT = 256  # prepared sections kept in memory (the handler sections and recent guests)


@dataclass(frozen=True)
class Line:
    """One statement: as written (for messages), what it says, and what Keystone is given."""

    st: Statement
    bits: int              # the code size in force at the statement (.code16/32/64 change it)
    parsed: Parsed
    body: str              # the text for Keystone, without the statement's labels
    segment_for_66: int    # prefix byte to put in place of Keystone's stray 0x66 (0: none)

    @property
    def text(self) -> str:
        """The statement for Keystone with its labels, one per line before it."""
        return "".join(f"{label}:\n" for label in self.parsed.labels) + self.body


@lru_cache(maxsize=SECTIONS_KEPT)
def prepare(sec: Section) -> tuple[Line, ...]:
    """Every statement of `sec` parsed, checked and spelled for Keystone, in order; an
    AssemblyError naming the first statement that is outside the grammar or a trap."""
    bits = sec.bits
    section = re.sub(r"\W", "_", sec.name)
    texts = rewrite_labels(list(sec.statements), section)
    lines: list[Line] = []
    for st, text in zip(sec.statements, texts, strict=True):
        try:
            parsed = parse(text)
        except SyntaxProblem as e:
            raise fail(st, str(e)) from None
        if parsed.kind == "directive" and parsed.name.startswith(".code"):
            bits = int(parsed.name[5:])
        check_statement(st, parsed, bits)
        body, segment = for_keystone(parsed, bits, sec.base, f".Lcall_{section}_{len(lines)}")
        lines.append(Line(st, bits, parsed, body, segment))
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
                raise fail(line.st, f"{name} is already defined at {defined[name]}")
            defined[name] = line.st.origin
        if line.parsed.defines:
            equs[line.parsed.defines] = line
    for name, line in equs.items():
        seen, todo = set(), [name]
        while todo:
            for used in equs[todo.pop()].parsed.names:
                if used == name:
                    raise fail(line.st, f"{name} is defined in terms of itself")
                if used in equs and used not in seen:
                    seen.add(used)
                    todo.append(used)


def user_labels(lines) -> list[str]:
    """The labels a section defines, without those kvmtest's rewriting made."""
    return [n for line in lines for n in line.parsed.labels if not n.startswith((".Lhere_", ".Lnum_"))]


@lru_cache(maxsize=SECTIONS_KEPT)
def outside_names(sec: Section) -> frozenset:
    """The symbols a section uses but does not define: layout symbols, other sections' labels."""
    lines = prepare(sec)
    local = {n for line in lines for n in (*line.parsed.labels, line.parsed.defines) if n}
    return frozenset(n for line in lines for n in line.parsed.names if n not in local)
