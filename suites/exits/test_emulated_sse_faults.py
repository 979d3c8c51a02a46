"""Faults of SSE moves as KVM's instruction emulator must raise them (kvm-unit-tests emulator,
test_sse_exceptions): a 16-byte-aligned move at a misaligned address, and an unaligned move that
runs into a page that is not present.

SDM Vol. 2B MOVAPS: #GP(0) "if a memory operand is not aligned on a 16-byte boundary"; MOVUPS has no
alignment requirement. SDM Vol. 3A 4.7: an access to a linear address whose translation is not
present raises #PF with P = 0 (W for a write) and CR2 the faulting linear address, here one in the
missing page. The operand is RAM, or MMIO (where every host runs the instruction in its emulator,
and the #GP must come before any KVM_EXIT_MMIO); with the forced-emulation prefix where the kvm
module allows it. On a host that emulates CPL0 code (kvm_pvm) the RAM forms go through the emulator
too. SSE is enabled first as the SDM requires (modes.with_sse_enabled).
"""

import pytest

from kvmtest import forced_emulation
from kvmtest.guest import layout as L
from kvmtest.guest.layout import MMIO_BASE
from kvmtest.guest.mode_select import select
from kvmtest.guest.modes import with_sse_enabled
from kvmtest.guest.paging import KiB4
from kvmtest.x86 import PFEC_W

MODES = select(long=True, cpl=0)      # long64, compat32
SOURCE = {"load": "{insn} xmm0, xmmword ptr [{b}]", "store": "{insn} xmmword ptr [{b}], xmm0"}
PATTERN = bytes(range(0x50, 0x60))


def _insn(mode, path, text):
    """`text` ({b}: RBX or EBX) for `mode`, behind the forced-emulation prefix on the fep path (one
    statement, so GUEST_ASSERT_RAISES covers both)."""
    bits = 64 if mode == "long64" else 32
    text = text.format(b="rbx" if bits == 64 else "ebx")
    return forced_emulation.forced(text, bits) if path == "fep" else text


def _guest(guest, mode, body, path):
    if path == "fep" and not forced_emulation.enabled():
        pytest.skip(forced_emulation.SKIP_REASON)
    g = guest(mode, body.format(b="rbx" if mode == "long64" else "ebx"))
    g.set_sregs(with_sse_enabled(g.vcpu.get_sregs()))
    return g


@pytest.mark.modes(*MODES)
@pytest.mark.parametrize("path", ["direct", "fep"])
@pytest.mark.parametrize("where", ["ram", "mmio"])
@pytest.mark.parametrize("access", ["load", "store"])
def test_misaligned_movaps_raises_gp(guest, mode, access, where, path):
    """MOVAPS with its operand 8 bytes past a 16-byte boundary raises #GP(0) without touching the
    operand: no KVM_EXIT_MMIO, RAM unchanged, XMM0 unchanged (SDM Vol. 2B MOVAPS)."""
    base = L.DATA if where == "ram" else MMIO_BASE + 0x40
    body = f"""
        mov {{b}}, {L.DATA + 0x100:#x}
        movups xmm0, xmmword ptr [{{b}}]
        mov {{b}}, {base + 8:#x}
        GUEST_ASSERT_RAISES GP(0), {_insn(mode, path, SOURCE[access].format(insn="movaps", b="{b}"))}
        mov {{b}}, {L.DATA + 0x200:#x}
        movups xmmword ptr [{{b}}], xmm0
        GUEST_DONE"""
    g = _guest(guest, mode, body, path)
    g.vm.write(L.DATA + 0x100, PATTERN)
    g.vm.write(L.DATA, bytes(32))
    g.run_to_done()
    assert g.vm.read(L.DATA + 0x200, 16) == PATTERN, "XMM0 changed by the faulting MOVAPS"
    assert g.vm.read(L.DATA, 32) == bytes(32), "the faulting MOVAPS store wrote memory"


@pytest.mark.modes(*MODES)
@pytest.mark.parametrize("path", ["direct", "fep"])
def test_misaligned_movups_completes(guest, mode, path):
    """MOVUPS at the same misaligned address loads and stores all 16 bytes (SDM Vol. 2B MOVUPS): the
    positive control of the MOVAPS fault."""
    body = f"""
        mov {{b}}, {L.DATA + 8:#x}
        {_insn(mode, path, "movups xmm0, xmmword ptr [{b}]")}
        mov {{b}}, {L.DATA + 0x108:#x}
        {_insn(mode, path, "movups xmmword ptr [{b}], xmm0")}
        GUEST_DONE"""
    g = _guest(guest, mode, body, path)
    g.vm.write(L.DATA + 8, PATTERN)
    g.run_to_done()
    assert g.vm.read(L.DATA + 0x108, 16) == PATTERN, \
        f"MOVUPS copy read {g.vm.read(L.DATA + 0x108, 16).hex()}, expected {PATTERN.hex()}"


@pytest.mark.modes(*MODES)
@pytest.mark.parametrize("path", ["direct", "fep"])
@pytest.mark.parametrize("access", ["load", "store"])
def test_movups_running_into_a_not_present_page_raises_pf(guest, mode, access, path):
    """MOVUPS of 16 bytes starting 8 bytes before a page whose PTE is not present raises #PF with
    P = 0, W for the store, and CR2 inside the missing page, within the 8 bytes the access needed
    there (SDM Vol. 3A 4.7, 6.15 Interrupt 14)."""
    missing = L.DATA + 0x2000
    code = PFEC_W if access == "store" else 0
    body = f"""
        mov {{b}}, {missing - 8:#x}
        GUEST_ASSERT_RAISES PF({code:#x}), {_insn(mode, path, SOURCE[access].format(insn="movups", b="{b}"))}
        GUEST_DONE"""
    g = _guest(guest, mode, body, path)
    pt = g.page_tables
    pt.write_entry(missing, pt.leaf_level(KiB4), 0)
    g.run_to_done()
    cr2 = g.exception_record()["cr2"]
    assert missing <= cr2 < missing + 8, f"#PF CR2 {cr2:#x}, expected an address in {missing:#x}-{missing + 7:#x}"
