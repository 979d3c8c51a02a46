"""Smoke checks: one guest per CPU mode that writes a byte to an I/O port and stops.

The first thing to fail on a broken host, and the proof that every mode kvmtest builds
really runs: the exit is checked exactly (reason, port, size, count, data).
"""

import pytest

from kvmtest.exits import HltExit, IoExit
from kvmtest.guest import Sync
from kvmtest.guest.mode_select import ANY


@pytest.mark.modes(cpl=0, feature=ANY)
def test_out_then_hlt(guest, mode):
    """OUT imm8, AL exits with KVM_EXIT_IO (api.rst 5, "KVM_EXIT_IO": direction OUT, size 1,
    count 1, the byte at data_offset); HLT without an in-kernel irqchip exits with
    KVM_EXIT_HLT (api.rst 5, "KVM_EXIT_HLT")."""
    g = guest(mode, "mov al, 0x5a\nout 0x10, al\nhlt\nGUEST_DONE")
    g.expect_exit(IoExit, port=0x10, size=1, count=1, direction=1, data=b"\x5a")
    g.expect_exit(HltExit)


@pytest.mark.modes(cpl=3, feature=ANY)
def test_out_at_cpl3_with_iopl3_then_hlt_faults(guest, mode):
    """At CPL3 with RFLAGS.IOPL=3, OUT is allowed (SDM Vol. 1 19.5.1: CPL <= IOPL) and exits
    with KVM_EXIT_IO (api.rst 5); HLT at CPL3 raises #GP(0) (SDM Vol. 2A HLT)."""
    g = guest(mode, "mov al, 0x5a\nout 0x10, al\nGUEST_ASSERT_RAISES GP(0), hlt\nGUEST_DONE")
    g.expect_exit(IoExit, port=0x10, size=1, count=1, direction=1, data=b"\x5a")
    g.run_to_done()


def test_reset_state_to_long_mode(guest):
    """From the architectural reset state (SDM Vol. 3A 10.1, Table 10-1: real mode at
    F000:FFF0) a guest enters protected mode and then IA-32e mode itself (SDM Vol. 3A 10.9,
    10.8.5) and writes a port from 64-bit code (api.rst 5, KVM_EXIT_IO)."""
    g = guest("reset", '.include "enter_long.S"\nlong_mode:\nmov al, 0x64\nout 0x10, al\nGUEST_DONE')
    pm32 = g.run()
    assert isinstance(pm32, Sync) and pm32.value & 1, f"expected GUEST_SYNC(CR0 with PE) from 32-bit code, got {pm32}"
    g.expect_exit(IoExit, port=0x10, size=1, data=b"\x64")
    sregs = g.vcpu.get_sregs()
    assert sregs.cs.l == 1 and sregs.efer & 0x500 == 0x500, (
        f"expected 64-bit CS (L=1) with EFER.LME|LMA after the switch, got CS.L={sregs.cs.l} efer={sregs.efer:#x}")
    g.run_to_done()
