"""Guest and host see the same bytes: at slot edges and across adjacent slots (api.rst 4.35:
the slot's memory is the user memory at userspace_addr)."""

import pytest

from kvmtest.guest.modes import regs_for

EDGE = 0x200000  # end of slot 0, start of the slot the test adds


@pytest.mark.modes(code_bits=(32, 64))
def test_host_writes_at_slot_edges_reach_the_guest(guest, mode):
    """Bytes the host writes at the last dword of one slot, the first dword of the next, and a
    dword straddling the two are what guest loads return."""
    r = regs_for(mode)['bx']
    g = guest(mode, f"""
        mov {r}, {EDGE - 4:#x}
        mov eax, dword ptr [{r}]
        GUEST_SYNC eax
        mov eax, dword ptr [{r} + 2]
        GUEST_SYNC eax
        mov eax, dword ptr [{r} + 4]
        GUEST_SYNC eax
        GUEST_DONE""")
    g.vm.add_memory(EDGE, 0x10000)
    g.vm.write(EDGE - 4, bytes([0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]))
    assert g.run_to_done() == [0x44332211, 0x66554433, 0x88776655]


@pytest.mark.modes(code_bits=(32, 64))
def test_guest_writes_across_slots_reach_the_host(guest, mode):
    """A dword the guest stores across the boundary of two slots lands half in each host
    mapping; stores at both edges land exactly there and nowhere else."""
    r = regs_for(mode)['bx']
    g = guest(mode, f"""
        mov {r}, {EDGE - 2:#x}
        mov dword ptr [{r}], 0xA1B2C3D4
        mov byte ptr [{r} - 6], 0x5A
        mov byte ptr [{r} + 0x10001], 0xA5
        GUEST_DONE""")
    g.vm.add_memory(EDGE, 0x10000)
    g.run_to_done()
    assert g.vm.read(EDGE - 8, 12) == bytes([0x5A, 0, 0, 0, 0, 0, 0xD4, 0xC3, 0xB2, 0xA1, 0, 0])
    assert g.vm.read(EDGE + 0xFFFF, 1) == b"\xa5"
