"""Bit test instructions on a memory operand and on a register, with register and immediate bit
offsets: every path agrees (kvmtest.differential)."""

import pytest

from kvmtest.differential.forms import forms


@pytest.mark.parametrize("form", forms("bit"), ids=lambda f: f.id)
def test_bit_test_agrees_across_paths(differential, form):
    """BT, BTS, BTR and BTC [m], reg take a signed bit offset that may select a bit outside the
    operand (the access moves by offset / size operands, before or after it), [m], imm8 take the
    offset modulo the operand size; with a register base (ModRM mod=3: `bt edx, ecx`, `bt edx, imm8`,
    `btc edx, edx`) the offset is taken modulo the operand size whatever its source; CF gets the bit,
    BTS/BTR/BTC write it back at the same address or into the register (SDM Vol. 2A BT, BTC, BTR, BTS;
    KVM's emulator has had the memory address wrong before)."""
    differential(form)
