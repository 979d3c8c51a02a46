"""Condition-code instructions reading a memory operand or writing one: every path agrees
(kvmtest.differential)."""

import pytest

from kvmtest.differential.forms import forms


@pytest.mark.parametrize("form", forms("cmov"), ids=lambda f: f.id)
def test_cmovcc_agrees_across_paths(differential, form):
    """CMOVcc r, [m] for all 16 conditions: the move happens exactly when the condition holds on
    the input flags, and a 32-bit destination in 64-bit mode has its upper half cleared whether or
    not it does (SDM Vol. 2A CMOVcc: "In 64-bit mode ... if the condition is false, the upper 32
    bits are cleared"; Vol. 1 3.4.1.1; a known class of KVM emulator bugs)."""
    differential(form)


@pytest.mark.parametrize("form", forms("setcc"), ids=lambda f: f.id)
def test_setcc_agrees_across_paths(differential, form):
    """SETcc [m] for all 16 conditions writes one byte, 1 when the condition holds, else 0, and
    changes no flag (SDM Vol. 2B SETcc)."""
    differential(form)
