"""Shifts and rotates of a memory operand by 1, by CL and by an immediate, and of a register by CL
and by an immediate, counts at and past the operand size included: every path agrees
(kvmtest.differential)."""

import pytest

from kvmtest.differential.forms import forms


@pytest.mark.parametrize("form", forms("shift"), ids=lambda f: f.id)
def test_shift_and_rotate_agree_across_paths(differential, form):
    """ROL, ROR, RCL, RCR, SHL, SHR and SAR of [m] and of a register: the count is masked to 5 bits (6 with a 64-bit
    operand), RCL/RCR rotate through CF modulo size+1, a masked count of 0 changes no flag, OF is
    defined only for 1-bit counts; result, defined flags and memory writes agree on every path
    (SDM Vol. 2B RCL/RCR/ROL/ROR, SAL/SAR/SHL/SHR)."""
    differential(form)


@pytest.mark.parametrize("form", forms("dshift"), ids=lambda f: f.id)
def test_double_precision_shift_agrees_across_paths(differential, form):
    """SHLD/SHRD [m], r, imm8 and [m], r, CL shift the memory operand left/right filling from the
    register, the count masked to 5 bits (6 with REX.W): a masked count of 0 changes nothing, CF is
    the last bit shifted out, OF is defined for a 1-bit shift only, AF never (SDM Vol. 2B SHLD,
    SHRD; with a 16-bit operand a masked count above 16 is undefined and not drawn)."""
    differential(form)
