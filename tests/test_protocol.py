"""Guest source composition (includes, macros) and host-side decoding of protocol sites."""

import re

import pytest

from kvmtest.abi.structs import kvm_regs, kvm_sregs
from kvmtest.asm import Section, assemble_sections
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
    c.check({**code.equs, **code.labels})
    return c, code


def test_sync_is_a_nop_and_an_out_to_its_port():
    c, code = _assemble("GUEST_SYNC rax")
    assert code.code == bytes([0x90, 0xE6, P.PORT_SYNC])
    (label, site), = c.sites.items()
    assert code.labels[label] == 0x8001 and site.kind == "sync"
    assert site.operands == (P.Value("rax", ((1, "rax"),), None, 64),)
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
    vector, error_code = site.operands
    assert site.kind == "check_exception" and vector == 13 and error_code.text == "0" and error_code.width == 32
    assert code.equs[error_code.constant] == 0
    assert b"\xf4" in code.code  # the instruction under test is there


def test_macro_operand_count_is_checked():
    with pytest.raises(AssemblyError, match="g.S:1: `GUEST_ASSERT_EQ rax`: takes 2 operand"):
        _assemble("GUEST_ASSERT_EQ rax")


def test_unknown_macro():
    with pytest.raises(AssemblyError, match="unknown macro GUEST_FROB"):
        _assemble("GUEST_FROB 1")


def test_print_needs_a_string():
    with pytest.raises(AssemblyError, match="one string literal"):
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
    assert any("0x65, 0x48, 0xc7, 0x04, 0x25" in st.text for st in statements)


def test_64bit_arming_touches_no_register_or_stack():
    _, code = _assemble("GUEST_ASSERT_RAISES UD, ud2")
    # 65 48 c7 04 25 <EXC_RESUME> <resume>: MOV QWORD GS:[abs32], imm32 (the vCPU's own record)
    assert code.code[:9] == bytes.fromhex("6548c70425") + L.EXC_RESUME.to_bytes(4, "little")


def _regs(**values):
    r = kvm_regs()
    for k, v in values.items():
        setattr(r, k, v)
    return r


def _value(source: str, regs=None, sregs=None):
    """Assemble `source` whose last line is a GUEST_SYNC or GUEST_ASSERT_EQ; the host's values
    of its operands, as the run loop computes them."""
    c, code = _assemble(source)
    site = list(c.sites.values())[-1]
    symbols = {**code.equs, **code.labels}
    return [v.evaluate(regs or kvm_regs(), sregs, symbols) for v in site.operands]


@pytest.mark.parametrize("operand,expected", [
    ("rax", 0x1122334455667788), ("eax", 0x55667788), ("ax", 0x7788), ("al", 0x88), ("ah", 0x77),
    ("r9d", 0x9), ("r9b", 0x9), ("0x10", 16), ("-1", (1 << 64) - 1),
    ("EXC_INFO", L.EXC_INFO), ("EXC_INFO + 8", L.EXC_INFO + 8),
    ("rax - rax", 0), ("eax + 1", 0x55667789), ("-(2) * 3", (1 << 64) - 6), ("rip", 0x8000), ("eflags", 2),
])
def test_operand_evaluation(operand, expected):
    regs = _regs(rax=0x1122334455667788, r9=0xAAAAAAAA00000009, rip=0x8000, rflags=2)
    assert _value(f"GUEST_SYNC {operand}", regs) == [expected]


def test_segment_and_control_operands():
    s = kvm_sregs()
    s.cr0, s.cs.selector, s.efer = 0x80000011, 0x08, 0x500
    assert _value("GUEST_SYNC cr0", sregs=s) == [0x80000011]
    assert _value("GUEST_SYNC cs", sregs=s) == [0x08]
    assert _value("GUEST_SYNC efer", sregs=s) == [0x500]


@pytest.mark.parametrize("reg,value,constant", [
    ("eax", 0xFFFFFFFF, "-1"), ("al", 0xFF, "-1"), ("ax", 0xFFFF, "-1"), ("rax", (1 << 64) - 1, "-1"),
    ("al", 0x80, "-128"), ("eax", 0x80000000, "-0x80000000"), ("al", 0xFF, "0xff"),
])
def test_assert_eq_compares_at_the_register_width(reg, value, constant):
    """`GUEST_ASSERT_EQ eax, -1` holds for EAX = 0xffffffff: both sides modulo 2**32."""
    regs = _regs(rax=value if reg in ("eax", "ax", "al", "rax") else 0)
    a, b = _value(f"GUEST_ASSERT_EQ {reg}, {constant}", regs)
    assert a == b
    a, b = _value(f"GUEST_ASSERT_EQ {reg}, {constant}", _regs(rax=value - 1))
    assert a != b


def test_assert_eq_reads_the_guests_equ_and_labels():
    regs = _regs(rax=7, rbx=0x8000)
    assert _value(".equ y, 7\nhere:\nGUEST_ASSERT_EQ eax, y", regs) == [7, 7]
    assert _value("here:\nGUEST_ASSERT_EQ rbx, here", regs) == [0x8000, 0x8000]
    assert _value("GUEST_ASSERT_EQ eax, later - 1\n.equ later, 8", regs) == [7, 7]


def test_guest_equ_reaches_the_host_through_the_builder_symbols():
    """kvmtest.guest.builder gives the host the assembled .equ values (the guest's and the
    macros' __kt_val_*), not only labels: `.equ y, 7` then `GUEST_ASSERT_EQ eax, y` worked
    nowhere but here before (the host said "cannot evaluate 'y'")."""
    from kvmtest.asm import assemble_sections as assemble
    from kvmtest.guest import builder
    from kvmtest.guest.modes import get_mode

    m = get_mode("long64")
    c = Composer(m.code_bits)
    statements = c.expand(".equ y, 7\nGUEST_ASSERT_EQ eax, y\nGUEST_DONE", "g.S")
    code, handlers = assemble([Section("code", L.CODE, 64, tuple(statements)), builder._handler_section(m)],
                              {**builder._symbols(), "KT_CR3": 0})
    assert code.equs["y"] == 7
    site = next(s for s in c.sites.values() if s.kind == "assert_eq")
    symbols = {**builder._symbols(), **code.equs, **handlers.equs, **code.labels}
    assert [v.evaluate(_regs(rax=7), None, symbols) for v in site.operands] == [7, 7]


def test_print_and_fail_keep_their_text():
    c, _ = _assemble('GUEST_PRINT "a, b; c # d"\nGUEST_FAIL "say \\"hi\\"\\n"')
    assert [s.operands[0] for s in c.sites.values()] == ["a, b; c # d", 'say "hi"\n']


@pytest.mark.parametrize("spec,vector", [("GP", 13), ("#PF", 14), ("ud", 6), ("3", 3), ("0x80", 128)])
def test_vector_names(spec, vector):
    assert P.vector_number(spec) == vector


# Macro lines the host could not act on, or would act on wrongly: refused when the guest is
# assembled, naming the line. Before, each assembled and failed only at run time as a guest
# failure (which a known-issue xfail would hide), or passed (GUEST_ASSERT_RAISES UD, GUEST_DONE).
MACRO_MALFORMED = {
    "operand the host cannot evaluate": [
        "GUEST_ASSERT_EQ eax, undefined_x", "GUEST_ASSERT_EQ xmm0, 1", "GUEST_ASSERT_EQ dr0, 1", "GUEST_SYNC st0",
        "GUEST_ASSERT_EQ eax, [ebx]", "GUEST_ASSERT_EQ eax * 2, 1", "GUEST_ASSERT_EQ eax & 1, 1", "GUEST_SYNC",
        "GUEST_SYNC eax, ebx", "GUEST_ASSERT_EQ eax, 1,", "GUEST_ASSERT_EQ eax 1", "GUEST_SYNC 1 2",
        "GUEST_SYNC \u00e9", "GUEST_ASSERT_EQ eax, __kt_site_t1",
    ],
    "value outside the register's width": [
        "GUEST_ASSERT_EQ al, 300", "GUEST_ASSERT_EQ al, -129", "GUEST_ASSERT_EQ ax, 0x10001",
        "GUEST_ASSERT_EQ eax, 0x100000000", "GUEST_ASSERT_EQ eax, -0x80000001", "GUEST_ASSERT_EQ 300, al",
        "GUEST_ASSERT_EQ al, ebx", "GUEST_ASSERT_EQ eax + ax, 1", "GUEST_SYNC al + 256",
        "GUEST_ASSERT_EQ rax, 0x10000000000000000",
    ],
    "GUEST_ASSERT_RAISES without exactly one instruction": [
        "GUEST_ASSERT_RAISES GP(0),", "GUEST_ASSERT_RAISES GP(0)", "GUEST_ASSERT_RAISES UD, GUEST_DONE",
        "GUEST_ASSERT_RAISES UD, GUEST_ASSERT_EQ eax, 1", 'GUEST_ASSERT_RAISES UD, GUEST_FAIL "x"',
        "GUEST_ASSERT_RAISES UD, GUEST_ASSERT_RAISES UD, ud2", "GUEST_ASSERT_RAISES UD, FARJMP 8, 0",
        "GUEST_ASSERT_RAISES UD, x:", "GUEST_ASSERT_RAISES UD, .equ z, 1", "GUEST_ASSERT_RAISES UD, .balign 4",
        "GUEST_ASSERT_RAISES UD, mov eax,", "GUEST_ASSERT_RAISES UD, GUEST_AT_CPL 3",
    ],
    "vector or error code that cannot be": [
        "GUEST_ASSERT_RAISES UD(1), ud2", "GUEST_ASSERT_RAISES BP(0), int3", "GUEST_ASSERT_RAISES 0x80(0), int 0x80",
        "GUEST_ASSERT_RAISES DB(0), ud2", "GUEST_ASSERT_RAISES GP(-1), ud2", "GUEST_ASSERT_RAISES GP(0x100000000), ud2",
        "GUEST_ASSERT_RAISES GP(ax), ud2", "GUEST_ASSERT_RAISES 256, ud2", "GUEST_ASSERT_RAISES XX, ud2",
        "GUEST_ASSERT_RAISES GP(undefined_y), ud2", "GUEST_ASSERT_RAISES 1_3, ud2", "GUEST_ASSERT_RAISES GP(, ud2",
    ],
    "GUEST_PRINT / GUEST_FAIL without exactly one string": [
        'GUEST_FAIL "c" "d"', 'GUEST_PRINT "a" "b"', "GUEST_PRINT rax", "GUEST_FAIL", 'GUEST_PRINT "a", "b"',
        'GUEST_PRINT "a', "GUEST_FAIL c", 'GUEST_PRINT "bad \\q escape"',
    ],
}
MACRO_CASES = [line for lines in MACRO_MALFORMED.values() for line in lines]


def _build(source: str, mode: str = "long64"):
    """Compose and assemble as kvmtest.guest.builder does (no KVM), with its post-assembly check."""
    from kvmtest.guest import builder
    from kvmtest.guest.modes import get_mode

    m = get_mode(mode)
    c = Composer(m.code_bits, user=m.user)
    statements = c.expand(source, "g.S")
    symbols = {**builder._symbols(), "KT_CR3": 0x1000}
    code, handlers = assemble_sections([Section("code", L.CODE, m.code_bits, tuple(statements)),
                                        builder._handler_section(m)], symbols)
    c.check({**symbols, **code.equs, **handlers.equs, **code.labels, **handlers.labels})
    return c, code


@pytest.mark.parametrize("mode", ["real", "pm32", "long64", "long64-cpl3"])
@pytest.mark.parametrize("line", MACRO_CASES)
def test_a_malformed_macro_is_refused_at_assembly_naming_its_line(line, mode):
    with pytest.raises(AssemblyError) as info:
        _build(f"mov eax, 1\n{line}\nGUEST_DONE", mode)
    assert str(info.value).startswith(f"g.S:2: `{line}`"), str(info.value)


@pytest.mark.parametrize("line", MACRO_CASES[::3])
def test_a_malformed_macro_in_an_included_file_is_refused_naming_it(line, tmp_path, monkeypatch):
    from kvmtest.guest.compose import guests_dir

    (tmp_path / "handlers64.S").write_text((guests_dir() / "handlers64.S").read_text())
    (tmp_path / "inc.S").write_text(f"nop\n{line}\n", encoding="utf-8")
    monkeypatch.setenv("KVMTEST_GUESTS_DIR", str(tmp_path))
    with pytest.raises(AssemblyError) as info:
        _build('nop\n.include "inc.S"\nGUEST_DONE')
    assert str(info.value).startswith(f"inc.S:2: `{line}`"), str(info.value)


def test_a_constant_through_a_symbol_is_range_checked_after_assembly():
    with pytest.raises(AssemblyError, match=r"^g.S:2: `GUEST_ASSERT_EQ al, BIG`: BIG = 0x1ff does not fit"):
        _build(".equ BIG, 0x1ff\nGUEST_ASSERT_EQ al, BIG\nGUEST_DONE")
    with pytest.raises(AssemblyError, match=r"^g.S:2: `GUEST_ASSERT_RAISES GP\(NEG\), ud2`: NEG = -0x1"):
        _build(".equ NEG, -1\nGUEST_ASSERT_RAISES GP(NEG), ud2\nGUEST_DONE")


@pytest.mark.parametrize("line", [
    "GUEST_ASSERT_RAISES UD, ud2", "GUEST_ASSERT_RAISES GP(0), hlt", "GUEST_ASSERT_RAISES PF(2), fault: ud2",
    "GUEST_ASSERT_RAISES DB, icebp: .byte 0xf1", "GUEST_ASSERT_RAISES 13(0x1234), GUEST_SYNC 1",
    "GUEST_ASSERT_RAISES 0x80, int 0x80", "GUEST_ASSERT_RAISES DF(0), ud2", "GUEST_ASSERT_RAISES CP(3), ud2",
    "GUEST_ASSERT_EQ eax, -1", "GUEST_ASSERT_EQ al, -128", "GUEST_ASSERT_EQ al, 0xff", "GUEST_ASSERT_EQ cs, 8",
    "GUEST_ASSERT_EQ eax, ebx", "GUEST_ASSERT_EQ 1, 1", "GUEST_SYNC rax - rbx + 4", "GUEST_SYNC -(1)",
    'GUEST_PRINT "caf\u00e9 # ; ,"', 'GUEST_FAIL "x"',
])
def test_valid_macros_are_accepted(line):
    _build(f"mov eax, 1\n{line}\nGUEST_DONE")


def test_include_stays_inside_guests(tmp_path, monkeypatch):
    (tmp_path / "guests").mkdir()
    (tmp_path / "outside.S").write_text("nop\n")
    monkeypatch.setenv("KVMTEST_GUESTS_DIR", str(tmp_path / "guests"))
    for path in ("../outside.S", str(tmp_path / "outside.S"), "../../../../etc/hostname"):
        with pytest.raises(AssemblyError, match=rf'^g.S:2: .include "{re.escape(path)}": outside '):
            _assemble(f'nop\n.include "{path}"')


def test_harness_names_are_refused():
    with pytest.raises(AssemblyError, match=r"^g.S:1: `__kt_site_t1: nop`: __kt_site_t1: names starting with __kt_"):
        _build("__kt_site_t1: nop\nGUEST_DONE")
    with pytest.raises(AssemblyError, match=r"^g.S:2: `.equ KT_CR3, 5`: KT_CR3 is a symbol the harness defines"):
        _build("nop\n.equ KT_CR3, 5\nGUEST_DONE")
    with pytest.raises(AssemblyError, match=r"^g.S:1: `CODE: nop`: CODE is a symbol the harness defines"):
        _build("CODE: nop\nGUEST_DONE")
    with pytest.raises(AssemblyError, match=r"^g.S:1: `kt_exc_common: nop`: kt_exc_common is also defined in "
                                            r"section handlers \(handlers64.S:\d+\)"):
        _build("kt_exc_common: nop\nGUEST_DONE")
