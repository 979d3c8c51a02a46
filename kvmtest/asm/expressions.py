"""Expression trees of guest source: their value, their text, and the 64-bit bounds on both.

A tree is nested tuples, as kvmtest.asm.grammar builds them:

    ("num", int)             a number or character constant
    ("sym", name)            a label, .equ symbol or layout symbol
    ("reg", name)            a register (only inside [ ] memory operands)
    ("un", op, tree)         unary - ~ !
    ("bin", op, left, right) binary * / + - << >> & ^ |
"""


class SyntaxProblem(ValueError):
    """A statement outside the grammar; str() says what is wrong, for the file:line message."""


class UnknownSymbol(SyntaxProblem):
    """An expression names a symbol whose value is not known (yet)."""


LOW64, HIGH64 = -(1 << 63), 1 << 64  # a 64-bit value, signed or unsigned: LOW64 <= v < HIGH64


def fits(value: int, bits: int) -> bool:
    """The rule for every value kvmtest puts in a `bits`-bit field (data directives, .fill
    patterns, immediates, displacements): signed or unsigned, -2**(bits-1) .. 2**bits-1."""
    return -(1 << (bits - 1)) <= value < (1 << bits)


def depth(node) -> int:
    """How deeply operators nest in an expression tree (without recursion: the tree may be deep)."""
    deepest, stack = 0, [(node, 1)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        stack.extend((part, d + 1) for part in node[1:] if isinstance(part, tuple))
    return deepest


def _checked(value: int, what) -> int:
    if not LOW64 <= value < HIGH64:
        raise SyntaxProblem(f"{what} = {value:#x} does not fit in 64 bits (Keystone would wrap it)")
    return value


def _wrap(value: int) -> int:
    return (value + (1 << 63)) % (1 << 64) - (1 << 63)


def evaluate(node, values) -> int:
    """The value of an expression tree, symbols looked up in `values` (name -> int).

    Exact integer arithmetic, refusing any value outside 64 bits (signed or unsigned), where
    Keystone would silently wrap: `-0x8000000000000001`, `0xffffffffffffffff + 1`. The
    bitwise operators work modulo 2**64 as Keystone's do (`~0xffffffffffffffff` is 0).
    Raises UnknownSymbol for a symbol not in `values`, SyntaxProblem for a register, a
    division by zero, a shift outside 0..63 or a value outside 64 bits.
    """
    kind = node[0]
    if kind == "num":
        return _checked(node[1], "number")
    if kind == "sym":
        if node[1] not in values:
            raise UnknownSymbol(f"unknown symbol {node[1]!r}")
        return _checked(values[node[1]], node[1])
    if kind == "reg":
        raise SyntaxProblem(f"register {node[1]} in an expression")
    if kind == "un":
        v = evaluate(node[2], values)
        if node[1] == "-":
            return _checked(-v, f"-({v:#x})")
        if node[1] == "~":
            return ~v if v < (1 << 63) else (1 << 64) - 1 - v
        return int(v == 0)
    op, a, b = node[1], evaluate(node[2], values), evaluate(node[3], values)
    if op == "/" and b == 0:
        raise SyntaxProblem("division by zero")
    if op in ("<<", ">>") and not 0 <= b < 64:
        raise SyntaxProblem(f"shift by {b}")
    if op in ("&", "|", "^"):
        result = {"&": a & b, "|": a | b, "^": a ^ b}[op]
        return result if LOW64 <= result < HIGH64 else _wrap(result)
    result = {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b,
              "/": lambda: abs(a) // abs(b) * (1 if (a < 0) == (b < 0) else -1),
              "<<": lambda: a << b, ">>": lambda: a >> b}[op]()
    return _checked(result, f"{a:#x} {op} {b:#x}")


def expr_text(node) -> str:
    """An expression tree written back as text Keystone reads the same way (parenthesised)."""
    kind = node[0]
    if kind == "num":
        return str(node[1])
    if kind in ("sym", "reg"):
        return node[1]
    if kind == "un":
        return f"{node[1]}({expr_text(node[2])})"
    return f"({expr_text(node[2])} {node[1]} {expr_text(node[3])})"


def has_register(node) -> bool:
    """Whether an expression tree names a register anywhere."""
    if node[0] == "reg":
        return True
    return any(isinstance(part, tuple) and has_register(part) for part in node[1:])


def has_symbol(node) -> bool:
    """Whether an expression tree names a symbol anywhere (a label, .equ or layout symbol)."""
    return node[0] == "sym" or any(isinstance(part, tuple) and has_symbol(part) for part in node[1:])
