"""What one guest statement says, as kvmtest.asm.grammar parses it: the data that the
Keystone workarounds (kvmtest.asm.traps) and the byte check (kvmtest.asm.verify) work from.
Expressions are kvmtest.asm.expressions trees."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Memory:
    """A memory operand `segment:[base + index*scale + disp]`; registers by kvmtest's names."""

    base: str | None
    index: str | None
    scale: int
    disp: tuple | None       # expression; None when there is no displacement
    segment: str | None      # explicit override


@dataclass(frozen=True)
class Operand:
    """One instruction operand: a register, an immediate (or branch target), memory, or a far
    pointer `selector:offset`; expressions as kvmtest.asm.expressions trees."""

    kind: str                # "reg", "imm", "mem" or "far"
    size: str | None = None  # the size keyword of `size ptr`
    reg: str | None = None
    expr: tuple | None = None      # immediate value, branch target or far offset
    selector: tuple | None = None  # far pointer selector
    mem: Memory | None = None


@dataclass(frozen=True)
class Parsed:
    """What one statement says: its labels, and an instruction (mnemonic, prefixes, operands) or
    a directive (name, arguments); `names` are the symbols it uses, `defines` the .equ symbol."""

    labels: tuple[str, ...]  # labels defined at the start of the statement
    body: str                # the statement without its labels ('' for a label alone)
    kind: str                # "label", "insn" or "directive"
    name: str = ""           # mnemonic (lower case) or directive
    prefixes: tuple[str, ...] = ()
    operands: tuple[Operand, ...] = ()
    args: tuple = ()         # directive arguments: expressions, or bytes for string directives
    names: frozenset = frozenset()  # symbols the statement refers to
    defines: str | None = None      # the symbol of .equ/.set
