"""struct kvm_pit_state2 (KVM_GET/SET_PIT2) against what the guest programs and reads through the
8254's ports (api.rst KVM_GET_PIT2/KVM_SET_PIT2, KVM_CREATE_PIT2; Intel 8254 datasheet: control
word, counter latch and read-back commands, status byte; PC/AT port 0x61 bit 0 = counter 2
gate, bit 1 = speaker data)."""

import time

import pytest

from kvmtest.abi import constants as C
from kvmtest.guest.pit import LATCH_COUNTER0

pytestmark = [pytest.mark.requires_cap("KVM_CAP_PIT2"), pytest.mark.requires_cap("KVM_CAP_PIT_STATE2")]
KVM_PIT_SPEAKER_DUMMY = 1        # KVM_CREATE_PIT2 flag: port 0x61 handled in the kernel (api.rst)
PIT_TICK_HZ = 1193182

PROGRAM = """
    mov al, 0x34                # counter 0: LSB then MSB, mode 2, binary
    out 0x43, al
    mov al, 0x34
    out 0x40, al
    mov al, 0x12
    out 0x40, al
    GUEST_SYNC 1
    mov al, 0xB6                # counter 2: LSB then MSB, mode 3, binary
    out 0x43, al
    mov al, 0x00
    out 0x42, al
    mov al, 0x01
    out 0x42, al
    in al, 0x61
    or al, 3                    # counter 2 gate on, speaker data on
    out 0x61, al
    mov al, 0x70                # counter 1: LSB then MSB, mode 0, binary
    out 0x43, al
    mov al, 0xFF
    out 0x41, al
    out 0x41, al
    mov al, 0x40                # counter latch command for counter 1
    out 0x43, al
    mov al, 0xE2                # read-back: latch the status (not the count) of counter 0
    out 0x43, al
    GUEST_SYNC 2
    GUEST_DONE
"""


def _pit_guest(guest, source):
    g = guest("long64", source, irqchip=True)
    g.vm.create_pit2(KVM_PIT_SPEAKER_DUMMY)
    return g


def test_pit_state_is_what_the_guest_programmed(guest):
    """Each counter's count, mode, rw_mode and bcd are what the guest's control words and counts
    set; the counter latch command leaves count_latched set and latched_count at most the count
    loaded; the read-back command leaves status_latched set and status = rw_mode << 4 | mode << 1
    | bcd in bits 5:0 (8254 status byte); counter 2's gate follows port 0x61 bit 0 (0 before,
    1 after), counters 0 and 1 are gated on; and flags gets KVM_PIT_FLAGS_SPEAKER_DATA_ON from
    port 0x61 bit 1 (api.rst KVM_GET_PIT2; <asm/kvm.h>)."""
    g = _pit_guest(guest, PROGRAM)
    assert g.expect_sync() == 1
    gate_before = g.vm.get_pit2().channels[2].gate
    assert g.expect_sync() == 2
    pit = g.vm.get_pit2()
    ch = pit.channels
    got = [(c.count, c.mode, c.rw_mode, c.bcd, c.gate) for c in ch]
    want = [(0x1234, 2, 3, 0, 1), (0xFFFF, 0, 3, 0, 1), (0x100, 3, 3, 0, 1)]
    assert got == want, f"(count, mode, rw_mode, bcd, gate) per counter {got}; the guest programmed {want}"
    assert gate_before == 0, f"counter 2 gate {gate_before} before the guest set port 0x61 bit 0"
    assert ch[1].count_latched and 0 < ch[1].latched_count <= 0xFFFF, \
        f"counter 1 after the latch command: count_latched={ch[1].count_latched} latched_count={ch[1].latched_count:#x}"
    assert ch[0].status_latched and ch[0].status & 0x3F == 0x34, \
        f"counter 0 after read-back: status_latched={ch[0].status_latched} status={ch[0].status:#x}, expected " \
        "bits 5:0 = 0x34 (LSB/MSB, mode 2, binary)"
    assert pit.flags & C.KVM_PIT_FLAGS_SPEAKER_DATA_ON, f"flags {pit.flags:#x} after port 0x61 bit 1 was set"
    g.run_to_done()


READ_COUNT = LATCH_COUNTER0 + """
    GUEST_SYNC rax
    GUEST_DONE
"""


def test_count_set_by_the_host_is_what_the_guest_latches(guest):
    """Counter 0 written with KVM_SET_PIT2 (count 0x4000, mode 2, LSB/MSB) counts down from that
    count: the guest's counter latch command and two reads of port 0x40 give a value no higher
    than 0x4000 and no lower than 0x4000 minus the 1.193182 MHz ticks of the host time elapsed
    since the ioctl (8254 datasheet; api.rst KVM_SET_PIT2)."""
    g = _pit_guest(guest, READ_COUNT)
    pit = g.vm.get_pit2()
    c = pit.channels[0]
    c.count, c.mode, c.rw_mode, c.bcd = 0x4000, 2, 3, 0
    t0 = time.monotonic_ns()
    g.vm.set_pit2(pit)
    (count,) = g.run_to_done()
    elapsed_ticks = (time.monotonic_ns() - t0) * PIT_TICK_HZ // 10**9 + 1
    assert max(0, 0x4000 - elapsed_ticks) <= count <= 0x4000, \
        f"the guest latched counter 0 at {count:#x}; KVM_SET_PIT2 loaded 0x4000 at most {elapsed_ticks} ticks before"
