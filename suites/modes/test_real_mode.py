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
    # The families below: the result each instruction's Operation section in SDM Vol. 2 gives.
    "xchg": ("mov ax, 1\nmov bx, 2\nxchg ax, bx\nGUEST_ASSERT_EQ ax, 2\nGUEST_ASSERT_EQ bx, 1\n"
             "mov word ptr [0x600], 0x5a5a\nmov cx, 0x1234\nxchg cx, word ptr [0x600]\nGUEST_ASSERT_EQ cx, 0x5a5a\n"
             "mov dx, word ptr [0x600]\nGUEST_ASSERT_EQ dx, 0x1234", None),
    "shld-shrd": ("mov ax, 0x1234\nmov dx, 0x8000\nshld ax, dx, 4\nGUEST_ASSERT_EQ ax, 0x2348\n"
                  "mov ax, 0x1234\nmov dx, 5\nmov cl, 4\nshrd ax, dx, cl\nGUEST_ASSERT_EQ ax, 0x5123", None),
    "jcc": ("mov ax, 1\ncmp ax, 2\njb below\nGUEST_FAIL \"JB not taken for 1 < 2\"\nbelow:\n"
            "jg wrong\njne differs\nwrong:\nGUEST_FAIL \"JG taken or JNE not taken for 1 vs 2\"\ndiffers:\n"
            "mov ax, -1\ntest ax, ax\njns wrong\njs done_jcc\nGUEST_FAIL \"JS not taken\"\ndone_jcc:", None),
    "jcxz-loop": ("xor cx, cx\njcxz zero\nGUEST_FAIL \"JCXZ not taken with CX = 0\"\nzero:\n"
                  "mov cx, 5\nxor ax, ax\nagain:\ninc ax\nloop again\nGUEST_ASSERT_EQ ax, 5\nGUEST_ASSERT_EQ cx, 0\n"
                  "mov cx, 5\nxor bx, bx\nz:\ninc bx\ncmp bx, 2\nloopne z\nGUEST_ASSERT_EQ bx, 2\n"
                  "GUEST_ASSERT_EQ cx, 3", None),
    # PUSHA stores AX, CX, DX, BX, the original SP, BP, SI, DI, from the highest address down;
    # POPA loads them back, skipping SP (SDM Vol. 2B PUSHA, POPA).
    "pusha-popa": ("mov ax, 1\nmov cx, 2\nmov dx, 3\nmov bx, 4\nmov bp, 6\nmov si, 7\nmov di, 8\npusha\n"
                   "mov bp, sp\nGUEST_ASSERT_EQ bp, 0x7000 - 16\nmov bp, word ptr [0x7000 - 10]\n"
                   "GUEST_ASSERT_EQ bp, 0x7000\nmov bp, word ptr [0x7000 - 2]\nGUEST_ASSERT_EQ bp, 1\n"
                   "xor ax, ax\nxor cx, cx\nxor dx, dx\nxor bx, bx\nxor bp, bp\nxor si, si\nxor di, di\npopa\n"
                   "GUEST_ASSERT_EQ ax, 1\nGUEST_ASSERT_EQ cx, 2\nGUEST_ASSERT_EQ dx, 3\nGUEST_ASSERT_EQ bx, 4\n"
                   "GUEST_ASSERT_EQ bp, 6\nGUEST_ASSERT_EQ si, 7\nGUEST_ASSERT_EQ di, 8\nGUEST_ASSERT_EQ sp, 0x7000",
                   None),
    "mul-imul": ("mov ax, 0x1234\nmov bx, 0x10\nmul bx\nGUEST_ASSERT_EQ dx, 1\nGUEST_ASSERT_EQ ax, 0x2340\n"
                 "mov ax, -3\nmov bx, 7\nimul bx\nGUEST_ASSERT_EQ dx, 0xffff\nGUEST_ASSERT_EQ ax, 0xffeb\n"
                 "mov cx, -4\nimul cx, cx, 5\nGUEST_ASSERT_EQ cx, 0xffec", None),
    "div-idiv": ("xor dx, dx\nmov ax, 100\nmov bx, 7\ndiv bx\nGUEST_ASSERT_EQ ax, 14\nGUEST_ASSERT_EQ dx, 2\n"
                 "mov ax, -100\ncwd\nidiv bx\nGUEST_ASSERT_EQ ax, 0xfff2\nGUEST_ASSERT_EQ dx, 0xfffe", None),
    "cbw-cwd-cdq": ("mov al, 0x80\ncbw\nGUEST_ASSERT_EQ ax, 0xff80\ncwd\nGUEST_ASSERT_EQ dx, 0xffff\n"
                    "mov ax, 0x7fff\ncwd\nGUEST_ASSERT_EQ dx, 0\nmov eax, -2\ncdq\n"
                    "GUEST_ASSERT_EQ edx, 0xffffffff", None),
    # 0x23 - 0x05 borrows from the low nibble (AF): DAS adjusts 0x1E to the BCD difference 0x18.
    "das": ("mov al, 0x23\nsub al, 5\ndas\nGUEST_ASSERT_EQ al, 0x18\nsetc bl\nGUEST_ASSERT_EQ bl, 0", None),
    "aad-aam": ("mov ax, 0x0207\naad 10\nGUEST_ASSERT_EQ ax, 27\nmov al, 47\naam 10\nGUEST_ASSERT_EQ ax, 0x0407", None),
    "xlat": ("mov dword ptr [0x600], 0x44332211\nmov bx, 0x600\nmov al, 2\nxlatb\nGUEST_ASSERT_EQ al, 0x33", None),
    "lods-stos": ("cld\nmov word ptr [0x600], 0xbeef\nmov si, 0x600\nlodsw\nGUEST_ASSERT_EQ ax, 0xbeef\n"
                  "GUEST_ASSERT_EQ si, 0x602\nmov di, 0x610\nmov ax, 0x1234\nstosw\nGUEST_ASSERT_EQ di, 0x612\n"
                  "mov bx, word ptr [0x610]\nGUEST_ASSERT_EQ bx, 0x1234\nstd\nmov al, 0x77\nstosb\ncld\n"
                  "GUEST_ASSERT_EQ di, 0x611\nmov bl, byte ptr [0x612]\nGUEST_ASSERT_EQ bl, 0x77", None),
    # SAHF loads SF, ZF, AF, PF and CF from AH bits 7, 6, 4, 2, 0; LAHF stores them back with bit 1
    # set and bits 3 and 5 clear (SDM Vol. 2B SAHF, Vol. 2A LAHF).
    "sahf-lahf": ("mov ah, 0xff\nsahf\nmov ah, 0\nlahf\nGUEST_ASSERT_EQ ah, 0xd7\nmov ah, 0x40\nsahf\n"
                  "setz bl\nsetc bh\nGUEST_ASSERT_EQ bx, 0x0001", None),
    "movzx-movsx": ("mov al, 0x80\nmovzx bx, al\nGUEST_ASSERT_EQ bx, 0x0080\nmovsx cx, al\nGUEST_ASSERT_EQ cx, 0xff80\n"
                    "mov byte ptr [0x600], 0xfe\nmovsx edx, byte ptr [0x600]\nGUEST_ASSERT_EQ edx, 0xfffffffe", None),
    "bswap": ("mov eax, 0x11223344\nbswap eax\nGUEST_ASSERT_EQ eax, 0x44332211", None),
    # NOP with a ModRM operand (0F 1F /0) does nothing, whatever the operand addresses.
    "nopl": ("mov ax, 0x1234\n.byte 0x0f, 0x1f, 0x00\n.byte 0x0f, 0x1f, 0x40, 0x00\n.byte 0x67, 0x0f, 0x1f, 0x00\n"
             "GUEST_ASSERT_EQ ax, 0x1234", None),
    # FNINIT sets the x87 control word to 0x37F and the status word to 0 (SDM Vol. 2A FINIT/FNINIT,
    # Operation); the memory forms of FNSTSW and FNSTCW store them over 0xFFFF.
    "fninit": ("mov dword ptr [0x600], 0xffffffff\nfninit\nfnstsw word ptr [0x600]\nfnstcw word ptr [0x602]\n"
               "mov ax, word ptr [0x600]\nGUEST_ASSERT_EQ ax, 0\nmov ax, word ptr [0x602]\nGUEST_ASSERT_EQ ax, 0x37f",
               None),
    # BP- and SP-based addresses use SS (SDM Vol. 1 3.7.4, Table 3-5): with SS = 0x50 (base 0x500)
    # and DS = 0, [bp + 0x100] is linear 0x600, where DS:[0x600] reads it back.
    "ss-addressing": ("mov word ptr [0x600], 0x1111\nmov ax, 0x50\nmov ss, ax\nmov bp, 0x100\n"
                      "mov word ptr [bp], 0x2222\nmov esp, 0x102\nmov word ptr [esp], 0x3333\n"
                      "xor ax, ax\nmov ss, ax\nmov esp, 0x7000\nmov bx, word ptr [0x600]\nGUEST_ASSERT_EQ bx, 0x2222\n"
                      "mov bx, word ptr [0x602]\nGUEST_ASSERT_EQ bx, 0x3333", None),
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
