"""PUSH and POP with a memory operand: every path agrees (kvmtest.differential)."""

import pytest

from kvmtest.differential.forms import forms


@pytest.mark.parametrize("form", forms("stack"), ids=lambda f: f.id)
def test_push_and_pop_of_memory_agree_across_paths(differential, form):
    """PUSH [m] reads the operand and stores it below RSP, POP [m] loads the top of the stack and
    stores it to the operand; RSP moves by the operand size (2, 4 or 8 bytes), no flag changes
    (SDM Vol. 2B PUSH, POP). Compared besides registers and memory: how far RSP moved and the 32
    bytes around its starting value."""
    differential(form)
