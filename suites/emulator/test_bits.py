"""Bit test instructions on a memory operand with register and immediate bit offsets: every
path agrees (kvmtest.differential)."""

import pytest

from kvmtest.differential.forms import forms


@pytest.mark.parametrize("form", forms("bit"), ids=lambda f: f.id)
def test_bit_test_agrees_across_paths(differential, form):
    """BT, BTS, BTR and BTC [m], reg take a signed bit offset that may select a bit outside the
    operand (the access moves by offset / size operands, before or after it), [m], imm8 take the
    offset modulo the operand size; CF gets the bit, BTS/BTR/BTC write it back at the same address
    (SDM Vol. 2A BT, BTC, BTR, BTS; KVM's emulator has had this address wrong before)."""
    differential(form)
