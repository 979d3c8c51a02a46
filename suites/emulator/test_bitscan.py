"""Bit scans and population count from a memory operand, and BSF/BSR from a register, zero source
included: every path agrees (kvmtest.differential)."""

import pytest

from kvmtest.differential.forms import forms


@pytest.mark.parametrize("form", forms("bitscan"), ids=lambda f: f.id)
def test_bit_scan_and_count_agree_across_paths(differential, form):
    """BSF/BSR write the index of the lowest/highest set bit and clear ZF, or set ZF for a zero
    source (destination then undefined, not compared; from a register too: `bsf ecx, edx`, and
    `bsf edx, edx` with one register); TZCNT/LZCNT count trailing/leading zeros, giving the operand
    size and CF=1 for a zero source, ZF when the count is 0; POPCNT counts set
    bits and clears every flag but ZF (SDM Vol. 2A BSF, BSR, LZCNT; Vol. 2B POPCNT, TZCNT). LZCNT,
    TZCNT and POPCNT need CPUID ABM, BMI1 and POPCNT and skip without them; KVM's emulator has no
    POPCNT, so POPCNT runs on the paths that do not force emulation (test_refusals.py)."""
    differential(form)
