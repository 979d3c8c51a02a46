"""Instructions KVM's emulator does not implement, their memory operand in MMIO: each refusal is
the documented one, never a wrong result (kvmtest.differential.refusal)."""

import pytest

from kvmtest.differential.forms import refused_forms


@pytest.mark.parametrize("form", refused_forms(), ids=lambda f: f.id)
def test_emulator_refuses_what_it_does_not_implement(refusal, form):
    """POPCNT, CMPXCHG16B, MOVD/MOVQ, SSE arithmetic (ADDPS), x87 loads (FILD) and CRC32 with an
    MMIO operand: at CPL0 KVM_RUN exits with KVM_EXIT_INTERNAL_ERROR, suberror
    KVM_INTERNAL_ERROR_EMULATION (api.rst 5, KVM_EXIT_INTERNAL_ERROR), at CPL3 the guest gets #UD
    (arch/x86/kvm/x86.c handle_emulation_failure; emulate.c has no entry for them, forms.REFUSED)."""
    refusal(form)
