"""Limits checked before Keystone sees a section: every size, count, alignment and `.org`
target a constant within the guest code area, every data value and fill pattern within its
width. Keystone 0.9.2 crashes (SIGFPE on `.balign 2**32`), runs for minutes (huge `.skip`,
`.fill`), or wraps and truncates silently otherwise.
"""

from .expressions import SyntaxProblem, UnknownSymbol, evaluate, fits
from .lexer import DATA
from .source import fail


def _code_area() -> int:
    """The most bytes one directive may span: the guest code area (imported here, late:
    kvmtest.guest imports the assembler)."""
    from ..guest import layout

    return layout.CODE_END - layout.CODE


def check_constants(lines, values, base) -> None:
    """Check the directives among `lines` (kvmtest.asm.prepare Lines of a section at `base`):
    AssemblyError naming the first size, count, alignment, .org target or data value out of
    bounds. `values`: the symbols known before assembly (layout and other sections'); this
    section's .equ constants are added to it as they come."""
    span = _code_area()

    def constant(line, n, what):
        try:
            return evaluate(line.parsed.args[n], values)
        except UnknownSymbol as e:
            raise fail(line.st, f"{what} must be a constant (numbers, .equ and layout symbols): {e}") from None
        except SyntaxProblem as e:
            raise fail(line.st, str(e)) from None

    def fill_byte(line, n):
        if len(line.parsed.args) > n and not fits(value := constant(line, n, "the fill byte"), 8):
            raise fail(line.st, f"fill byte {value:#x} does not fit in a byte")

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
                raise fail(line.st, str(e)) from None
        elif name in DATA:
            for n, expr in enumerate(p.args, 1):
                try:
                    value = evaluate(expr, values)
                except UnknownSymbol:
                    continue
                except SyntaxProblem as e:
                    raise fail(line.st, str(e)) from None
                if not fits(value, 8 * DATA[name]):
                    raise fail(line.st, f"value {value:#x} (argument {n}) does not fit in {DATA[name]} byte(s)")
        elif name == ".balign":
            align = constant(line, 0, "the alignment")
            if not 0 < align <= span or align & (align - 1):
                raise fail(line.st, f".balign {align:#x}: the alignment must be a power of two up to {span:#x} "
                                     "(the guest code area)")
            fill_byte(line, 1)
        elif name in (".skip", ".space", ".zero"):
            count = constant(line, 0, "the size")
            if not 0 <= count <= span:
                raise fail(line.st, f"{name} {count:#x}: the size must be 0 to {span:#x} (the guest code area)")
            fill_byte(line, 1)
        elif name == ".fill":
            count = constant(line, 0, "the count")
            size = constant(line, 1, "the size") if len(p.args) > 1 else 1
            value = constant(line, 2, "the value") if len(p.args) > 2 else 0
            if not 1 <= size <= 8:
                raise fail(line.st, f".fill size {size}: must be 1 to 8")
            if not 0 <= count * size <= span:
                raise fail(line.st, f".fill {count:#x} x {size}: must be 0 to {span:#x} bytes (the guest code area)")
            if not fits(value, 8 * min(size, 4)):
                raise fail(line.st, f".fill value {value:#x} does not fit in {min(size, 4)} byte(s) (the pattern is "
                                     "at most 4 bytes, zero above)")
        elif name == ".org":
            target = constant(line, 0, "the .org target")
            if not base <= target <= base + span:
                raise fail(line.st, f".org {target:#x}: outside this section ({base:#x} to {base + span:#x})")
            fill_byte(line, 1)

