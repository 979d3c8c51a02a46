"""The registers KVM reports at an exit are the guest's own (api.rst 4.11 KVM_GET_REGS,
4.13 KVM_GET_SREGS, read after KVM_RUN returns)."""

import struct

import pytest

from kvmtest.guest.modes import COMMON_MODES as ALL
from kvmtest.guest.modes import regs_for
from kvmtest.exits import IoExit, MmioExit
from kvmtest.guest.layout import MMIO_BASE
from kvmtest.guest.modes import MODES

EXITS = {"out": ("out 0x10, al", IoExit), "mmio": ("mov byte ptr [{di}], al", MmioExit)}


@pytest.mark.modes(*ALL)
@pytest.mark.parametrize("kind", sorted(EXITS))
def test_get_regs_at_an_exit_matches_what_the_guest_stored(guest, mode, kind):
    """The guest stores its general registers to memory, then exits (OUT, or a store to
    unbacked memory): KVM_GET_REGS reports the same values, and RIP points after the exiting
    instruction, which has completed (api.rst 5: KVM_EXIT_IO / KVM_EXIT_MMIO)."""
    if kind == "mmio" and MODES[mode].code_bits == 16:
        pytest.skip("16-bit code cannot reach unbacked memory: slot 0 covers its 64 KiB segments")
    r = regs_for(mode)
    insn, exit_type = EXITS[kind]
    insn = insn.format(di=r["di"])
    store = "\n".join(f"mov dword ptr [{r['di']} + {4 * i}], e{n}" for i, n in enumerate(("ax", "bx", "cx", "dx", "si")))
    g = guest(mode, f"""
        mov {r['di']}, 0x600
        mov eax, 0x11111111
        mov ebx, 0x22222222
        mov ecx, 0x33333333
        mov edx, 0x44444444
        mov esi, 0x55555555
        {store}
        mov eax, 0x11111111
        mov {r['di']}, {MMIO_BASE:#x}
        {insn}
        after_exit:
        GUEST_DONE""")
    g.expect_exit(exit_type)
    regs = g.vcpu.get_regs()
    stored = struct.unpack("<5I", g.vm.read(0x600, 20))
    reported = tuple(getattr(regs, n) & 0xFFFFFFFF for n in ("rax", "rbx", "rcx", "rdx", "rsi"))
    assert reported == stored, f"KVM_GET_REGS {[hex(x) for x in reported]} vs guest's own {[hex(x) for x in stored]}"
    assert regs.rip == g.labels["after_exit"], \
        f"RIP at the {exit_type.__name__}: {regs.rip:#x}, after the instruction is {g.labels['after_exit']:#x}"
    g.run_to_done()
