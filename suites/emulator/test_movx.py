"""Zero- and sign-extending loads from a memory operand: every path agrees (kvmtest.differential)."""

import pytest

from kvmtest.differential.forms import forms


@pytest.mark.parametrize("form", forms("movx"), ids=lambda f: f.id)
def test_extending_load_agrees_across_paths(differential, form):
    """MOVZX, MOVSX and MOVSXD load 8, 16 or 32 bits and zero- or sign-extend them to the
    destination's size; a 32-bit destination in 64-bit mode clears bits 63:32, a 16-bit one keeps
    them (SDM Vol. 2B MOVZX, MOVSX/MOVSXD; Vol. 1 3.4.1.1)."""
    differential(form)
