"""The local APIC register page as KVM_GET_LAPIC / KVM_SET_LAPIC carry it (api.rst KVM_GET_LAPIC:
struct kvm_lapic_state, "regs" laid out as the xAPIC page, SDM Vol. 3A Table 11-1): reading and
writing one 32-bit register by its offset (kvmtest.x86 APIC_*), and the 256-bit ISR/TMR/IRR
arrays by vector.

    lapic = vcpu.get_lapic()
    set_reg(lapic, APIC_TPR, 0x50); vcpu.set_lapic(lapic)
    vector_bit(lapic, APIC_IRR, 0x40)
"""

import struct

from . import validate
from .abi.structs import kvm_lapic_state
from .errors import BadArgumentError
from .x86 import APIC_IRR, APIC_ISR, APIC_TMR

_VECTOR_ARRAYS = (APIC_ISR, APIC_TMR, APIC_IRR)


def _check(lapic, offset) -> int:
    if not isinstance(lapic, kvm_lapic_state):
        raise BadArgumentError(f"expected a kvm_lapic_state (from KVM_GET_LAPIC), got {lapic!r:.80}")
    offset = validate.int_in(offset, 0, 0x3F0, "local APIC register offset")
    if offset % 16:
        raise BadArgumentError(f"local APIC register offset {offset:#x}: registers sit on 16-byte boundaries")
    return offset


def reg(lapic: kvm_lapic_state, offset: int) -> int:
    """The 32-bit register at `offset` (0x000-0x3F0, a multiple of 16) of a kvm_lapic_state."""
    offset = _check(lapic, offset)
    return struct.unpack_from("<I", bytes(lapic.regs), offset)[0]


def set_reg(lapic: kvm_lapic_state, offset: int, value: int) -> None:
    """Write the 32-bit register at `offset` of a kvm_lapic_state in place (for KVM_SET_LAPIC)."""
    offset = _check(lapic, offset)
    value = validate.uint(value, 32, f"local APIC register {offset:#x} value")
    for i, byte in enumerate(struct.pack("<I", value)):
        lapic.regs[offset + i] = byte


def vector_bit(lapic: kvm_lapic_state, array: int, vector: int) -> bool:
    """Whether `vector`'s bit is set in the ISR, TMR or IRR (`array`: APIC_ISR, APIC_TMR, APIC_IRR):
    vector v is bit v % 32 of the register at array + 0x10 * (v // 32) (SDM Vol. 3A 11.8.4)."""
    if array not in _VECTOR_ARRAYS:
        raise BadArgumentError(f"local APIC offset {array:#x} is not the ISR, TMR or IRR")
    vector = validate.int_in(vector, 0, 255, "interrupt vector")
    return bool(reg(lapic, array + 0x10 * (vector // 32)) >> (vector % 32) & 1)
