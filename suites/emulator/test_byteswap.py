"""Byte-order swaps: MOVBE to and from memory, BSWAP of a register; every path agrees
(kvmtest.differential)."""

import pytest

from kvmtest.differential.forms import forms


@pytest.mark.parametrize("form", forms("byteswap"), ids=lambda f: f.id)
def test_byte_swap_agrees_across_paths(differential, form):
    """MOVBE r, [m] and MOVBE [m], r move 16, 32 or 64 bits with their bytes reversed, changing no
    flag (a 16-bit destination keeps bits 63:16, a 32-bit one in 64-bit mode clears 63:32); BSWAP
    reverses a 32- or 64-bit register (SDM Vol. 2B MOVBE, Vol. 2A BSWAP). MOVBE needs CPUID MOVBE,
    which the vCPUs get where KVM_GET_EMULATED_CPUID offers it (api.rst KVM_GET_EMULATED_CPUID);
    BSWAP has no memory operand, so only CPL0 on a host that emulates CPL0 code sends it through
    KVM's emulator."""
    differential(form)
