"""Malformed guest lines: every one is refused, in 16-, 32- and 64-bit code, first, in the
middle and last in a guest, with an AssemblyError naming the file and line.

Keystone 0.9.2 refuses most of these only when they are the last line; elsewhere it dropped
the line (`mov eax, 1,`), changed its meaning (`mov eax, [ebx` loaded from 0), emitted
nothing (`dword [ebx]`, `.word 0x12345`) or looped forever (CRASH_OR_HANG).
"""

import json
import os
import subprocess
import sys

import pytest

from kvmtest.asm import Section, assemble, assemble_sections
from kvmtest.errors import AssemblyError
from kvmtest.guest import builder
from kvmtest.guest import layout as L
from kvmtest.guest.compose import Composer
from kvmtest.guest.modes import get_mode

MALFORMED = {
    "trailing comma or operator": [
        "mov eax, 1,", "mov eax,", "hlt,", "mov eax, 1,,", "add eax, 1 +", "mov eax, 1 <<", "mov eax, 1 *",
        "mov eax, ~", "movx rax, rbx,",
    ],
    "empty or leading operand": ["mov , eax", "mov eax,, 1", "mov eax, << 1", "mov eax, *1"],
    "unbalanced brackets or parentheses": [
        "mov eax, [ebx+", "mov eax, [ebx", "mov eax, ebx]", "mov eax, [[ebx]]", "mov eax, [ebx]]", "mov eax, (1",
        "mov eax, 1)", "mov eax, dword ptr [", "call [eax", "mov eax, es:[ebx", "mov eax, [es:ebx",
    ],
    "stray token or junk after an instruction": [
        "mov eax 1", "mov eax, 1 2", "ret 1 2", "int 3 4", "push eax ebx", "jmp eax ebx", "mov eax, [ebx ecx]",
        "mov eax, [ebx]x", "mov eax, [ebx] + 1", "mov eax, 1 [ebx]", "ret junk", "nop nop", "mov eax, 1 ; junk",
    ],
    "operand grammar": [
        "mov eax, dword [ebx]", "mov eax, ptr [ebx]", "mov eax, dword ptr", "inc dword ptr", "mov eax, [ebx+*4]",
        "mov eax, [ebx*]", "mov eax, [ebx+ecx*3]", "mov eax, [ebx+ecx*4*2]", "mov eax, [ebx+ecx+edx]",
        "mov eax, [ebx-ecx]", "mov eax, es:", "mov eax, xs:[ebx]", "mov eax, st(8)", "mov eax, ebx + 1",
    ],
    "unknown mnemonic, register or symbol": ["movx eax, ebx", "mov eax, ebz", "mov eax, $$", "lea eax, ebx"],
    "malformed number or string": ["mov eax, 0x", "mov eax, 0xg", "mov eax, 1f2", "mov eax, 08", 'mov eax, "a',
                                   "mov eax, 'a", "mov eax, 'ab'"],
    "value that does not fit (Keystone truncated or dropped it)": [
        "mov al, 1000", "mov byte ptr [eax], 256", "mov al, -129", ".word 0x12345", ".byte 256",
    ],
    "malformed directive": [
        ".byte 1,", ".byte", ".long 1 2", ".byte 1 +", ".word (1", ".ascii abc", ".balign", ".balign 16,",
        ".balign 3", ".equ x", ".code65", ".bogus 1", ".align 16",
    ],
    "prefix alone": ["lock", "rep"],
    # Keystone wrapped these silently (`.quad -0x8000000000000001` became ff..ff7f, `.fill 1, 1,
    # 0x1ff` became ff): every data value and fill byte must fit its width (kvmtest.asm.expressions.fits)
    "data value or fill outside its width": [
        ".quad -0x8000000000000001", ".quad 0xffffffffffffffff + 1", ".quad -0xffffffffffffffff", ".byte -129",
        ".word -32769", ".long 0x100000000", ".long -0x80000001", ".fill 1, 1, 0x1ff", ".fill 1, 2, -0x8001",
        ".fill 1, 4, -0x80000001", ".skip 2, 0x1ff", ".balign 4, 0x1ff", ".org 0x8004, 0x100",
        "mov eax, -0xffffffffffffffff", "mov rax, 1 << 63 << 1", "mov eax, 0x8000000000000000 * 2",
    ],
    # each must fit the guest code area: bigger ones ran for minutes (see CRASH_OR_HANG too)
    "size, count or .org target beyond the guest code area": [
        ".skip 0x100000", ".skip -1", ".space 0x8001", ".fill 0x8001", ".fill 0x1001, 8",
        ".fill 1, 0, 1", ".balign 0x10000", ".balign 0", ".balign -8", ".org 0x7fff", ".org 0x10001",
        ".org -1", ".skip undefined_size",
    ],
    # Keystone's binding raised UnicodeEncodeError; \s and \w took some for spaces and letters, and
    # str.splitlines() ended the line at \x1c (a line that vanished and shifted the next numbers)
    "non-ASCII or control character outside a string literal": [
        "mov\u00a0eax, 1", "mov eax,\u3000ebx", "mov al, '\u00e9'", "\u00e9t: nop", "mov eax, \u00e9bx",
        ".byte 1, \u0661", "mov eax, \u2212 1", "nop \u200b", "mov eax, 1\x1c",
    ],
    # these ran out of Python's recursion limit (RecursionError)
    "expression nested too deep": [
        "mov eax, " + "(" * 150 + "1" + ")" * 150, "mov eax, " + "1+" * 750 + "1",
        ".byte " + "-(" * 40 + "1" + ")" * 40,
        ".long " + "1*" * 65 + "1", "mov eax, [ebx + " + "1+" * 100 + "1]",
    ],
    # Keystone said "Cannot find a symbol" or nothing useful, for no line; names kvmtest makes
    "reserved or self-referring name": [
        ".equ x, x", ".equ x, x + 1", ".set y, 2 * y", ".Lkt_st_0: nop", "jmp .Lhere_x", ".Lnum_a_1_1: nop",
        ".equ .Lcall_x, 1",
    ],
}

# Keystone 0.9.2 never returns on these, or kills the process (`.balign 2**32` divides by
# zero: SIGFPE): they are checked in a child process with a timeout, so that a regression
# fails instead of hanging or crashing the run.
CRASH_OR_HANG = [", mov eax, 1", ",", ", nop", ".byte 1,,2", ".byte ,1", ".quad [1]", '.ascii "abc', ".equ , 1",
                 ".balign 0x100000000", ".balign 1 << 40", ".balign 0x80000000", ".quad 0x10000000000000000",
                 ".fill 0x7fffffff, 8, 0", ".skip 0x7fffffff", ".fill 1, 8, 0x1122334455667788",
                 ".byte 0x10000000000000000", ".balign 4 << (1 << 5)", ".zero -4", ".fill 1, 8, 0x100000000",
                 ".fill 2, 9, 1", ".fill -1, 1"]

CASES = [(kind, line) for kind, lines in MALFORMED.items() for line in lines]
BITS = (16, 32, 64)
POSITIONS = {"first": 1, "middle": 2, "last": 3}


@pytest.fixture(autouse=True)
def no_disk_cache(monkeypatch):
    monkeypatch.setenv("KVMTEST_CACHE_DIR", "")


def _guest(line: str, position: str) -> str:
    filler = ["nop", "hlt"]
    filler.insert(POSITIONS[position] - 1, line)
    return "\n".join(filler)


def test_the_corpus_is_broad():
    assert len({line for _, line in CASES} | set(CRASH_OR_HANG)) >= 150


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("kind,line", CASES, ids=[line for _, line in CASES])
def test_malformed_line_is_refused_naming_file_and_line(kind, line, bits, position):
    with pytest.raises(AssemblyError) as info:
        assemble(_guest(line, position), bits, 0x8000, name="g.S")
    message = str(info.value)
    line_no = POSITIONS[position]
    shown = line.split(";")[-1].strip(" ")  # `a ; b` is two statements; the second is refused
    assert message.startswith(f"g.S:{line_no}: `{shown}`: "), f"{kind}: {message}"


_CHILD = """
import json, sys
from kvmtest.asm import assemble
from kvmtest.errors import AssemblyError
out = []
for line in json.loads(sys.argv[1]):
    for bits in (16, 32, 64):
        for n, src in ((1, line + "\\nnop\\nhlt"), (2, "nop\\n" + line + "\\nhlt"), (3, "nop\\nhlt\\n" + line)):
            try:
                assemble(src, bits, 0x8000, name="g.S")
                out.append([line, bits, n, None])
            except AssemblyError as e:
                out.append([line, bits, n, str(e)])
print(json.dumps(out))
"""


def test_lines_that_crash_or_hang_keystone_are_refused_before_it_sees_them():
    env = {**os.environ, "KVMTEST_CACHE_DIR": ""}
    done = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(CRASH_OR_HANG)], capture_output=True,
                          text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert len(results) == len(CRASH_OR_HANG) * 9
    for line, bits, n, message in results:
        assert message and message.startswith(f"g.S:{n}: `{line}`: "), (line, bits, n, message)


def _build(source: str, mode: str = "long64"):
    """Compose and assemble a guest the way kvmtest.guest.builder does, without KVM."""
    m = get_mode(mode)
    composer = Composer(m.code_bits, user=m.user)
    statements = composer.expand(source, "g.S")
    sections = [Section("code", L.CODE, m.code_bits, tuple(statements)), builder._handler_section(m)]
    return composer, assemble_sections(sections, {**builder._symbols(), "KT_CR3": 0x1000})


@pytest.mark.parametrize("mode", ["real", "pm32", "long64"])
def test_the_three_inputs_of_issue_12_are_refused(mode):
    with pytest.raises(AssemblyError, match=r"^g.S:2: `movx rax, rbx,`: operand 3 is empty"):
        _build("mov eax, 1\nmovx rax, rbx,\nGUEST_DONE", mode)
    with pytest.raises(AssemblyError, match=r"^g.S:1: `mov eax, \[ebx\+`: operator '\+' inside \[ \]"):
        _build("mov eax, [ebx+\nGUEST_DONE", mode)
    with pytest.raises(AssemblyError, match=r"^g.S:1: `mov eax, \[ebx`: expected '\]'"):
        _build("mov eax, [ebx\nGUEST_DONE", mode)


@pytest.mark.parametrize("bad", ["GUEST_ASSERT_EQ eax, 1,", "GUEST_ASSERT_EQ eax, [ebx", "GUEST_SYNC eax,",
                                 "GUEST_ASSERT_EQ eax 1"])
def test_a_malformed_guest_assert_is_refused(bad):
    with pytest.raises(AssemblyError, match=r"^g.S:2: "):
        _build(f"mov eax, 1\n{bad}\nGUEST_DONE")


def _keystone_that(monkeypatch, change):
    """Make the wrapper's Keystone see `change(text)`: simulate Keystone dropping or
    mis-encoding a statement, so each check is shown to work without the one before it."""
    from kvmtest.asm import cache, section
    from kvmtest.asm.engine import KEYSTONE

    real = KEYSTONE.asm
    monkeypatch.setattr(KEYSTONE, "asm", lambda text, bits, base: real(change(text), bits, base))
    cache.clear()
    section.assemble_checked.cache_clear()


@pytest.mark.parametrize("mode", ["real", "pm32", "long64"])
def test_a_guest_assert_that_keystone_drops_is_refused(monkeypatch, mode):
    """Were the OUT of a GUEST_ASSERT_EQ lost, the host would never see the assertion and
    the guest would pass; the per-statement addresses catch it."""
    _keystone_that(monkeypatch, lambda text: text.replace("\nout 0xe2, al", ""))
    with pytest.raises(AssemblyError, match=r"^g.S:2: `GUEST_ASSERT_EQ eax, 2` \(expanded to `__kt_site_t\d+: "
                                            r"out 0xe2, al`\): Keystone produced no bytes"):
        _build("mov eax, 1\nGUEST_ASSERT_EQ eax, 2\nGUEST_DONE", mode)


def test_a_statement_keystone_encodes_differently_is_refused(monkeypatch):
    _keystone_that(monkeypatch, lambda text: text.replace("mov eax, [ebx + 4]", "mov eax, [ebx + 8]"))
    with pytest.raises(AssemblyError, match=r"^g.S:2: `mov eax, \[ebx \+ 4\]`: Keystone produced 8b4308 .*"
                                            r"displacement 0x8, not 0x4"):
        assemble("nop\nmov eax, [ebx + 4]\nhlt", 32, 0x8000, name="g.S")


def test_a_statement_keystone_merges_with_the_next_is_refused(monkeypatch):
    _keystone_that(monkeypatch, lambda text: text.replace("nop\n", "nop\nnop\n", 1))
    with pytest.raises(AssemblyError, match=r"^g.S:1: `nop`: Keystone produced 9090 .*2 instructions"):
        assemble("nop\nhlt", 64, 0x8000, name="g.S")


def test_a_statement_that_needs_what_came_before_is_refused_naming_its_line():
    """`.org` backwards, or a duplicate name: Keystone and the old checks named no line."""
    with pytest.raises(AssemblyError, match=r"^g.S:2: `.org 0x8000`: .*cannot move backwards"):
        assemble("nop\n.org 0x8000\nhlt", 32, 0x8000, name="g.S")
    with pytest.raises(AssemblyError, match=r"^g.S:3: `.equ x, 2`: x is already defined at g.S:1"):
        assemble(".equ x, 1\nnop\n.equ x, 2", 32, 0x8000, name="g.S")
    with pytest.raises(AssemblyError, match=r"^g.S:2: `x: hlt`: x is already defined at g.S:1"):
        assemble("x: nop\nx: hlt", 32, 0x8000, name="g.S")
    with pytest.raises(AssemblyError, match=r"^g.S:1: `.equ a, b`: a is defined in terms of itself"):
        assemble(".equ a, b\n.equ b, a + 1\nnop", 32, 0x8000, name="g.S")


def test_a_symbol_the_harness_passes_cannot_be_redefined():
    with pytest.raises(AssemblyError, match=r"^g.S:2: `.equ KT_CR3, 5`: KT_CR3 is a symbol the harness defines"):
        _build("nop\n.equ KT_CR3, 5\nGUEST_DONE")
    with pytest.raises(AssemblyError, match=r"^g.S:1: `DATA: nop`: DATA is a symbol the harness defines"):
        _build("DATA: nop\nGUEST_DONE")


def test_iret_in_64bit_code_is_refused_as_ambiguous():
    """GAS assembles a bare IRET in 64-bit code to IRETD and warns; Keystone to 66 CF (IRET
    with a 16-bit operand size). Neither is what a 64-bit guest means by it."""
    with pytest.raises(AssemblyError, match=r"^g.S:2: `iret`: .*ambiguous.*iretq"):
        assemble("nop\niret", 64, 0x8000, name="g.S")


def test_rip_relative_to_a_constant_symbol_is_refused():
    """`[rip + DATA]` is DATA as a displacement from the next instruction for GAS and Keystone,
    while the writer meant the address DATA: refused, as is another section's label."""
    with pytest.raises(AssemblyError, match=r"^g.S:1: `lea rax, \[rip \+ DATA\]`: .*needs a label of this section"):
        _build("lea rax, [rip + DATA]\nGUEST_DONE")
    with pytest.raises(AssemblyError, match=r"^g.S:1: `lea rax, \[rip \+ kt_exc_common\]`: .*needs a label"):
        _build("lea rax, [rip + kt_exc_common]\nGUEST_DONE")
