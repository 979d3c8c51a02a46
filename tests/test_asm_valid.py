"""Valid guest source keeps assembling, to the bytes the SDM's encoding tables give.

Each expected encoding is worked out from the SDM Vol. 2 opcode tables (ModRM/SIB in
Vol. 2A 2.1, REX in 2.2.1), not taken from Keystone; where several encodings are valid the
line is one whose shortest encoding is unique. The checks in kvmtest.asm must not refuse
any of them, nor any guest the library or guests/ ships.
"""

import pytest

from kvmtest.asm import Section, assemble, assemble_sections
from kvmtest.guest import builder
from kvmtest.guest import layout as L
from kvmtest.guest.compose import Composer
from kvmtest.guest.modes import ALL_MODES, get_mode


@pytest.fixture(autouse=True)
def no_disk_cache(monkeypatch):
    monkeypatch.setenv("KVMTEST_CACHE_DIR", "")


KNOWN = [
    # 16-bit code: Keystone gives these a 32-bit operand size unless kvmtest spells them out
    (16, "call f\nf: ret", "e80000c3"),                   # E8 cw; C3
    (16, "ret 4", "c20400"),                              # C2 iw
    (16, "retf", "cb"),
    (16, "retf 8", "ca0800"),
    (16, "push es\npop ds", "061f"),
    (16, "push fs\npop gs", "0fa00fa9"),
    (16, "lgdt [bx]", "0f0117"),                          # 0F 01 /2, ModRM 00 010 111 = [bx]
    (16, "mov ax, word ptr [bx + si + 4]", "8b4004"),     # ModRM 01 000 000 + disp8
    (16, "jmp f\nf: nop", "eb0090"),
    (16, "push word ptr -1", "6aff"),
    # 32-bit code: Keystone gives these a 16-bit operand size unless kvmtest spells them out;
    # LGDT/SIDT keep a redundant override of their default segment (3E = DS, 36 = SS)
    (32, "lgdt [ebx]", "3e0f0113"),                       # 0F 01 /2, ModRM 00 010 011
    (32, "sidt [esp + 4]", "360f014c2404"),               # 0F 01 /1, ModRM 01 001 100, SIB 00 100 100
    (32, "push cs\npop ss", "0e17"),
    (32, "push f\nf: nop", "680580000090"),               # 68 id: f = 0x8005
    (32, "mov eax, [ebx + ecx*4 + 8]", "8b448b08"),       # ModRM 01 000 100, SIB 10 001 011, disp8
    (32, "ltr ax", "0f00d8"),                             # 0F 00 /3, ModRM 11 011 000
    (32, "rep stosd", "f3ab"),
    (32, "lock cmpxchg dword ptr [ebx], ecx", "f00fb10b"),
    (32, "and eax, ~0x1000", "25ffefffff"),               # 25 id
    (32, "mov al, -128", "b080"),
    (32, "fld st(1)", "d9c1"),                            # D9 C0+i
    (32, "iretd", "cf"),
    # 64-bit code
    (64, "mov r8b, byte ptr [r9]", "458a01"),             # REX.RB 8A, ModRM 00 000 001
    (64, "mov eax, dword ptr [r8 + r9*8 + 0x100]", "438b84c800010000"),
    (64, "lidt [rbx]", "0f011b"),
    (64, "push -1", "6aff"),
    (64, "iretq", "48cf"),
    (64, "rex64 retf", "48cb"),
    (64, "and rax, ~0x80", "48257fffffff"),               # REX.W 25 id, sign-extended
    (64, "xchg ecx, eax", "91"),                          # 90+rd
    (64, "mov eax, dword ptr fs:[rbx]", "648b03"),
    (64, "call f\nf: ret", "e800000000c3"),
    # expressions: integer arithmetic with C's precedence, as Keystone evaluates it
    (32, "mov eax, 1 | 2 ^ 3", "b801000000"),
    (32, "mov eax, 6 & 3 + 1", "b804000000"),
    (32, "mov eax, -7 / 2", "b8fdffffff"),                # division truncates toward zero
    (32, "mov eax, (1 << 4) | 0b10", "b812000000"),
    (32, "mov eax, 'A' + 1", "b842000000"),
    # data
    (32, ".byte 0x90, 'a', -1", "9061ff"),
    (32, ".word f\nf: .long f - 2", "0280" + "00800000"),
    (64, ".quad 0xffffffffffffffff", "ff" * 8),
    (32, '.asciz "hi\\n"', "68690a00"),
    (32, ".skip 3, 0x90", "909090"),
    (32, ".equ X, 5\n.byte X * 2", "0a"),
    # refused before although valid: RIP-relative displacements written as numbers (Vol. 2A 2.2.1.6:
    # ModRM 00 reg 101 = [RIP + disp32]), XCHG of EAX with itself in 32-bit code (90: Vol. 2B NOP
    # "an alias mnemonic for XCHG (E)AX, (E)AX"; not in 64-bit code, where 87 C0 zero-extends RAX),
    # unary minus or complement before a parenthesis (Keystone refuses `-(1)` in an operand)
    (64, "lea rax, [rip]", "488d0500000000"),
    (64, "lea rax, [rip + 0x10]", "488d0510000000"),
    (64, "mov eax, dword ptr [rip - 8]", "8b05f8ffffff"),
    (64, "lea rax, [rip + f]\nf: nop", "488d050000000090"),    # a label: its address
    (64, "lea rax, [rip + f - 1]\nf: nop", "488d05ffffffff90"),
    (32, "xchg eax, eax", "90"),
    (16, "xchg ax, ax", "90"),
    (32, "xchg ax, ax", "6690"),
    (64, "xchg eax, eax", "87c0"),                          # 87 /r, ModRM 11 000 000
    (64, "xchg rax, rax", "4890"),
    (32, "mov eax, -(1)", "b8ffffffff"),
    (32, "push -(1)", "6aff"),
    (32, "mov eax, ~(1)", "b8feffffff"),
    (32, "mov eax, 2 * -(3) + ~(0)", "b8f9ffffff"),
    (32, "mov eax, -(-(2))", "b802000000"),
    (32, "mov eax, [ebx - (4)]", "8b43fc"),
    # GAS's operand sizes (Keystone's are 16-bit: 66 CF, 66 9C): IRETD, PUSHFD/POPFD in 32-bit
    # code, PUSHFQ/POPFQ in 64-bit code (Vol. 2A IRET: CF; Vol. 2B PUSHF: 9C, POPF: 9D)
    (16, "iret", "cf"),
    (16, "pushf\npopf", "9c9d"),
    (32, "iret", "cf"),
    (32, "pushf\npopf", "9c9d"),
    (64, "pushf\npopf", "9c9d"),
    (64, "pushfq\npopfq", "9c9d"),
    # data at the edges of its width, and strings in UTF-8 as GAS stores them
    (64, ".quad -0x8000000000000000", "0000000000000080"),
    (32, ".byte -128, 255", "80ff"),
    (32, ".word -32768, 0xffff", "0080ffff"),
    (32, ".fill 2, 2, -1", "ffffffff"),
    (32, ".fill 1, 8, 0x11223344", "4433221100000000"),     # the pattern is 4 bytes, zero above
    (32, ".fill 1, 3, 0x123456", "563412"),
    (32, ".skip 2, -1", "ffff"),
    (64, "mov rax, ~0xffffffffffffffff", "48c7c000000000"),
    (32, '.ascii "\u00e9\\303"', "c3a9c3"),
    (32, "mov al, '\"'", "b022"),
    (32, "nop # caf\u00e9\nhlt", "90f4"),                  # comments may hold any text
    (32, ".equ N, 4\nnop\n.balign N, 0\n.skip N", "90000000" + "00000000"),
    (32, "nop\n.balign 0x10, 0xcc\n.org 0x8012, 0x90", "90" + "cc" * 15 + "9090"),
    # labels, numeric labels, `$`, comments and `;`
    (32, "1: dec ecx; jnz 1b  # loop", "4975fd"),
    (64, "spin: jmp $", "ebfe"),
]


@pytest.mark.parametrize("bits,src,code", KNOWN, ids=[src.replace("\n", "; ") for _, src, _ in KNOWN])
def test_known_encoding(bits, src, code):
    assert assemble(src, bits, 0x8000).code.hex() == code


def test_deep_but_bounded_expressions_are_accepted():
    depth = "(" * 32 + "1" + ")" * 32
    assert assemble(f"mov eax, {depth}\n.long " + "1+" * 60 + "1", 32, 0x8000).code.hex() == "b801000000" + "3d000000"


def test_balign_and_org_reach_their_address():
    a = assemble("nop\n.balign 8\nx: nop\n.org 0x8010\ny: nop", 32, 0x8000)
    assert a.labels == {"x": 0x8008, "y": 0x8010} and len(a.code) == 0x11


def _sections(mode: str, source: str):
    m = get_mode(mode)
    statements = Composer(m.code_bits, user=m.user).expand(source, "g.S")
    return [Section("code", L.CODE, m.code_bits, tuple(statements)), builder._handler_section(m)]


@pytest.mark.parametrize("mode", ALL_MODES)
def test_the_exception_handlers_of_every_mode_assemble(mode):
    code, handlers = assemble_sections(_sections(mode, "GUEST_SYNC 1\nGUEST_DONE"),
                                       {**builder._symbols(), "KT_CR3": 0x1000})
    assert handlers.labels["kt_stub_0"] == L.HANDLERS and "kt_exc_common" in handlers.labels


@pytest.mark.parametrize("mode,source", [
    ("reset", '.include "enter_long.S"\nlong_mode:\nGUEST_DONE'),
    ("long64", '.include "iretq_to_user.S"\nuser:\nGUEST_AT_CPL 3\nGUEST_DONE'),
])
def test_the_shared_guest_snippets_assemble(mode, source):
    code, _ = assemble_sections(_sections(mode, source), {**builder._symbols(), "KT_CR3": 0x1000})
    assert "long_mode" in code.labels or "user" in code.labels
