"""Virtual-8086 mode entered through KVM_SET_REGS (RFLAGS.VM) from 32-bit protected mode
(SDM Vol. 3A 20.2 virtual-8086 mode; api.rst 4.12 KVM_SET_REGS; syzkaller's vm86 setups)."""

from kvmtest.abi.structs import kvm_segment
from kvmtest.exits import IoExit
from kvmtest.guest import layout as L
from kvmtest.x86 import RFLAGS_FIXED, RFLAGS_IOPL, RFLAGS_VM, SEG_TYPE_CODE_RX_ACCESSED, SEG_TYPE_DATA_RW_ACCESSED

CODE_SEG = 0x800      # CS:IP = 0800:0000 -> linear 0x8000, where the guest's code is
PORT = 0x10

# The vCPU decodes this as 16-bit code, so it is spelled in 16-bit encodings (the guest around it
# is assembled for pm32, whose encodings of the same mnemonics differ).
VM86_CODE = f"""
    .byte 0xb8, 0x00, 0x09          # mov ax, 0x900
    .byte 0x8e, 0xd8                # mov ds, ax
    .byte 0xa0, 0x00, 0x00          # mov al, byte ptr [0]
    .byte 0xe6, {PORT:#x}               # out {PORT:#x}, al
    .byte 0xeb, 0xfe                # jmp $ (HLT would fault: virtual-8086 code runs at CPL 3)
"""

# In virtual-8086 mode IN/OUT ignore IOPL and always consult the TSS's I/O permission bit map
# (SDM Vol. 1 19.5.2, Vol. 3A 20.2.8.1): the mode's TSS has none (its I/O map base, 0x68, is past
# its limit), so the guest's TSS gets one that allows ports 0-23, followed by the all-ones byte the
# processor may read past the map. TR's limit grows to cover it.
IO_BITMAP = bytes([0x00, 0x00, 0x00, 0xFF])
IO_MAP_BASE = 0x68


def test_vm86_segment_loads_use_real_mode_addressing(guest):
    """In virtual-8086 mode a segment register load sets base = selector * 16 with no descriptor
    lookup: DS = 0x900 makes [0] linear 0x9000 (SDM Vol. 3A 20.2.1); an OUT the TSS's I/O
    permission bit map allows exits to user space (SDM Vol. 3A 20.2.8.1); KVM_GET_REGS shows
    RFLAGS.VM while the guest runs there."""
    g = guest("pm32", VM86_CODE)
    g.vm.write(0x9000, b"\x5a")
    g.vm.write(L.TSS + IO_MAP_BASE, IO_BITMAP)
    sregs = g.vcpu.get_sregs()
    for name in ("cs", "ds", "es", "fs", "gs", "ss"):
        setattr(sregs, name, kvm_segment(base=CODE_SEG << 4, limit=0xFFFF, selector=CODE_SEG,
                                         type=SEG_TYPE_CODE_RX_ACCESSED if name == "cs" else SEG_TYPE_DATA_RW_ACCESSED,
                                         present=1, dpl=3, s=1))
    sregs.tr.limit = IO_MAP_BASE + len(IO_BITMAP) - 1
    g.set_sregs(sregs)
    regs = g.vcpu.get_regs()
    regs.rip, regs.rsp, regs.rflags = 0, 0x7000 - (CODE_SEG << 4) + 0x1000, RFLAGS_FIXED | RFLAGS_IOPL | RFLAGS_VM
    g.vcpu.set_regs(regs)
    assert g.vcpu.get_regs().rflags & RFLAGS_VM, \
        f"KVM_SET_REGS rflags={regs.rflags:#x} read back as {g.vcpu.get_regs().rflags:#x}: RFLAGS.VM dropped"
    exit_ = g.expect_exit(IoExit, port=PORT)
    assert exit_.data == b"\x5a", f"read through DS=0x900 gave {exit_.data.hex()}, expected 5a from linear 0x9000"
    assert g.vcpu.get_regs().rflags & RFLAGS_VM, "RFLAGS.VM clear at the exit"
