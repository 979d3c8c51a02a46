"""Integer arithmetic and logic with a memory operand and on registers: the CPU (CPL3, RAM), KVM's
emulator (MMIO; CPL0 on a host that emulates it; the forced-emulation prefix) and the reference
model agree (kvmtest.differential)."""

import pytest

from kvmtest.differential.forms import forms


@pytest.mark.parametrize("form", forms("alu"), ids=lambda f: f.id)
def test_binary_alu_agrees_across_paths(differential, form):
    """ADD, ADC, SUB, SBB, AND, OR, XOR and CMP as r/m,reg, reg,r/m, r/m,imm and r/m,imm8 (sign-
    extended), TEST as r/m,reg and r/m,imm, LOCK forms of the read-modify-write ones, and all nine
    on two registers (ModRM mod=3: `add edx, ecx`; `xor edx, edx` and `sub edx, edx` on one): the
    result (register or memory), every status flag the SDM defines and the memory writes are the
    same on every path (SDM Vol. 2A ADD, ADC, AND, CMP; Vol. 2B OR, SBB, SUB, TEST, XOR; LOCK)."""
    differential(form)


@pytest.mark.parametrize("form", forms("unary"), ids=lambda f: f.id)
def test_unary_alu_agrees_across_paths(differential, form):
    """INC, DEC, NEG and NOT of a memory operand and of a register (FF/FE/F7/F6 with ModRM mod=3,
    also outside 64-bit mode, where INC/DEC r16/r32 have a one-byte encoding as well): the written
    value and flags agree, INC and DEC leave CF as it was, NOT changes no flag (SDM Vol. 2A INC, DEC;
    Vol. 2B NEG, NOT)."""
    differential(form)
