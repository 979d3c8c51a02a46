"""MMIO for unbacked guest physical addresses (api.rst 5, KVM_EXIT_MMIO)."""

import pytest

from kvmtest.exits import MmioExit
from kvmtest.guest.layout import MMIO_BASE
from kvmtest.guest.mode_select import select
from kvmtest.guest.modes import regs_for

SIZES = {1: ("byte", "al"), 2: ("word", "ax"), 4: ("dword", "eax"), 8: ("qword", "rax")}
MODES32 = select(code_bits=32, cpl=0) + select(sample="per-code-size", code_bits=32, cpl=3)
MODES64 = select(code_bits=64)


def _cases():
    for mode in MODES64 + MODES32:
        for size in SIZES:
            if size == 8 and mode not in MODES64:
                continue
            yield pytest.param(mode, size, id=f"{mode}-{size}b")


@pytest.mark.parametrize("mode,size", list(_cases()))
def test_store_exits_with_address_length_and_data(guest, mode, size):
    """A store of `size` bytes to an address no slot backs exits with KVM_EXIT_MMIO,
    is_write=1, the address, len=size and the stored bytes (api.rst 5)."""
    width, reg = SIZES[size]
    r = regs_for(mode)['bx']
    value = 0x8877665544332211 & ((1 << (8 * size)) - 1)
    load = f"mov rax, {value:#x}" if size == 8 else f"mov {reg}, {value:#x}"
    g = guest(mode, f"mov {r}, {MMIO_BASE + 0x18:#x}\n{load}\nmov {width} ptr [{r}], {reg}\nGUEST_DONE")
    g.expect_exit(MmioExit, phys_addr=MMIO_BASE + 0x18, len=size, is_write=True,
                  data=value.to_bytes(size, "little"))
    g.run_to_done()


@pytest.mark.parametrize("mode,size", list(_cases()))
def test_load_returns_exactly_what_the_host_supplied(guest, mode, size):
    """A load from unbacked memory exits with KVM_EXIT_MMIO, is_write=0, the address and len;
    the data the host puts in mmio.data is what the guest's register receives (api.rst 5)."""
    width, reg = SIZES[size]
    r = regs_for(mode)['bx']
    dest = "rax" if size == 8 else "eax"
    clear = "xor eax, eax" if size < 8 else "xor rax, rax"
    g = guest(mode, f"mov {r}, {MMIO_BASE + 0x20:#x}\n{clear}\nmov {reg}, {width} ptr [{r}]\n"
                    f"GUEST_SYNC {dest}\nGUEST_DONE")
    value = 0xF1E2D3C4B5A69788 & ((1 << (8 * size)) - 1)
    g.expect_exit(MmioExit, phys_addr=MMIO_BASE + 0x20, len=size, is_write=False).respond(value)
    assert g.run_to_done() == [value]


def test_high_physical_address_exits_as_mmio(guest):
    """Addresses high in the 4 GiB physical space with no slot exit as MMIO too (api.rst 5)."""
    g = guest("pm32", "mov ebx, 0xF0001000\nmov dword ptr [ebx], 0x600DF00D\nGUEST_DONE")
    g.expect_exit(MmioExit, phys_addr=0xF0001000, len=4, is_write=True, data=bytes.fromhex("0df00d60"))
    g.run_to_done()
