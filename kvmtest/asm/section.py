"""One section through Keystone, each statement's bytes checked.

A label before every statement, read back through a table of `.quad label` lines after the
code, gives each statement's own bytes: a statement that produced none, or whose bytes landed
elsewhere, is refused, and kvmtest.asm.verify decodes the rest and compares them with the
source. Results are cached per (section, values of the outside symbols it uses), a bounded
number of them: the exception handlers every guest of a mode shares are assembled once.
"""

from functools import lru_cache

from ..errors import AssemblyError
from .engine import KEYSTONE, keystone_error, locate_error
from .limits import check_constants
from .prepare import SECTIONS_KEPT, outside_names, prepare, user_labels
from .source import Assembled, Section, fail
from .traps import BEGIN, MARK
from .verify import Mismatch
from .verify import check as verify


def assemble_once(sec: Section, symbols: dict[str, int]) -> Assembled:
    """`sec` assembled with `symbols` (name -> value: layout symbols, other sections' labels);
    AssemblyError naming the first statement that uses a symbol not among them, or fails."""
    used = outside_names(sec)
    if not used <= symbols.keys():
        for line in prepare(sec):
            unknown = (line.parsed.names & used) - symbols.keys()
            if unknown:
                raise fail(line.st, f"unknown symbol {', '.join(sorted(unknown))} (not a register, a label, "
                                    ".equ or a layout symbol)")
    return assemble_checked(sec, tuple((n, symbols[n]) for n in sorted(used)))


def relocatable_count(lines, marks):
    """count(expr): how many times an expression tree counts an address of this section (its
    labels and `marks`, directly or through its .equ), as GAS decides what `[rip + expr]` means;
    None where that is not a whole number of addresses."""
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


@lru_cache(maxsize=SECTIONS_KEPT)
def assemble_checked(sec: Section, foreign: tuple[tuple[str, int], ...]) -> Assembled:
    """`sec` assembled with a label before every statement, then each statement's bytes checked;
    `foreign` is the sorted (name, value) pairs of the outside symbols it uses. AssemblyError
    naming the statement Keystone refused or mis-encoded.

    Keyed by the section and the values of the other sections' symbols it uses, so the
    exception-handler section every guest of a mode shares is assembled once per process.
    """
    import keystone

    lines = prepare(sec)
    check_constants(lines, dict(foreign), sec.base)
    prelude = [f".equ {k}, {v:#x}" for k, v in foreign]
    text, marks = [f"{BEGIN}:"] + prelude, []
    for i, line in enumerate(lines):
        if line.parsed.kind != "label":
            marks.append((f"{MARK}{i}", line))
            text.append(f"{MARK}{i}:")
        text.append(line.text)
    text.append(f"{MARK}end:")
    names = [n for line in lines for n in (*line.parsed.labels, line.parsed.defines) if n]
    names += [m for m, _ in marks] + [f"{MARK}end"]
    text += [f".quad {n}" for n in names]
    try:
        blob = KEYSTONE.asm("\n".join(text), sec.bits, sec.base)
    except keystone.KsError as e:
        located = locate_error(lines, sec.bits, sec.base, prelude)
        raise located or AssemblyError(f"{sec.name}: {keystone_error(e)}") from None
    code_len = len(blob) - 8 * len(names)
    table = [int.from_bytes(blob[code_len + 8 * i: code_len + 8 * i + 8], "little", signed=True)
             for i in range(len(names))]
    values = {**dict(foreign), **dict(zip(names, table, strict=True))}
    relocatable = relocatable_count(lines, {m for m, _ in marks})
    ends = [values[m] for m, _ in marks[1:]] + [values[f"{MARK}end"]]
    code = bytearray(blob)
    for (mark, line), end in zip(marks, ends, strict=True):
        start = values[mark]
        if not sec.base <= start <= end <= sec.base + code_len:
            raise fail(line.st, f"its bytes landed out of order ({start:#x}-{end:#x}); Keystone merged it "
                                "with another statement")
        if line.segment_for_66 and code[start - sec.base] == 0x66:
            code[start - sec.base] = line.segment_for_66
        try:
            verify(line.parsed, line.bits, start, bytes(code[start - sec.base: end - sec.base]), values, relocatable)
        except Mismatch as e:
            raise fail(line.st, str(e)) from None
    labels = {n: values[n] for n in user_labels(lines)}
    equs = {line.parsed.defines: values[line.parsed.defines] for line in lines if line.parsed.defines}
    return Assembled(sec.name, sec.base, sec.bits, bytes(code[:code_len]), labels, equs)

