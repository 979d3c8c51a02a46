"""Shifts and rotates of a memory operand by 1, by CL and by an immediate, counts at and past
the operand size included: every path agrees (kvmtest.differential)."""

import pytest

from kvmtest.differential.forms import forms


@pytest.mark.parametrize("form", forms("shift"), ids=lambda f: f.id)
def test_shift_and_rotate_agree_across_paths(differential, form):
    """ROL, ROR, RCL, RCR, SHL, SHR and SAR: the count is masked to 5 bits (6 with a 64-bit
    operand), RCL/RCR rotate through CF modulo size+1, a masked count of 0 changes no flag, OF is
    defined only for 1-bit counts; result, defined flags and memory writes agree on every path
    (SDM Vol. 2B RCL/RCR/ROL/ROR, SAL/SAR/SHL/SHR)."""
    differential(form)
