"""SSE, x87, FXSAVE/FXRSTOR, CMPXCHG8B, BSWAP and LZCNT on RAM operands give the SDM's results at
CPL0 and at CPL3 (SDM Vol. 1 chapters 8 and 10-11 for x87/SSE arithmetic, Vol. 2 for each
instruction; expected values computed here, independently of the host).

A host that runs some guest code through KVM's instruction emulator (as kvm_pvm does for CPL0)
executes these there; the same instruction at CPL3 may run natively. CR0 and CR4 are set as the
SDM requires before any x87 or SSE instruction: CR0.EM = 0, CR0.MP = 1, CR4.OSFXSR = 1,
CR4.OSXMMEXCPT = 1 (modes.with_sse_enabled). POPCNT, CRC32, MOVBE, XGETBV and CMPXCHG16B results
are checked with their CPUID gates in suites/cpu/test_cpuid_gated_instructions.py.
"""

import struct
from dataclasses import dataclass

import pytest

from kvmtest.cpuid import FEATURES
from kvmtest.guest import layout as L
from kvmtest.guest.mode_select import select
from kvmtest.guest.modes import get_mode, with_sse_enabled

MODES = select(long=True, order="widest")


def _dwords(fmt: str, *values) -> tuple:
    """The little-endian dwords of struct.pack(fmt, *values): how the guest reads results back."""
    raw = struct.pack("<" + fmt, *values)
    return struct.unpack(f"<{len(raw) // 4}I", raw)


def _sync_dwords(offset: int, count: int) -> str:
    return "\n".join(f"mov eax, dword ptr [{{p}} + {offset + 4 * i}]\nGUEST_SYNC eax" for i in range(count))


@dataclass(frozen=True)
class Case:
    features: tuple
    body: str
    expected: tuple


def _store(offset: int, fmt: str, *values) -> str:
    return "\n".join(f"mov dword ptr [{{p}} + {offset + 4 * i}], {d:#x}" for i, d in enumerate(_dwords(fmt, *values)))


# {p} is RDI/EDI, pointing at DATA (RAM the guest owns; 16-byte aligned for FXSAVE).
CASES = {
    "sse-addps": Case(("sse",), _store(0, "4f", 1.5, 2.0, -3.25, 4.0) + "\nmovups xmm0, [{p}]\naddps xmm0, [{p}]\n"
                      "movups [{p} + 16], xmm0\n" + _sync_dwords(16, 4), _dwords("4f", 3.0, 4.0, -6.5, 8.0)),
    "sse2-paddq-mulpd": Case(("sse2",), _store(0, "2q2d", 5, -7, 1.5, 0.25) + "\npxor xmm1, xmm1\npaddq xmm1, [{p}]\n"
                             "movupd xmm2, [{p} + 16]\nmulpd xmm2, [{p} + 16]\nmovdqu [{p} + 32], xmm1\n"
                             "movupd [{p} + 48], xmm2\n" + _sync_dwords(32, 8),
                             _dwords("2q2d", 5, -7, 2.25, 0.0625)),
    "x87-fiadd-fmul": Case(("fpu",), _store(0, "ii", 3, 4) + "\n" + _store(8, "dd", 1.5, 2.5) +
                           "\nfninit\nfild dword ptr [{p}]\nfiadd dword ptr [{p} + 4]\nfistp dword ptr [{p} + 24]\n"
                           "fld qword ptr [{p} + 8]\nfmul qword ptr [{p} + 16]\nfstp qword ptr [{p} + 28]\n"
                           + _sync_dwords(24, 3), _dwords("id", 7, 3.75)),
    # FXSAVE stores FCW at byte 0 and MXCSR at byte 24 of its 512-byte image and FXRSTOR loads them
    # back (SDM Vol. 2A FXSAVE, the legacy and 64-bit layouts agree on these fields); FNINIT sets
    # FCW to 0x37F and leaves MXCSR at its power-up 0x1F80 (SDM Vol. 1 8.1.5, 10.2.3.1). A second
    # FXSAVE reads back what FXRSTOR loaded, so no other x87/SSE instruction takes part.
    "fxsave-fxrstor": Case(("fxsr",), "fninit\nfxsave [{p}]\nmovzx eax, word ptr [{p}]\nGUEST_SYNC eax\n"
                           "mov eax, dword ptr [{p} + 24]\nGUEST_SYNC eax\n"
                           "mov word ptr [{p}], 0x27f\nmov dword ptr [{p} + 24], 0x7f80\nfxrstor [{p}]\n"
                           "fxsave [{p} + 0x200]\nmovzx eax, word ptr [{p} + 0x200]\nGUEST_SYNC eax\n"
                           "mov eax, dword ptr [{p} + 0x218]\nGUEST_SYNC eax", (0x37F, 0x1F80, 0x27F, 0x7F80)),
    # Equal: ECX:EBX is stored and ZF set; then unequal: the memory value loads EDX:EAX, ZF clear.
    "cmpxchg8b": Case(("cx8",), _store(0, "II", 1, 2) + "\nmov eax, 1\nmov edx, 2\nmov ebx, 0x55\nmov ecx, 0x66\n"
                      "cmpxchg8b qword ptr [{p}]\nsetz al\nmovzx eax, al\nGUEST_SYNC eax\n" + _sync_dwords(0, 2) +
                      "\nxor eax, eax\nxor edx, edx\ncmpxchg8b qword ptr [{p}]\nGUEST_SYNC eax\nGUEST_SYNC edx\n"
                      "setz al\nmovzx eax, al\nGUEST_SYNC eax", (1, 0x55, 0x66, 0x55, 0x66, 0)),
    "bswap": Case((), _store(0, "I", 0x11223344) + "\nmov eax, dword ptr [{p}]\nbswap eax\nGUEST_SYNC eax",
                  (0x44332211,)),
    # LZCNT counts leading zeros (0x00F00000 -> 8; 0 -> 32 with CF set), where BSR would give the
    # index of the highest set bit (SDM Vol. 2A LZCNT; the F3 prefix makes 0F BD LZCNT, not BSR).
    "lzcnt": Case(("abm",), _store(0, "II", 0x00F00000, 0) + "\nlzcnt eax, dword ptr [{p}]\nGUEST_SYNC eax\n"
                  "lzcnt eax, dword ptr [{p} + 4]\nsetc bl\nGUEST_SYNC eax\nmovzx eax, bl\nGUEST_SYNC eax", (8, 32, 1)),
}


@pytest.mark.modes(*MODES)
@pytest.mark.parametrize("case", list(CASES))
def test_instruction_on_ram_operands_gives_the_sdm_result(kvm, guest, mode, case):
    """Each case runs its instructions on operands in RAM and hands the results to the host, which
    compares them with values computed here from the SDM's definition of each instruction."""
    spec = CASES[case]
    for feature in spec.features:
        if not kvm.has_feature(feature):
            pytest.skip(f"needs {FEATURES[feature]}, which KVM_GET_SUPPORTED_CPUID does not report")
    p = "rdi" if get_mode(mode).code_bits == 64 else "edi"
    g = guest(mode, f"mov {p}, {L.DATA:#x}\n" + spec.body.format(p=p) + "\nGUEST_DONE")
    g.set_sregs(with_sse_enabled(g.vcpu.get_sregs()))
    got = g.run_to_done()
    assert got == list(spec.expected), \
        f"{case} in {mode}: guest results {[hex(v) for v in got]}, SDM gives {[hex(v) for v in spec.expected]}"


@pytest.mark.modes(paging=True, code_bits=32, cpl=0)
def test_locked_cmpxchg8b_on_a_page_table_page(kvm, guest, mode):
    """LOCK CMPXCHG8B from 32-bit code on the last quadword of the page that holds the top-level
    page table (CR3): with EDX:EAX equal to the quadword it stores ECX:EBX and sets ZF (SDM Vol. 2A
    CMPXCHG8B). A host that shadows the guest's page tables write-protects that page, so KVM runs
    the instruction in its emulator (kvm-unit-tests cmpxchg8b). The host reads the quadword from
    guest memory itself. The entry written, the top-level table's last, maps addresses the guest
    never uses."""
    if not kvm.has_feature("cx8"):
        pytest.skip(f"needs {FEATURES['cx8']}, which KVM_GET_SUPPORTED_CPUID does not report")
    g = guest(mode, """
        mov edi, cr3
        and edi, 0xfffff000
        add edi, 4088
        mov dword ptr [edi], 1
        mov dword ptr [edi + 4], 2
        mov eax, 1
        mov edx, 2
        mov ebx, 3
        mov ecx, 4
        lock cmpxchg8b qword ptr [edi]
        setz al
        movzx eax, al
        GUEST_SYNC eax
        GUEST_SYNC edi
        GUEST_DONE""")
    zf, address = g.run_to_done()
    cr3_page = g.vcpu.get_sregs().cr3 & ~0xFFF
    assert address == cr3_page + 4088, f"the guest's operand {address:#x} is not CR3's page {cr3_page:#x} + 4088"
    stored = g.vm.read_u64(address)
    assert (zf, stored) == (1, 0x0000000400000003), \
        f"LOCK CMPXCHG8B on the page-table page at {address:#x} in {mode}: ZF {zf}, quadword {stored:#x}; expected " \
        "ZF 1 and ECX:EBX = 0x400000003 stored"
