"""Register names per code size, for guests written once for every mode."""

from kvmtest.guest.modes import MODES


def regs_for(mode: str) -> dict[str, str]:
    """a/b/c/d/si/di/sp at the mode's natural width: rax.. in 64-bit code, eax.. otherwise
    (16-bit code uses the 32-bit names with an operand-size prefix)."""
    bits = MODES[mode].code_bits
    prefix = "r" if bits == 64 else "e"
    return {r: prefix + r for r in ("ax", "bx", "cx", "dx", "si", "di", "sp")}


ALL = [m for m in MODES if m not in ("reset", "long64-la57")]
