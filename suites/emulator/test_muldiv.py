"""Multiply and divide with a memory operand and with a register one, #DE included: every path
agrees (kvmtest.differential)."""

import pytest

from kvmtest.differential.forms import forms


@pytest.mark.parametrize("form", forms("muldiv"), ids=lambda f: f.id)
def test_multiply_and_divide_agree_across_paths(differential, form):
    """MUL and IMUL (one, two and three operands) write the product where the SDM says (AX,
    DX:AX, EDX:EAX, RDX:RAX or the destination) with CF = OF = whether it overflowed; DIV and IDIV
    write quotient and remainder, or raise #DE for a zero divisor or a quotient that does not fit,
    leaving every register as it was; the same with the r/m operand a register (ModRM mod=3: CL/CX/
    ECX/RCX for the one-operand forms, `imul ecx, edx`, `imul edx, edx`, `imul ecx, edx, imm`) (SDM
    Vol. 2A DIV, IDIV, IMUL; Vol. 2B MUL)."""
    differential(form)
