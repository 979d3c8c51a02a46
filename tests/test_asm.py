"""The Keystone wrapper: known encodings, label addresses, sections, the traps it closes, errors."""

import re

import pytest

from kvmtest.asm import Section, assemble, assemble_sections
from kvmtest.errors import AssemblyError


@pytest.fixture(autouse=True)
def no_disk_cache(monkeypatch):
    monkeypatch.setenv("KVMTEST_CACHE_DIR", "")


@pytest.mark.parametrize("bits,src,code", [
    (16, "mov ax, 1", "b80100"),
    (16, "mov eax, 1", "66b801000000"),
    (32, "mov eax, 1", "b801000000"),
    (64, "mov rax, 1", "48c7c001000000"),
    (64, "out 0x10, al", "e610"),
    (64, "mov ebx, dword ptr [rax + 0x10]", "8b5810"),
    (32, "mov ebx, dword ptr [0x1000]", "8b1d00100000"),
    (16, "ljmp 0x8:0x1000", "ea00100800"),
])
def test_known_encodings(bits, src, code):
    assert assemble(src, bits, 0x8000).code.hex() == code


def test_labels_are_absolute_addresses():
    a = assemble("nop\nhere: nop\nthere: ret", 64, 0x8000)
    assert a.labels == {"here": 0x8001, "there": 0x8002}
    assert a.code == bytes([0x90, 0x90, 0xC3])


def test_jmp_dollar_becomes_a_self_loop():
    assert assemble("jmp $", 64, 0x8000).code == bytes([0xEB, 0xFE])


def test_numeric_local_labels_resolve_backward_and_forward():
    a = assemble("1: dec ecx\njnz 1b\njmp 1f\nnop\n1: ret", 32, 0)
    # dec ecx (49) / jnz -3 (75 fd) / jmp +1 (eb 01) / nop / ret
    assert a.code.hex() == "4975fdeb0190c3"


def test_symbols_with_offsets_are_exact():
    # Keystone's resolver callback drops "+ 2"; kvmtest passes symbols as .equ instead.
    assert assemble("mov eax, FOO + 2", 32, 0, {"FOO": 5}).code.hex() == "b807000000"


def test_cross_section_references():
    code, data = assemble_sections([
        Section.from_text("a", 0x1000, 64, "entry: call helper\nhlt"),
        Section.from_text("b", 0x2000, 32, "helper: mov eax, entry\nret"),
    ])
    assert code.code.hex() == "e8fb0f0000f4"  # call rel32 to 0x2000
    assert data.code.hex() == "b800100000c3"


def test_overlapping_sections_are_refused():
    with pytest.raises(AssemblyError, match="overlaps"):
        assemble_sections([Section.from_text("a", 0x1000, 64, "nop\nnop"), Section.from_text("b", 0x1001, 64, "nop")])


def test_64bit_absolute_memory_operand_is_refused():
    with pytest.raises(AssemblyError, match=r"g.S:2: `mov eax, dword ptr \[0x1000\]`: 64-bit absolute"):
        assemble("nop\nmov eax, dword ptr [0x1000]", 64, 0x8000, name="g.S")


def test_rip_relative_form_is_allowed_and_exact():
    a = assemble("mov eax, dword ptr [rip + data]\ndata: .long 7", 64, 0x8000)
    assert a.code.hex() == "8b050000000007000000"


def test_align_is_refused_because_keystone_ignores_it():
    with pytest.raises(AssemblyError, match="use .balign"):
        assemble("nop\n.align 16", 64, 0)


def test_balign_pads():
    assert len(assemble("nop\n.balign 16\nnop", 64, 0).code) == 17


def test_far_immediate_jump_in_32bit_code_is_refused():
    with pytest.raises(AssemblyError, match="FARJMP"):
        assemble("ljmp 0x8:0x1000", 32, 0)


def test_bare_push_immediate_in_16bit_code_is_refused():
    # Keystone would emit 66 6a 00 (a 32-bit push) for `push 0` in 16-bit code.
    with pytest.raises(AssemblyError, match="push word ptr N"):
        assemble("push 0", 16, 0)
    with pytest.raises(AssemblyError, match=".word N"):  # Keystone: 66 68 80 00 00 00
        assemble("push word ptr 128", 16, 0)
    assert assemble("push word ptr 6", 16, 0).code.hex() == "6a06"
    assert assemble("push ax", 16, 0).code.hex() == "50"


def test_bad_mnemonic_names_file_and_line():
    with pytest.raises(AssemblyError, match=r"t.S:3: `bogus eax`: Invalid mnemonic"):
        assemble("nop\nnop\nbogus eax\nnop", 64, 0, name="t.S")


def test_undefined_symbol_names_the_line():
    with pytest.raises(AssemblyError, match=r"t.S:2: `mov eax, nowhere`"):
        assemble("nop\nmov eax, nowhere", 32, 0, name="t.S")


def test_missing_numeric_label():
    with pytest.raises(AssemblyError, match="2b has no matching"):
        assemble("jmp 2b", 64, 0)


def test_duplicate_label():
    with pytest.raises(AssemblyError, match=r"^<guest>:2: `x: nop`: x is already defined at <guest>:1"):
        assemble("x: nop\nx: nop", 64, 0)


def test_bad_bits():
    with pytest.raises(AssemblyError, match="bits must be"):
        assemble("nop", 8, 0)


def test_comments_and_semicolons():
    assert assemble("nop # a comment\nnop; nop // another", 64, 0).code == b"\x90" * 3


def test_code_directive_switches_checks():
    with pytest.raises(AssemblyError, match="64-bit absolute"):
        assemble("nop\n.code64\nmov eax, dword ptr [0x10]", 16, 0)


def test_disk_cache_is_shared_and_atomic(tmp_path, monkeypatch):
    from kvmtest.asm import cache

    monkeypatch.setenv("KVMTEST_CACHE_DIR", str(tmp_path))
    cache.clear()
    first = assemble("mov eax, 12345", 32, 0)
    assert [p.name[:2] for p in tmp_path.iterdir()] == ["k-"]  # one file, the small section inside
    assert not list(tmp_path.glob(".tmp-*"))
    cache.clear()
    assert assemble("mov eax, 12345", 32, 0) == first


def test_unknown_symbol_is_refused_by_name():
    with pytest.raises(AssemblyError, match=r"t.S:1: `mov eax, ebz`: unknown symbol ebz"):
        assemble("mov eax, ebz\nnop", 32, 0, name="t.S")


@pytest.mark.parametrize("bits,src,why", [
    # SDM Vol. 2B SYSEXIT: without REX.W it returns to compatibility mode; Keystone adds REX.W
    (64, "sysexit", "mnemonic sysexitq, not sysexit"),
    # the multi-byte NOP is 0F 1F /0; Keystone emits 0F 18 /4, a reserved-NOP hint encoding
    (32, "nop dword ptr [eax]", "mnemonic reservednop, not nop"),
    # Keystone keeps the low byte of an immediate that does not fit
    (64, "mov al, 0x1ff", "immediate 0x1ff .* does not fit in 8 bits"),
])
def test_what_keystone_encodes_differently_from_the_source_is_refused(bits, src, why):
    with pytest.raises(AssemblyError, match=rf"t.S:2: `{re.escape(src)}`: Keystone produced \w+ .*{why}"):
        assemble(f"nop\n{src}\nnop", bits, 0, name="t.S")


def test_each_section_is_assembled_once_for_the_same_symbols(monkeypatch):
    """The exception handlers every guest of a mode shares cost one Keystone call per process."""
    from kvmtest.asm.engine import KEYSTONE

    calls = []
    real = KEYSTONE.asm
    monkeypatch.setattr(KEYSTONE, "asm", lambda text, bits, base: calls.append(bits) or real(text, bits, base))
    shared = Section.from_text("shared", 0x2000, 32, "shared_entry: ret")
    for n in range(3):
        assemble_sections([Section.from_text("a", 0x1000, 32, f"mov eax, {n}\ncall shared_entry"), shared])
    assert len(calls) == 3 + 1
