"""Guest source for the legacy 8254 PIT, shared by the PIT state and migration checks."""

# Counter-latch command for counter 0 (control word 00b in bits 7:6, 00b in bits 5:4 to port 0x43),
# then its latched count read LSB first from port 0x40 (8254 datasheet, "Counter Latch Command"),
# assuming the counter was programmed for LSB then MSB. Leaves the count in EAX; clobbers EBX.
LATCH_COUNTER0 = """
    xor eax, eax
    out 0x43, al
    in al, 0x40
    mov bl, al
    in al, 0x40
    mov bh, al
    movzx eax, bx
"""
