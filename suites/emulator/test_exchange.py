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


@pytest.mark.parametrize("form", forms("cmpxchgnb"), ids=lambda f: f.id)
def test_cmpxchg8b_and_16b_agree_across_paths(differential, form):
    """CMPXCHG8B m64 compares EDX:EAX with the operand: equal, it stores ECX:EBX and sets ZF; not,
    it loads the operand into EDX:EAX (clearing bits 63:32 of RAX and RDX in 64-bit mode) and clears
    ZF; no other flag changes. CMPXCHG16B m128 does the same with RDX:RAX and RCX:RBX and raises
    #GP(0) for an operand not aligned on 16 bytes (SDM Vol. 2A CMPXCHG8B/CMPXCHG16B). KVM's emulator
    has no CMPXCHG16B, so it runs on the paths that do not force emulation (test_refusals.py)."""
    differential(form)
