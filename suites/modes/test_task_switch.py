"""Hardware task switches in 32-bit protected mode (SDM Vol. 3A 7.3 task switching; kvm-unit-tests
taskswitch.c). KVM carries them out in software, so every field counts."""

import struct

from kvmtest.guest import descriptors as D
from kvmtest.guest import layout as L

TSS_B, SEL_TSS_B = 0x3100, 0x60

SOURCE = """
    FARJMP 0x60, 0
after_jmp:
    GUEST_FAIL "the task switch returned to the old task"
task_b:
    mov eax, 0x0B0B
    GUEST_SYNC tr
    GUEST_SYNC esp
    GUEST_DONE
"""


def _tss32(eip, esp):
    t = bytearray(0x68)
    struct.pack_into("<I", t, 0x20, eip)           # EIP
    struct.pack_into("<I", t, 0x24, 0x2)           # EFLAGS
    struct.pack_into("<I", t, 0x38, esp)           # ESP
    for off, sel in ((0x48, L.SEL_DATA), (0x4C, L.SEL_CODE32), (0x50, L.SEL_DATA), (0x54, L.SEL_DATA),
                     (0x58, L.SEL_DATA), (0x5C, L.SEL_DATA)):
        struct.pack_into("<I", t, off, sel)        # ES, CS, SS, DS, FS, GS
    struct.pack_into("<H", t, 0x66, 0x68)          # no I/O bitmap
    return bytes(t)


def test_far_jump_to_a_tss_switches_tasks(guest):
    """JMP FAR to an available 32-bit TSS descriptor saves the current task's state in its TSS
    (EIP = the instruction after the JMP), loads the new task's registers from the new TSS, loads
    TR with the new selector, marks the new TSS busy and the old one available, and leaves
    EFLAGS.NT clear (SDM Vol. 3A 7.3, Table 7-2)."""
    g = guest("pm32", SOURCE)
    g.set_gdt_entry(SEL_TSS_B, D.tss(TSS_B, 0x67, busy=False).encode())
    g.vm.write(TSS_B, _tss32(g.labels["task_b"], 0x6800))
    tr, esp = g.run_to_done()
    assert tr == SEL_TSS_B, f"TR after the switch: {tr:#x}, expected {SEL_TSS_B:#x}"
    assert esp == 0x6800, f"ESP in the new task {esp:#x}, expected 0x6800 from its TSS"
    old_eip = struct.unpack_from("<I", g.vm.read(L.TSS, 0x68), 0x20)[0]
    assert old_eip == g.labels["after_jmp"], f"old TSS EIP {old_eip:#x}, expected {g.labels['after_jmp']:#x}"
    new_type = D.Descriptor.decode(g.vm.read(L.GDT + SEL_TSS_B, 8)).type
    old_type = D.Descriptor.decode(g.vm.read(L.GDT + L.SEL_TSS, 8)).type
    assert (new_type, old_type) == (D.TSS_BUSY, D.TSS_AVAILABLE), \
        f"TSS types after JMP: new {new_type:#x} (want busy 0xb), old {old_type:#x} (want available 0x9)"
    assert not g.vcpu.get_regs().rflags & (1 << 14), "EFLAGS.NT set after a JMP task switch"
