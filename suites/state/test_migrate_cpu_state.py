"""CPU state the guest set itself is still there after a migration, as the guest sees it: debug
registers (and the breakpoint they arm still fires), x87/SSE/MXCSR state, and a computation
whose registers and flags are live at the moment of the save, even in the middle of a REP
string instruction (api.rst 4.11-4.14, 4.33/4.34 KVM_GET/SET_DEBUGREGS, 4.42-4.45 KVM_GET/SET_XSAVE
and XCRS; SDM Vol. 3A 18.2, Vol. 1 13.4; kvmtest.vm_state)."""

import struct

from kvmtest.exits import IoExit, MmioExit
from kvmtest.guest import layout as L
from kvmtest.guest.modes import with_sse_enabled
from kvmtest.x86 import DR7_INIT, DR7_L0

MASK64 = (1 << 64) - 1
DRS = {1: 0x10100, 2: 0x10208, 3: 0x10310}  # DR1-DR3 hold addresses without enabling them
DR7 = DR7_INIT | DR7_L0                     # an execute breakpoint on DR0


def test_debug_registers_and_their_breakpoint_survive_migration(guest):
    """DR0-DR3 and DR7 the guest loaded read back the same in the new VM, and the execute
    breakpoint DR0/DR7 arm still raises #DB there with DR6.B0 set (SDM Vol. 3A 18.2, 18.3.1.1)."""
    # DR0 is disarmed before GUEST_DONE: QEMU's TCG before 9.1 keeps a breakpoint an SVM guest armed
    # with MOV DR7 after VMEXIT and raises #DB at that address in every later guest of the session.
    loads = "\n".join(f"mov rax, {v:#x}\nmov dr{n}, rax" for n, v in DRS.items())
    checks = "\n".join(f"mov rax, dr{n}\nGUEST_ASSERT_EQ rax, {v:#x}" for n, v in DRS.items())
    g = guest("long64", f"""
        {loads}
        mov rax, 0xFFFF0FF0
        mov dr6, rax
        mov rax, target
        mov dr0, rax
        mov rax, {DR7:#x}
        mov dr7, rax
        GUEST_SYNC 1
        mov rax, dr0
        GUEST_ASSERT_EQ rax, target
        {checks}
        mov rax, dr7
        GUEST_ASSERT_EQ rax, {DR7:#x}
        GUEST_ASSERT_RAISES DB, target: nop
        mov rax, dr6
        and eax, 0xF
        GUEST_SYNC rax
        mov rax, {DR7_INIT:#x}
        mov dr7, rax
        GUEST_DONE""")
    assert g.expect_sync() == 1
    g.migrate()
    assert g.run_to_done() == [1], "DR6 bits 3:0 after the DR0 breakpoint in the new VM (B0 expected)"


XMM = [(0x0101010101010101 * (n + 1), (0x0F00000000000001 * (n + 1) ^ 0xA5A5A5A5A5A5A5A5) & MASK64) for n in range(16)]
X87_INTS = [1234567890123, -42, 7]            # pushed with FILD, so ST0 = 7
FCW, MXCSR = 0x0C7F, 0x3F80                   # x87: truncate; SSE: round down (all exceptions masked)
SSE_AREA = L.DATA + 0x1000


def test_sse_and_x87_state_set_by_the_guest_survives_migration(guest):
    """XMM0-XMM15 (both halves), three x87 stack registers, FCW and MXCSR the guest loaded read
    back the same in the new VM (KVM_GET/SET_XSAVE carry the XSAVE area, SDM Vol. 1 13.4).
    At CPL3, where these instructions run natively on every backend."""
    area = SSE_AREA
    data = b"".join(struct.pack("<QQ", lo, hi) for lo, hi in XMM)
    data += b"".join(struct.pack("<q", v) for v in X87_INTS) + struct.pack("<HI", FCW, MXCSR)
    ctl = area + 16 * 16 + 8 * len(X87_INTS)
    loads = "\n".join(f"movdqu xmm{n}, xmmword ptr [rsi + {16 * n}]" for n in range(16))
    fild = "\n".join(f"fild qword ptr [rsi + {256 + 8 * i}]" for i in range(len(X87_INTS)))
    stores = "\n".join(f"movdqu xmmword ptr [rdi + {16 * n}], xmm{n}" for n in range(16))
    fistp = "\n".join(f"fistp qword ptr [rdi + {256 + 8 * i}]" for i in range(len(X87_INTS)))
    g = guest("long64-cpl3", f"""
        mov rsi, {area:#x}
        fninit
        fldcw word ptr [rsi + {ctl - area}]
        ldmxcsr dword ptr [rsi + {ctl - area + 2}]
        {loads}
        {fild}
        GUEST_SYNC 1
        mov rdi, {area + 0x800:#x}
        {stores}
        {fistp}
        fnstcw word ptr [rdi + 0x200]
        stmxcsr dword ptr [rdi + 0x204]
        GUEST_DONE""")
    g.vm.write(area, data)
    g.set_sregs(with_sse_enabled(g.vcpu.get_sregs()))   # LDMXCSR, MOVDQU: #UD without CR4.OSFXSR
    assert g.expect_sync() == 1
    g.migrate()
    g.run_to_done()
    out = g.vm.read(area + 0x800, 0x208)
    got_xmm = [struct.unpack_from("<QQ", out, 16 * n) for n in range(16)]
    assert got_xmm == XMM, "XMM registers after migration: " + ", ".join(
        f"xmm{n} {hi:016x}{lo:016x}" for n, (lo, hi) in enumerate(got_xmm) if (lo, hi) != XMM[n])
    got_x87 = [struct.unpack_from("<q", out, 256 + 8 * i)[0] for i in range(len(X87_INTS))]
    assert got_x87 == X87_INTS[::-1], f"x87 ST0-ST2 popped after migration: {got_x87}, expected {X87_INTS[::-1]}"
    fcw, mxcsr = struct.unpack_from("<H2xI", out, 0x200)
    assert (fcw, mxcsr) == (FCW, MXCSR), f"FCW {fcw:#x} MXCSR {mxcsr:#x} after migration, " \
                                                  f"expected {FCW:#x} and {MXCSR:#x}"


SEEDS = (0x9E3779B97F4A7C15, 0xD1B54A32D192ED03)
ROUNDS = 10


def _expected_computation():
    """What the guest loop below computes, independently in Python."""
    r8, r9, r10, r11 = SEEDS[0], SEEDS[1], 0, 0
    for _ in range(ROUNDS):
        r8 ^= (r8 << 13) & MASK64
        r8 ^= r8 >> 7
        r8 ^= (r8 << 17) & MASK64
        total = r10 + r8
        r10, carry = total & MASK64, total >> 64
        r11 = (r11 + r9 + carry) & MASK64
        r9 = ((r9 << 5) | (r9 >> 59)) & MASK64
    return [r8, r9, r10, r11]


def test_computation_continues_with_its_registers_and_flags_across_migrations(guest):
    """A loop of xorshift64 and a 128-bit add whose carry (CF) is live across an OUT to a
    non-protocol port: the VM is migrated at two of those exits, between the ADD that sets CF and
    the ADC that consumes it, and the final registers equal the same computation done here."""
    g = guest("long64", f"""
        mov r8, {SEEDS[0]:#x}
        mov r9, {SEEDS[1]:#x}
        xor r10, r10
        xor r11, r11
        mov ecx, {ROUNDS}
    round:
        mov rax, r8
        shl rax, 13
        xor r8, rax
        mov rax, r8
        shr rax, 7
        xor r8, rax
        mov rax, r8
        shl rax, 17
        xor r8, rax
        add r10, r8
        mov al, cl
        out 0x80, al
        adc r11, r9
        rol r9, 5
        dec ecx
        jnz round
        GUEST_SYNC r8
        GUEST_SYNC r9
        GUEST_SYNC r10
        GUEST_SYNC r11
        GUEST_DONE""")
    carries = []
    for n in range(ROUNDS):
        g.expect_exit(IoExit, port=0x80, size=1, data=bytes([ROUNDS - n]))
        carries.append(g.vcpu.get_regs().rflags & 1)
        if n in (2, 6):
            g.migrate()
    assert 1 in carries, "no round had CF set across the exit; the test would not see a lost carry"
    assert g.run_to_done() == _expected_computation(), "r8-r11 after the loop, against the same loop in Python"


def test_rep_stos_interrupted_by_mmio_exits_resumes_after_migration(guest):
    """REP STOSB to unbacked (MMIO) memory exits once per byte; migrated after the third byte,
    the instruction goes on in the new VM with the fourth byte, and ends with RCX = 0 and RDI past
    the last byte (SDM Vol. 2B REP: interruptible between iterations with RCX/RDI updated)."""
    base = L.MMIO_BASE + 0x1000
    g = guest("long64", f"""
        mov rdi, {base:#x}
        mov ecx, 8
        mov al, 0x5A
        cld
        rep stosb
        GUEST_SYNC rcx
        GUEST_SYNC rdi
        GUEST_DONE""")
    for n in range(8):
        g.expect_exit(MmioExit, phys_addr=base + n, len=1, is_write=True)
        if n == 2:
            g.migrate()
    assert g.run_to_done() == [0, base + 8], "RCX and RDI after the REP STOSB"
