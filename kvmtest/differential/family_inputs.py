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
from .inputs import MARGIN, PAGE, PATTERN, Inputs, counts, flags, offsets, register, values

MAX_REP = 5            # elements a REP string instruction runs over at most (each one an MMIO exit)
STRING_SOURCE = 0x400  # offsets in the operand page of the string source ([RSI]) and destination ([RDI])
STRING_DEST = 0xA00


def _cmpxchgnb(form: Form) -> st.SearchStrategy[Inputs]:
    """CMPXCHG8B/16B m: the accumulator pair equals the operand (the store, ZF=1) or is drawn apart
    (the load, ZF=0), with upper register halves drawn in 64-bit code for CMPXCHG8B, whose EAX/EDX
    loads clear them (SDM Vol. 2A CMPXCHG8B/CMPXCHG16B; Vol. 1 3.4.1.1)."""
    half = form.mem_size // 2
    mask = (1 << half) - 1

    @st.composite
    def draw_it(draw) -> Inputs:
        mem = draw(values(form.mem_size))
        if draw(st.booleans()):
            low, high = draw(values(half)), draw(values(half))
        else:
            low, high = mem & mask, mem >> half
        rax = draw(register(st.just(low), half))
        rdx = draw(register(st.just(high), half))
        rbx, rcx = draw(register(values(half), half)), draw(register(values(half), half))
        return Inputs(rax=rax, rcx=rcx, rdx=rdx, flags=draw(flags), mem=mem, offset=draw(offsets(form)),
                      regs=(("rbx", rbx),))
    return draw_it()


def _dshift(form: Form) -> st.SearchStrategy[Inputs]:
    """SHLD/SHRD [m], r, CL/imm8: the count is masked to 5 bits (6 with REX.W); with a 16-bit operand
    a masked count above 16 leaves result and flags undefined (SDM Vol. 2B SHLD, SHRD), so such counts
    are drawn 16 lower."""
    size = form.size
    count = counts(size)
    if size == 16:
        count = count.map(lambda c: c - 16 if c & 0x1F > 16 else c)
    cl, imm = (register(count, 8), st.none()) if form.shape == "mrcl" else (register(values(size), size), count)
    return st.builds(Inputs, rax=register(values(size), size), rcx=cl, rdx=register(values(size), size),
                     flags=flags, mem=values(size), offset=offsets(form), imm=imm)


def _string(form: Form) -> st.SearchStrategy[Inputs]:
    """A string instruction over up to MAX_REP elements from RSI to RDI, upwards or (DF=1) downwards.
    The address and count registers are the address size's (SI, DI, CX in 16-bit code, whose upper
    halves are drawn: they are neither used nor changed, SDM Vol. 1 3.6, Vol. 2B REP). For CMPS and
    SCAS each destination element equals its source element (or the accumulator) or differs, as
    drawn, so REPE and REPNE stop at any element."""
    n = form.size // 8
    bits = form.code_bits

    @st.composite
    def draw_it(draw) -> Inputs:
        df = draw(st.booleans())
        count = draw(st.integers(0, MAX_REP)) if form.rep else None
        src = PAGE + STRING_SOURCE + draw(st.integers(0, 7))
        dst = PAGE + STRING_DEST + draw(st.integers(0, 7))

        def in_low_word(value: int) -> int:
            """`value` in the register's address-size part; in 16-bit code ESI/EDI/ECX[31:16] drawn."""
            return draw(register(st.just(value), 16)) & 0xFFFFFFFF if bits == 16 else value

        rsi, rdi = in_low_word(src), in_low_word(dst)
        rcx = draw(register(values(bits), bits)) if count is None else in_low_word(count)
        rax = draw(register(values(form.size), form.size))
        equal = draw(st.lists(st.booleans(), min_size=MAX_REP, max_size=MAX_REP))
        fill = []
        if form.mnemonic in ("cmps", "scas"):
            step = -n if df else n
            for i in range(count or 1):
                s_at, d_at = src - PAGE + i * step, dst - PAGE + i * step
                want = PATTERN[MARGIN + s_at:MARGIN + s_at + n] if form.mnemonic == "cmps" else \
                    (rax & ((1 << form.size) - 1)).to_bytes(n, "little")
                fill.append((d_at, want if equal[i] else bytes([want[0] ^ 0x5A]) + want[1:]))
        return Inputs(rax=rax, rcx=rcx, rdx=draw(values(64)), flags=draw(flags) | (RFLAGS_DF if df else 0),
                      mem=0, offset=0, regs=(("rsi", rsi), ("rdi", rdi)), fill=tuple(fill))
    return draw_it()


def _stack(form: Form) -> st.SearchStrategy[Inputs]:
    """PUSH/POP [m]: the operand and the qword at the top of the stack (SDM Vol. 2B PUSH, POP)."""
    return st.builds(Inputs, rax=values(64), rcx=values(64), rdx=values(64), flags=flags, mem=values(form.size),
                     offset=offsets(form), stack=values(64))


def _sse(form: Form) -> st.SearchStrategy[Inputs]:
    """An SSE move or arithmetic on XMM1 and the memory operand (aligned or not: MOVAPS, MOVAPD,
    MOVDQA and legacy-SSE arithmetic raise #GP(0) on a misaligned 16-byte operand, SDM Vol. 2A)."""
    return st.builds(Inputs, rax=values(64), rcx=values(64), rdx=values(64), flags=flags,
                     mem=values(form.mem_size), offset=offsets(form), xmm=values(128))


def _refused(form: Form) -> st.SearchStrategy[Inputs]:
    return _sse(form) if form.uses_xmm else \
        st.builds(Inputs, rax=values(64), rcx=values(64), rdx=values(64), flags=flags,
                  mem=values(form.mem_size), offset=offsets(form))


FAMILIES = {"cmpxchgnb": _cmpxchgnb, "dshift": _dshift, "string": _string, "stack": _stack, "sse": _sse,
            "refused": _refused}
