"""kvmtest's assembler: Intel-syntax guest source to bytes through Keystone, in 16-, 32- and
64-bit code, in several sections that share symbols, with label addresses, bounded caches, and
errors that name the guest source line.

Every guest statement either assembles to what it says or fails as "file:line: `text`: why".
Three checks, each catching what the one before cannot:
1. kvmtest.asm.grammar parses each statement against an Intel-syntax grammar before Keystone
   sees it. Keystone 0.9.2 drops a statement it cannot parse and carries on (`mov eax, 1,`
   vanishes, `mov eax, [ebx` becomes a load from 0, `dword [ebx]` emits nothing), and a few
   malformed lines make it loop forever; those never reach it. Unknown symbols are refused.
2. A label before every statement, read back through the label table, gives each statement's
   own bytes (kvmtest.asm.section): a statement that produced none, or whose bytes landed
   elsewhere, is refused.
3. kvmtest.asm.verify decodes those bytes with iced-x86 and compares mnemonic, prefixes,
   operands, values and operand size with the source; data directives must hold their values.

Keystone's own traps, and where kvmtest's assembler differs from GAS, are listed in
kvmtest.asm.traps; the caches and their settings (KVMTEST_ASM_CACHE_ENTRIES,
KVMTEST_ASM_CACHE_MB, KVMTEST_CACHE_DIR) in kvmtest.asm.cache.

The parts, in the order a statement meets them: source (statements and sections), lexer,
grammar (parsed), traps, prepare, limits, section (with engine and verify), cache; this module
joins the sections.
"""

from itertools import pairwise

from ..errors import AssemblyError
from . import cache
from .prepare import prepare, user_labels
from .section import assemble_once
from .source import Assembled, Section, Statement, fail, source_lines, split_statements

__all__ = ["Assembled", "Section", "Statement", "assemble", "assemble_sections", "source_lines",
           "split_statements"]


def assemble_sections(sections: list[Section], symbols: dict[str, int] | None = None) -> list[Assembled]:
    """Assemble sections that may refer to each other's labels; returns them in order.

    `symbols` (name -> value) are the harness's: layout addresses, ports, KT_CR3. Cross-section
    labels are resolved by iterating until every address is stable. AssemblyError names the
    statement at fault (file:line); a bad cache setting is a BadArgumentError naming it.
    """
    symbols = dict(symbols or {})
    cache_key = cache.key(sections, symbols)
    result = cache.lookup(cache_key)
    if result is not None:
        return result
    _check_names(sections, symbols)
    # First guess for each label: its section's base, so encodings are close to final.
    guess = {name: sec.base for sec in sections for name in user_labels(prepare(sec))}
    for _ in range(6):
        result = [assemble_once(sec, {**symbols, **guess}) for sec in sections]
        found = {k: v for a in result for k, v in a.labels.items()}
        if found == guess:
            break
        guess = found
    else:
        raise AssemblyError("cross-section label addresses did not settle; "
                            "check for sections that refer to each other in size-dependent ways")
    _check_overlaps(result)
    cache.remember(cache_key, result)
    return result


def _check_names(sections: list[Section], symbols: dict[str, int]) -> None:
    """A label or .equ may not take the name of a symbol the harness passes in (KT_CR3, CODE,
    PORT_DONE: the section's own definition silently won) nor of another section's label
    (refused at the first section's line: the test's code comes before the harness's handlers)."""
    first: dict[str, tuple[Section, Statement]] = {}
    for sec in sections:
        for line in prepare(sec):
            for name in (*line.parsed.labels, line.parsed.defines):
                if name in symbols:
                    raise fail(line.st, f"{name} is a symbol the harness defines ({symbols[name]:#x}); "
                                        "pick another name")
                if name in first and first[name][0] is not sec:
                    raise fail(first[name][1], f"{name} is also defined in section {sec.name} ({line.st.origin})")
                if name:
                    first.setdefault(name, (sec, line.st))


def _check_overlaps(result: list[Assembled]) -> None:
    spans = sorted((a.base, a.end, a.name) for a in result if a.code)
    for (b1, e1, n1), (b2, _, n2) in pairwise(spans):
        if b2 < e1:
            raise AssemblyError(f"section {n1} ({b1:#x}-{e1:#x}) overlaps section {n2} at {b2:#x}")


def assemble(text: str, bits: int = 64, base: int = 0, symbols: dict[str, int] | None = None,
             name: str = "<guest>") -> Assembled:
    """Assemble one piece of source as `bits`-bit code at `base`; `symbols` become `.equ`
    definitions; `name` is the file name in messages. AssemblyError as assemble_sections."""
    if bits not in (16, 32, 64):
        raise AssemblyError(f"{name}: bits must be 16, 32 or 64, not {bits!r}")
    return assemble_sections([Section.from_text(name, base, bits, text)], symbols)[0]
