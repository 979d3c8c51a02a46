"""Input strategies of the families whose operands go beyond RAX, RCX, RDX and one memory operand
(kvmtest.differential.inputs has the rest and the rules they share: edges first, shrinking to the
smallest value).

  cmpxchgnb   EDX:EAX (RDX:RAX) equal to the operand about half the time, ECX:EBX (RCX:RBX) the new value
  dshift      the source in RDX, the count in CL or the immediate, at and past the operand size
  string      RSI, RDI and the count in RCX (CX, ECX by the address size), DF, and destination bytes
              that match the source (or the accumulator) element by element or not
  stack       the qword at RSP (what POP reads)
  sse         XMM1
"""

from hypothesis import strategies as st

from ..x86 import RFLAGS_DF
from .forms import Form
from .inputs import MARGIN, PAGE, PATTERN, Inputs, counts, draw_flags, offsets, register, values

MAX_REP = 5            # elements a REP string instruction runs over at most (each one an MMIO exit)
STRING_SOURCE = 0x400  # offsets in the operand page of the string source ([RSI]) and destination ([RDI])
STRING_DEST = 0xA00
_REPEATS = st.integers(0, MAX_REP)
_MISALIGN = st.integers(0, 7)
_EQUAL = st.lists(st.booleans(), min_size=MAX_REP, max_size=MAX_REP)


@st.composite
def _cmpxchgnb(draw, form: Form) -> Inputs:
    """CMPXCHG8B/16B m: the accumulator pair equals the operand (the store, ZF=1) or is drawn apart
    (the load, ZF=0), with upper register halves drawn in 64-bit code for CMPXCHG8B, whose EAX/EDX
    loads clear them (SDM Vol. 2A CMPXCHG8B/CMPXCHG16B; Vol. 1 3.4.1.1)."""
    half = form.mem_size // 2
    mem = draw(values(form.mem_size))
    if draw(st.booleans()):
        low, high = draw(values(half)), draw(values(half))
    else:
        low, high = mem & ((1 << half) - 1), mem >> half
    rax, rdx = register(draw, low, half), register(draw, high, half)
    rbx, rcx = register(draw, values(half), half), register(draw, values(half), half)
    return Inputs(rax=rax, rcx=rcx, rdx=rdx, flags=draw_flags(draw), mem=mem, offset=draw(offsets(form)),
                  regs=(("rbx", rbx),))


@st.composite
def _dshift(draw, form: Form) -> Inputs:
    """SHLD/SHRD [m], r, CL/imm8: the count is masked to 5 bits (6 with REX.W); with a 16-bit operand
    a masked count above 16 leaves result and flags undefined (SDM Vol. 2B SHLD, SHRD), so such counts
    are drawn 16 lower."""
    size = form.size

    def count() -> int:
        c = draw(counts(size))
        return c - 16 if size == 16 and c & 0x1F > 16 else c

    rax = register(draw, values(size), size)
    rcx = register(draw, count(), 8) if form.shape == "mrcl" else register(draw, values(size), size)
    rdx = register(draw, values(size), size)
    flags, mem, offset = draw_flags(draw), draw(values(size)), draw(offsets(form))
    return Inputs(rax=rax, rcx=rcx, rdx=rdx, flags=flags, mem=mem, offset=offset,
                  imm=None if form.shape == "mrcl" else count())


@st.composite
def _string(draw, form: Form) -> Inputs:
    """A string instruction over up to MAX_REP elements from RSI to RDI, upwards or (DF=1) downwards.
    The address and count registers are the address size's (SI, DI, CX in 16-bit code, whose upper
    halves are drawn: they are neither used nor changed, SDM Vol. 1 3.6, Vol. 2B REP). For CMPS and
    SCAS each destination element equals its source element (or the accumulator) or differs, as
    drawn, so REPE and REPNE stop at any element."""
    n = form.size // 8
    bits = form.code_bits
    df = draw(st.booleans())
    count = draw(_REPEATS) if form.rep else None
    src = PAGE + STRING_SOURCE + draw(_MISALIGN)
    dst = PAGE + STRING_DEST + draw(_MISALIGN)

    def in_low_word(value: int) -> int:
        """`value` in the register's address-size part; in 16-bit code ESI/EDI/ECX[31:16] drawn."""
        return register(draw, value, 16) & 0xFFFFFFFF if bits == 16 else value

    rsi, rdi = in_low_word(src), in_low_word(dst)
    rcx = register(draw, values(bits), bits) if count is None else in_low_word(count)
    rax = register(draw, values(form.size), form.size)
    equal = draw(_EQUAL)
    fill = []
    if form.mnemonic in ("cmps", "scas"):
        step = -n if df else n
        for i in range(count or 1):
            s_at, d_at = src - PAGE + i * step, dst - PAGE + i * step
            want = PATTERN[MARGIN + s_at:MARGIN + s_at + n] if form.mnemonic == "cmps" else \
                (rax & ((1 << form.size) - 1)).to_bytes(n, "little")
            fill.append((d_at, want if equal[i] else bytes([want[0] ^ 0x5A]) + want[1:]))
    return Inputs(rax=rax, rcx=rcx, rdx=draw(values(64)), flags=draw_flags(draw) | (RFLAGS_DF if df else 0),
                  mem=0, offset=0, regs=(("rsi", rsi), ("rdi", rdi)), fill=tuple(fill))


def _wide(draw, form: Form, **extra: int) -> Inputs:
    """RAX, RCX and RDX any 64-bit values, the flags, the memory operand and its offset, then the
    `extra` Inputs fields (name=bits)."""
    rax, rcx, rdx = draw(values(64)), draw(values(64)), draw(values(64))
    flags, mem, offset = draw_flags(draw), draw(values(form.mem_size)), draw(offsets(form))
    return Inputs(rax=rax, rcx=rcx, rdx=rdx, flags=flags, mem=mem, offset=offset,
                  **{name: draw(values(bits)) for name, bits in extra.items()})


@st.composite
def _stack(draw, form: Form) -> Inputs:
    """PUSH/POP [m]: the operand and the qword at the top of the stack (SDM Vol. 2B PUSH, POP)."""
    return _wide(draw, form, stack=64)


@st.composite
def _sse(draw, form: Form) -> Inputs:
    """An SSE move or arithmetic on XMM1 and the memory operand (aligned or not: MOVAPS, MOVAPD,
    MOVDQA and legacy-SSE arithmetic raise #GP(0) on a misaligned 16-byte operand, SDM Vol. 2A)."""
    return _wide(draw, form, xmm=128)


@st.composite
def _refused(draw, form: Form) -> Inputs:
    return _wide(draw, form, xmm=128) if form.uses_xmm else _wide(draw, form)


FAMILIES = {"cmpxchgnb": _cmpxchgnb, "dshift": _dshift, "string": _string, "stack": _stack, "sse": _sse,
            "refused": _refused}
