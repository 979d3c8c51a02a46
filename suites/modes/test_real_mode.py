"""Real-mode semantics, one instruction family per case (SDM Vol. 3A chapter 20 and the Vol. 2
instruction pages; kvm-unit-tests realmode.c). On hosts that emulate real mode these go through
KVM's instruction emulator, which is exactly what they check."""

import pytest

CASES = {
    "mov-add": ("mov ax, 0x1234\nadd ax, 0x0101\nGUEST_ASSERT_EQ ax, 0x1335", None),
    "carry-flag": ("mov al, 0xff\nadd al, 1\nsetc bl\nGUEST_ASSERT_EQ bl, 1\nGUEST_ASSERT_EQ al, 0", None),
    "sub-sets-sign": ("mov ax, 1\nsub ax, 2\nsets cl\nGUEST_ASSERT_EQ cl, 1\nGUEST_ASSERT_EQ ax, 0xffff", None),
    "near-call-ret": ("call f\nGUEST_ASSERT_EQ bx, 7\njmp out\nf:\nmov bx, 7\nret\nout:", None),
    "far-call-retf": ("FARCALL 0, g\nGUEST_ASSERT_EQ cx, 9\njmp out\ng:\nmov cx, 9\nretf\nout:", None),
    "push-pop": ("mov ax, 0xbeef\npush ax\npop dx\nGUEST_ASSERT_EQ dx, 0xbeef", None),
    "pushf-popf": ("pushf\npop ax\nor ax, 1\npush ax\npopf\nsetc dl\nGUEST_ASSERT_EQ dl, 1", None),
    "iret": ("pushf\npush cs\npush word ptr 0\n.byte 0x68\n.word back\npop ax\npop bx\npush ax\niret\n"
             "GUEST_FAIL \"IRET did not jump\"\nback:\nGUEST_ASSERT_EQ bx, 0", None),
    "int-n": ("int 0x21\nGUEST_ASSERT_EQ dx, 0x21", "h21:\nmov dx, 0x21\niret"),
    "lds": ("mov word ptr [0x600], 0x1234\nmov word ptr [0x602], 0x10\nlds si, [0x600]\n"
            "GUEST_ASSERT_EQ si, 0x1234\nGUEST_ASSERT_EQ ds, 0x10\nxor ax, ax\nmov ds, ax", None),
    "segment-base": ("mov ax, 0x100\nmov es, ax\nmov byte ptr es:[0x10], 0x5a\nxor ax, ax\nmov es, ax\n"
                     "mov al, byte ptr [0x1010]\nGUEST_ASSERT_EQ al, 0x5a", None),
    "sidt": ("sidt [0x600]\nmov ax, word ptr [0x600]\nGUEST_ASSERT_EQ ax, 0x3ff", None),
    "smsw": ("smsw ax\nGUEST_ASSERT_EQ ax, 0x0010", None),
    "cpuid": ("xor eax, eax\ncpuid\nGUEST_SYNC eax", None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_real_mode_instruction(kvm, guest, case):
    """Each case checks one instruction family's result in real mode against the SDM (values in
    the case; GUEST_ASSERT_EQ compares them on the host)."""
    body, handler = CASES[case]
    g = guest("real", f"{body}\nGUEST_DONE\n{handler or ''}")
    if handler:
        g.set_idt_gate(0x21, "h21")
    values = g.run_to_done()
    if case == "cpuid":
        leaf0 = next(e for e in kvm.cached_supported_cpuid() if e.function == 0)
        assert values == [leaf0.eax], f"CPUID.0:EAX {values}, table says {leaf0.eax:#x}"


def test_int_beyond_the_vector_table_limit_is_gp(guest):
    """In real mode INT n checks the vector against the IDTR limit: with the limit set to
    0x3F (vectors 0-15), INT 0x21 raises #GP, delivered through vector 13's entry, and the
    handler for vector 0x21 never runs (SDM Vol. 2A INT n, REAL-ADDRESS-MODE: "IF
    ((vector_number << 2) + 3) is not within IDT limit THEN #GP")."""
    g = guest("real", """
        lidt [idtr]
        GUEST_ASSERT_RAISES GP, int 0x21
        GUEST_DONE
    idtr:
        .word 0x3f
        .long 0
    h21:
        GUEST_FAIL "INT 0x21 went through an entry beyond the IDT limit"
    """)
    g.set_idt_gate(0x21, "h21")
    g.run_to_done()
