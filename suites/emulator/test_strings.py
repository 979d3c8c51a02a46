"""String instructions with and without repeat prefixes, upwards and downwards, their source and
destination in the operand page (MMIO on the emulated paths): every path agrees
(kvmtest.differential)."""

import pytest

from kvmtest.differential.forms import forms


@pytest.mark.parametrize("form", forms("string"), ids=lambda f: f.id)
def test_string_instruction_agrees_across_paths(differential, form):
    """MOVS, STOS, LODS, CMPS and SCAS of bytes, words, doublewords and quadwords move RSI/RDI by
    the element size, down when DF=1; REP repeats RCX times (CX, ECX by the address size, the rest of
    the register untouched), REPE/REPNE also stop at the first unequal/equal element; CMPS and SCAS
    set the flags as CMP does (SDM Vol. 2A CMPS, LODS, MOVS; Vol. 2B REP/REPE/REPZ/REPNE/REPNZ,
    SCAS, STOS)."""
    differential(form)
