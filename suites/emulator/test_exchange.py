"""Exchange instructions on a memory operand, locked and not: every path agrees
(kvmtest.differential)."""

import pytest

from kvmtest.differential.forms import forms


@pytest.mark.parametrize("form", forms("xchg"), ids=lambda f: f.id)
def test_exchange_agrees_across_paths(differential, form):
    """XCHG swaps register and memory; XADD stores the sum and loads the old value; CMPXCHG
    compares with the accumulator and stores the source (equal, ZF=1) or loads the accumulator
    (not equal, ZF=0), with CMP's flags (SDM Vol. 2B XCHG, XADD; Vol. 2A CMPXCHG)."""
    differential(form)
