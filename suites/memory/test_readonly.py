"""Read-only memslots (KVM_MEM_READONLY, KVM_CAP_READONLY_MEM; api.rst 4.35)."""

import pytest

from kvmtest.abi.constants import KVM_MEM_READONLY
from kvmtest.exits import MmioExit
from kvmtest.guest.modes import regs_for

RO = 0x300000
pytestmark = pytest.mark.requires_cap("KVM_CAP_READONLY_MEM")


@pytest.mark.modes(code_bits=(32, 64))
def test_reads_work_and_writes_exit_as_mmio(guest, mode):
    """Reads of a read-only slot return its memory; "writes to this memory will be posted to
    userspace as KVM_EXIT_MMIO exits" (api.rst 4.35) with the exact address, length and data,
    and the memory is unchanged."""
    r = regs_for(mode)['bx']
    g = guest(mode, f"""
        mov {r}, {RO + 0x10:#x}
        mov eax, dword ptr [{r}]
        GUEST_SYNC eax
        mov dword ptr [{r}], 0xFEEDC0DE
        mov word ptr [{r} + 6], 0xBEEF
        GUEST_DONE""")
    slot = g.vm.add_memory(RO, 0x1000, flags=KVM_MEM_READONLY)
    slot.mapping.write(0x10, (0x12345678).to_bytes(4, "little"))
    assert g.expect_sync() == 0x12345678
    g.expect_exit(MmioExit, phys_addr=RO + 0x10, len=4, is_write=True, data=bytes.fromhex("dec0edfe"))
    g.expect_exit(MmioExit, phys_addr=RO + 0x16, len=2, is_write=True, data=bytes.fromhex("efbe"))
    g.run_to_done()
    assert slot.mapping.read(0x10, 8) == bytes.fromhex("7856341200000000"), "read-only memory was modified"
