"""Guest source composition (includes, macros) and host-side decoding of protocol sites."""

import pytest

from kvmtest.abi.structs import kvm_regs, kvm_sregs
from kvmtest.asm import assemble_sections, Section
from kvmtest.errors import AssemblyError
from kvmtest.guest import layout as L
from kvmtest.guest import protocol as P
from kvmtest.guest.compose import Composer


@pytest.fixture(autouse=True)
def no_disk_cache(monkeypatch):
    monkeypatch.setenv("KVMTEST_CACHE_DIR", "")


def _assemble(text, bits=64, user=False):
    c = Composer(bits, user=user)
    statements = c.expand(text, "g.S")
    (code,) = assemble_sections([Section("code", 0x8000, bits, tuple(statements))],
                                {"EXC_INFO": L.EXC_INFO, "EXC_RESUME": L.EXC_RESUME, "EXC_VECTOR": L.EXC_VECTOR})
    return c, code


def test_sync_is_a_nop_and_an_out_to_its_port():
    c, code = _assemble("GUEST_SYNC rax")
    assert code.code == bytes([0x90, 0xE6, P.PORT_SYNC])
    (label, site), = c.sites.items()
    assert code.labels[label] == 0x8001 and site.kind == "sync" and site.operands == ("rax",)
    assert site.origin == "g.S:1"


def test_user_mode_sites_store_to_the_protocol_page():
    c, code = _assemble("GUEST_DONE", user=True)
    target = (L.PROTOCOL_MMIO + P.PORT_DONE - P.PORT_DONE).to_bytes(4, "little")
    assert code.code[:8] == bytes([0x90, 0x88, 0x04, 0x25]) + target
    assert next(iter(c.sites.values())).length == 7


def test_user_mode_sites_in_32bit_code():
    c, code = _assemble("GUEST_SYNC eax", bits=32, user=True)
    assert code.code[1:3] == bytes([0x88, 0x05]) and next(iter(c.sites.values())).length == 6


def test_assert_raises_arms_the_handler_then_checks():
    c, code = _assemble("GUEST_ASSERT_RAISES GP(0), hlt")
    site = next(iter(c.sites.values()))
    assert site.kind == "check_exception" and site.operands == (13, "0")
    assert b"\xf4" in code.code  # the instruction under test is there


def test_macro_operand_count_is_checked():
    with pytest.raises(AssemblyError, match="g.S:1: `GUEST_ASSERT_EQ rax`: takes 2 operand"):
        _assemble("GUEST_ASSERT_EQ rax")


def test_unknown_macro():
    with pytest.raises(AssemblyError, match="unknown macro GUEST_FROB"):
        _assemble("GUEST_FROB 1")


def test_print_needs_a_string():
    with pytest.raises(AssemblyError, match="quoted string"):
        _assemble("GUEST_PRINT rax")


def test_include_reads_guests_dir_with_origins(tmp_path, monkeypatch):
    (tmp_path / "inc.S").write_text("nop\nbogus\n")
    monkeypatch.setenv("KVMTEST_GUESTS_DIR", str(tmp_path))
    with pytest.raises(AssemblyError, match=r"inc.S:2: `bogus`"):
        _assemble('nop\n.include "inc.S"\nnop')


def test_missing_include():
    with pytest.raises(AssemblyError, match='no such file'):
        _assemble('.include "nope.S"')


def test_farjmp_encodings():
    _, code16 = _assemble("FARJMP 0x18, 0x9000", bits=16)
    assert code16.code == bytes.fromhex("ea00901800")
    _, code32 = _assemble("FARJMP 0x08, 0x9000", bits=32)
    assert code32.code == bytes.fromhex("ea009000000800")
    _, code64 = _assemble("FARJMP 0x18, 0x9000", bits=64)
    assert code64.code == bytes.fromhex("ff2d00000000") + bytes.fromhex("009000001800")


def test_code_directive_changes_macro_bits():
    c = Composer(16)
    statements = c.expand(".code64\nGUEST_ASSERT_RAISES UD, ud2", "g.S")
    assert any("0x48, 0xc7, 0x04, 0x25" in st.text for st in statements)


def test_64bit_arming_touches_no_register_or_stack():
    _, code = _assemble("GUEST_ASSERT_RAISES UD, ud2")
    # 48 c7 04 25 <EXC_RESUME> <resume>: MOV QWORD [abs32], imm32
    assert code.code[:8] == bytes.fromhex("48c70425") + L.EXC_RESUME.to_bytes(4, "little")


def _regs(**values):
    r = kvm_regs()
    for k, v in values.items():
        setattr(r, k, v)
    return r


@pytest.mark.parametrize("operand,expected", [
    ("rax", 0x1122334455667788), ("eax", 0x55667788), ("ax", 0x7788), ("al", 0x88), ("ah", 0x77),
    ("r9d", 0x9), ("0x10", 16), ("-1", -1), ("SYM", 0x500), ("SYM + 8", 0x508), ("rax - rax", 0),
])
def test_operand_evaluation(operand, expected):
    regs = _regs(rax=0x1122334455667788, r9=0xAAAAAAAA00000009)
    assert P.evaluate(operand, regs, kvm_sregs(), {"SYM": 0x500}) == expected


def test_segment_and_control_operands():
    s = kvm_sregs()
    s.cr0, s.cs.selector = 0x80000011, 0x08
    assert P.evaluate("cr0", kvm_regs(), s, {}) == 0x80000011
    assert P.evaluate("cs", kvm_regs(), s, {}) == 0x08


def test_unknown_operand_is_named():
    with pytest.raises(P.OperandError, match="'nosuch'"):
        P.evaluate("nosuch", kvm_regs(), None, {})


@pytest.mark.parametrize("spec,vector", [("GP", 13), ("#PF", 14), ("ud", 6), ("3", 3), ("0x80", 128)])
def test_vector_names(spec, vector):
    assert P.vector_number(spec) == vector
