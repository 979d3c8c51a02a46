"""SSE moves between XMM1 and a memory operand: every path agrees (kvmtest.differential)."""

import pytest

from kvmtest.differential.forms import forms


@pytest.mark.parametrize("form", forms("sse"), ids=lambda f: f.id)
def test_sse_move_agrees_across_paths(differential, form):
    """MOVAPS, MOVAPD, MOVDQA (aligned: #GP(0) for an operand not on a 16-byte boundary), MOVUPS,
    MOVUPD, MOVDQU, the non-temporal stores MOVNTPS, MOVNTPD, MOVNTDQ (aligned), MOVD and MOVQ
    move 16, 4 or 8 bytes; a MOVD/MOVQ load zeroes the rest of XMM1 (SDM Vol. 2A/2B each
    instruction). The guests run with CR0.EM=0, CR0.TS=0, CR4.OSFXSR=1, as the SDM requires before
    any SSE instruction. KVM's emulator has no MOVD or MOVQ, so those run on the paths that do not
    force emulation (test_refusals.py)."""
    differential(form)
