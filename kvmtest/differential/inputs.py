"""The architectural inputs of one differential run, and the hypothesis strategies that draw them.

Every path gets the same Inputs: RAX, RCX, RDX, the status flags, the memory operand's value and
its offset in the operand page, the immediate. The other general-purpose registers hold fixed
canaries, so an instruction that writes a register it should not shows as a difference. Values
lean on the edges where emulators go wrong: 0, 1, the sign boundary, all ones, carry and overflow
neighbours, shift counts at and past the operand size, bit offsets before and past the operand,
dividends whose quotient overflows; uniform values besides. Each strategy lists the uniform range
first: hypothesis shrinks towards a strategy's first branch and, within a range, towards its
smallest value, so a failure reads as the numerically smallest input that shows it (0x1234, not
the edge 0xffffffff that happened to hit it first).
"""

from dataclasses import dataclass, replace
from functools import cache

from hypothesis import strategies as st

from .forms import Form
from .instruction import FLAG_NAMES, flag_names

M64 = (1 << 64) - 1
PAGE = 0xF000          # the operand page: RAM on one path, no memslot (MMIO) on another
PAGE_SIZE = 0x1000
OPERAND_OFFSETS = (0x800, 0x801, 0x803, 0x806)   # aligned and not, inside the page
BIT_OFFSET_REACH = 256 * 8   # register bit offsets reach 256 bytes either side of the operand
# What the rest of the operand page holds: bytes with every bit pattern, so an access at the
# wrong address (a BT offset applied wrongly) reads something other than the operand.
PATTERN = bytes((i * 0x9D + 0x35) & 0xFF for i in range(PAGE_SIZE))
CANARIES = {"rsi": 0x5151_5151_0000_0006, "rdi": 0x7171_7171_0000_0007, "rbp": 0x3131_3131_0000_0005,
            **{f"r{i}": 0xC0DE_0000_0000_0000 | i << 32 | i for i in range(8, 16)}}


@dataclass(frozen=True)
class Inputs:
    """The architectural inputs of one run; every path gets the same."""

    rax: int
    rcx: int
    rdx: int
    flags: int      # status flags (RFLAGS bits CF PF AF ZF SF OF)
    mem: int        # the memory operand's value (little-endian at PAGE + offset)
    offset: int
    imm: int | None = None

    def __repr__(self):
        imm = "" if self.imm is None else f", imm={self.imm:#x}"
        return (f"Inputs(rax={self.rax:#x}, rcx={self.rcx:#x}, rdx={self.rdx:#x}, flags={flag_names(self.flags)}, "
                f"mem={self.mem:#x}, offset={self.offset:#x}{imm})")

    @property
    def address(self) -> int:
        """The memory operand's address (the base register's value; identity-mapped, so also GPA)."""
        return PAGE + self.offset

    def page(self, form: Form) -> bytes:
        """The operand page as every path starts with it: the pattern, the operand at `offset`."""
        n = form.mem_size // 8
        data = bytearray(PATTERN)
        data[self.offset:self.offset + n] = self.mem.to_bytes(n, "little")
        return bytes(data)


def _edges(bits: int) -> list[int]:
    """Edge values of a `bits`-wide operand, 0 first (what hypothesis shrinks to)."""
    mask = (1 << bits) - 1
    sign = 1 << (bits - 1)
    return [0, 1, 2, mask, mask - 1, sign, sign - 1, sign + 1, 0x5555555555555555 & mask, 0xAAAAAAAAAAAAAAAA & mask]


@cache
def values(bits: int) -> st.SearchStrategy[int]:
    """A `bits`-wide operand value: any value or an edge."""
    return st.one_of(st.integers(0, (1 << bits) - 1), st.sampled_from(_edges(bits)))


@cache
def register(low: st.SearchStrategy[int], bits: int) -> st.SearchStrategy[int]:
    """A 64-bit register whose low `bits` come from `low`; the upper bits are zero, all ones or
    any (an 8/16-bit write must keep them, a 32-bit one clear them: SDM Vol. 1 3.4.1.1)."""
    if bits >= 64:
        return low
    upper = st.one_of(st.integers(0, M64 >> bits), st.sampled_from([0, M64 >> bits]))
    return st.builds(lambda hi, lo: (hi << bits | lo) & M64, upper, low)


@cache
def counts(bits: int) -> st.SearchStrategy[int]:
    """A shift or rotate count byte: 0, 1, around the operand size and past it, and the 5/6-bit
    masking edges (SDM Vol. 2B SAL/SAR/SHL/SHR, RCL/RCR/ROL/ROR: the count is masked to 5 bits, 6
    with REX.W)."""
    edges = [0, 1, 2, bits - 1, bits, bits + 1, 9, 17, 31, 32, 33, 63, 64, 65, 0x80, 0xFF]
    return st.one_of(st.integers(0, 0xFF), st.sampled_from(list(dict.fromkeys(edges))))


@cache
def bit_offsets(bits: int) -> st.SearchStrategy[int]:
    """A register bit offset for BT/BTS/BTR/BTC [m], r as the register's low `bits` (two's
    complement): inside the operand, just past it either way, and up to BIT_OFFSET_REACH bits
    away (SDM Vol. 2A BT: with a memory operand the offset is signed and selects a bit anywhere
    relative to the operand's address)."""
    edges = [0, 1, bits - 1, bits, bits + 1, 2 * bits - 1, -1, -bits, -bits - 1, BIT_OFFSET_REACH - 1,
             -BIT_OFFSET_REACH]
    signed = st.one_of(st.integers(-BIT_OFFSET_REACH, BIT_OFFSET_REACH - 1), st.sampled_from(edges))
    return signed.map(lambda o: o & ((1 << bits) - 1))


FLAG_BITS = sorted(FLAG_NAMES)
flags = st.integers(0, (1 << len(FLAG_BITS)) - 1).map(
    lambda n: sum(bit for i, bit in enumerate(FLAG_BITS) if n >> i & 1))


@st.composite
def _dividend_high(draw, form: Form, rax: int, mem: int) -> int:
    """RDX for DIV/IDIV (the dividend's upper half; AH for 8-bit operands, in RAX): often one that
    gives a quotient in range, often one that does not (#DE, SDM Vol. 2A DIV, IDIV)."""
    bits = form.size
    mask = (1 << bits) - 1
    low = rax & mask
    sign_ext = mask if low >> (bits - 1) & 1 else 0
    choices = [0, sign_ext, (mem & mask) - 1 if mem & mask else 0, mask]
    return draw(st.one_of(st.integers(0, mask), st.sampled_from(choices)))


def _with_dividend(form: Form):
    """DIV/IDIV inputs with the dividend's upper half drawn against the divisor."""
    @st.composite
    def draw_it(draw, case: Inputs) -> Inputs:
        high = draw(_dividend_high(form, case.rax, case.mem))
        if form.size == 8:   # the dividend is AX: AH is its upper half
            return replace(case, rax=case.rax & ~0xFF00 | high << 8)
        return replace(case, rdx=case.rdx & ~((1 << form.size) - 1) | high)
    return draw_it


@cache
def inputs(form: Form) -> st.SearchStrategy[Inputs]:
    """The strategy for `form`'s inputs (see the module docstring); built once per form."""
    size = form.size
    if form.family == "shift" and form.shape == "mcl":
        rcx = register(counts(8), 8)
    elif form.family == "bit" and form.shape == "mr":
        rcx = register(bit_offsets(size), size)
    else:
        rcx = register(values(size), size)
    imm: st.SearchStrategy[int | None] = st.none()
    if form.imm_bits:
        imm = counts(size) if form.family == "shift" else values(form.imm_bits)
    strategy = st.builds(Inputs, rax=register(values(size), size), rcx=rcx, rdx=register(values(size), size),
                         flags=flags, mem=values(form.mem_size), offset=st.sampled_from(OPERAND_OFFSETS), imm=imm)
    if form.mnemonic in ("div", "idiv"):
        strategy = strategy.flatmap(_with_dividend(form))
    return strategy
