"""Keystone wrapper: 16/32/64-bit code, several sections sharing symbols, label addresses,
a cache in memory and on disk, and errors that name the guest source line.

Keystone 0.9.2 has traps this wrapper closes rather than passing on silently:
- 64-bit absolute memory operands (`[0x1000]`, `[label]`) are turned RIP-relative or into
  a sign-extended disp32; both are wrong for some addresses. Rejected: write
  `[rip + label]` or put the address in a register.
- `.align` is ignored (`.balign` works). Rejected.
- `ljmp sel:off` in 32-bit code gets a 16-bit operand size. Rejected outside 16-bit code:
  use the FARJMP/FARCALL macros of kvmtest.guest.compose.
- A symbol from a resolver callback loses any `+ offset`. Not used: shared symbols are
  passed as `.equ` lines instead.
- `push imm` in 16-bit code pushes 32 bits (and `push word ptr N` too unless N fits an imm8).
  Rejected with the spelling that works.
- `jmp $` and numeric local labels (`1:`, `jmp 1b`) are refused. Rewritten to named labels.
"""

import hashlib
import json
import os
import re
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .errors import AssemblyError

ASM_VERSION = "4"  # bump when preprocessing changes, to invalidate cached results

_REG_NAMES = set()
for _r in ("ax", "bx", "cx", "dx", "si", "di", "sp", "bp"):
    _REG_NAMES |= {_r, "e" + _r, "r" + _r}
_REG_NAMES |= {"al", "bl", "cl", "dl", "ah", "bh", "ch", "dh", "sil", "dil", "spl", "bpl", "rip", "eip"}
for _n in range(8, 16):
    _REG_NAMES |= {f"r{_n}", f"r{_n}d", f"r{_n}w", f"r{_n}b"}

_LABEL_DEF = re.compile(r"^\s*([A-Za-z_.][\w.$]*)\s*:(?!:)")
_NUMERIC_DEF = re.compile(r"^\s*(\d+)\s*:")
_NUMERIC_REF = re.compile(r"(?<![\w.])(\d+)([bf])(?![\w.])")
_EQU = re.compile(r"^\s*\.(equ|set)\s+([A-Za-z_.][\w.$]*)\s*,", re.I)
_BRACKETS = re.compile(r"\[([^\]]*)\]")
_FAR_IMM = re.compile(r"^\s*(ljmp|lcall)\s+[^\[\]]*:", re.I)


@dataclass(frozen=True)
class Statement:
    text: str
    origin: str  # "file:line" of the guest source


@dataclass(frozen=True)
class Section:
    """Code assembled at `base` for a `bits`-bit code segment."""

    name: str
    base: int
    bits: int
    statements: tuple[Statement, ...]

    @classmethod
    def from_text(cls, name: str, base: int, bits: int, text: str, origin: str | None = None):
        return cls(name, base, bits, tuple(split_statements(text, origin or name)))


@dataclass(frozen=True)
class Assembled:
    name: str
    base: int
    bits: int
    code: bytes
    labels: dict[str, int] = field(default_factory=dict)

    @property
    def end(self) -> int:
        return self.base + len(self.code)


def _strip_comment(line: str) -> str:
    out, quote = [], None
    i = 0
    while i < len(line):
        c = line[i]
        if quote:
            out.append(c)
            if c == "\\" and i + 1 < len(line):
                out.append(line[i + 1])
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'":
            quote = c
            out.append(c)
        elif c == "#" or line.startswith("//", i):
            break
        else:
            out.append(c)
        i += 1
    return "".join(out)


def _split_outside_quotes(line: str, sep: str) -> list[str]:
    parts, cur, quote = [], [], None
    for c in line:
        if quote:
            cur.append(c)
            if c == quote:
                quote = None
        elif c in "\"'":
            quote = c
            cur.append(c)
        elif c == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    parts.append("".join(cur))
    return parts


def split_statements(text: str, name: str, first_line: int = 1) -> list[Statement]:
    """Split source into statements (lines and `;`-separated parts), dropping comments."""
    result = []
    for n, line in enumerate(text.splitlines(), start=first_line):
        for part in _split_outside_quotes(_strip_comment(line), ";"):
            if part.strip():
                result.append(Statement(part.strip(), f"{name}:{n}"))
    return result


def _fail(st: Statement, why: str) -> AssemblyError:
    return AssemblyError(f"{st.origin}: `{st.text}`: {why}")


def _check(st: Statement, bits: int) -> None:
    """Reject the forms Keystone 0.9.2 would encode wrongly without saying so."""
    low = st.text.lower()
    if re.match(r"^\.(p2)?align\b", low) and not low.startswith(".balign"):
        if low.startswith(".align"):
            raise _fail(st, "Keystone ignores .align; use .balign N")
    if bits == 64:
        for operand in _BRACKETS.findall(low):
            words = set(re.findall(r"[a-z_][\w]*", operand))
            if not words & _REG_NAMES:
                raise _fail(st, "64-bit absolute memory operand: Keystone 0.9.2 encodes it RIP-relative or as a "
                                "sign-extended disp32, wrong for some addresses; write [rip + label] or put the "
                                "address in a register")
    if bits == 16:
        m = re.match(r"^push\s+(word\s+ptr\s+)?([-+]?(?:0x[0-9a-f]+|\d+)|[a-z_.][\w.]*)\s*$", low)
        if m and not re.fullmatch(r"[a-z]{2,3}", m.group(2)):
            small = re.fullmatch(r"[-+]?(0x[0-9a-f]+|\d+)", m.group(2)) and -128 <= int(m.group(2), 0) <= 127
            if not (m.group(1) and small):
                raise _fail(st, "Keystone encodes this PUSH immediate as a 32-bit push in 16-bit code; write "
                                "push word ptr N for -128..127, or .byte 0x68 / .word N for a 16-bit push")
    if bits != 16 and _FAR_IMM.match(low):
        raise _fail(st, f"Keystone encodes an immediate far jump/call with a 16-bit offset in {bits}-bit code; "
                        "use FARJMP/FARCALL selector, target")


def _rewrite(statements: list[Statement], section: str) -> list[Statement]:
    """Turn `$` and numeric local labels into named labels Keystone accepts."""
    out: list[Statement] = []
    numeric_defs: list[tuple[int, str, int]] = []  # (index in out, number, serial)
    serial = 0
    tmp: list[Statement] = []
    for st in statements:
        text = st.text
        m = _NUMERIC_DEF.match(text)
        if m:
            serial += 1
            name = f".Lnum_{section}_{m.group(1)}_{serial}"
            numeric_defs.append((len(tmp), m.group(1), serial))
            tmp.append(Statement(f"{name}:", st.origin))
            text = text[m.end():].strip()
            if not text:
                continue
        if "$" in text and not _LABEL_DEF.match(text) and '"' not in text:
            serial += 1
            here = f".Lhere_{section}_{serial}"
            tmp.append(Statement(f"{here}:", st.origin))
            text = re.sub(r"(?<![\w.])\$(?![\w.])", here, text)
        tmp.append(Statement(text, st.origin))
    for index, st in enumerate(tmp):
        def resolve(m, index=index, st=st):
            number, direction = m.group(1), m.group(2)
            if direction == "b":
                cands = [d for d in numeric_defs if d[1] == number and d[0] < index]
                pick = cands[-1] if cands else None
            else:
                cands = [d for d in numeric_defs if d[1] == number and d[0] > index]
                pick = cands[0] if cands else None
            if pick is None:
                raise _fail(st, f"local label {number}{direction} has no matching '{number}:'")
            return f".Lnum_{section}_{number}_{pick[2]}"

        if not st.text.startswith(".Lnum_"):
            st = Statement(_NUMERIC_REF.sub(resolve, st.text), st.origin)
        out.append(st)
    return out


def _labels_defined(statements) -> list[str]:
    names = []
    for st in statements:
        m = _LABEL_DEF.match(st.text)
        if m:
            names.append(m.group(1))
    return names


class _Keystone:
    """Keystone handles per mode, serialised: the C library is not re-entrant."""

    def __init__(self):
        self.lock = threading.Lock()
        self.handles = {}

    def asm(self, text: str, bits: int, base: int) -> bytes:
        import keystone

        mode = {16: keystone.KS_MODE_16, 32: keystone.KS_MODE_32, 64: keystone.KS_MODE_64}[bits]
        with self.lock:
            if bits not in self.handles:
                self.handles[bits] = keystone.Ks(keystone.KS_ARCH_X86, mode)
            encoding, _ = self.handles[bits].asm(text, base)
        return bytes(encoding or b"")


_ks = _Keystone()


def _keystone_error(e) -> str:
    return str(e).replace("(KS_ERR_ASM_", "(").rstrip()


def _locate_error(statements, bits, base, symbols, labels) -> AssemblyError | None:
    """Assemble statements one by one, labels stubbed, to find the line Keystone rejects."""
    import keystone

    equs = [st.text for st in statements if _EQU.match(st.text)]
    stubs = [f".equ {n}, {base:#x}" for n in labels]
    prelude = "\n".join([f".equ {k}, {v:#x}" for k, v in symbols.items()] + stubs + equs)
    for st in statements:
        if _EQU.match(st.text):
            continue
        text = st.text
        m = _LABEL_DEF.match(text)
        if m:
            text = text[m.end():].strip()
            if not text:
                continue
        try:
            _ks.asm(prelude + "\n" + text, bits, base)
        except keystone.KsError as e:
            return _fail(st, _keystone_error(e))
    return None


def _assemble_once(sec: Section, symbols: dict[str, int]) -> Assembled:
    import keystone

    bits = sec.bits
    for st in sec.statements:
        m = re.match(r"^\.code(16|32|64)\s*$", st.text)
        bits = int(m.group(1)) if m else bits
        _check(st, bits)
    statements = _rewrite(list(sec.statements), re.sub(r"\W", "_", sec.name))
    labels = _labels_defined(statements)
    dup = {n for n in labels if labels.count(n) > 1}
    if dup:
        raise AssemblyError(f"{sec.name}: label(s) defined twice: {', '.join(sorted(dup))}")
    foreign = {k: v for k, v in symbols.items() if k not in labels}
    prelude = [f".equ {k}, {v:#x}" for k, v in foreign.items()]
    width = ".quad" if sec.bits == 64 else ".long"
    table = [f"{width} {name}" for name in labels]
    text = "\n".join(prelude + [st.text for st in statements] + table)
    try:
        blob = _ks.asm(text, sec.bits, sec.base)
    except keystone.KsError as e:
        located = _locate_error(statements, sec.bits, sec.base, foreign, labels)
        raise located or AssemblyError(f"{sec.name}: {_keystone_error(e)}") from None
    size = 8 if sec.bits == 64 else 4
    code_len = len(blob) - size * len(labels)
    values = {name: int.from_bytes(blob[code_len + i * size: code_len + (i + 1) * size], "little")
              for i, name in enumerate(labels) if not name.startswith((".Lhere_", ".Lnum_"))}
    return Assembled(sec.name, sec.base, sec.bits, blob[:code_len], values)


# --- caching ---------------------------------------------------------------------------------

_memory_cache: dict[str, list[Assembled]] = {}


def cache_dir() -> Path | None:
    """KVMTEST_CACHE_DIR, else ~/.cache/kvmtest/asm; None (no disk cache) if set to ''."""
    env = os.environ.get("KVMTEST_CACHE_DIR")
    if env == "":
        return None
    return Path(env) if env else Path.home() / ".cache" / "kvmtest" / "asm"


def _key(sections, symbols) -> str:
    import keystone

    payload = json.dumps({
        "v": ASM_VERSION, "ks": getattr(keystone, "__version__", "?"),
        "symbols": sorted(symbols.items()),
        "sections": [[s.name, s.base, s.bits, [st.text for st in s.statements]] for s in sections],
    })
    return hashlib.sha256(payload.encode()).hexdigest()


def _disk_load(key):
    d = cache_dir()
    if d is None:
        return None
    try:
        data = json.loads((d / f"{key}.json").read_text())
        return [Assembled(a["name"], a["base"], a["bits"], bytes.fromhex(a["code"]), a["labels"]) for a in data]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _disk_store(key, result):
    d = cache_dir()
    if d is None:
        return
    try:
        d.mkdir(parents=True, exist_ok=True)
        data = [{"name": a.name, "base": a.base, "bits": a.bits, "code": a.code.hex(), "labels": a.labels}
                for a in result]
        # Written whole then renamed, so concurrent xdist workers never read half a file.
        fd, tmp = tempfile.mkstemp(dir=d, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, d / f"{key}.json")
    except OSError:
        pass


def assemble_sections(sections: list[Section], symbols: dict[str, int] | None = None) -> list[Assembled]:
    """Assemble sections that may refer to each other's labels; returns them in order.

    Cross-section labels are resolved by iterating until every address is stable.
    """
    symbols = dict(symbols or {})
    key = _key(sections, symbols)
    if key in _memory_cache:
        return _memory_cache[key]
    result = _disk_load(key)
    if result is None:
        # First guess for each label: its section's base, so encodings are close to final.
        guess = {}
        for sec in sections:
            for name in _labels_defined(sec.statements):
                guess[name] = sec.base
        for _ in range(6):
            result = [_assemble_once(sec, {**symbols, **guess}) for sec in sections]
            found = {k: v for a in result for k, v in a.labels.items()}
            if found == guess:
                break
            guess = found
        else:
            raise AssemblyError("cross-section label addresses did not settle; "
                                "check for sections that refer to each other in size-dependent ways")
        _check_overlaps(result)
        _disk_store(key, result)
    _memory_cache[key] = result
    return result


def _check_overlaps(result: list[Assembled]) -> None:
    spans = sorted((a.base, a.end, a.name) for a in result if a.code)
    for (b1, e1, n1), (b2, _, n2) in zip(spans, spans[1:]):
        if b2 < e1:
            raise AssemblyError(f"section {n1} ({b1:#x}-{e1:#x}) overlaps section {n2} at {b2:#x}")


def assemble(text: str, bits: int = 64, base: int = 0, symbols: dict[str, int] | None = None,
             name: str = "<guest>") -> Assembled:
    """Assemble one piece of source at `base`; `symbols` become `.equ` definitions."""
    if bits not in (16, 32, 64):
        raise AssemblyError(f"{name}: bits must be 16, 32 or 64, not {bits!r}")
    return assemble_sections([Section.from_text(name, base, bits, text)], symbols)[0]
