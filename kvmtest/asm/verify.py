"""Checks that the bytes Keystone produced for a statement are what the statement says.

kvmtest.asm.section places a label before every statement and reads the addresses back, so each
statement's bytes are known. This module decodes an instruction's bytes with iced-x86 (an
independent decoder) and compares mnemonic, prefixes, operands, immediates, branch targets,
memory operands and operand size with the parsed source; data directives must hold exactly
their values; directives that emit nothing must emit nothing. A statement Keystone dropped,
merged with another or encoded differently fails here with the reason.
"""

from functools import lru_cache

from .expressions import SyntaxProblem, evaluate, expr_text, has_symbol
from .expressions import fits as _fits
from .lexer import DATA, REGISTERS, SIZES
from .parsed import Operand, Parsed


class Mismatch(ValueError):
    """The bytes are not what the statement says; str() says how."""


def check(p: Parsed, bits: int, start: int, data: bytes, values, relocatable=None) -> None:
    """Raise Mismatch unless `data` (the statement's bytes, at address `start` in `bits`-bit
    code) is what `p` says; `values` maps every symbol to its value. `relocatable(expr)` says
    how often an expression counts an address of this section (1 for `label + 4`, 0 for a
    number or `end - start`, None for nonsense), which decides what `[rip + expr]` means."""
    try:
        if p.kind == "insn":
            _instruction(p, bits, start, data, values, relocatable)
        elif p.kind == "directive":
            _directive(p, start, data, values)
        elif data:
            raise Mismatch(f"a label alone produced {len(data)} byte(s)")
    except SyntaxProblem as e:
        raise Mismatch(str(e)) from None


# --- directives --------------------------------------------------------------------------------

def _directive(p: Parsed, start: int, data: bytes, values) -> None:
    name = p.name
    end = start + len(data)
    if name in DATA:
        width = DATA[name]
        want = bytearray()
        for n, expr in enumerate(p.args, 1):
            value = evaluate(expr, values)
            if not _fits(value, 8 * width):
                raise Mismatch(f"value {value:#x} (argument {n}) does not fit in {width} byte(s)")
            want += (value % (1 << 8 * width)).to_bytes(width, "little")
        _same(data, bytes(want), name)
    elif name in (".ascii", ".asciz", ".string"):
        nul = b"" if name == ".ascii" else b"\0"
        _same(data, b"".join(s + nul for s in p.args), name)
    elif name == ".balign":
        align = evaluate(p.args[0], values)
        if align <= 0 or align & (align - 1):
            raise Mismatch(f".balign {align}: the alignment must be a power of two")
        if end % align or len(data) >= align:
            raise Mismatch(f"ends at {end:#x}, not at the next multiple of {align:#x}")
        if len(p.args) > 1 and data != bytes([evaluate(p.args[1], values) & 0xFF]) * len(data):
            raise Mismatch(f"padding {data.hex()} is not the fill byte")
    elif name == ".org":
        target = evaluate(p.args[0], values)
        if end != target:
            raise Mismatch(f"ends at {end:#x}, not at {target:#x}")
    elif name in (".skip", ".space", ".zero"):
        count = evaluate(p.args[0], values)
        fill = evaluate(p.args[1], values) & 0xFF if len(p.args) > 1 else 0
        _same(data, bytes([fill]) * count, name)
    elif name == ".fill":
        count = evaluate(p.args[0], values)
        size = evaluate(p.args[1], values) if len(p.args) > 1 else 1
        value = evaluate(p.args[2], values) if len(p.args) > 2 else 0
        pattern = min(size, 4)  # GAS and Keystone take the value as 4 bytes, zero above
        if not 1 <= size <= 8 or not _fits(value, 8 * pattern):
            raise Mismatch(f".fill size {size} / value {value:#x}: the size must be 1 to 8 and the value fit "
                           f"in {pattern} byte(s)")
        one = (value % (1 << 8 * pattern)).to_bytes(pattern, "little") + bytes(size - pattern)
        _same(data, one * count, name)
    elif name in (".equ", ".set"):
        if data:
            raise Mismatch(f"produced {len(data)} byte(s); {name} produces none")
        value = evaluate(p.args[0], values)
        if (values[p.defines] - value) % (1 << 64):
            raise Mismatch(f"Keystone gave {p.defines} the value {values[p.defines]:#x}, the expression says "
                           f"{value:#x}")
    elif data:  # .code16/32/64
        raise Mismatch(f"produced {len(data)} byte(s); {name} produces none")


def _same(data: bytes, want: bytes, name: str) -> None:
    if data != want:
        raise Mismatch(f"Keystone produced {data.hex() or 'no bytes'}, {name} says {want.hex()}")


# --- instructions ------------------------------------------------------------------------------

_CC = {"z": "e", "nz": "ne", "c": "b", "nae": "b", "nc": "ae", "nb": "ae", "na": "be", "nbe": "a",
       "nge": "l", "nl": "ge", "ng": "le", "nle": "g", "pe": "p", "po": "np"}
# What GAS assembles these to in 32- and 64-bit code (kvmtest hands Keystone the same; its
# own choice is the 16-bit form): IRET in 64-bit code is refused as ambiguous before this.
_GAS_DEFAULT_SIZE = {32: {"iret": "iretd", "pushf": "pushfd", "popf": "popfd"},
                     64: {"pushf": "pushfq", "popf": "popfq"}}
_ALIASES = {"sal": "shl", "icebp": "int1", "int01": "int1", "movabs": "mov", "ljmp": "jmp", "lcall": "call",
            "fwait": "wait", "loopz": "loope", "loopnz": "loopne", "xlat": "xlatb", "retn": "ret"}
# x87 instructions that are FWAIT + the no-wait form: decoded as two instructions
_FWAIT_FORMS = {"fstcw", "fstsw", "fsave", "finit", "fclex", "fstenv"}


def _canonical(mnemonic: str) -> str:
    mnemonic = _ALIASES.get(mnemonic, mnemonic)
    for head in ("j", "set", "cmov"):
        if mnemonic.startswith(head) and mnemonic[len(head):] in _CC:
            return head + _CC[mnemonic[len(head):]]
    return mnemonic


@lru_cache(maxsize=1)
def _iced():
    """Name tables of iced-x86, built once (the import and the tables take ~20 ms)."""
    import iced_x86 as iced

    names = lambda enum: {v: k.lower() for k, v in vars(enum).items() if k.isupper()}  # noqa: E731
    sizes: dict[int, set] = {}
    for name, code in vars(iced.Code).items():
        if name.isupper():
            info = iced.OpCodeInfo(code)
            if info.operand_size:
                sizes.setdefault(info.mnemonic, set()).add(info.operand_size)
    K = iced.OpKind
    return {
        "iced": iced, "mnemonic": names(iced.Mnemonic), "register": names(iced.Register), "kind": names(K),
        # mnemonics that one name covers at several operand sizes (RET, PUSH, LGDT, ...): for
        # them the size comes from the operands or the code segment, not from the name
        "size_by_operands": {m for m, s in sizes.items() if len(s) > 1},
        "imm": {K.IMMEDIATE8: 8, K.IMMEDIATE8_2ND: 8, K.IMMEDIATE16: 16, K.IMMEDIATE32: 32, K.IMMEDIATE64: 64,
                K.IMMEDIATE8TO16: 16, K.IMMEDIATE8TO32: 32, K.IMMEDIATE8TO64: 64, K.IMMEDIATE32TO64: 64},
        "near": {K.NEAR_BRANCH16: 16, K.NEAR_BRANCH32: 32, K.NEAR_BRANCH64: 64},
        "far": {K.FAR_BRANCH16: 16, K.FAR_BRANCH32: 32},
        "implicit": {K.MEMORY_SEG_SI, K.MEMORY_SEG_ESI, K.MEMORY_SEG_RSI, K.MEMORY_SEG_DI, K.MEMORY_SEG_EDI,
                     K.MEMORY_SEG_RDI, K.MEMORY_ESDI, K.MEMORY_ESEDI, K.MEMORY_ESRDI},
    }


def _text(instructions) -> str:
    fmt = _iced()["iced"].Formatter(_iced()["iced"].FormatterSyntax.INTEL)  # for a message only
    return "; ".join(fmt.format(i) for i in instructions)


def _is_nop_xchg(p: Parsed, bits: int) -> bool:
    """`xchg eax, eax` in 16/32-bit code (and `xchg ax, ax`, `xchg rax, rax`) is encoded 90, NOP:
    the same operation (SDM Vol. 2B NOP: "an alias mnemonic for XCHG (E)AX, (E)AX"). Not in 64-bit
    code for the 32-bit form, which zero-extends RAX; 90 would not."""
    regs = [o.reg for o in p.operands if o.kind == "reg"]
    return p.name == "xchg" and len(p.operands) == 2 and len(regs) == 2 and regs[0] == regs[1] \
        and regs[0] in ("ax", "eax", "rax") and not (bits == 64 and regs[0] == "eax")


def _instruction(p: Parsed, bits: int, start: int, data: bytes, values, relocatable=None) -> None:
    t = _iced()
    iced = t["iced"]
    if not data:
        raise Mismatch("Keystone produced no bytes for it (it dropped the statement)")
    decoded = list(iced.Decoder(bits, data, ip=start))
    everything = decoded

    def said():  # built only for a message: formatting costs more than the checks
        return f"Keystone produced {data.hex()} ({_text(everything)})"

    if any(i.code == iced.Code.INVALID for i in decoded):
        raise Mismatch(f"{said()}, which does not decode as one instruction")
    name = _canonical(_GAS_DEFAULT_SIZE.get(bits, {}).get(p.name, p.name))
    if _is_nop_xchg(p, bits) and len(decoded) == 1 and t["mnemonic"][decoded[0].mnemonic] == "nop":
        return
    if p.name in _FWAIT_FORMS and len(decoded) == 2 and t["mnemonic"][decoded[0].mnemonic] == "wait":
        decoded, name = decoded[1:], "fn" + p.name[1:]
    if len(decoded) != 1:
        raise Mismatch(f"{said()}: {len(decoded)} instructions, not one")
    ins = decoded[0]
    got = t["mnemonic"][ins.mnemonic]
    if got != name:
        raise Mismatch(f"{said()}: mnemonic {got}, not {p.name}")
    have = {"lock"} if ins.has_lock_prefix else set()
    have |= {"rep"} if ins.has_rep_prefix or ins.has_repe_prefix else set()
    have |= {"repne"} if ins.has_repne_prefix else set()
    want = set(p.prefixes) - {"rex64"}
    if have != want:
        raise Mismatch(f"{said()}: prefixes {sorted(have) or 'none'}, the source has {sorted(want) or 'none'}")
    _operands(p, ins, bits, values, said, t, relocatable)
    _operand_size(p, ins, bits, said, t)


def _operands(p: Parsed, ins, bits, values, said, t, relocatable=None) -> None:
    kinds = [ins.op_kind(i) for i in range(ins.op_count)]
    iced = t["iced"]
    if not p.operands and all(k in (iced.OpKind.REGISTER, iced.OpKind.MEMORY) or k in t["implicit"] for k in kinds):
        return  # `rep outsb`, `fxch`, `xlatb`: the decoder lists what the mnemonic implies
    # Operands the source leaves implicit: string instructions' [esi]/[edi], x87's ST0.
    slots = list(range(len(kinds)))
    while len(slots) > len(p.operands):
        skip = next((i for i in slots if kinds[i] in t["implicit"] or kinds[i] == iced.OpKind.REGISTER
                     and t["register"][ins.op_register(i)] == "st0"), None)
        if skip is None:
            break
        slots.remove(skip)
    if len(slots) != len(p.operands):
        raise Mismatch(f"{said()}: {len(kinds)} operand(s), the source has {len(p.operands)}")
    orders = [slots]
    if p.name in ("xchg", "test") and len(slots) == 2:  # either operand order encodes the same
        orders.append(slots[::-1])
    problems = []
    for order in orders:
        problem = next((why for n, (src, i) in enumerate(zip(p.operands, order, strict=True), 1)
                        if (why := _operand(src, n, ins, i, bits, values, t, relocatable))), None)
        if problem is None:
            return
        problems.append(problem)
    raise Mismatch(f"{said()}: {problems[0]}")


_WORD_OPERAND = {"ltr", "lldt", "verr", "verw", "lmsw", "arpl"}


def _reg_name(name: str) -> str:
    """kvmtest's register spelling -> iced-x86's (r8b is R8L there, st is ST0)."""
    if name.startswith("r") and name.endswith("b") and name[1:-1].isdigit():
        return name[:-1] + "l"
    return "st0" if name == "st" else name


def _operand(src: Operand, n: int, ins, i: int, bits: int, values, t, relocatable=None) -> str | None:
    iced = t["iced"]
    kind = ins.op_kind(i)
    if src.kind == "reg" and src.reg is not None:
        if kind != iced.OpKind.REGISTER:
            return f"operand {n} is {t['kind'][kind]}, not register {src.reg}"
        got = t["register"][ins.op_register(i)]
        if got == _reg_name(src.reg):
            return None
        # LTR, LLDT, VERR, VERW, LMSW and ARPL use 16 bits whatever the operand size; iced-x86
        # names their register operand at the code segment's width (`ltr ax` decodes as eax).
        full = iced.RegisterExt.full_register
        if t["mnemonic"][ins.mnemonic] in _WORD_OPERAND and REGISTERS[src.reg] == 16 \
                and full(ins.op_register(i)) == full(getattr(iced.Register, src.reg.upper())):
            return None
        return f"operand {n} is {got}, not {src.reg}"
    if src.kind == "imm":
        value = evaluate(src.expr, values)
        if kind in t["near"]:
            width = t["near"][kind]
            got = ins.near_branch_target
            return None if (got - value) % (1 << width) == 0 else f"branch target {got:#x}, not {value:#x}"
        if kind not in t["imm"]:
            return f"operand {n} is {t['kind'][kind]}, not an immediate"
        width = t["imm"][kind]
        if src.size and SIZES[src.size] * 8 != width:
            return f"operand {n} is a {width}-bit immediate, not {src.size}"
        if not _fits(value, width):
            return f"immediate {value:#x} (operand {n}) does not fit in {width} bits"
        got = ins.immediate(i)
        return None if (got - value) % (1 << width) == 0 else f"immediate {got:#x}, not {value:#x} (operand {n})"
    if src.kind == "far" and src.selector is not None and src.expr is not None:
        if kind not in t["far"]:
            return f"operand {n} is {t['kind'][kind]}, not a far pointer"
        width = t["far"][kind]
        selector, offset = evaluate(src.selector, values), evaluate(src.expr, values)
        got = ins.far_branch16 if width == 16 else ins.far_branch32
        if (ins.far_branch_selector - selector) % 0x10000 or (got - offset) % (1 << width) \
                or not _fits(offset, width) or not _fits(selector, 16):
            return f"far pointer {ins.far_branch_selector:#x}:{got:#x}, not {selector:#x}:{offset:#x}"
        return None
    return _memory(src, n, ins, i, bits, values, t, relocatable)


def _memory(src: Operand, n: int, ins, i: int, bits: int, values, t, relocatable=None) -> str | None:
    iced = t["iced"]
    kind = ins.op_kind(i)
    if kind in t["implicit"]:
        return None
    if kind != iced.OpKind.MEMORY:
        return f"operand {n} is {t['kind'][kind]}, not memory"
    m = src.mem
    if m is None:
        return f"operand {n} is memory, the source has no address"
    reg = t["register"]
    base = reg[ins.memory_base] if ins.memory_base else None
    index = reg[ins.memory_index] if ins.memory_index else None
    scale = ins.memory_index_scale if index else 1
    want = (m.base, m.index, m.scale if m.index else 1)
    if (base, index, scale) != want and not (scale == 1 and want[2] == 1 and (index, base) == want[:2]):
        return (f"memory operand {n} uses base {base}, index {index}, scale {scale}; the source says base "
                f"{m.base}, index {m.index}, scale {m.scale}")
    default = "ss" if m.base in ("bp", "ebp", "rbp", "sp", "esp", "rsp") else "ds"
    segment = reg[ins.memory_segment]
    if segment != (m.segment or default):
        return f"memory operand {n} uses segment {segment}, not {m.segment or default}"
    disp = evaluate(m.disp, values) if m.disp else 0
    if m.base in ("rip", "eip"):
        # As in GAS: [rip + number] is that displacement from the next instruction, [rip + label]
        # addresses the label. A symbol that is not an address of this section (a layout
        # constant, another section's label, `end - start`) would silently be a raw displacement.
        width = 64 if m.base == "rip" else 32
        if m.disp is None or not has_symbol(m.disp):
            ok = (ins.memory_displacement - ins.next_ip - disp) % (1 << width) == 0 \
                and -(1 << 31) <= disp < (1 << 31)
        elif relocatable is not None and relocatable(m.disp) != 1:
            return (f"[{m.base} + {expr_text(m.disp)}] (operand {n}) needs a label of this section (its address) "
                    "or a plain number (a displacement); a constant symbol or a label of another section would be "
                    "taken as a displacement")
        else:
            ok = (ins.memory_displacement - disp) % (1 << width) == 0
    else:
        address_reg = m.base or m.index
        width = REGISTERS[address_reg] if address_reg else bits
        if not _fits(disp, width):
            return f"displacement {disp:#x} (operand {n}) does not fit {width}-bit addressing"
        ok = (ins.memory_displacement - disp) % (1 << width) == 0
    if not ok:
        return f"displacement {ins.memory_displacement:#x}, not {disp:#x} (operand {n})"
    size = iced.MemorySizeExt.size(ins.memory_size)
    if src.size and size and size != SIZES[src.size]:
        return f"memory operand {n} is {size} byte(s), not {src.size} ({SIZES[src.size]})"
    return None


def _operand_size(p: Parsed, ins, bits: int, said, t) -> None:
    """An instruction whose operands name no size gets the code segment's operand size.

    Keystone 0.9.2 gets this wrong for some mnemonics that cover several sizes: `ret` and
    `call label` in 16-bit code become 32-bit (66 C3, 66 E8), `lgdt [ebx]` and `push cs` in
    32-bit code become 16-bit (66 0F 01, 66 0E).
    """
    sized = "rex64" in p.prefixes or any(o.size or o.reg and REGISTERS[o.reg] for o in p.operands)
    if sized or ins.mnemonic not in t["size_by_operands"]:
        return
    iced = t["iced"]
    if ins.op_count and ins.op_kind(0) in t["near"] and ins.flow_control in (
            iced.FlowControl.UNCONDITIONAL_BRANCH, iced.FlowControl.CONDITIONAL_BRANCH):
        # A direct JMP/Jcc's operand size only truncates the target, which is compared exactly
        # above; Keystone gives 16-bit code a data32 jmp when rel16 would do.
        if not 0 <= ins.near_branch_target < (1 << bits):
            raise Mismatch(f"{said()}: the target does not fit {bits}-bit code")
        return
    info = ins.op_code()
    want = bits if bits != 64 else 64 if info.default_op_size64 or info.force_op_size64 else 32
    if info.operand_size not in (0, want):
        raise Mismatch(f"{said()}: a {info.operand_size}-bit operand size where {bits}-bit code and the operands "
                       f"say {want}; spell the instruction out with .byte")
