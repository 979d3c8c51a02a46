"""Real-mode exceptions whose vector lies beyond the IDTR limit: the vector table entry is not
used; the #GP that raises cannot be delivered either, nor the #DF after it, so the processor
shuts down (KVM_EXIT_SHUTDOWN).

SDM Vol. 2A INT n/INTO/INT3/INT1, Operation, whose description covers exceptions and external
interrupts as well as the instructions: REAL-ADDRESS-MODE "IF ((vector_number << 2) + 3) is not
within IDT limit THEN #GP"; Real-Address Mode Exceptions: "#GP ... If the interrupt vector number
is outside the IDT limits". SDM Vol. 3A 6.15, Interrupt 8 (Table 6-5): a #GP while delivering a
#UD (benign) is delivered serially, a #GP while delivering a #GP or #DE (contributory) is a #DF,
and a fault while delivering the #DF shuts the processor down; api.rst 5: KVM_EXIT_SHUTDOWN.

Both #DE (0) and #UD (6) are below #DF (8) and #GP (13), so a limit that leaves them out leaves
out #DF and #GP too: every such case ends in shutdown. INT n beyond the limit with #GP inside it is
test_real_mode.py::test_int_beyond_the_vector_table_limit_is_gp.
"""

import pytest

from kvmtest.exits import ShutdownExit
from kvmtest.guest import Sync

DF, GP = 8, 13
DELIVERED = 0x100  # GUEST_SYNC DELIVERED + vector: the handler in that (out-of-limit) entry ran

CASES = {
    # exception: (vector, IDTR limit, setup, faulting instruction)
    "ud": (6, 0x17, "", "ud2"),                         # entries 0-5 inside the limit
    "de": (0, 0x0, "xor bl, bl\nmov ax, 1", "div bl"),  # no whole entry inside the limit
}


@pytest.mark.parametrize("case", list(CASES))
def test_exception_beyond_the_idt_limit_shuts_down(guest, case):
    """A real-mode #UD or #DE whose vector-table entry lies beyond the IDTR limit, with #GP and #DF
    beyond it as well, shuts the vCPU down: KVM_RUN exits with KVM_EXIT_SHUTDOWN and no handler in
    the vector table runs (SDM Vol. 2A INT n Operation, REAL-ADDRESS-MODE; Vol. 3A 6.15 Table 6-5;
    api.rst 5)."""
    vector, limit, setup, insn = CASES[case]
    handlers = "\n".join(f"through_{v}:\n    GUEST_SYNC {DELIVERED + v:#x}\n    GUEST_DONE"
                         for v in sorted({vector, DF, GP}))
    g = guest("real", f"""
        lidt [idtr]
        sidt [0x600]
        mov ax, word ptr [0x600]
        GUEST_SYNC ax
        {setup}
        {insn}
        GUEST_FAIL "the faulting instruction completed"
    idtr:
        .word {limit:#x}
        .long 0
    {handlers}
    """)
    for v in {vector, DF, GP}:
        g.set_idt_gate(v, f"through_{v}")
    seen = g.expect_sync()
    host = g.vcpu.get_sregs().idt.limit
    assert (seen, host) == (limit, limit), \
        f"IDTR limit after LIDT: SIDT reads {seen:#x}, KVM_GET_SREGS {host:#x}, LIDT loaded {limit:#x}"
    event = g.run()
    if isinstance(event, Sync) and event.value >= DELIVERED:
        v = event.value - DELIVERED
        raise g.failure(f"expected KVM_EXIT_SHUTDOWN, but vector {v} was delivered through vector-table "
                        f"entry {v} (bytes {4 * v:#x}-{4 * v + 3:#x}), beyond the IDTR limit {limit:#x}")
    assert isinstance(event, ShutdownExit), \
        f"expected KVM_EXIT_SHUTDOWN after the {case} beyond the IDT limit, got {event}"
